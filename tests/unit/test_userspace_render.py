"""The userspace mode's pure parts: portal rules, proxy ports, the proxy's table and balancer (no root)."""

from __future__ import annotations

import json

import pytest

from kplab.errors import KplabError, ProxierError
from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName
from kplab.proxy.userspace.proxier import UserspaceProxier
from kplab.proxy.userspace.relay import Balancer
from kplab.proxy.userspace.rules import (
    JUMPS,
    _ours,
    allocate_proxy_ports,
    build_table,
    proxy_input,
    render_restore,
    table_from_input,
)

HTTP = ServicePortName("default", "web", "http", "TCP")
DNS = ServicePortName("default", "web", "dns", "UDP")
EPS = [
    Endpoint("10.244.1.2", 8080, "node-1", True, pod_name="web-a"),
    Endpoint("10.244.2.2", 8080, "node-2", pod_name="web-b"),
    Endpoint("10.244.2.3", 8080, "node-2", ready=False, serving=True, terminating=True, pod_name="web-c"),
]


def web_state(**svc: object) -> ProxyState:
    state = ProxyState(node_name="node-1", node_ips=("172.18.0.11",))
    state.services[HTTP] = ServicePort(HTTP, "10.96.0.10", 80, "TCP", node_port=30080, service_type="NodePort",
                                       **svc)  # type: ignore[arg-type]
    state.services[DNS] = ServicePort(DNS, "10.96.0.10", 53, "UDP", node_port=30053, service_type="NodePort")
    state.endpoints[HTTP] = list(EPS)
    state.endpoints[DNS] = list(EPS)
    return state


# What upstream's iptablesInit() + openPortal()/openNodePort() program for a NodePort Service
# with a TCP and a UDP port, with the proxy on 0.0.0.0 and node IP 172.18.0.11, in the order
# iptables-save prints each rule's arguments.
EXPECTED = """\
*nat
:KUBE-PORTALS-CONTAINER - [0:0]
:KUBE-PORTALS-HOST - [0:0]
:KUBE-NODEPORT-CONTAINER - [0:0]
:KUBE-NODEPORT-HOST - [0:0]
-I PREROUTING 1 -m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort rules" -j KUBE-PORTALS-CONTAINER
-I OUTPUT 1 -m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort rules" -j KUBE-PORTALS-HOST
-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; NOTE: this must be the last rule in the chain" -j KUBE-NODEPORT-CONTAINER
-A OUTPUT -m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; NOTE: this must be the last rule in the chain" -j KUBE-NODEPORT-HOST
-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p udp -m comment --comment "default/web:dns" -m udp --dport 53 -j REDIRECT --to-ports 20000
-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports 20001
-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p udp -m comment --comment "default/web:dns" -m udp --dport 53 -j DNAT --to-destination 172.18.0.11:20000
-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp --dport 80 -j DNAT --to-destination 172.18.0.11:20001
-A KUBE-NODEPORT-CONTAINER -p udp -m comment --comment "default/web:dns" -m udp --dport 30053 -j REDIRECT --to-ports 20000
-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j REDIRECT --to-ports 20001
-A KUBE-NODEPORT-HOST -p udp -m comment --comment "default/web:dns" -m udp --dport 30053 -j DNAT --to-destination 172.18.0.11:20000
-A KUBE-NODEPORT-HOST -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j DNAT --to-destination 172.18.0.11:20001
COMMIT
*filter
:KUBE-NODEPORT-NON-LOCAL - [0:0]
-I INPUT 1 -m comment --comment "Ensure that non-local NodePort traffic can flow" -j KUBE-NODEPORT-NON-LOCAL
-A KUBE-NODEPORT-NON-LOCAL -p udp -m comment --comment "default/web:dns" -m udp --dport 20000 -m state --state NEW -j ACCEPT
-A KUBE-NODEPORT-NON-LOCAL -p tcp -m comment --comment "default/web:http" -m tcp --dport 20001 -m state --state NEW -j ACCEPT
COMMIT
"""


def test_render_nodeport_service_matches_upstream_shape() -> None:
    head, text = UserspaceProxier.preview(web_state()).split("\n", 1)
    assert head == "# kube-proxy userspace mode (historical: deprecated in 1.23, removed upstream in 1.26)"
    assert text.startswith(EXPECTED)
    table = text[len(EXPECTED):]
    assert "default/web:http TCP 10.96.0.10:80, nodePort 30080 -> :20001 (round robin)" in table
    assert "10.244.1.2:8080       web-a" in table
    assert "web-c" not in table  # not ready: upstream's userspace read only Endpoints' ready addresses
    assert all(line.startswith("#") for line in table.splitlines())  # the whole render stays loadable


def test_only_missing_jumps_are_written() -> None:
    table = build_table(web_state())
    assert "-I PREROUTING" not in render_restore(table, jumps=False)
    text = render_restore(table, jumps={("filter", "INPUT", "KUBE-NODEPORT-NON-LOCAL")})
    assert [line for line in text.splitlines() if line.startswith(("-I", "-A INPUT", "-A OUTPUT", "-A PREROUTING"))] \
        == [('-I INPUT 1 -m comment --comment "Ensure that non-local NodePort traffic can flow" '
            "-j KUBE-NODEPORT-NON-LOCAL")]
    assert {j[4] for j in JUMPS} == {"KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST", "KUBE-NODEPORT-CONTAINER",
                                     "KUBE-NODEPORT-HOST", "KUBE-NODEPORT-NON-LOCAL"}


def test_external_ips_and_load_balancer_ips() -> None:
    text = render_restore(build_table(web_state(external_ips=("192.0.2.7",), load_balancer_ips=("172.18.255.1",))),
                          jumps=False)
    http = [line for line in text.splitlines() if "web:http" in line]
    # an external IP is caught when it arrives from off-node (not through a bridge port) or
    # when it is one of the node's own addresses; an LB IP like the ClusterIP, everywhere
    assert '-A KUBE-PORTALS-CONTAINER -d 192.0.2.7/32 -p tcp -m comment --comment "default/web:http" -m tcp ' \
           "--dport 80 -m physdev ! --physdev-is-in -j REDIRECT --to-ports 20001" in http
    assert '-A KUBE-PORTALS-CONTAINER -d 192.0.2.7/32 -p tcp -m comment --comment "default/web:http" -m tcp ' \
           "--dport 80 -m addrtype --dst-type LOCAL -j REDIRECT --to-ports 20001" in http
    assert '-A KUBE-PORTALS-HOST -d 192.0.2.7/32 -p tcp -m comment --comment "default/web:http" -m tcp ' \
           "--dport 80 -m addrtype --dst-type LOCAL -j DNAT --to-destination 172.18.0.11:20001" in http
    assert '-A KUBE-PORTALS-CONTAINER -d 172.18.255.1/32 -p tcp -m comment --comment "default/web:http" -m tcp ' \
           "--dport 80 -j REDIRECT --to-ports 20001" in http
    assert '-A KUBE-PORTALS-HOST -d 172.18.255.1/32 -p tcp -m comment --comment "default/web:http" -m tcp ' \
           "--dport 80 -j DNAT --to-destination 172.18.0.11:20001" in http


def test_specific_listen_ip_uses_dnat_everywhere() -> None:
    text = render_restore(build_table(web_state(), listen_ip="172.18.0.11"), jumps=False)
    assert "REDIRECT" not in text
    assert '-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" -m tcp ' \
           "--dport 80 -j DNAT --to-destination 172.18.0.11:20001" in text


def test_cluster_ip_service_has_no_nodeport_rules_and_sctp_is_skipped() -> None:
    state = ProxyState(node_ips=("172.18.0.12",))
    sctp = ServicePortName("default", "db", "", "SCTP")
    plain = ServicePortName("default", "db", "", "TCP")
    state.services[sctp] = ServicePort(sctp, "10.96.0.20", 9000, "SCTP")
    state.services[plain] = ServicePort(plain, "10.96.0.20", 9000, "TCP", session_affinity_seconds=30)
    table = build_table(state)
    assert [p.name for p in table.portals] == ["default/db"]
    assert table.portals[0].affinity_seconds == 30 and table.portals[0].endpoints == ()
    text = UserspaceProxier.preview(state)
    assert "-A KUBE-NODEPORT-" not in text
    assert "--to-destination 172.18.0.12:20000" in text
    assert "# skipped: default/db SCTP: not supported by the userspace proxy" in text
    assert "no endpoints: connections are accepted, then closed" in text
    assert "ClientIP affinity 30s" in text


def test_proxy_ports_are_stable_and_reused() -> None:
    first = allocate_proxy_ports(["a/TCP", "b/TCP", "c/UDP"], {}, "20000-20009")
    assert first == {"a/TCP": 20000, "b/TCP": 20001, "c/UDP": 20002}
    second = allocate_proxy_ports(["c/UDP", "d/TCP", "b/TCP"], first, "20000-20009")
    assert second == {"b/TCP": 20001, "c/UDP": 20002, "d/TCP": 20000}  # a's port freed and reused
    with pytest.raises(ProxierError, match="exhausted"):
        allocate_proxy_ports(["a", "b", "c"], {}, "20000-20001")
    with pytest.raises(KplabError, match="FIRST-LAST"):
        allocate_proxy_ports(["a"], {}, "20000:20001")


def test_table_round_trips_through_the_proxy_input() -> None:
    table = build_table(web_state(external_ips=("192.0.2.7",)), {"default/web:http/TCP": 20005})
    assert table.portals[1].proxy_port == 20005
    data = json.loads(json.dumps(proxy_input(table)))  # as table.json holds it
    assert data["hold"] == [{"protocol": "UDP", "port": 30053, "owner": "default/web:dns"},
                            {"protocol": "TCP", "port": 30080, "owner": "default/web:http"}]
    assert data["services"][1]["endpoints"] == ["10.244.1.2:8080", "10.244.2.2:8080"]
    assert table_from_input(data) == table


def test_ours_picks_our_lines_from_a_dump() -> None:
    saved = """*filter
:INPUT ACCEPT [0:0]
:KUBE-NODEPORT-NON-LOCAL - [0:0]
[3:180] -A INPUT -m comment --comment "Ensure that non-local NodePort traffic can flow" -j KUBE-NODEPORT-NON-LOCAL
-A INPUT -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-PORTALS-CONTAINER - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 20001
COMMIT
"""
    ours = _ours(saved)
    assert ours["filter"] == [":KUBE-NODEPORT-NON-LOCAL - [0:0]",
                              ('[3:180] -A INPUT -m comment --comment "Ensure that non-local NodePort traffic can '
                              'flow" -j KUBE-NODEPORT-NON-LOCAL')]
    assert ours["nat"] == [":KUBE-PORTALS-CONTAINER - [0:0]",
                           ("-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REDIRECT "
                           "--to-ports 20001")]


def test_no_node_ip_is_one_clear_error() -> None:
    with pytest.raises(ProxierError, match="needs a node IP"):
        build_table(ProxyState(node_ips=()))


def test_status_note_says_historical() -> None:
    assert "historical" in UserspaceProxier.status_note and "1.26" in UserspaceProxier.status_note
    assert UserspaceProxier.doctor().note == UserspaceProxier.status_note


# The balancer: upstream's LoadBalancerRR (roundrobin.go).


def test_round_robin_is_exact_over_a_shuffled_list() -> None:
    b = Balancer()
    assert b.update(["a:1", "b:1", "c:1"], 0)
    picks = [b.pick("10.0.0.1") for _ in range(30)]
    assert {p: picks.count(p) for p in set(picks)} == {"a:1": 10, "b:1": 10, "c:1": 10}
    assert picks[:3] == b.endpoints  # the order is the (shuffled) list itself
    index = b.index
    assert not b.update(["c:1", "a:1", "b:1"], 0)  # same set: no reshuffle, index kept
    assert b.index == index
    assert b.update(["a:1", "b:1"], 0) and b.index == 0


def test_client_ip_affinity_with_timeout_and_reset() -> None:
    b = Balancer(affinity_seconds=10)
    b.update(["a:1", "b:1", "c:1"], 10)
    first = b.pick("10.0.0.1", now=100.0)
    assert [b.pick("10.0.0.1", now=100.0 + i) for i in range(1, 5)] == [first] * 4
    other = b.pick("10.0.0.2", now=104.0)
    assert other != first
    assert b.pick("10.0.0.1", now=115.0) != first  # idle for 11 s > 10 s: next in the rotation
    retry = b.pick("10.0.0.2", reset=True, now=105.0)  # a dial failed: skip the sticky entry
    assert retry != other and b.sticky["10.0.0.2"][0] == retry
    b.update(["a:1", "b:1"], 10)  # an endpoint went away: its sticky clients are forgotten
    assert all(ep != "c:1" for ep, _ in b.sticky.values())
    b.reap(now=1000.0)
    assert b.sticky == {}


def test_no_endpoints_picks_nothing() -> None:
    b = Balancer()
    assert b.pick("10.0.0.1") is None
