"""The mode protocol on a real lab, for every mode: look at the next sync, then apply it.

`kplab scale web --replicas 4 --no-sync` leaves the nodes' rules alone; `kplab diff node-1` then
shows exactly the new endpoint's rules, map elements, real server or proxy entry; `kplab sync`
applies them and the diff is empty; a rule deleted by hand shows up as missing, and a full sync
puts it back.  Real packets check that the kernel does what the diff said.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kplab.testing.labs import lab_in_mode, mode_params

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module", params=mode_params())
def lab(request):
    with lab_in_mode(request.param, "pr" + request.param[:4]) as lab:
        yield lab


def kplab(lab, *argv: str) -> str:
    env = {**os.environ, "KPLAB_LAB": lab.name}
    cp = subprocess.run([sys.executable, "-m", "kplab.cli", *argv], env=env, capture_output=True, text=True,
                        timeout=600, check=False)  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def web_ips(lab) -> set[str]:
    return {p.status.pod_ip for p in lab.pods() if (p.metadata.labels or {}).get("app") == "web"}


def spelled(ip: str, mode: str) -> str:
    """An address as the mode's diff lines hold it: dotted, or as hex bytes in eBPF map entries."""
    return bytes(int(x) for x in ip.split(".")).hex() if mode == "ebpf" else ip


def hand_edit(lab) -> tuple[list[str], str]:
    """A change someone makes by hand on node-1, and a piece of the line `diff` must then miss."""
    vip = lab.service_ip("web")
    if lab.mode not in ("iptables", "userspace", "nftables", "ipvs"):
        pytest.skip(f"no hand edit written for {lab.mode} (its diff compares map entries)")
    return {
        "iptables": (["iptables", "-t", "nat", "-D", "KUBE-SERVICES", "1"], "-A KUBE-SERVICES"),
        "userspace": (["iptables", "-t", "nat", "-D", "KUBE-PORTALS-CONTAINER", "1"], "KUBE-PORTALS-CONTAINER"),
        "nftables": (["nft", "flush", "chain", "ip", "kube-proxy", "services"], "services: "),
        "ipvs": (["ipvsadm", "-D", "-t", f"{vip}:80"], f"ipvs {vip}:80/TCP"),
    }[lab.mode]


def test_in_sync_after_up(lab):
    d = lab.diff("node-1")
    assert d.clean, d.text()


def test_scale_without_sync_shows_the_new_endpoint_then_sync_applies_it(lab):
    before = web_ips(lab)
    kplab(lab, "scale", "deployment", "web", "--replicas", "4", "--no-sync")
    added = web_ips(lab) - before
    assert len(added) == 1
    d = lab.diff("node-1")
    changed = d.missing + d.extra
    new = [spelled(ip, lab.mode) for ip in added]  # eBPF map entries hold addresses in hex
    assert all(any(ip in line for line in d.missing) for ip in new), d.text()
    # every changed line is web's: it names web or the new endpoint, or declares a chain such a line uses;
    # eBPF's entries have no names: web's ClusterIP or a node's address (NodePort) starts their key
    web = ["web", *new, *([spelled(lab.service_ip("web"), "ebpf")] + [spelled(lab.node_ip(n), "ebpf") for n in lab.nodes]
                          if lab.mode == "ebpf" else [])]  # fmt: skip
    theirs = [x for x in changed if any(w in x for w in web)]
    chains = {w for x in theirs for w in x.replace(":", " ").split() if w.startswith("KUBE-")}
    assert all(x in theirs or any(c in x for c in chains) for x in changed), d.text()
    assert not any(ip in x for x in changed for ip in before - added if "web" not in x), d.text()
    assert d.next_sync.changed >= 1, d.text()
    out = kplab(lab, "diff", "node-1")
    assert all(f"+ {x}" in out for x in d.missing), "the CLI shows what lab.diff() found"
    kplab(lab, "sync")
    after = lab.diff("node-1")
    assert after.clean, after.text()
    res = lab.curl("client", "web", n=12)
    assert res.ok == 12, res.errors


def test_a_rule_deleted_by_hand_shows_up_and_a_full_sync_repairs_it(lab):
    argv, piece = hand_edit(lab)
    assert lab.exec("node-1", argv).ok
    d = lab.diff("node-1")
    assert d.missing and all(piece in x for x in d.missing), d.text()
    assert not d.extra, d.text()
    lab.sync(full=True)
    assert lab.diff("node-1").clean
