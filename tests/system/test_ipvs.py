"""IPVS mode in real kernel IPVS: what the kernel holds, and how its schedulers and draining behave.

The datapath matrix (test_datapath.py, ipvs parameter) covers ClusterIP/NodePort/hairpin/
affinity/policies; this module checks what only IPVS has: exact rr rotation, lc following
active connections, graceful termination (weight 0, open connection kept, then reaped),
and the kernel objects themselves.  Marked `ipvs`: runs in the throwaway VM on this machine.
"""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack

import pytest

from kplab import KplabError, Lab
from kplab.cluster.netns import entered, read_sysctl
from kplab.cluster.run import run
from kplab.course.held import ask_pod, reset
from kplab.proxy.tracker import MemoryStore
from kplab.testing.labs import lab_in_mode

pytestmark = [pytest.mark.root, pytest.mark.ipvs, pytest.mark.slow]

LAB = "ipvs1"


@pytest.fixture(scope="module")
def lab():
    with lab_in_mode("ipvs", LAB) as lab:
        yield lab


def web_pods(lab: Lab) -> list[str]:
    return sorted(p.metadata.name for p in lab.pods() if (p.metadata.labels or {}).get("app") == "web")


def hold(
    lab: Lab, stack: ExitStack, frm: str = "client", target: str = "web:http"
) -> tuple[socket.socket, str]:
    """Open a TCP connection from a pod and keep it: (socket, the pod that answered)."""
    ip, port, _ = lab.resolve(target)
    with entered(lab.netns(frm)):
        s = socket.create_connection((ip, port), timeout=5)
    stack.callback(s.close)
    return s, ask_pod(s)


def server(lab: Lab, node: str, address: str) -> dict:
    (vs,) = [v for v in lab.rules(node)["virtual_servers"] if v["address"] == address]
    return vs


def test_kernel_holds_what_upstream_programs(lab):
    ip = lab.service_ip("web")
    vs = server(lab, "node-1", f"{ip}:80")
    assert vs["scheduler"] == "rr" and vs["service"] == "default/web:http"
    assert {r["address"] for r in vs["reals"]} == {f"{lab.pod_ip(p)}:8080" for p in web_pods(lab)}
    assert {(r["fwd"], r["weight"]) for r in vs["reals"]} == {(0, 1)}  # masquerade, weight 1
    node_port = lab.node_port("web", "http")
    assert server(lab, "node-1", f"{lab.node_ip('node-1')}:{node_port}")["kind"] == "node-port"
    link = run(["ip", "-d", "-o", "link", "show", "kube-ipvs0"], lab.netns("node-1")).stdout
    assert " dummy " in link  # the VM's kernel has dummy interfaces
    assert f"{ip}/32" in run(["ip", "-o", "addr", "show", "kube-ipvs0"], lab.netns("node-1")).stdout
    rules = lab.rules("node-1")
    assert (
        f"{ip},tcp:80" in rules["ipsets"]["KUBE-CLUSTER-IP"]
        and f"{ip},udp:53" in rules["ipsets"]["KUBE-CLUSTER-IP"]
    )
    assert str(node_port) in rules["ipsets"]["KUBE-NODE-PORT-TCP"]
    assert ip in rules["ipsets"]["KUBE-IPVS-IPS"]
    for key in (
        "net.ipv4.vs.conntrack",
        "net.ipv4.vs.expire_nodest_conn",
        "net.ipv4.vs.expire_quiescent_template",
    ):
        assert read_sysctl(lab.netns("node-1"), key) == "1", key
    assert "# default/web:http (cluster-ip)" in rules["text"] and "Masq" in rules["text"]


def test_second_sync_with_nothing_changed_rewrites_no_virtual_server(lab):
    result = lab.sync()
    assert all(r.changed_services == 0 and not r.full for r in result.values()), result


def test_rr_gives_exact_rotation(lab):
    res = lab.curl("client", "web", n=12)
    assert res.failed == 0, res.errors
    order = [a["pod"] for a in res.answers]
    assert sorted(order[:3]) == web_pods(lab), order
    assert order == order[:3] * 4, f"rr must rotate exactly: {order}"


def settled(lab: Lab, address: str, at_least: int = 0) -> dict:
    """The virtual server once its counters stop moving: IPVS folds its per-CPU counters into what it
    reports every 2 s, so a read right after traffic can be behind (bounded: 30 s)."""
    deadline, last = time.monotonic() + 30, None
    while True:
        vs = server(lab, "node-1", address)
        if (last is not None and vs["conns"] == last["conns"] >= at_least) or time.monotonic() > deadline:
            return vs
        last = vs
        time.sleep(3)


def test_counters_follow_the_traffic(lab):
    address = f"{lab.service_ip('web')}:80"
    before = settled(lab, address)
    assert lab.curl("client", "web", n=6).ok == 6
    after = settled(lab, address, at_least=before["conns"] + 6)
    assert after["conns"] - before["conns"] == 6
    assert sum(r["conns"] for r in after["reals"]) - sum(r["conns"] for r in before["reals"]) == 6


def test_lc_sends_new_connections_to_the_least_loaded_backend(lab):
    lab.set_mode("ipvs", scheduler="lc")
    try:
        assert server(lab, "node-1", f"{lab.service_ip('web')}:80")["scheduler"] == "lc"
        with ExitStack() as stack:
            held = [hold(lab, stack) for _ in range(6)]
            by_pod: dict[str, list[socket.socket]] = {}
            for s, pod in held:
                by_pod.setdefault(pod, []).append(s)
            assert sorted(len(v) for v in by_pod.values()) == [2, 2, 2], by_pod  # lc spreads the active ones
            quiet = min(by_pod)
            for s in by_pod[quiet]:
                reset(s)  # that backend now has 0 active connections, the others 2 each
            fresh = [hold(lab, stack)[1] for _ in range(2)]
            assert fresh == [quiet, quiet], f"lc picked {fresh}, expected {quiet} (fewest active connections)"
    finally:
        lab.set_mode("ipvs", scheduler="rr")


def test_graceful_termination_keeps_open_connections_and_sends_new_ones_elsewhere(lab):
    with ExitStack() as stack:
        s, pod = hold(lab, stack)
        lab.set_ready(pod, False)  # its endpoint leaves the EndpointSlice
        stack.callback(lab.set_ready, pod, True)
        addr = f"{lab.pod_ip(pod)}:8080"
        vs = server(lab, "node-1", f"{lab.service_ip('web')}:80")
        (rs,) = [r for r in vs["reals"] if r["address"] == addr]
        assert rs["weight"] == 0 and rs["active"] == 1, rs
        assert f"{vs['key']}|{addr}" in lab.rules("node-1")["graceful"]
        assert ask_pod(s) == pod, "the open connection must keep working while its endpoint drains"
        res = lab.curl("client", "web", n=8)
        assert res.failed == 0 and pod not in res.backends, res.backends
        reset(s)
        proxier = lab.proxier("node-1")
        deadline = time.monotonic() + 40  # IPVS forgets a reset connection after 10 s
        while time.monotonic() < deadline and proxier.reap() == 0:
            time.sleep(2)
        vs = server(lab, "node-1", f"{lab.service_ip('web')}:80")
        assert addr not in {r["address"] for r in vs["reals"]}, "drained real server must be deleted"
        assert lab.rules("node-1")["graceful"] == []


def test_ready_again_restores_weight_one(lab):
    vs = server(lab, "node-1", f"{lab.service_ip('web')}:80")
    assert {r["weight"] for r in vs["reals"]} == {1} and len(vs["reals"]) == 3, vs["reals"]


def test_unknown_scheduler_is_one_clear_error(lab):
    before = lab.rules("node-1")["virtual_servers"]
    with pytest.raises(KplabError, match="unknown IPVS scheduler 'fastest': choose one of rr, wrr, lc"):
        lab.set_mode("ipvs", scheduler="fastest")
    lab.set_mode("ipvs", scheduler="rr")
    assert [v["key"] for v in lab.rules("node-1")["virtual_servers"]] == [v["key"] for v in before]


def test_cleanup_removes_every_trace(lab):
    ns = lab.netns("node-2")
    lab.proxier("node-2").cleanup()
    try:
        assert lab.rules("node-2")["virtual_servers"] == []
        assert "kube-ipvs0" not in run(["ip", "-o", "link"], ns).stdout
        assert "KUBE-" not in run(["iptables-save"], ns).stdout
        assert "KUBE-" not in run(["ipset", "list", "-n"], ns).stdout
        assert not MemoryStore(lab.proxier("node-2").ctx.state_dir).path.exists()
    finally:
        lab.sync()
    assert lab.curl("outside", "node-2:web:http", n=3).ok == 3


def test_adding_one_service_writes_and_reads_only_its_objects(tmp_path, monkeypatch):
    """The partial sync that adds one NodePort Service to 500 touches that Service's objects only: two
    virtual servers with two real servers each, four set members in one `ipset restore`, one address;
    no read-back (no dump of virtual servers, real servers or sets, no iptables-save).  Counted at
    the netlink and fork level, not timed: the bench's add-one at 10k took 75 s in the VM when every
    partial sync rebuilt and re-read everything (issue 16).  The kernel then holds what a full sync would."""
    from collections import Counter
    from pathlib import Path

    from pyroute2 import IPVS

    from kplab.bench.sync import add_service, netns_add, netns_del, synthetic_state
    from kplab.proxy.base import NodeContext
    from kplab.proxy.ipvs import kernel, proxier

    calls: Counter[str] = Counter()

    class CountingIPVS(IPVS):
        def service(self, command, *args, **kwargs):
            calls[f"service {command}"] += 1
            return super().service(command, *args, **kwargs)

        def dest(self, command, *args, **kwargs):
            calls[f"dest {command}"] += 1
            return super().dest(command, *args, **kwargs)

    class CountingXtables(proxier.Xtables):
        def dump(self):
            calls["iptables-save"] += 1
            return super().dump()

        def restore(self, text, *args, **kwargs):
            calls["iptables-restore"] += 1
            return super().restore(text, *args, **kwargs)

    def counting_run(argv, *args, **kwargs):
        calls[" ".join(argv[:2])] += 1
        return run(argv, *args, **kwargs)

    ns = "kplab-ipvsadd-node-1"
    netns_add(ns)
    p = proxier.IpvsProxier(NodeContext("ipvsadd", "node-1", ns, tmp_path, {"keep_input": True}))
    try:
        for argv in (["link", "add", "eth0", "type", "dummy"], ["addr", "add", "172.18.0.11/24", "dev", "eth0"]):
            run(["ip", *argv], ns)  # the node's address: NodePorts get virtual servers on it
        state = synthetic_state(500, 2)
        assert p.sync(state).full
        monkeypatch.setattr(kernel, "IPVS", CountingIPVS)
        monkeypatch.setattr(proxier, "Xtables", CountingXtables)
        monkeypatch.setattr(proxier, "run", counting_run)
        add_service(state, 501, 2)  # odd: a NodePort Service
        result = p.sync(state)
        assert not result.full and result.changed_services == 2, result
        assert calls == {"service add": 2, "dest add": 4, "ipset restore": 1}, calls
        sections = {
            tool: body.split("\n")[:-1]
            for tool, _, body in (b.partition("\n") for b in (Path(tmp_path) / "last-input.txt").read_text().split("### ")[1:])
        }
        assert sections["ip -batch -"] == ["address add 10.96.2.2/32 dev kube-ipvs0"], sections
        assert len(sections["ipset restore"]) == 4 and not sections["iptables-restore --noflush"], sections
        assert sections["ipvsadm --restore"][0] == "-A -t 10.96.2.2:80 -s rr", sections
        monkeypatch.undo()
        d = p.diff(state)
        assert d.clean and d.next_sync.changed == 0, d.text()[:2000]
    finally:
        p.cleanup()
        netns_del(ns)
