"""Every benchmark at a tiny size, so its code paths keep working (the big runs are not tests).

No timing is asserted: only that each benchmark measures what it says (its baseline included),
writes its JSON, plots, fills the comparison table, and leaves no namespace behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kplab.bench import compare, latency, plot, report, startup, sync, throughput
from kplab.cli import main
from kplab.cluster.netns import lab_namespaces

pytestmark = [pytest.mark.root]


def no_namespaces(prefix: str) -> bool:
    return not [n for n in os.listdir("/run/netns") if n.startswith(prefix)]


def test_latency_tiny_with_plot_and_table(tmp_path):
    result = latency.run_latency(["iptables", "nftables"], "10", samples=20, warmup=2, rounds=2, lab="tblat",
                                 show_progress=False)
    rows = {(r["mode"], r["services"]): r for r in result["rows"]}
    assert set(rows) == {("iptables", 0), ("iptables", 10), ("nftables", 0), ("nftables", 10)}
    for mode in ("iptables", "nftables"):
        zero, row = rows[(mode, 0)], rows[(mode, 10)]
        assert zero["base_samples"] == zero["pod_samples"] == 20 and "first_samples" not in zero
        for target in ("first", "last", "pod", "base"):
            assert row[f"{target}_samples"] == 20 and row[f"{target}_failed"] == 0, (mode, target, row)
            assert row[f"{target}_ratio"] > 0, "each round measures the baseline in the same loop"
        assert row["rounds"] == 2 and row["base_ratio"] == 1.0
        assert row["first_ip"] != row["last_ip"]
    assert "KUBE-SERVICES" in rows[("iptables", 10)]["pick"], "iptables: first/last read back from the kernel"
    assert "equivalent" in rows[("nftables", 10)]["pick"]
    assert lab_namespaces("tblat") == []

    path = report.save(result, tmp_path / "latency.json")
    assert json.loads(path.read_text())["rows"][0]["mode"] == "iptables"
    sync_result = sync.run_sync("nftables", [10], rounds=1, lab="tbsyn1", show_progress=False)
    report.save(sync_result, tmp_path / "sync-nftables.json")
    files = plot.plot_all(tmp_path / "plots", tmp_path)
    assert sorted(p.name for p in files) == ["bench-latency.png", "bench-latency.svg",
                                             "bench-sync.png", "bench-sync.svg"]
    assert all(p.stat().st_size > 1000 for p in files)
    md = compare.markdown(compare.table(tmp_path))
    assert md.count("\n") == 6 and "| **Load Balancing** |" in md


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_sync_tiny(mode):
    result = sync.run_sync(mode, "10", endpoints=2, rounds=2, lab="tbsync", show_progress=False)
    (row,) = result["rows"]
    assert row["rounds"] == 2 and row["services"] == 10
    for key in ("full", "add_one"):
        assert row[f"{key}_kplab"] > 0 and row[f"{key}_raw"] > 0 and row[f"{key}_ratio"] > 0
    assert row["full_lines"] > row["add_one_lines"] > 0, "add-one loads less than a full sync"
    assert no_namespaces("kplab-tbsync-")


def test_throughput_tiny_with_spread():
    result = throughput.run_throughput(["iptables"], rounds=1, requests=20, latency_requests=10, concurrency=2,
                                       spread_requests=30, lab="tbthr", show_progress=False)
    targets = {(r["target"], r["load"]) for r in result["rows"]}
    assert {("pod IPs", "connect"), ("iptables", "connect"), ("iptables", "keepalive")} <= targets
    via = next(r for r in result["rows"] if (r["target"], r["load"]) == ("iptables", "connect"))
    assert via["failed"] == 0 and "rps_vs_pods" in via and "p50_vs_pods" in via
    (spread,) = result["spread"]
    assert spread["requests"] == 30 and len(spread["counts"]) == 3, "3 web pods answered"
    assert lab_namespaces("tbthr") == []


def test_startup_tiny(monkeypatch):
    monkeypatch.setattr(startup, "LAB", "tbstart")  # names of our own, beside anyone's real runs
    monkeypatch.setattr(startup, "BASE", "kplab-tbstipx")
    result = startup.run_startup(pods=[4], rounds=1, mode="none", show_progress=False)
    (row,) = result["rows"]
    assert row["kplab_up_s"] > 0 and row["ip_script_up_s"] > 0 and row["ratio_up"] > 0
    assert no_namespaces("kplab-tbstart-") and no_namespaces("kplab-tbstipx-")


def test_cli_runs_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["bench", "sync", "--mode", "iptables", "--services", "10", "--rounds", "1", "--name", "tbsyn2",
                 "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["bench"] == "sync-iptables"
    assert "full kplab s" in capsys.readouterr().out
    for argv in (["bench", "latency", "--services", "ten"], ["bench", "latency", "--services", "0"],
                 ["bench", "sync", "--mode", "userspace"], ["bench", "latency", "--mode", "nosuch"],
                 ["bench", "throughput", "--concurrency", "0"]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("kplab: ") and "\n" not in err and "Traceback" not in err, (argv, err)


@pytest.mark.ipvs
def test_latency_ipvs_tiny():
    """IPVS takes the same path (in the throwaway VM when this kernel has no IPVS)."""
    if os.environ.get("KPLAB_IN_VM") == "1":  # emulated: a cold first import outlasts the echo start timeout
        subprocess.run([sys.executable, "-c", "import kplab.cluster.echo"], check=True, timeout=300)
    result = latency.run_latency(["ipvs"], "10", samples=20, warmup=2, lab="tblatv", show_progress=False)
    zero, row = result["rows"]
    assert zero["base_samples"] == 20 and row["services"] == 10 and row["base_samples"] == 20
    assert row["first_failed"] == row["last_failed"] == 0 and row["first_samples"] == row["last_samples"] == 20
    assert "equivalent" in row["pick"], "IPVS looks Services up in a hash table"
    assert lab_namespaces("tblatv") == []


def test_latency_and_throughput_tiny_ebpf():
    """The eBPF replacement's socket hooks see only the node's cgroup: the probe and the load generator join it."""
    from kplab.proxy.ebpf import EbpfProxier

    if not EbpfProxier.doctor().available:
        pytest.skip("ebpf unavailable here")
    result = latency.run_latency(["ebpf"], "10", samples=20, warmup=2, rounds=1, lab="tblatb", show_progress=False)
    row = next(r for r in result["rows"] if r["services"] == 10)
    assert all(row[f"{t}_failed"] == 0 and row[f"{t}_samples"] == 20 for t in ("first", "last", "pod", "base"))
    thr = throughput.run_throughput(["ebpf"], rounds=1, requests=20, latency_requests=10, concurrency=2,
                                    spread_requests=30, lab="tbthrb", show_progress=False)
    via = next(r for r in thr["rows"] if (r["target"], r["load"]) == ("ebpf", "connect"))
    assert via["failed"] == 0
    assert lab_namespaces("tblatb") == lab_namespaces("tbthrb") == []
