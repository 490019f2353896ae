"""Which conntrack entries the sync deletes: upstream's CleanStaleEntries (cleanup_test.go cases)."""

from __future__ import annotations

import socket

from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName
from kplab.proxy.stale_udp import Flow, enabled, serving, stale

UDP, TCP = socket.IPPROTO_UDP, socket.IPPROTO_TCP
DNS = ServicePortName("ns", "dns", "dns", "UDP")
WEB = ServicePortName("ns", "web", "http", "TCP")


def state(eps: list[Endpoint]) -> ProxyState:
    svc = ServicePort(DNS, "10.96.0.010", 53, "UDP", node_port=30053, external_ips=("192.168.99.1",),
                      load_balancer_ips=("172.18.255.1",), service_type="LoadBalancer")
    web = ServicePort(WEB, "10.96.0.20", 80, "TCP")
    return ProxyState(services={DNS: svc, WEB: web},
                      endpoints={DNS: eps, WEB: [Endpoint("10.244.1.9", 8080)]})


def flow(dst: str, dport: int, reply_src: str, proto: int = UDP) -> Flow:
    return Flow(proto, "10.244.1.3", 5353, dst, dport, reply_src)


def test_flows_to_an_endpoint_that_no_longer_serves_are_deleted():
    st = state([Endpoint("10.244.1.2", 53), Endpoint("10.244.2.2", 53, serving=False, ready=False)])
    gone = [flow(ip, 53, "10.244.2.2") for ip in ("10.96.0.10", "192.168.99.1", "172.18.255.1")]
    gone.append(flow("172.18.0.11", 30053, "10.244.2.2"))  # NodePort: by port, any address
    kept = [flow("10.96.0.10", 53, "10.244.1.2"), flow("172.18.0.11", 30053, "10.244.1.2"),
            flow("10.96.0.10", 54, "10.244.2.2"),  # another port
            flow("10.96.0.20", 80, "10.244.2.2", TCP),  # TCP is left alone
            flow("10.96.0.10", 53, "10.244.2.2", TCP)]
    assert stale(st, gone + kept) == gone


def test_a_terminating_but_serving_endpoint_keeps_its_flows():
    st = state([Endpoint("10.244.2.2", 53, ready=False, serving=True, terminating=True)])
    assert stale(st, [flow("10.96.0.10", 53, "10.244.2.2")]) == []


def test_flows_never_dnated_go_once_the_service_has_an_endpoint():
    """Sent while the Service had no endpoint: no DNAT, the reply source is the Service IP."""
    undnated = flow("10.96.0.10", 53, "10.96.0.10")
    assert stale(state([]), [undnated]) == [], "no endpoint yet: nothing to move to"
    assert stale(state([Endpoint("10.244.1.2", 53)]), [undnated]) == [undnated]


def test_targets_are_the_canonical_service_addresses():
    by_ip, by_port = serving(state([Endpoint("10.244.1.2", 53)]))
    assert set(by_ip) == {("10.96.0.10", 53), ("192.168.99.1", 53), ("172.18.255.1", 53)}
    assert by_port == {30053: {"10.244.1.2"}}


def test_the_option_turns_it_off():
    assert enabled({}) and enabled({"conntrack_cleanup": True})
    assert not enabled({"conntrack_cleanup": False}) and not enabled({"conntrack_cleanup": "false"})


def test_reconciler_metrics():
    from prometheus_client import generate_latest

    from kplab.proxy.servers.metrics import NodeMetrics

    m = NodeMetrics("nftables")
    m.apply({"kind": "synced", "ok": True, "t": 1.0, "seconds": 0.01, "conntrack": [0.002, 3]})
    text = generate_latest(m.registry).decode()
    assert 'kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family="IPv4"} 3.0' in text
    assert 'kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family="IPv4"} 1.0' in text
    assert "conntrack_reconciler" not in generate_latest(NodeMetrics("userspace").registry).decode()
