"""The eBPF kube-proxy replacement with real packets: where the decision is made (connect() or tc),
what a switch of mode or a crash leaves behind (nothing), endpoints coming and going.

The datapath matrix (test_datapath.py) runs the common checks in this mode too; here is what is
particular to it.  One lab for the module; the tests run in file order and leave it as they found it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kplab import Lab, clean
from kplab.proxy.ebpf import EbpfProxier
from kplab.proxy.ebpf.kernel import bpffs, lab_cgroup
from kplab.testing.host import assert_same, host_snapshot

pytestmark = [pytest.mark.root]

NAME = "ebpft"
SOLO = """
apiVersion: v1
kind: Pod
metadata: {name: solo, labels: {app: solo}}
spec: {nodeName: node-2, containers: [{name: echo, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: solo}
spec:
  selector: {app: solo}
  ports: [{name: http, port: 80, targetPort: http}]
"""

STICKY = """
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080}]
"""

SOLO_LOCAL = """
apiVersion: v1
kind: Service
metadata: {name: solo-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: solo}
  ports: [{name: http, port: 80, targetPort: http}]
"""


@pytest.fixture(scope="module")
def host():
    avail = EbpfProxier.doctor()
    if not avail.available:
        pytest.skip(f"ebpf: {avail.detail}: {avail.fix}")
    clean(lab=NAME)
    return host_snapshot()


@pytest.fixture(scope="module")
def lab(host, tmp_path_factory):
    from kplab.lab import default_manifest

    extra = tmp_path_factory.mktemp("m") / "solo.yaml"
    extra.write_text(SOLO)
    lab = Lab.up(NAME, mode="ebpf", manifests=[default_manifest(), extra])
    yield lab
    clean(lab=NAME)


def web_pods(lab: Lab) -> list[str]:
    return sorted(p.metadata.name for p in lab.pods() if (p.metadata.labels or {}).get("app") == "web")


def prog_ids(lab: Lab) -> set[int]:
    """Ids of the programs pinned for the lab's nodes."""
    out = set()
    for node in lab.nodes:
        for p in (bpffs(NAME) / node / "progs").iterdir():
            cp = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(p)], capture_output=True, text=True,
                                check=True)
            out.add(json.loads(cp.stdout)["id"])
    return out


def loaded(ids: set[int], wait: float = 20.0) -> set[int]:
    """Which of `ids` are still loaded, waiting (bounded) for the kernel to free them: a removed
    namespace takes its veths, and their tc programs, down in a deferred cleanup."""
    deadline = time.monotonic() + wait
    while True:
        cp = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True)
        left = ids & {p["id"] for p in json.loads(cp.stdout)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def leftovers(lab: Lab) -> list[str]:
    """Anything of the eBPF mode still in the lab's nodes or on the host."""
    found = []
    base = lab_cgroup(NAME)
    if base is not None and base.exists():
        found.append(f"cgroup {base}")
    if any(line.split()[1].startswith(str(bpffs(NAME))) for line in Path("/proc/self/mounts").read_text().splitlines()):
        found.append("bpffs mount")
    for node in lab.nodes if lab.store.exists else []:
        if "clsact" in lab.exec(node, ["tc", "qdisc", "show"]).stdout:
            found.append(f"clsact on {node}")
    return found


def test_socket_lb_decides_at_connect(lab):
    t = lab.trace("client", "web")
    assert t.answer, t.error
    assert "connect4" in t.path[0], t.path
    assert t.consistent, t.text()
    assert t.answer["client_ip"] == lab.pod_ip("client")
    assert not [e for e in t.conntrack if e.original.dst == lab.service_ip("web")], "no node ever saw the ClusterIP"
    cg = lab.rules("node-1")["cgroup"]
    tree = subprocess.run(["bpftool", "cgroup", "show", cg], capture_output=True, text=True, check=True).stdout
    assert "sock4_connect" in tree and "sock4_recvmsg" in tree
    node = lab.curl("node-1", "web", n=6)  # a node's own process: only socket LB can serve it
    assert node.ok == 6, node.errors


def test_rules_list_the_maps_like_cilium(lab):
    text = lab.rules("node-1")["text"]
    assert "SERVICE ADDRESS" in text and f"{lab.service_ip('web')}:80/TCP (0)" in text
    assert all(lab.pod_ip(p) in text for p in web_pods(lab))
    from kplab.proxy.ebpf.view import parse_lb_list

    (svc,) = [s for s in parse_lb_list(text) if s["frontend"] == f"{lab.service_ip('web')}:80/TCP"]
    assert svc["flags"] == ["ClusterIP", "non-routable"] and len(svc["backends"]) == 3


def test_counters_match_the_answers(lab):
    from kplab.inspect.counters import counting

    with counting(lab, "web") as c:
        res = lab.curl("client", "web", n=270)  # more than the decision log's 256: these are counters
        res2 = lab.curl("outside", "node-2:web:http", n=10)
    got = {pod: n for pod, n in c.per_pod.items() if n}
    want = dict(res.backends)
    for pod, n in res2.backends.items():
        want[pod] = want.get(pod, 0) + n
    assert got == want and "kplab_counts" in c.source


def test_local_policy_has_two_scopes(lab):
    """eTP Local: outside clients only reach a node with a local endpoint, and keep their IP; pods reach
    the Service on any node's address (the in-cluster "/i" scope lists every endpoint)."""
    lab.apply(SOLO_LOCAL)
    assert "solo-local" in lab.rules("node-1")["text"] and "/i (0)" in lab.rules("node-1")["text"]
    good = lab.curl("outside", "node-2:solo-local", n=4)
    assert good.backends == {"solo": 4} and {a["client_ip"] for a in good.answers} == {"172.18.0.100"}
    assert lab.curl("outside", "node-1:solo-local", n=2, timeout=0.5).ok == 0
    inside = lab.curl("client", "node-1:solo-local", n=4)
    assert inside.backends == {"solo": 4}, inside.errors


def test_a_sync_repairs_an_entry_deleted_by_hand(lab):
    maps = lab.rules("node-1")["maps"]
    vip = bytes(int(x) for x in lab.service_ip("web").split("."))
    key = " ".join(f"{b:02x}" for b in vip + (80).to_bytes(2, "big") + bytes([0, 0, 6, 0, 0, 0]))
    subprocess.run(["bpftool", "map", "delete", "pinned", f"{maps}/lb4_services", "key", "hex", *key.split()],
                   check=True)
    assert lab.curl("client", "web", n=2, timeout=0.5).backends == {}, "without its slot 0 web is no Service"
    lab.sync()
    assert lab.curl("client", "web", n=6).ok == 6


def test_pins_removed_by_hand_are_loaded_again(lab):
    shutil.rmtree(bpffs(NAME) / "node-1")  # what an over-eager `rm -r` in the bpffs does
    lab.sync()
    cg = lab.rules("node-1")["cgroup"]
    tree = json.loads(subprocess.run(["bpftool", "-j", "cgroup", "show", cg], capture_output=True, text=True,
                                     check=True).stdout)
    assert {e["id"] for e in tree} <= prog_ids(lab), "the cgroup runs the new programs, not the orphaned ones"
    assert lab.trace("client", "web").consistent
    t = lab.trace("outside", "node-1:web")
    assert t.consistent and "from_netdev" in t.path[0]


def test_trace_from_outside_to_a_cluster_ip_says_nothing_routes_it(lab):
    """Seen by hand: `kplab trace outside web` guessed "(not a Service address?)" about web's ClusterIP;
    the packet never reached a node (iptables mode says so)."""
    t = lab.trace("outside", "web", timeout=1)
    assert not t.answer and not t.path
    assert any("nothing routes" in n for n in t.notes) and not any("not a Service address" in n for n in t.notes), t.notes


def test_not_ready_endpoint_gets_no_connections(lab):
    victim = web_pods(lab)[0]
    lab.set_ready(victim, False)
    try:
        res = lab.curl("client", "web", n=30)
        assert res.failed == 0, res.errors
        assert victim not in res.backends and len(res.backends) == 2, res.backends
        assert lab.pod_ip(victim) not in lab.rules("node-1")["text"]
        lab.set_ready(victim, False, terminating=True)  # serving but terminating: still no new connections
        res = lab.curl("client", "web", n=20)
        assert victim not in res.backends and res.failed == 0, (res.backends, res.errors)
    finally:
        lab.set_ready(victim, True)
    assert lab.pod_ip(victim) in lab.rules("node-1")["text"]


def test_scale_down_and_up(lab):
    lab.scale("web", 1)
    (only,) = web_pods(lab)
    res = lab.curl("client", "web", n=10)
    assert res.backends == {only: 10}, res.errors
    lab.scale("web", 3)
    res = lab.curl("client", "web", n=60)
    assert set(res.backends) == set(web_pods(lab)), res.backends


def test_tc_only_when_socket_lb_is_off(lab):
    ids = prog_ids(lab)
    lab.set_mode("ebpf", socket_lb=False)
    try:
        assert not loaded(ids), "the old programs were freed"
        assert lab_cgroup(NAME) is None or not lab_cgroup(NAME).exists(), "no cgroup without socket LB"
        t = lab.trace("client", "web")
        assert t.answer and "from_pod" in t.path[0], t.text()
        assert t.consistent, t.text()
        res = lab.curl("client", "web", n=30)
        assert res.failed == 0 and len(res.backends) == 3, (res.backends, res.errors)
        assert {a["client_ip"] for a in res.answers} == {lab.pod_ip("client")}
        udp = lab.curl("client", "web:dns", n=4)
        assert udp.ok == 4, udp.errors
        hairpin = lab.curl("solo", "solo", n=3)
        assert hairpin.backends == {"solo": 3}, hairpin.errors
        assert {a["client_ip"] for a in hairpin.answers} == {"169.254.42.1"}, "hairpin is SNATed, as Cilium does"
        lab.apply(STICKY)
        sticky = lab.curl("client", "sticky", n=12)
        assert sticky.ok == 12 and len(sticky.backends) == 1, f"tc affinity by client IP: {sticky.backends}"
        eps = lab.curl("outside", "node-1:web:http", n=45)
        assert eps.ok == 45 and len(eps.backends) == 3, eps.errors
        # a pod to its own node's NodePort: the replies' source is the node's own address, which
        # the stack drops as martian; the program sends them to the pod itself
        own = lab.curl("client", "node-1:web:http", n=45)
        assert own.ok == 45 and len(own.backends) == 3, own.errors
        assert lab.curl("node-1", "web", n=1, timeout=0.5).ok == 0, "no tc hook sees what the node itself sends"
    finally:
        lab.set_mode("ebpf", socket_lb=True)
    assert "connect4" in lab.trace("client", "web").path[0]


def test_the_cli_and_a_notebook_keep_socket_lb_as_last_set(lab, capsys, monkeypatch):
    """`lab.set_mode("ebpf")` kept socket_lb=False from an earlier switch (options persist, as in
    kube-proxy's config) while `kplab mode ebpf` turned it back on: the flag defaulted to true."""
    from kplab.testing.labs import run_cli

    try:
        rc, out, _ = run_cli(capsys, monkeypatch, NAME, "mode", "ebpf", "--no-socket-lb")
        assert rc == 0 and "tc programs only" in out, out
        rc, out, _ = run_cli(capsys, monkeypatch, NAME, "mode", "ebpf")
        assert rc == 0 and "tc programs only" in out and lab.options["socket_lb"] is False, out
        assert "from_pod" in lab.trace("client", "web").path[0], "no socket LB: tc decides"
        rc, out, _ = run_cli(capsys, monkeypatch, NAME, "mode", "ebpf", "--socket-lb")
        assert rc == 0 and "socket LB at connect()" in out and lab.options["socket_lb"] is True, out
    finally:
        lab.set_mode("ebpf", socket_lb=True)
    assert "connect4" in lab.trace("client", "web").path[0]


def test_mode_switch_leaves_nothing_behind(lab):
    ids = prog_ids(lab)
    lab.set_mode("nftables")
    try:
        assert leftovers(lab) == []
        assert not loaded(ids), "every program of the lab was freed"
        assert lab.curl("client", "web", n=3).ok == 3
    finally:
        lab.set_mode("ebpf")
    assert lab.curl("client", "web", n=3).ok == 3


def test_crash_then_clean_leaves_nothing(lab, host):
    ids = prog_ids(lab)
    data = json.loads((lab.store.dir / "lab.json").read_text())
    data["status"] = "building"  # as a lab whose process died half-way
    (lab.store.dir / "lab.json").write_text(json.dumps(data))
    assert clean() == [NAME]
    assert not loaded(ids)
    assert leftovers(lab) == []
    assert_same(host, host_snapshot())
