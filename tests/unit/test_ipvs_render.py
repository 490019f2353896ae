"""IPVS mode, pure: what build_plan/render would program, checked against upstream's expectations.

Expected virtual servers, ipset members and (chain, target, set) rule sequences are re-typed
from kubernetes/kubernetes pkg/proxy/ipvs/proxier_test.go (TestNodePortIPv4,
TestLoadBalancerSourceRanges, TestAcceptIPVSTraffic, TestOnlyLocalLoadBalancing), which use
the same service and endpoint values.  No root, no kernel.
"""

from __future__ import annotations

import pytest

from kplab.errors import KplabError
from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName
from kplab.proxy.ipvs import rules as R
from kplab.proxy.ipvs.proxier import IpvsProxier, sysctls

NODE = "testHostname"


def state(*svcs: tuple[ServicePort, list[Endpoint]], **kw) -> ProxyState:
    s = ProxyState(node_name=NODE, node_ips=kw.pop("node_ips", ("100.101.102.103",)), **kw)
    for svc, eps in svcs:
        s.services[svc.name] = svc
        s.endpoints[svc.name] = eps
    return s


def svc(name: str = "svc1", ip: str = "10.20.30.41", port: int = 80, proto: str = "TCP", **kw) -> ServicePort:
    return ServicePort(ServicePortName("ns1", name, "p80", proto), ip, port, protocol=proto, **kw)


def ep(ip: str, port: int = 80, local: bool = False) -> Endpoint:
    return Endpoint(ip, port, NODE if local else "other-hostname", is_local=local)


def servers(plan: R.IpvsPlan) -> dict[str, list[str]]:
    return {sp.vs.key: [rs.key for rs in sp.reals] for sp in plan.servers}


def chain(plan: R.IpvsPlan, name: str, table: str) -> list[tuple[str, str]]:
    """(target, match-set) per rule of one chain, like upstream's checkIptables."""
    out, current = [], ""
    for line in plan.iptables.splitlines():
        if line.startswith("*"):
            current = line[1:]
        words = line.split()
        if current == table and words[:2] == ["-A", name]:
            target = words[words.index("-j") + 1]
            match = words[words.index("--match-set") + 1] if "--match-set" in words else ""
            out.append((target, match))
    return out


def in_order(expected: list[tuple[str, str]], got: list[tuple[str, str]]) -> bool:
    it = iter(got)
    return all(any(e == g for g in it) for e in expected)


def test_nodeport_tcp_one_endpoint():
    plan = R.build_plan(state((svc(node_port=3001, service_type="NodePort"), [ep("10.180.0.1")])))
    assert servers(plan) == {"10.20.30.41:80/TCP": ["10.180.0.1:80"], "100.101.102.103:3001/TCP": ["10.180.0.1:80"]}
    assert {sp.vs.scheduler for sp in plan.servers} == {"rr"}
    assert all(rs.weight == 1 for sp in plan.servers for rs in sp.reals)
    assert plan.bind_addrs == ["10.20.30.41"]  # node IPs are never bound to kube-ipvs0


def test_nodeport_udp_sets_and_rules():
    plan = R.build_plan(state((svc(proto="UDP", node_port=3001, service_type="NodePort"), [ep("10.180.0.1")])))
    assert set(servers(plan)) == {"10.20.30.41:80/UDP", "100.101.102.103:3001/UDP"}
    assert plan.ipsets["KUBE-NODE-PORT-UDP"] == {"3001"}
    assert in_order([("KUBE-MARK-MASQ", "KUBE-NODE-PORT-UDP")], chain(plan, "KUBE-NODE-PORT", "nat"))
    assert in_order([("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")], chain(plan, "KUBE-NODE-PORT", "filter"))
    assert in_order([("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"), ("KUBE-NODE-PORT", ""), ("ACCEPT", "KUBE-CLUSTER-IP")],
                    chain(plan, "KUBE-SERVICES", "nat"))


def test_nodeport_without_endpoints_keeps_virtual_servers():
    plan = R.build_plan(state((svc(node_port=3001, service_type="NodePort"), [])))
    assert servers(plan) == {"10.20.30.41:80/TCP": [], "100.101.102.103:3001/TCP": []}


def test_nodeport_sctp_on_several_node_ips():
    ips = ("100.101.102.103", "100.101.102.104", "100.101.102.105")
    plan = R.build_plan(state((svc(proto="SCTP", node_port=3001, service_type="NodePort"), [ep("10.180.0.1")])),
                        nodeport_ips=ips)
    assert set(servers(plan)) == {"10.20.30.41:80/SCTP"} | {f"{ip}:3001/SCTP" for ip in ips}
    assert plan.ipsets["KUBE-NODE-PORT-SCTP-HASH"] == {f"{ip},sctp:3001" for ip in ips}


def test_load_balancer_source_ranges():
    s = svc(load_balancer_ips=("1.2.3.4",), load_balancer_source_ranges=("10.0.0.0/8",), service_type="LoadBalancer")
    plan = R.build_plan(state((s, [ep("10.180.0.1")])))
    assert servers(plan)["1.2.3.4:80/TCP"] == ["10.180.0.1:80"]
    assert plan.ipsets["KUBE-LOAD-BALANCER"] == {"1.2.3.4,tcp:80"}
    assert plan.ipsets["KUBE-LOAD-BALANCER-FW"] == {"1.2.3.4,tcp:80"}
    assert plan.ipsets["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == {"1.2.3.4,tcp:80,10.0.0.0/8"}
    assert in_order([("KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER"), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
                     ("KUBE-NODE-PORT", ""), ("ACCEPT", "KUBE-CLUSTER-IP"), ("ACCEPT", "KUBE-LOAD-BALANCER")],
                    chain(plan, "KUBE-SERVICES", "nat"))
    assert chain(plan, "KUBE-PROXY-FIREWALL", "filter") == [("KUBE-SOURCE-RANGES-FIREWALL", "KUBE-LOAD-BALANCER-FW")]
    assert chain(plan, "KUBE-SOURCE-RANGES-FIREWALL", "filter") == [
        ("RETURN", "KUBE-LOAD-BALANCER-SOURCE-CIDR"), ("DROP", "")]
    # the node's own IP is outside the ranges: node -> LB IP is dropped (issue #119656)
    assert plan.no_node_access == [("1.2.3.4", "tcp", 80)]
    assert "-A KUBE-IPVS-OUT-FILTER -s 1.2.3.4 -m ipvs --vaddr 1.2.3.4 --vproto tcp --vport 80 -j DROP" in plan.iptables


def test_source_range_covering_the_node_allows_it_and_prints_host_cidrs_like_ipset():
    s = svc(load_balancer_ips=("1.2.3.4",), load_balancer_source_ranges=("100.101.102.103/32",))
    plan = R.build_plan(state((s, [ep("10.180.0.1")])))
    assert plan.ipsets["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == {"1.2.3.4,tcp:80,100.101.102.103"}
    assert plan.ipsets["KUBE-LOAD-BALANCER-SOURCE-IP"] == {"1.2.3.4,tcp:80,1.2.3.4"}
    assert plan.no_node_access == []


def test_accept_ipvs_traffic_order():
    plan = R.build_plan(state(
        (svc("svc1", "10.20.30.40", external_ips=("5.6.7.8",)), [ep("10.180.0.1")]),
        (svc("svc2", "10.20.30.41", load_balancer_ips=("1.2.3.4",), node_port=80), [ep("10.180.0.2")]),
        (svc("svc3", "10.20.30.42", node_port=80), [ep("10.180.0.3")])))
    assert in_order([("KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER"), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
                     ("KUBE-MARK-MASQ", "KUBE-EXTERNAL-IP"), ("ACCEPT", "KUBE-EXTERNAL-IP"),
                     ("ACCEPT", "KUBE-EXTERNAL-IP"), ("KUBE-NODE-PORT", ""), ("ACCEPT", "KUBE-CLUSTER-IP"),
                     ("ACCEPT", "KUBE-LOAD-BALANCER")], chain(plan, "KUBE-SERVICES", "nat"))
    assert "5.6.7.8" in plan.bind_addrs and "1.2.3.4" in plan.bind_addrs


def test_only_local_load_balancing():
    s = svc(load_balancer_ips=("1.2.3.4",), node_port=3001, external_policy_local=True, service_type="LoadBalancer")
    plan = R.build_plan(state((s, [ep("10.180.0.1", local=True), ep("10.180.1.1")])))
    assert servers(plan)["1.2.3.4:80/TCP"] == ["10.180.0.1:80"]  # only the local endpoint
    assert servers(plan)["10.20.30.41:80/TCP"] == ["10.180.0.1:80", "10.180.1.1:80"]  # ClusterIP: all
    assert plan.ipsets["KUBE-LOAD-BALANCER-LOCAL"] == {"1.2.3.4,tcp:80"}
    assert plan.ipsets["KUBE-NODE-PORT-LOCAL-TCP"] == {"3001"}
    assert chain(plan, "KUBE-LOAD-BALANCER", "nat") == [("RETURN", "KUBE-LOAD-BALANCER-LOCAL"), ("KUBE-MARK-MASQ", "")]


def test_local_policy_without_local_endpoints_falls_back_to_cluster_ones():
    """Upstream PR #97081: IPVS keeps the cluster endpoints (external replies are then lost)."""
    s = svc(node_port=3001, external_policy_local=True, service_type="NodePort")
    plan = R.build_plan(state((s, [ep("10.180.1.1")])))
    assert servers(plan)["100.101.102.103:3001/TCP"] == ["10.180.1.1:80"]


def test_internal_local_policy_without_local_endpoints_has_no_real_servers():
    plan = R.build_plan(state((svc(internal_policy_local=True), [ep("10.180.1.1")])))
    assert servers(plan) == {"10.20.30.41:80/TCP": []}


def test_hairpin_set_holds_local_endpoints_only():
    plan = R.build_plan(state((svc(), [ep("10.180.0.1", 8080, local=True), ep("10.180.1.1", 8080)])))
    assert plan.ipsets["KUBE-LOOP-BACK"] == {"10.180.0.1,tcp:8080,10.180.0.1"}
    assert "-A KUBE-POSTROUTING" in plan.iptables and "KUBE-LOOP-BACK dst,dst,src -j MASQUERADE" in plan.iptables


def test_affinity_is_persistence_with_the_service_timeout():
    plan = R.build_plan(state((svc(session_affinity_seconds=600), [ep("10.180.0.1")])))
    (sp,) = plan.servers
    assert sp.vs.flags == R.FLAG_PERSISTENT and sp.vs.timeout == 600
    assert "-A -t 10.20.30.41:80 -s rr -p 600" in R.render_text(state(), plan)


@pytest.mark.parametrize("scheduler", ["rr", "lc", "wrr", "wlc", "sh", "dh", "sed", "nq"])
def test_scheduler_is_selectable(scheduler):
    text = IpvsProxier.preview(state((svc(), [ep("10.180.0.1")])), scheduler=scheduler)
    assert f"-A -t 10.20.30.41:80 -s {scheduler}\n" in text


def test_mh_sets_the_mh_port_flag():
    plan = R.build_plan(state((svc(), [])), scheduler="mh")
    assert plan.servers[0].vs.flags & R.FLAG_SOURCE_HASH
    assert "-s mh -b mh-port" in R.render_text(state(), plan)


def test_unknown_scheduler_is_one_clear_error():
    with pytest.raises(KplabError, match="unknown IPVS scheduler 'fastest'"):
        IpvsProxier.preview(state(), scheduler="fastest")


def test_headless_services_are_skipped():
    plan = R.build_plan(state((svc(ip="None"), [ep("10.180.0.1")])))
    assert plan.servers == [] and plan.bind_addrs == []


def test_ipvs_ips_set_is_the_bound_addresses():
    s = svc(external_ips=("100.101.102.103", "5.6.7.8"))  # the first is the node's own address
    plan = R.build_plan(state((s, [])))
    assert plan.bind_addrs == ["5.6.7.8", "10.20.30.41"]
    assert plan.ipsets["KUBE-IPVS-IPS"] == {"5.6.7.8", "10.20.30.41"}


def test_ipset_restore_sends_only_the_differences():
    current = {"KUBE-CLUSTER-IP": {"10.96.0.1,tcp:443", "10.96.0.9,tcp:80"}}
    wanted = {"KUBE-CLUSTER-IP": {"10.96.0.1,tcp:443", "10.96.0.10,tcp:80"}}
    lines = [x for x in R.ipset_restore(current, wanted).splitlines() if not x.startswith("create")]
    assert lines == ["del KUBE-CLUSTER-IP 10.96.0.9,tcp:80 -exist", "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80 -exist"]


def test_parse_ipset_save_keeps_only_our_sets():
    text = ("create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12\n"
            "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80\ncreate OTHER hash:ip\nadd OTHER 1.2.3.4\n"
            "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n")
    assert R.parse_ipset_save(text) == {"KUBE-CLUSTER-IP": {"10.96.0.10,tcp:80"}, "KUBE-NODE-PORT-TCP": set()}


def test_render_shows_all_four_layers_and_the_jumps():
    text = IpvsProxier.preview(state((svc(node_port=3001), [ep("10.180.0.1")])))
    for part in ("ip addr add 10.20.30.41/32 dev kube-ipvs0", "-a -t 10.20.30.41:80 -r 10.180.0.1:80 -m -w 1",
                 "create KUBE-CLUSTER-IP hash:ip,port", "add KUBE-NODE-PORT-TCP 3001", "*nat", "*filter",
                 '-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
                 "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"):
        assert part in text, part


def test_fingerprint_changes_with_real_servers_only():
    a = R.ServerPlan(R.VirtualServer("10.0.0.1", 80, "TCP"), [R.RealServer("10.1.0.1", 80)], "x", "cluster-ip")
    b = R.ServerPlan(R.VirtualServer("10.0.0.1", 80, "TCP"), [R.RealServer("10.1.0.1", 80)], "y", "node-port")
    c = R.ServerPlan(R.VirtualServer("10.0.0.1", 80, "TCP"), [R.RealServer("10.1.0.2", 80)], "x", "cluster-ip")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_sysctls_follow_the_kernel_version():
    assert sysctls("6.1.0-56-amd64")["net.ipv4.vs.conntrack"] == "1"
    assert "net.ipv4.vs.conn_reuse_mode" not in sysctls("6.1.0")  # fixed in 5.9 (issue #93297)
    assert sysctls("5.4.0")["net.ipv4.vs.conn_reuse_mode"] == "0"
