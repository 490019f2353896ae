"""Seeing the packet on a real lab: scapy SYNs captured at the backend, conntrack tuples and
clearing, the kernel's own trace in every mode this machine runs, per-endpoint counters.

One lab (`pkt1`, iptables first, then switched to the other modes), real packets only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kplab.cluster.run import run
from kplab.formats.naming import iptables_chain

pytestmark = [pytest.mark.root]
LAB = "pkt1"


@pytest.fixture(scope="module")
def lab():
    from kplab import Lab, clean
    from kplab.packets.api import stop_all

    clean(lab=LAB)
    lab = Lab.up(LAB, mode="iptables", nodes=2)
    yield lab
    stop_all(lab)
    clean(lab=LAB)


def web_pods(lab) -> dict[str, str]:
    return {p.metadata.name: p.status.pod_ip for p in lab.pods() if p.metadata.name.startswith("web-")}


def assert_no_trace_leftovers(lab) -> None:
    for node in lab.nodes:
        tables = run(["nft", "list", "tables"], lab.netns(node)).stdout
        assert "kplab-trace" not in tables and "table ip raw" not in tables, tables
        assert "kplab-trace" not in run(["iptables-save"], lab.netns(node)).stdout
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        assert not (("xtables-monitor" in cmd or "nft monitor" in cmd) and f"kplab-{LAB}-" in cmd), cmd


def test_syn_to_clusterip_reaches_one_backend_as_pod_ip_and_comes_back_from_the_clusterip(lab):
    pods = web_pods(lab)
    vip = lab.service_ip("web")
    client = lab.packets("client").start()
    for name in pods:
        lab.packets(name).start()  # helpers up before the captures' clocks start
    syn_only = "tcp dst port 8080 and tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0"
    caps = {name: lab.capture(name, filter=syn_only, count=1, timeout=6) for name in pods}
    at_client = lab.capture("client", filter=f"tcp and src host {vip}", count=1, timeout=6)
    reply = client.syn("web:80")
    got = {name: cap.packets for name, cap in caps.items()}
    hit = [name for name, pkts in got.items() if pkts]
    assert len(hit) == 1, got  # exactly one backend was chosen
    syn = got[hit[0]][0]
    assert (syn["src"], syn["dst"], syn["dport"], syn["flags"]) == (
        lab.pod_ip("client"),
        pods[hit[0]],
        8080,
        "S",
    )
    assert syn["sport"] == reply.sent["sport"]
    # the SYN-ACK reaches the client from the ClusterIP: the node un-did the DNAT on the way back
    assert reply.answered and (reply.src, reply.sport, reply.flags) == (vip, 80, "SA")
    seen = at_client.packets
    assert seen and seen[0]["src"] == vip and seen[0]["flags"] == "SA"


def test_udp_and_icmp_with_scapy(lab):
    client = lab.packets("client")
    answer = client.udp("web:dns").json()
    assert answer["pod"] in web_pods(lab) and answer["client_ip"] == lab.pod_ip("client")
    pod = next(iter(web_pods(lab)))
    assert client.icmp(pod).icmp == "echo-reply"


def test_conntrack_shows_both_tuples_and_clearing_the_service_removes_them(lab):
    from kplab.inspect import conntrack

    vip = lab.service_ip("web")
    reply = lab.packets("client").udp("web:dns")
    backend = reply.json()
    node = lab.pod("client")["spec"]["nodeName"]
    entries = [
        e for e in lab.conntrack(node, "web") if e.proto == "udp" and e.original.sport == reply.sent["sport"]
    ]
    assert len(entries) == 1
    e = entries[0]
    assert (e.original.src, e.original.dst, e.original.dport) == (lab.pod_ip("client"), vip, 53)
    assert (e.reply.src, e.reply.sport) == (backend["pod_ip"], 8080) and e.dnat and not e.snat
    lab.curl("client", "web:80", n=3)
    assert any(x.proto == "tcp" for x in lab.conntrack(node, "web"))
    assert conntrack.clear(lab, "web") >= 4
    assert lab.conntrack(node, "web") == []


def _check_trace(lab, t, service_chain: str, endpoint_prefix: str) -> None:
    assert t.answer, t.error
    pods = web_pods(lab)
    assert t.backend in pods
    assert any(step.startswith(service_chain) and "(default/web:http)" in step for step in t.path), t.path
    endpoint = next(step for step in t.path if step.startswith(endpoint_prefix))
    assert pods[t.backend] in endpoint and t.backend in endpoint  # the chain named is the backend's
    assert t.nat == f"DNAT {pods[t.backend]}:8080" and t.consistent is True
    assert t.decided_on == lab.pod("client")["spec"]["nodeName"]
    assert_no_trace_leftovers(lab)


def test_trace_iptables_names_service_chain_endpoint_chain_and_the_backend_that_answered(lab):
    assert lab.mode == "iptables"
    svc = iptables_chain("KUBE-SVC-", "default/web:http", "tcp")
    for _ in range(2):
        t = lab.trace("client", "web:80")
        _check_trace(lab, t, svc, "KUBE-SEP-")
    assert t.path[0] == "KUBE-SERVICES"
    assert any(h.table == "filter" for h in t.hops)  # every table, not only nat
    assert "KUBE-SVC-" in t.text() and t.to_dict()["backend"] == t.backend


def test_trace_iptables_nodeport_from_outside_shows_the_masquerade(lab):
    t = lab.trace("outside", "node-2:web")
    assert t.answer and any(s.startswith("KUBE-NODEPORTS") for s in t.path) and t.consistent
    assert t.answer["client_ip"] != "172.18.0.100"  # externalTrafficPolicy Cluster: SNAT
    assert any(e.snat and e.dnat for e in t.conntrack)
    assert_no_trace_leftovers(lab)


def test_counters_match_curl(lab):
    with lab_counting(lab) as c:
        res = lab.curl("client", "web:http", n=30)
    assert res.ok == 30 and c.per_pod == res.backends and "iptables" in c.source


def lab_counting(lab):
    from kplab.inspect.counters import counting

    return counting(lab, "web", "http")


def test_trace_nftables(lab):
    lab.set_mode("nftables")
    t = lab.trace("client", "web:80")
    _check_trace(lab, t, "service-", "endpoint-")
    assert t.path[0] == "services"
    u = lab.trace("client", "web:dns")
    assert u.proto == "udp" and u.consistent and any("default/web/udp/dns" in s for s in u.path)
    with lab_counting(lab) as c:
        res = lab.curl("client", "web:http", n=30)
    assert c.per_pod == res.backends


def test_trace_of_a_rejected_packet_says_reject_as_the_client_saw(lab):
    """The kernel traces a reject statement with the verdict drop; the client saw 'refused'."""
    lab.set_mode("nftables")
    t = lab.trace("client", f"{lab.service_ip('web')}:81")  # a port the Service does not have
    assert not t.answer and "refused" in (t.error or "").lower(), t.error
    assert t.path[-1] == "REJECT in cluster-ips-check", t.path


def test_trace_userspace_names_the_proxy_hop(lab):
    from kplab.proxy.base import available_modes

    if "userspace" not in available_modes():
        pytest.skip("userspace mode not in this kplab")
    lab.set_mode("userspace")
    t = lab.trace("client", "web:80")
    assert t.answer and t.nat.startswith("REDIRECT")
    hop = t.path[-1]
    assert hop.startswith("proxy hop:") and f"{t.answer['pod_ip']}:8080" in hop
    assert t.consistent is True
    assert_no_trace_leftovers(lab)


def test_trace_ipvs_names_the_virtual_and_real_server(lab):
    from kplab.proxy.base import available_modes, proxier_class

    if "ipvs" not in available_modes() or not proxier_class("ipvs").doctor().available:
        pytest.skip("IPVS is not available on this kernel")
    lab.set_mode("ipvs")
    t = lab.trace("client", "web:80")
    vip = lab.service_ip("web")
    assert t.path[0] == f"IPVS virtual server {vip}:80"
    assert t.path[1] == f"real server {t.answer['pod_ip']}:8080" and t.consistent


def test_helpers_leave_with_the_lab(lab):
    from kplab.packets.api import Packets

    pk = Packets(lab, "client").start()
    pid = int(pk.pidfile.read_text())
    assert b"kplab.packets.helper" in Path(f"/proc/{pid}/cmdline").read_bytes(), "watch a helper that ran"
    pk.stop()
    time.sleep(0.2)
    cmdline = Path(f"/proc/{pid}/cmdline")
    assert not cmdline.exists() or b"kplab.packets.helper" not in cmdline.read_bytes()
