"""kube-proxy's servers without a kernel: what a sync reports, the metrics and the HTTP bodies.

Facts from upstream: TestNoEndpointsMetric (nftables/iptables proxier_test.go), service_health.go's
JSON body, proxy_health.go's /healthz and /livez, metrics.go's names, buckets and labels.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from prometheus_client import generate_latest

from kplab.cluster import controller
from kplab.errors import LabError
from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName
from kplab.proxy.servers import agent, report
from kplab.proxy.servers.feed import health_check_addresses
from kplab.proxy.servers.metrics import NPL_BUCKETS, NodeMetrics


def state(svc: ServicePort, eps: list[Endpoint], **kw) -> ProxyState:
    s = ProxyState(node_name="test-node", **kw)
    s.services[svc.name] = svc
    s.endpoints[svc.name] = eps
    return s


def sp(**kw) -> ServicePort:
    return ServicePort(ServicePortName("ns1", "svc1", ""), "172.30.1.1", 80, **kw)


ENDPOINTS = [Endpoint("10.0.1.1", 80, "test-node", is_local=True), Endpoint("10.0.1.2", 80, "node1"),
             Endpoint("10.0.1.3", 80, "node2")]
REMOTE = [Endpoint(e.ip, 80, "node0") for e in ENDPOINTS]
ITP = {"internal_policy_local": True}
ETP = {"external_policy_local": True, "node_port": 123}


@pytest.mark.parametrize("policies,eps,internal,external", [
    (ITP, ENDPOINTS, 0, 0),
    (ETP, ENDPOINTS, 0, 0),
    ({**ITP, **ETP}, ENDPOINTS, 0, 0),
    (ITP, REMOTE, 1, 0),
    (ETP, REMOTE, 0, 1),
    ({**ITP, **ETP}, REMOTE, 1, 1),
    ({**ITP, **ETP}, [], 0, 0),  # no endpoints at all is not "no local endpoints"
])
def test_no_local_endpoints_metric(policies, eps, internal, external):
    """TestNoEndpointsMetric's table."""
    assert report.no_local_endpoints(state(sp(**policies), eps)) == {"internal": internal, "external": external}


def test_health_check_ports_and_local_ready_endpoints():
    two_ports = ServicePort(ServicePortName("ns1", "svc1", "https"), "172.30.1.1", 443, health_check_node_port=30000)
    s = state(sp(health_check_node_port=30000), [
        Endpoint("10.0.1.1", 80, is_local=True), Endpoint("10.0.1.2", 80, is_local=True, ready=False,
                                                          terminating=True),
        Endpoint("10.0.1.3", 80)])
    s.services[two_ports.name] = two_ports
    s.endpoints[two_ports.name] = [Endpoint("10.0.1.1", 443, is_local=True)]
    assert report.health_check_ports(s) == {"ns1/svc1": 30000}
    # 10.0.1.1:80 and 10.0.1.1:443 are one endpoint; a terminating local one fails the check
    assert report.local_ready_endpoints(s) == {"ns1/svc1": 1}


def test_object_changes_and_trigger_times():
    a = {"metadata": {"name": "a", "namespace": "ns"}, "spec": 1}
    b = {"metadata": {"name": "b", "namespace": "ns"}, "spec": 1}
    before = report.digests([a, b])
    after = report.digests([{**a, "spec": 2}, {"metadata": {"name": "c", "namespace": "ns"}}])
    assert report.object_changes(before, after) == 3  # a updated, b deleted, c added
    assert report.object_changes(after, after) == 0
    s = {"metadata": {"name": "s", "namespace": "ns", "annotations": {
        report.TRIGGER_ANNOTATION: "2030-01-02T03:04:05.5Z"}}}
    t = report.parse_time("2030-01-02T03:04:05.5Z")
    assert report.trigger_times([s], {}, since=0) == {"ns/s": t}
    assert report.trigger_times([s], {"ns/s": t}, since=0) == {}, "observed once"
    assert report.trigger_times([s], {}, since=t + 1) == {}, "older than the change tracker"


def test_controller_hints_for_traffic_distribution():
    pods = {f"default/p{i}": {"metadata": {"name": f"p{i}", "namespace": "default", "labels": {"app": "w"},
                                           "annotations": {controller.READY_ANN: "false"} if i == 2 else {}},
                              "spec": {"nodeName": f"node-{i}", "containers": []}, "status": {"podIP": f"10.0.0.{i}"}}
            for i in (1, 2, 3)}
    zones = {"node-1": "a", "node-2": "b", "node-3": "b"}

    def slice_for(td: str | None) -> list[dict]:
        svc = {"metadata": {"name": "w", "namespace": "default"},
               "spec": {"selector": {"app": "w"}, "ports": [{"port": 80}], **({"trafficDistribution": td} if td else {})}}
        (s,) = controller.endpoint_slices({"Service": {"default/w": svc}, "Pod": pods}, zones).values()
        return s["endpoints"]

    plain = slice_for(None)
    assert [e["zone"] for e in plain] == ["a", "b", "b"] and not any("hints" in e for e in plain)
    close = slice_for("PreferClose")
    assert [e.get("hints") for e in close] == [{"forZones": [{"name": "a"}]}, None, {"forZones": [{"name": "b"}]}]
    assert slice_for("PreferSameZone") == close
    node = slice_for("PreferSameNode")
    assert node[0]["hints"] == {"forZones": [{"name": "a"}], "forNodes": [{"name": "node-1"}]}
    assert "hints" not in node[1], "not-ready endpoints get no hints"


def test_trigger_time_stamps_only_changed_slices():
    old = {"d/s": {"metadata": {"name": "s", "annotations": {controller.TRIGGER_ANN: "T0"}}, "endpoints": [1]}}
    same = {"d/s": {"metadata": {"name": "s"}, "endpoints": [1]}}
    controller.stamp_trigger_times(old, same, 1.5)
    assert same["d/s"]["metadata"]["annotations"][controller.TRIGGER_ANN] == "T0"
    changed = {"d/s": {"metadata": {"name": "s"}, "endpoints": [1, 2]}, "d/new": {"metadata": {"name": "new"}}}
    controller.stamp_trigger_times(old, changed, 1.5)
    assert {k: v["metadata"]["annotations"][controller.TRIGGER_ANN] for k, v in changed.items()} == {
        "d/s": "1970-01-01T00:00:01.5Z", "d/new": "1970-01-01T00:00:01.5Z"}


def test_health_check_addresses_follow_nodeport_addresses():
    s = ProxyState(node_ips=("172.18.0.11",))
    assert health_check_addresses("iptables", s) == ["0.0.0.0"]
    assert health_check_addresses("nftables", s) == ["172.18.0.11"], "nftables defaults to primary"
    s.nodeport_addresses = ("172.18.0.0/24",)
    assert health_check_addresses("iptables", s) == ["172.18.0.11"]


def metrics_text(m: NodeMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_metrics_per_mode_and_sync_events():
    m = NodeMetrics("iptables")
    m.apply({"kind": "queued", "t": 100.0, "service_changes": 2, "endpoint_changes": 3})
    m.apply({"kind": "synced", "ok": True, "t": 101.0, "seconds": 0.003, "full": True, "programming": [0.7, 1.5],
             "no_local": {"internal": 1, "external": 0}})
    m.apply({"kind": "synced", "ok": False, "t": 102.0, "seconds": 0.5})
    text = metrics_text(m)
    assert "_created" not in text
    assert "# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds" in text
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 2.0' in text
    assert 'kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.004"} 1.0' in text
    assert 'kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 101.0' in text
    assert 'kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"} 100.0' in text
    assert "kubeproxy_sync_proxy_rules_service_changes_total 2.0" in text
    assert "kubeproxy_sync_proxy_rules_endpoint_changes_total 3.0" in text
    assert "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0.0" in text
    assert 'kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="1.0"} 1.0' in text
    assert 'kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv4"} 2.2' in text
    assert ('kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"} 1.0'
            in text)
    assert 'kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"} 1.0' in text
    nft = metrics_text(NodeMetrics("nftables"))
    assert "nftables_sync_failures_total" in nft and "iptables" not in nft and "sync_full_proxy" not in nft
    assert NPL_BUCKETS[:4] == [0.0, 0.25, 0.5, 1.0] and NPL_BUCKETS[-1] == 300.0 and len(NPL_BUCKETS) == 81


class FakeAgent:
    def go_time(self, wall: float) -> str:
        return agent.go_time(wall, 12.5)


def node(mode: str = "iptables") -> agent.Node:
    return agent.Node(FakeAgent(), "node-1", {"mode": mode, "epoch": 1})  # type: ignore[arg-type]


def test_service_health_body_is_upstreams():
    n = node()
    n.health_checks = {"ns1/svc1": {"port": 30000, "count": 2}, "ns1/none": {"port": 30001, "count": 0}}
    status, ctype, body = n.service_route("ns1/svc1")
    assert (status, ctype) == (200, "application/json")
    assert body.decode() == ('{\n\t"service": {\n\t\t"namespace": "ns1",\n\t\t"name": "svc1"\n\t},\n'
                             '\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}')
    assert json.loads(body) == {"service": {"namespace": "ns1", "name": "svc1"}, "localEndpoints": 2,
                                "serviceProxyHealthy": True}
    assert n.service_route("ns1/none")[0] == 503


def test_proxy_health_turns_503_when_a_queued_change_waits_too_long():
    n = node()
    status, _, body = n.health_route("/healthz")
    assert status == 200
    assert re.fullmatch(r'\{"lastUpdated": "\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC m=\+12\.500000000",'
                        r'"currentTime": "[^"]+", "nodeEligible": true\}', body.decode()), body
    assert n.health_route("/livez")[2].decode().endswith('UTC m=+12.500000000"}')
    n.apply({"kind": "queued", "t": time.time() - agent.HEALTH_TIMEOUT - 1})
    assert n.health_route("/healthz")[0] == 503 and n.health_route("/livez")[0] == 503
    n.health_checks = {"ns1/svc1": {"port": 30000, "count": 2}}
    assert n.service_route("ns1/svc1")[0] == 503, "serviceProxyHealthy false fails every Service check"
    assert b'"serviceProxyHealthy": false' in n.service_route("ns1/svc1")[2]
    n.apply({"kind": "synced", "ok": True, "t": time.time(), "seconds": 0.01})
    assert n.health_route("/healthz")[0] == 200
    assert n.health_route("/nope") == agent.NOT_FOUND
    text = generate_latest(n.metrics.registry).decode()
    assert all(f"kubeproxy_proxy_{p}_total{{code=\"{c}\"}} {n}" in text for p, c, n in (
        ("healthz", 200, 2.0), ("healthz", 503, 1.0), ("livez", 200, 1.0), ("livez", 503, 1.0)))


def test_metrics_server_routes():
    n = node("nftables")
    status, ctype, body = n.metrics_route("/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert b"kubeproxy_sync_proxy_rules_nftables_sync_failures_total" in body
    assert n.metrics_route("/proxyMode")[2] == b"nftables"
    assert n.metrics_route("/healthz")[2] == b"ok"


def test_go_time():
    assert agent.go_time(0.0, 1.0) == "1970-01-01 00:00:00 +0000 UTC m=+1.000000000"
    assert agent.go_time(1.25, 0.5) == "1970-01-01 00:00:01.25 +0000 UTC m=+0.500000000"


def test_node_labels_give_zones_in_turn_and_refuse_bad_ones():
    nodes = ["node-1", "node-2", "node-3"]
    assert [controller.node_labels(n, nodes, ["a", "b"]).get(controller.ZONE_LABEL) for n in nodes] == ["a", "b", "a"]
    assert controller.node_labels("node-1", nodes, []) == {"kubernetes.io/hostname": "node-1"}
    with pytest.raises(LabError, match="zone 'eu west': a label value"):
        controller.node_labels("node-1", nodes, ["eu west"])


def test_feed_finish_is_linear_in_endpoint_slices(tmp_path, monkeypatch):
    """10,000 Services applied at once: finish() rebuilt the set of slice names once per trigger, so
    one `kplab apply` spent minutes here (test_hub's learner with 10,000 Services); now once per sync."""
    from types import SimpleNamespace

    from kplab.proxy.servers import feed

    n, now = 2000, time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 5))
    slices = {f"default/s{i}": {"metadata": {"name": f"s{i}", "namespace": "default",
                                             "annotations": {report.TRIGGER_ANNOTATION: stamp}}}
              for i in range(n)}
    lab = SimpleNamespace(store=SimpleNamespace(dir=tmp_path), node_ip=lambda n: "172.18.0.11", netns=str,
                          mode="iptables", stored_objects=lambda: {"EndpointSlice": slices})
    f = feed.Feed(lab, {"node-1": ProxyState()})
    f.memory = {"node-1": {"mode": "iptables", "epoch": 1, "services": {}, "slices": {}, "triggers": {},
                           "since": now - 60}}
    f.synced("node-1", SimpleNamespace(seconds=0.1, full=True))
    calls = 0
    real = report.object_key

    def counted(o):
        nonlocal calls
        calls += 1
        return real(o)

    monkeypatch.setattr(report, "object_key", counted)
    monkeypatch.setattr(feed, "notify", lambda lab, spec: None)
    f.finish()
    assert len(f.memory["node-1"]["triggers"]) == n
    assert calls <= 5 * n, f"{calls} object_key calls for {n} slices: quadratic"
