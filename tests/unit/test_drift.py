"""What `kplab diff` prints (kplab.proxy.drift.Diff), without a kernel."""

from __future__ import annotations

from kplab.proxy.base import Plan
from kplab.proxy.drift import Diff


def test_a_sync_with_nothing_to_write_says_so():
    """eBPF mode's clean diff ended in "writes:" and an empty line, as if the text had been lost."""
    text = Diff("node-1", "ebpf", Plan("ebpf", True, "", 0)).text()
    assert text.splitlines() == ["# ebpf on node-1: the kernel holds what a sync programs (no drift)",
                                 "# the next sync (full, 0 service ports) writes nothing"]


def test_drift_and_the_next_sync_text():
    plan = Plan("iptables", False, "*nat\nCOMMIT\n", 1)
    text = Diff("node-1", "iptables", plan, missing=["-A KUBE-SERVICES -j X"]).text()
    assert text.startswith("# iptables on node-1: 1 missing (+), 0 not wanted (-)\n+ -A KUBE-SERVICES -j X\n")
    assert "`kplab sync --full` repairs all of it" in text
    assert text.endswith("# the next sync (partial, 1 service ports) writes:\n*nat\nCOMMIT\n")
