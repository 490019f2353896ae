"""What the host's root namespace shows, for tests that prove a lab leaves it as found."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from kplab.cluster.run import NETNS_DIR


def host_snapshot() -> dict[str, str]:
    """Links, addresses, routes, rules and named netns of the calling process's namespaces."""

    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    return {
        "links": out("ip", "-o", "link", "show"),
        "addrs": out("ip", "-o", "addr", "show"),
        "routes": out("ip", "route", "show", "table", "all"),
        "iptables": "\n".join(l for l in out("iptables-save").splitlines() if not l.startswith("#")),
        "ip6tables": "\n".join(l for l in out("ip6tables-save").splitlines() if not l.startswith("#")),
        "nft": out("nft", "list", "ruleset"),
        "netns": "\n".join(sorted(os.listdir(NETNS_DIR))) if os.path.isdir(NETNS_DIR) else "",
        **_bpf_snapshot(out),
    }


def _bpf_snapshot(out: Callable[..., str]) -> dict[str, str]:
    """The eBPF mode's traces: tc qdiscs here, bpffs mounts, the cgroup v2 root's programs, and
    this state root's lab cgroups (other sessions' labs on the same host have other suffixes)."""
    from kplab.proxy.ebpf.kernel import cgroup2_root, lab_cgroup

    with open("/proc/self/mounts") as f:
        mounts = [line for line in f.read().splitlines() if line.split()[2:3] == ["bpf"]]
    root = cgroup2_root()
    suffix = lab_cgroup("x").name.split(".", 1)[1] if root is not None else ""  # type: ignore[union-attr]
    ours = sorted(p.name for p in root.iterdir() if p.name.endswith("." + suffix)) if root else []
    return {
        "tc": out("tc", "qdisc", "show"),
        "bpffs": "\n".join(mounts),
        "cgroup2 root": out("bpftool", "cgroup", "show", str(root)) if root else "",
        "lab cgroups": "\n".join(ours),
    }


def assert_same(before: dict[str, str], after: dict[str, str]) -> None:
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"the host's root namespace changed: {changed}"
