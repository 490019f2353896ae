"""kube-proxy's servers on real nodes: healthCheckNodePorts, /healthz, /livez, /metrics, asked over
the lab's network from `outside` and from a pod, with numbers that follow the lab's syncs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kplab.cluster.store import STATE_ROOT, pid_alive_and_ours
from kplab.proxy.servers.feed import AGENT, http_get

pytestmark = [pytest.mark.root]
LB_LOCAL = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def get(lab, frm: str, node: str, port: int, path: str = "/"):
    return http_get(lab.netns(frm), lab.node_ip(node), port, path)


def test_servers_answer_and_follow_the_syncs(lab_factory):
    lab = lab_factory("srv1", mode="iptables")
    lab.apply(LB_LOCAL)
    hc = lab.service("web")["spec"]["healthCheckNodePort"]
    web = {p.metadata.name: p.spec.node_name for p in lab.pods() if p.metadata.name.startswith("web-")}
    per_node = {n: sum(1 for v in web.values() if v == n) for n in lab.nodes}
    for node in lab.nodes:
        status, headers, body = get(lab, "outside", node, hc)
        assert (status, headers["Content-Type"]) == (200, "application/json")
        assert json.loads(body) == {"service": {"namespace": "default", "name": "web"},
                                    "localEndpoints": per_node[node], "serviceProxyHealthy": True}
        status, _, body = get(lab, "outside", node, 10256, "/healthz")
        assert status == 200 and set(json.loads(body)) == {"lastUpdated", "currentTime", "nodeEligible"}
        assert get(lab, "client", node, 10256, "/livez")[0] == 200, "from a pod too"
    # a node whose web pods are not ready fails the check: the load balancer skips it
    for pod, node in web.items():
        if node == "node-2":
            lab.set_ready(pod, False)
    status, _, body = get(lab, "outside", "node-2", hc)
    assert status == 503 and json.loads(body)["localEndpoints"] == 0
    assert get(lab, "client", "node-1", hc)[0] == 200
    # metrics, from a pod: the syncs so far (up, apply, one per set_ready), with real durations
    status, headers, body = get(lab, "client", "node-1", 10249, "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    syncs = 2 + per_node["node-2"]
    assert metric(text, 'kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"}') == syncs
    assert metric(text, 'kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"}') > 0
    full = metric(text, 'kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"}')
    partial = metric(text, 'kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family="IPv4"}')
    assert full >= 1 and full + partial == syncs
    programmed = metric(text, 'kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"}')
    assert programmed >= 1 + per_node["node-2"], "each changed EndpointSlice after the start is measured"
    assert metric(text, "kubeproxy_sync_proxy_rules_service_changes_total") == 2  # created, then made an LB
    assert get(lab, "outside", "node-1", 10249, "/proxyMode")[2] == b"iptables"
    st = lab.status()["servers"]
    assert st["nodes"]["node-1"]["healthz_status"] == 200
    assert st["nodes"]["node-2"]["health_check_node_ports"] == {"default/web": hc}


def test_a_new_mode_is_a_new_kube_proxy_and_none_is_none(lab_factory):
    lab = lab_factory("srv2", mode="iptables")
    lab.apply(LB_LOCAL)
    hc = lab.service("web")["spec"]["healthCheckNodePort"]
    lab.set_mode("nftables")
    text = get(lab, "outside", "node-1", 10249, "/metrics")[2].decode()
    assert "nftables_sync_failures_total" in text and "iptables" not in text, "fresh metrics for the new mode"
    assert metric(text, 'kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"}') == 1
    assert get(lab, "outside", "node-1", 10249, "/proxyMode")[2] == b"nftables"
    # nftables mode defaults to --nodeport-addresses primary: the health check is on the node IP only
    assert get(lab, "outside", "node-1", hc)[0] in (200, 503)
    with pytest.raises(ConnectionRefusedError):
        http_get(lab.netns("node-1"), "127.0.0.1", hc)
    lab.set_mode("none")
    for port in (10256, 10249, hc):
        with pytest.raises(ConnectionRefusedError):
            get(lab, "outside", "node-1", port)
    lab.set_mode("iptables")
    assert get(lab, "outside", "node-2", 10256, "/healthz")[0] == 200


def test_down_stops_the_servers_process():
    from kplab import Lab

    lab = Lab.up("srv3", mode="iptables")
    pid = int((STATE_ROOT / "srv3" / "servers.pid").read_text())
    assert pid_alive_and_ours(pid, AGENT)
    lab.down()
    assert not Path(f"/proc/{pid}").exists(), "no servers process outlives its lab"
