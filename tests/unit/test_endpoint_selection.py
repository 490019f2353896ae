"""Endpoint selection as upstream kube-proxy does it (no root).

Cases ported (structure and facts, not code) from kubernetes/kubernetes pkg/proxy:
topology_test.go TestCategorizeEndpoints, endpointslicecache_test.go TestEndpointsMapFromESC /
TestEndpointInfoByServicePort, and newBaseServiceInfo's reading of a Service (serviceport.go).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client import ApiClient

from kplab.errors import KplabError
from kplab.proxy.core import (
    Endpoint,
    ServicePort,
    ServicePortName,
    build_state,
    categorize_endpoints,
    resolve_nodeport_addresses,
    service_ports,
)

NODE, ZONE = "test-node", "zone-a"
_API = ApiClient()


def model(doc: dict[str, Any]) -> Any:
    kind = {"Service": "V1Service", "EndpointSlice": "V1EndpointSlice"}[doc["kind"]]
    return _API.deserialize(json.dumps(doc), kind, "application/json")


# --- EndpointSliceCache -------------------------------------------------------------------------

def gen_slice(service: str, ns: str, num: int, offset: int, n: int, unready_mod: int = 999,
              terminating_mod: int = 999, hosts: tuple[str, ...] = (), ports: tuple[int | None, ...] = (80,)):
    """upstream's generateEndpointSliceWithOffset: endpoint i (1..n) is 10.0.<offset>.<i>, unready when
    i % unready_mod == 0, terminating (still serving) when i % terminating_mod == 0, on hosts[i % len]."""
    eps = []
    for i in range(1, n + 1):
        serving, terminating = i % unready_mod != 0, i % terminating_mod == 0
        ep: dict[str, Any] = {"addresses": [f"10.0.{offset}.{i}"], "conditions": {
            "ready": serving and not terminating, "serving": serving, "terminating": terminating}}
        if hosts:
            ep["nodeName"] = hosts[i % len(hosts)]
        eps.append(ep)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-{num}", "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": f"port-{i}", "port": p, "protocol": "TCP"} for i, p in enumerate(ports)]}


def service(ns: str = "ns1", name: str = "svc1", ports: tuple[str, ...] = ("port-0",), **spec: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": "172.30.0.41", "ports": [{"name": p, "port": 80 + i, "protocol": "TCP"}
                                                           for i, p in enumerate(ports)], **spec}}


def endpoints_of(slices: list[dict], svc: dict | None = None, node: str = "host1") -> dict[str, list[tuple]]:
    state = build_state([model(svc or service(ports=("port-0", "port-1")))], [model(s) for s in slices],
                        node_name=node)
    return {k.port: [(e.address, e.is_local, e.ready, e.serving, e.terminating) for e in v]
            for k, v in state.endpoints.items() if v}


def test_one_slice_two_hosts_two_ports():
    got = endpoints_of([gen_slice("svc1", "ns1", 1, 1, 3, hosts=("host1", "host2"), ports=(80, 443))])
    assert got == {
        "port-0": [("10.0.1.1:80", False, True, True, False), ("10.0.1.2:80", True, True, True, False),
                   ("10.0.1.3:80", False, True, True, False)],
        "port-1": [("10.0.1.1:443", False, True, True, False), ("10.0.1.2:443", True, True, True, False),
                   ("10.0.1.3:443", False, True, True, False)],
    }


def test_two_slices_same_port_are_merged_and_sorted_as_strings():
    got = endpoints_of([gen_slice("svc1", "ns1", 1, 1, 10, unready_mod=3, terminating_mod=5),
                        gen_slice("svc1", "ns1", 2, 2, 2)])
    # "10.0.1.10:80" < "10.0.1.1:80" as strings ('0' < ':'): upstream's byEndpoint order
    assert [a for a, *_ in got["port-0"]] == [
        "10.0.1.10:80", "10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80", "10.0.1.5:80",
        "10.0.1.6:80", "10.0.1.7:80", "10.0.1.8:80", "10.0.1.9:80", "10.0.2.1:80", "10.0.2.2:80"]
    conditions = {a: c for a, *c in got["port-0"]}
    assert conditions["10.0.1.10:80"] == [False, False, True, True]  # terminating, still serving
    assert conditions["10.0.1.6:80"] == [False, False, False, False]  # unready, not serving
    assert conditions["10.0.1.3:80"] == [False, False, False, False]


def test_other_services_and_namespaces_are_not_mixed_in():
    got = endpoints_of([gen_slice("svc1", "ns1", 1, 1, 3), gen_slice("svc2", "ns1", 2, 2, 3),
                        gen_slice("svc1", "ns2", 3, 3, 3)])
    assert [a for a, *_ in got["port-0"]] == ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]


def test_nil_port_or_nil_port_name_gives_no_endpoints():
    assert endpoints_of([gen_slice("svc1", "ns1", 1, 1, 3, ports=(None,))]) == {}
    unnamed = gen_slice("svc1", "ns1", 1, 1, 3)
    del unnamed["ports"][0]["name"]  # upstream: "Ignoring port with nil name"
    assert endpoints_of([unnamed], service(ports=("",))) == {}
    named_empty = gen_slice("svc1", "ns1", 1, 1, 1)
    named_empty["ports"][0]["name"] = ""  # what the EndpointSlice controller writes for an unnamed port
    assert endpoints_of([named_empty], service(ports=("",))) == {"": [("10.0.1.1:80", False, True, True, False)]}


def test_same_ip_on_different_ports_is_two_endpoints():
    got = endpoints_of([gen_slice("svc1", "ns1", 1, 1, 2, hosts=("host1", "host2"), ports=(80,)),
                        gen_slice("svc1", "ns1", 2, 1, 2, hosts=("host1", "host2"), ports=(8080,))])
    assert [(a, local) for a, local, *_ in got["port-0"]] == [
        ("10.0.1.1:80", False), ("10.0.1.1:8080", False), ("10.0.1.2:80", True), ("10.0.1.2:8080", True)]


@pytest.mark.parametrize("order", [("old", "new"), ("new", "old")])
def test_duplicate_address_the_non_terminating_endpoint_wins(order):
    """A pod network that reuses a terminating pod's IP: the running pod's endpoint is the one kept."""
    def one(name: str, terminating: bool, node: str) -> dict:
        return {**gen_slice("svc1", "ns1", 0, 1, 0), "metadata": {
            "name": name, "namespace": "ns1", "labels": {"kubernetes.io/service-name": "svc1"}},
            "endpoints": [{"addresses": ["10.0.1.1"], "nodeName": node, "conditions": {
                "ready": not terminating, "serving": True, "terminating": terminating}}]}
    slices = {"old": one("svc1-old", True, "host2"), "new": one("svc1-new", False, "host1")}
    got = endpoints_of([slices[o] for o in order])
    assert got["port-0"] == [("10.0.1.1:80", True, True, True, False)]


def test_only_the_first_address_and_unset_conditions():
    s = gen_slice("svc1", "ns1", 1, 1, 0)
    s["endpoints"] = [{"addresses": ["10.0.1.1", "10.0.1.99"]},  # no conditions at all
                      {"addresses": ["10.0.1.2"], "conditions": {"ready": False}},  # serving unset
                      {"addresses": ["10.0.001.003"], "conditions": {"terminating": True, "ready": False}}]
    got = endpoints_of([s])
    assert got["port-0"] == [("10.0.1.1:80", False, True, True, False),
                             ("10.0.1.2:80", False, False, True, False),  # unset serving counts as serving
                             ("10.0.1.3:80", False, False, True, True)]


# --- newBaseServiceInfo -------------------------------------------------------------------------

def test_service_reading_as_upstream():
    svc = service(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=30000,
                  clusterIP="172.30.0.041", externalIPs=["192.168.099.022", "2001:db8::1", "bogus"],
                  loadBalancerSourceRanges=[" 203.0.113.0/25", "203.0.113.000/025", "2001:db8::/32", "nope"])
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"ip": "5.6.7.8", "ipMode": "VIP"},
                                                  {"ip": "9.10.11.12", "ipMode": "Proxy"}, {"hostname": "lb.x"}]}}
    (sp,) = service_ports(model(svc))
    assert sp.cluster_ip == "172.30.0.41"
    assert sp.external_ips == ("192.168.99.22",)
    assert sp.load_balancer_ips == ("1.2.3.4", "5.6.7.8"), "ipMode: Proxy gets no VIP rules"
    assert sp.load_balancer_source_ranges == ("203.0.113.0/25", "203.0.113.0/25")
    assert sp.health_check_node_port == 30000 and sp.external_policy_local


def test_nodeport_addresses_primary():
    assert resolve_nodeport_addresses(["primary"], ("172.18.0.11", "10.0.0.1")) == ("172.18.0.11/32",)
    assert resolve_nodeport_addresses(["primary"], ("127.0.0.1",)) == (), "a loopback node IP: every address"
    assert resolve_nodeport_addresses([" 10.0.0.0/8 ", ""], ("172.18.0.11",)) == ("10.0.0.0/8",)
    assert resolve_nodeport_addresses([], ("172.18.0.11",)) == ()
    with pytest.raises(KplabError, match="'primary' stands alone"):
        resolve_nodeport_addresses(["primary", "10.0.0.0/8"], ("172.18.0.11",))
    state = build_state([], [], node_ips=("172.18.0.12",), nodeport_addresses=("primary",))
    assert state.nodeport_addresses == ("172.18.0.12/32",)


# --- CategorizeEndpoints ------------------------------------------------------------------------

def tep(address: str, zones: tuple[str, ...] = (), nodes: tuple[str, ...] = (), ready: bool = True,
        serving: bool = False, terminating: bool = False, local: bool = False, zone: str = ZONE) -> Endpoint:
    """An endpoint as upstream's tests write BaseEndpointInfo (serving defaults to false there),
    with the hint checks build_state() does for node NODE in `zone`."""
    ip, _, port = address.rpartition(":")
    return Endpoint(ip, int(port), is_local=local, ready=ready, serving=serving, terminating=terminating,
                    zone_hints=zones, node_hints=nodes, hinted_for_zone=bool(zone) and zone in zones,
                    hinted_for_node=NODE in nodes)


def svc(**kw: Any) -> ServicePort:
    return ServicePort(name=ServicePortName("ns", "s", "p"), cluster_ip="10.96.0.1", port=80, **kw)


A, B, C = ("zone-a",), ("zone-b",), ("zone-c",)
ETP = {"external_policy_local": True, "node_port": 8080}
ITP = {"internal_policy_local": True}
ZONED = [tep("10.1.2.3:80", A), tep("10.1.2.4:80", B), tep("10.1.2.5:80", C), tep("10.1.2.6:80", A)]
ALL4 = {"10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"}
NONE = None  # the service never uses this kind of endpoints

CASES: list[tuple[str, ServicePort, list[Endpoint], set | None, set | None, set | None]] = [
    # name, service, endpoints, cluster, local, all (None: same as the only non-None list)
    ("topology used: all hinted, node has a zone, endpoints for it", svc(), ZONED,
     {"10.1.2.3:80", "10.1.2.6:80"}, NONE, None),
    ("eTP Local: topology ignored for Local endpoints", svc(**ETP),
     [tep("10.1.2.3:80", A, local=True), tep("10.1.2.4:80", B, local=True), tep("10.1.2.5:80", C),
      tep("10.1.2.6:80", A)],
     {"10.1.2.3:80", "10.1.2.6:80"}, {"10.1.2.3:80", "10.1.2.4:80"}, {"10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"}),
    ("iTP Local: topology ignored for Local endpoints", svc(**ITP, node_port=8080),
     [tep("10.1.2.3:80", A, local=True), tep("10.1.2.4:80", B, local=True), tep("10.1.2.5:80", C),
      tep("10.1.2.6:80", A)],
     {"10.1.2.3:80", "10.1.2.6:80"}, {"10.1.2.3:80", "10.1.2.4:80"}, {"10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"}),
    ("empty zone label", svc(), [tep("10.1.2.3:80", A, zone="")], {"10.1.2.3:80"}, NONE, None),
    ("node in another zone: no filtering", svc(), [tep("10.1.2.3:80", A, zone="zone-b")],
     {"10.1.2.3:80"}, NONE, None),
    ("unready endpoint", svc(), ZONED[:3] + [tep("10.1.2.6:80", A, ready=False)], {"10.1.2.3:80"}, NONE, None),
    ("only unready endpoints in our zone: no filtering", svc(),
     [tep("10.1.2.3:80", A, ready=False), ZONED[1], ZONED[2], tep("10.1.2.6:80", A, ready=False)],
     {"10.1.2.4:80", "10.1.2.5:80"}, NONE, None),
    ("a missing hint: no filtering", svc(), [ZONED[0], ZONED[1], tep("10.1.2.5:80"), ZONED[3]], ALL4, NONE, None),
    ("several hints per endpoint", svc(),
     [tep("10.1.2.3:80", ("zone-a", "zone-b", "zone-c"), zone="zone-c"),
      tep("10.1.2.4:80", ("zone-b", "zone-c"), zone="zone-c"), tep("10.1.2.5:80", ("zone-b", "zone-d"), zone="zone-c"),
      tep("10.1.2.6:80", C, zone="zone-c")],
     {"10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"}, NONE, None),
    ("conflicting topology and localness: all merged", svc(**ETP),
     [tep("10.0.0.0:80", A, local=True), tep("10.0.0.1:80", B, local=True), tep("10.0.0.2:80", A),
      tep("10.0.0.3:80", B)],
     {"10.0.0.0:80", "10.0.0.2:80"}, {"10.0.0.0:80", "10.0.0.1:80"}, {"10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"}),
    ("iTP Local, no endpoints", svc(**ITP), [], NONE, set(), None),
    ("iTP Local, all remote", svc(**ITP), [tep("10.0.0.0:80"), tep("10.0.0.1:80")], NONE, set(), None),
    ("iTP Local, all local", svc(**ITP), [tep("10.0.0.0:80", local=True), tep("10.0.0.1:80", local=True)],
     NONE, {"10.0.0.0:80", "10.0.0.1:80"}, None),
    ("iTP Local, some local", svc(**ITP), [tep("10.0.0.0:80", local=True), tep("10.0.0.1:80")],
     NONE, {"10.0.0.0:80"}, None),
    ("Cluster, none ready", svc(), [tep("10.0.0.0:80", ready=False), tep("10.0.0.1:80", ready=False)],
     set(), NONE, None),
    ("Cluster, some ready", svc(), [tep("10.0.0.0:80", ready=False), tep("10.0.0.1:80")], {"10.0.0.1:80"}, NONE, None),
    ("Cluster, all terminating", svc(),
     [tep("10.0.0.0:80", ready=False, serving=True, terminating=True, local=True),
      tep("10.0.0.1:80", ready=False, serving=True, terminating=True)],
     {"10.0.0.0:80", "10.0.0.1:80"}, NONE, None),
    ("iTP Local, eTP Cluster, some local", svc(**ITP, node_port=8080),
     [tep("10.0.0.0:80", local=True), tep("10.0.0.1:80")],
     {"10.0.0.0:80", "10.0.0.1:80"}, {"10.0.0.0:80"}, {"10.0.0.0:80", "10.0.0.1:80"}),
    ("iTP Cluster, eTP Local, some local", svc(**ETP), [tep("10.0.0.0:80", local=True), tep("10.0.0.1:80")],
     {"10.0.0.0:80", "10.0.0.1:80"}, {"10.0.0.0:80"}, {"10.0.0.0:80", "10.0.0.1:80"}),
    ("iTP Local, eTP Local, all remote", svc(**ITP, **ETP), [tep("10.0.0.0:80"), tep("10.0.0.1:80")],
     {"10.0.0.0:80", "10.0.0.1:80"}, set(), {"10.0.0.0:80", "10.0.0.1:80"}),
    ("iTP Local, eTP Local, all remote and terminating", svc(**ITP, **ETP),
     [tep("10.0.0.0:80", ready=False, serving=True, terminating=True),
      tep("10.0.0.1:80", ready=False, serving=True, terminating=True)],
     {"10.0.0.0:80", "10.0.0.1:80"}, set(), {"10.0.0.0:80", "10.0.0.1:80"}),
    ("iTP Cluster, eTP Local, with terminating endpoints", svc(**ETP),
     [tep("10.0.0.0:80"), tep("10.0.0.1:80", ready=False, local=True),
      tep("10.0.0.2:80", ready=False, serving=True, terminating=True, local=True),
      tep("10.0.0.3:80", ready=False, serving=True, terminating=True)],
     {"10.0.0.0:80"}, {"10.0.0.2:80"}, {"10.0.0.0:80", "10.0.0.2:80"}),
    ("eTP ignored when not externally accessible", svc(external_policy_local=True),
     [tep("10.0.0.0:80"), tep("10.0.0.1:80", local=True)], {"10.0.0.0:80", "10.0.0.1:80"}, NONE, None),
    ("no cluster endpoints for an iTP Local internal-only service", svc(**ITP),
     [tep("10.0.0.0:80"), tep("10.0.0.1:80", local=True)], NONE, {"10.0.0.1:80"}, None),
    # PreferSameNode (GA in 1.35): node hints win over zone hints when every ready endpoint has one
    ("PreferSameNode: our node's endpoints only", svc(),
     [tep("10.0.0.0:80", A, (NODE,), local=True), tep("10.0.0.1:80", A, ("other",)), tep("10.0.0.2:80", B, ("x",))],
     {"10.0.0.0:80"}, NONE, None),
    ("PreferSameNode without a hint for our node falls back to the zone", svc(),
     [tep("10.0.0.1:80", A, ("other",)), tep("10.0.0.2:80", B, ("x",))], {"10.0.0.1:80"}, NONE, None),
    ("PreferSameNode with a ready endpoint lacking a node hint: zone hints", svc(),
     [tep("10.0.0.0:80", A, (NODE,)), tep("10.0.0.1:80", A), tep("10.0.0.2:80", B, ("x",))],
     {"10.0.0.0:80", "10.0.0.1:80"}, NONE, None),
    ("PreferSameNode and eTP Local merge the lists", svc(**ETP),
     [tep("10.0.0.0:80", A, ("other",), local=False), tep("10.0.0.1:80", A, (NODE,), local=False),
      tep("10.0.0.2:80", B, ("x",), local=True)],
     {"10.0.0.1:80"}, {"10.0.0.2:80"}, {"10.0.0.1:80", "10.0.0.2:80"}),
]


@pytest.mark.parametrize("name,sp,eps,cluster,local,reachable", CASES, ids=[c[0] for c in CASES])
def test_categorize_endpoints(name, sp, eps, cluster, local, reachable):
    c = categorize_endpoints(eps, sp)
    assert {e.address for e in c.cluster} == (cluster or set())
    assert {e.address for e in c.local} == (local or set())
    expected_all = reachable if reachable is not None else (cluster if local is None else local)
    assert {e.address for e in c.all_reachable} == expected_all
    assert [e.address for e in c.all_reachable] == sorted(e.address for e in c.all_reachable)
    if cluster is None:
        assert c.cluster == [], "a service that never uses Cluster endpoints has none"


def test_has_any_endpoints_when_only_remote_ones():
    assert categorize_endpoints([tep("10.0.0.0:80"), tep("10.0.0.1:80")], svc(**ITP)).has_any
    both = [tep("10.0.0.0:80", ready=False, serving=True, terminating=True)]
    assert categorize_endpoints(both, svc(**ITP, **ETP)).has_any


def test_hints_read_from_slices_for_this_node_and_zone():
    s = gen_slice("svc1", "ns1", 1, 1, 2, hosts=("n1", "n2"))
    for e, zone in zip(s["endpoints"], ("zone-b", "zone-a")):
        e["zone"] = zone
        e["hints"] = {"forZones": [{"name": zone}], "forNodes": [{"name": e["nodeName"]}]}
    for node, zone, expected in (("n1", "zone-b", ["10.0.1.2:80"]), ("n2", "zone-a", ["10.0.1.1:80"]),
                                 ("n3", "zone-a", ["10.0.1.2:80"]), ("n3", "", ["10.0.1.1:80", "10.0.1.2:80"])):
        state = build_state([model(service())], [model(s)], node_name=node, zone=zone)
        (key,) = state.services
        cat = categorize_endpoints(state.endpoints[key], state.services[key])
        assert [e.address for e in cat.cluster] == expected, (node, zone)
