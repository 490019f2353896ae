"""The eBPF mode's pure parts: what the maps should hold, the ordered diff, the views."""

from __future__ import annotations

import os

from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName
from kplab.proxy.ebpf import model as M
from kplab.proxy.ebpf import render_text
from kplab.proxy.ebpf.maps import batch, diff, parse_dump
from kplab.proxy.ebpf.view import decisions, lb_list, parse_lb_list

WEB = ServicePortName("default", "web", "http")


def state(svc: ServicePort, eps: list[Endpoint], node_ips=("172.18.0.11",)) -> ProxyState:
    return ProxyState(node_ips=node_ips, services={svc.name: svc}, endpoints={svc.name: eps})


def eps3(**kw) -> list[Endpoint]:
    return [Endpoint("10.244.1.2", 8080, "node-1", is_local=True, pod_name="web-a"),
            Endpoint("10.244.2.2", 8080, "node-2", pod_name="web-b"),
            Endpoint("10.244.2.3", 8080, "node-2", pod_name="web-c", **kw)]


def rows(st: ProxyState):
    c, _ = M.render(st)
    return lb_list(c.maps["lb4_services"], c.maps["lb4_backends"], c.services, c.pods).rows


def test_clusterip_has_a_frontend_slot_and_one_slot_per_backend():
    c, ids = M.render(state(ServicePort(WEB, "10.96.0.10", 80), eps3()))
    svcs = c.maps["lb4_services"]
    master = svcs[M.service_key(M.Frontend("10.96.0.10", 80, 6))]
    assert int.from_bytes(master[4:6], "little") == 3  # count
    assert master[8] == 0  # ClusterIP: no flags, so not routable from outside
    assert len(svcs) == 4 and len(c.maps["lb4_backends"]) == 3
    slot1 = svcs[M.service_key(M.Frontend("10.96.0.10", 80, 6), 1)]
    be = c.maps["lb4_backends"][slot1[:4]]
    assert be == bytes([10, 244, 1, 2]) + (8080).to_bytes(2, "big") + bytes([6, M.BE_LOCAL])
    assert c.maps["lb4_reverse_nat"][(1).to_bytes(2, "little")] == bytes([10, 96, 0, 10, 0, 80, 0, 0])
    assert ids.frontends == {"10.96.0.10:80/TCP": 1}


def test_headless_and_no_endpoints():
    c, _ = M.render(state(ServicePort(WEB, "None", 80), eps3()))
    assert c.maps["lb4_services"] == {}
    c, _ = M.render(state(ServicePort(WEB, "10.96.0.10", 80), []))
    (only,) = c.maps["lb4_services"].values()
    assert int.from_bytes(only[4:6], "little") == 0  # count 0: connect() refused, packets dropped


def test_nodeport_on_node_ips_with_local_policy_writes_two_scopes():
    svc = ServicePort(WEB, "10.96.0.10", 80, node_port=30080, external_policy_local=True, service_type="NodePort")
    r = rows(state(svc, eps3()))
    text = [(x.frontend, x.slot, x.backend, x.flags) for x in r]
    assert ("172.18.0.11:30080/TCP", 0, "0.0.0.0:0", "NodePort, Local, two-scopes") in text
    ext = [x.backend for x in r if x.frontend == "172.18.0.11:30080/TCP" and x.slot]
    internal = [x.backend for x in r if x.frontend == "172.18.0.11:30080/TCP/i" and x.slot]
    assert ext == ["10.244.1.2:8080/TCP"], "outside clients only get this node's endpoints"
    assert len(internal) == 3, "in-cluster clients still reach every endpoint"


def test_nodeport_addresses_filter_node_ips():
    svc = ServicePort(WEB, "10.96.0.10", 80, node_port=30080, service_type="NodePort")
    st = state(svc, eps3(), node_ips=("172.18.0.11", "192.168.9.9"))
    st.nodeport_addresses = ("172.18.0.0/24",)
    assert {x.frontend for x in rows(st)} == {"10.96.0.10:80/TCP", "172.18.0.11:30080/TCP"}


def test_terminating_endpoints_get_no_slot_while_ready_ones_exist():
    r = rows(state(ServicePort(WEB, "10.96.0.10", 80), eps3(ready=False, serving=True, terminating=True)))
    assert [x.backend for x in r if x.slot] == ["10.244.1.2:8080/TCP", "10.244.2.2:8080/TCP"]
    only_terminating = [Endpoint("10.244.2.3", 8080, ready=False, serving=True, terminating=True)]
    r = rows(state(ServicePort(WEB, "10.96.0.10", 80), only_terminating))
    assert [x.backend for x in r if x.slot] == ["10.244.2.3:8080/TCP"], "KEP-1669: terminating ones as a last resort"


def test_affinity_timeout_in_slot_zero_and_match_entries():
    c, _ = M.render(state(ServicePort(WEB, "10.96.0.10", 80, session_affinity_seconds=600), eps3()))
    master = c.maps["lb4_services"][M.service_key(M.Frontend("10.96.0.10", 80, 6))]
    assert int.from_bytes(master[:4], "little") == 600 and master[8] & M.AFFINITY
    assert len(c.maps["lb_aff_match"]) == 3


def test_load_balancer_source_ranges():
    svc = ServicePort(WEB, "10.96.0.10", 80, node_port=30080, load_balancer_ips=("172.18.255.1",),
                      load_balancer_source_ranges=("172.18.0.100/32",), service_type="LoadBalancer")
    c, ids = M.render(state(svc, eps3()))
    rev = ids.frontends["172.18.255.1:80/TCP"]
    assert list(c.maps["lb4_src_range"]) == [
        (64).to_bytes(4, "little") + rev.to_bytes(2, "little") + b"\0\0" + bytes([172, 18, 0, 100])]
    assert "LoadBalancer, check source-range" in render_text(state(svc, eps3()))


def test_ids_are_stable_and_freed():
    st = state(ServicePort(WEB, "10.96.0.10", 80), eps3())
    _, ids = M.render(st)
    st.endpoints[WEB] = eps3()[1:]
    _, ids2 = M.render(st, ids)
    assert ids2.backends == {k: v for k, v in ids.backends.items() if not k.startswith("10.244.1.2")}
    st.endpoints[WEB] = eps3()
    _, ids3 = M.render(st, ids2)
    assert ids3.backends["10.244.1.2:8080/TCP"] == 4, "a new backend gets a new id, never a reused live one"


def test_diff_writes_backends_first_and_frontends_last_deletes_in_reverse():
    st = state(ServicePort(WEB, "10.96.0.10", 80), eps3())
    c, ids = M.render(st)
    ops = diff({}, c.maps)
    kinds = [(o.map, o.key[6:8] == b"\0\0" if o.map == "lb4_services" else None) for o in ops]
    assert kinds[0][0] == "lb4_backends" and kinds[-1] == ("lb4_services", True)
    assert diff(c.maps, c.maps) == []
    st.endpoints[WEB] = eps3()[:1]
    c2, _ = M.render(st, ids)
    ops = diff(c.maps, c2.maps)
    assert [(o.verb, o.map) for o in ops] == [
        ("update", "lb4_services"),  # the frontend's count drops to 1 first
        ("delete", "lb4_services"), ("delete", "lb4_services"),  # then slots 2 and 3
        ("delete", "lb4_backends"), ("delete", "lb4_backends"),  # then the backends nothing points to
    ]


def test_batch_lines_are_bpftool_commands():
    c, _ = M.render(state(ServicePort(WEB, "10.96.0.10", 80), eps3()[:1]))
    text = batch(diff({}, c.maps), "/run/kplab/x/bpffs/node-1/maps")
    first = text.splitlines()[0]
    assert first == ("map update pinned /run/kplab/x/bpffs/node-1/maps/lb4_backends key hex 01 00 00 00 "
                     "value hex 0a f4 01 02 1f 90 06 01")
    deleted = batch(diff(c.maps, {}), "/m")
    assert all(line.startswith("map delete pinned /m/") and "value" not in line for line in deleted.splitlines())


def test_parse_dump_reads_bpftool_json_with_and_without_btf():
    dump = [{"key": ["0x01", "0x00", "0x00", "0x00"], "value": ["0x0a", "0xf4"], "formatted": {"key": 1}},
            {"key": ["0x02", "0x00", "0x00", "0x00"], "value": ["0xff", "0x00"]}]
    assert parse_dump(dump) == {b"\1\0\0\0": b"\x0a\xf4", b"\2\0\0\0": b"\xff\0"}


def test_lb_list_round_trips_and_reads_cilium():
    svc = ServicePort(WEB, "10.96.0.10", 80, session_affinity_seconds=10)
    text = render_text(state(svc, eps3()))
    assert text.splitlines()[0].startswith("SERVICE ADDRESS")
    assert "10.96.0.10:80/TCP (0)" in text and "[ClusterIP, sessionAffinity, non-routable]" in text
    (parsed,) = parse_lb_list(text)
    assert parsed["flags"] == ["ClusterIP", "sessionAffinity", "non-routable"]
    assert parsed["backends"] == ["10.244.1.2:8080/TCP", "10.244.2.2:8080/TCP", "10.244.2.3:8080/TCP"]
    cilium = """SERVICE ADDRESS           BACKEND ADDRESS (REVNAT_ID) (SLOT)
10.96.0.10:53/UDP (0)     0.0.0.0:0 (3) (0) [ClusterIP, non-routable]
10.96.0.10:53/UDP (1)     10.244.0.104:53/UDP (3) (1)
"""
    assert parse_lb_list(cilium) == [{"frontend": "10.96.0.10:53/UDP", "flags": ["ClusterIP", "non-routable"],
                                      "rev_nat": 3, "backends": ["10.244.0.104:53/UDP"]}]


def test_decisions_decode_the_log_ring():
    entry = ((5).to_bytes(8, "little") + (4).to_bytes(4, "little") + bytes([10, 244, 1, 2, 10, 96, 0, 10,
             10, 244, 2, 3]) + (40000).to_bytes(2, "big") + (80).to_bytes(2, "big") + (8080).to_bytes(2, "big")
             + bytes([6, 0]) + (2).to_bytes(2, "little") + (1).to_bytes(2, "little") + (7).to_bytes(4, "little")
             + (0).to_bytes(4, "little") + bytes(4))
    (d,) = decisions({b"\0\0\0\0": entry, b"\1\0\0\0": bytes(48)})
    assert (d.client, d.frontend, d.backend, d.slot, d.verdict) == (
        "10.244.1.2:40000", "10.96.0.10:80/TCP", "10.244.2.3:8080", 2, "translated")
    assert "from_pod" in d.hook


def test_ids_wrap_to_the_lowest_free_one():
    ids = M.Ids(frontends={"a": 1, "b": 3, "c": 65535}, next={"frontends": 65536})
    assert ids.frontend("d") == 2 and ids.frontend("e") == 4 and ids.frontend("a") == 1
    full = M.Ids(frontends={str(i): i for i in range(1, 65536)})
    try:
        full.frontend("x")
    except ValueError as e:
        assert "65535" in str(e)
    else:
        raise AssertionError("65536 frontends cannot have 16-bit rev-NAT ids")


CILIUM = """SERVICE ADDRESS               BACKEND ADDRESS (REVNAT_ID) (SLOT)
10.96.0.10:53/UDP (0)         0.0.0.0:0 (3) (0) [ClusterIP, non-routable]
10.96.0.10:53/UDP (1)         10.244.0.104:53/UDP (3) (1)
10.96.0.10:53/UDP (2)         10.244.0.105:53/UDP (3) (2)
10.96.44.5:80/TCP (0)         0.0.0.0:0 (7) (0) [ClusterIP, non-routable]
0.0.0.0:31000/TCP (0)         0.0.0.0:0 (8) (0) [NodePort, Local]
0.0.0.0:31000/TCP (1)         backend 12 not found (8) (1)
"""


def test_explain_reads_a_cilium_listing():
    from kplab.inspect.explain import detect, explain

    assert detect(CILIUM) == "ebpf"
    ex = explain(CILIUM)
    dns = next(s for s in ex.services if s.key == "10.96.0.10:53/UDP")
    assert [(e.address, round(e.share, 1)) for e in dns.endpoints] == [("10.244.0.104:53", 50.0),
                                                                        ("10.244.0.105:53", 50.0)]
    empty = next(s for s in ex.services if s.key == "10.96.44.5:80/TCP")
    assert "no backends" in empty.no_endpoints
    assert any("backend 12 not found" in a for a in ex.all_anomalies())
    assert "ebpf dump" in ex.text()


def test_explain_reads_kplab_rules_with_names():
    from kplab.inspect.explain import explain

    svc = ServicePort(WEB, "10.96.0.10", 80, node_port=30080, external_policy_local=True, service_type="NodePort")
    ex = explain(render_text(state(svc, eps3())))
    (web,) = ex.services
    assert web.name == "default/web:http" and web.name_from == "kplab's column"
    assert {e.kind for e in web.entries} == {"ClusterIP", "NodePort"}
    assert web.external_policy == "Local" and [e.pod for e in web.local_endpoints] == ["web-a"]
    assert len(web.endpoints) == 3


def test_doctor_names_what_is_missing_and_how_to_get_it(monkeypatch, tmp_path):
    import kplab.proxy.ebpf as E

    real = E.shutil.which
    monkeypatch.setattr(E.shutil, "which", lambda t: None if t == "bpftool" else real(t) or f"/usr/bin/{t}")
    a = E.EbpfProxier.doctor()
    assert not a.available and a.detail == "bpftool not found" and "apt-get install" in a.fix
    monkeypatch.setattr(E.shutil, "which", lambda t: f"/usr/bin/{t}")
    monkeypatch.setattr(E.kernel, "OBJECT", tmp_path / "kplab_lb.o")
    a = E.EbpfProxier.doctor()
    assert not a.available and "kplab_lb.o is missing" in a.detail and "make setup" in a.fix
    (tmp_path / "kplab_lb.o").write_bytes(b"old")
    os.utime(tmp_path / "kplab_lb.o", (1, 1))
    (tmp_path / "kplab_lb.c").write_text("// newer")
    a = E.EbpfProxier.doctor()
    assert not a.available and "older than kplab_lb.c" in a.detail and "make" in a.fix


def test_plan_is_pure_and_counts_frontends(tmp_path):
    from kplab.proxy.base import NodeContext
    from kplab.proxy.ebpf import EbpfProxier

    p = EbpfProxier(NodeContext("lab", "node-1", "kplab-lab-node-1", tmp_path))
    empty = {m: {} for m in M.MAPS}
    st = state(ServicePort(WEB, "10.96.0.10", 80, node_port=30080, service_type="NodePort"), eps3())
    plan = p.plan_maps(st, {"first": True, "full": True, "ids": {}, "maps": empty})
    assert plan.changed == 2, "two frontends (ClusterIP, NodePort), whatever their slots"
    assert plan.text.count("\n") == len(plan.ops) == 3 + 2 * 4 + 2  # backends, slots, rev-NAT
    again = p.plan_maps(st, {"first": False, "full": False, "ids": {"backends": plan.ids.backends,
                   "frontends": plan.ids.frontends}, "maps": plan.contents.maps})
    assert again.ops == [] and again.changed == 0 and again.text == ""
    assert list(tmp_path.iterdir()) == [], "planning writes nothing"



def test_an_unwritable_cgroup_is_one_line_with_the_way_out(monkeypatch, tmp_path):
    from pathlib import Path

    import pytest

    import kplab.proxy.ebpf.kernel as K
    from kplab.errors import EnvironmentProblem

    monkeypatch.setattr(K, "node_cgroup", lambda lab, node: Path("/proc/kplab-nope/node-1"))
    with pytest.raises(EnvironmentProblem, match="--no-socket-lb"):
        K.NodeKernel("x", "node-1", "kplab-x-node-1").attach_sockets()
