"""The benchmarks' pure parts: percentiles, ratios, the spread statistic, Service IPs, the table."""

from __future__ import annotations

import math

import pytest

from kplab.bench import compare, latency, report, throughput, workload
from kplab.errors import KplabError


def test_percentile_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert report.percentile(values, 50) == 50
    assert report.percentile(values, 99) == 99
    assert report.percentile(values[::-1], 100) == 100
    assert report.percentile([], 50) is None
    assert report.ratio(3.0, 2.0) == 1.5 and report.ratio(1.0, 0) is None and report.ratio(None, 1.0) is None


def test_spread_chi_square():
    even = throughput.spread({"a": 100, "b": 100, "c": 100}, 3)
    assert even["chi2"] == 0 and even["p_uniform"] == 1 and even["max_dev_pct"] == 0
    skew = throughput.spread({"a": 150, "b": 100}, 3)  # one backend never answered
    assert skew["chi2"] == pytest.approx((150 - 250 / 3) ** 2 / (250 / 3) + (100 - 250 / 3) ** 2 / (250 / 3) + 250 / 3)
    assert skew["p_uniform"] == pytest.approx(math.exp(-skew["chi2"] / 2))
    assert skew["shares"] == "0/100/150"


def test_cluster_ips_skip_taken_and_sizes():
    ips = workload.cluster_ips(3, frozenset({"10.96.32.2"}))
    assert ips == ["10.96.32.1", "10.96.32.3", "10.96.32.4"]
    svcs, slices = workload.services(2, [("10.244.1.5", "node-1")], first=1)
    assert [s.metadata.name for s in svcs] == ["svc-00001", "svc-00002"]
    assert svcs[0].spec.cluster_ip == "10.96.32.2"
    assert slices[1].endpoints[0].addresses == ["10.244.1.5"]
    assert latency.parse_sizes("1000, 100,100") == [100, 1000]
    for bad in ("x", "0", "", "60000"):
        with pytest.raises(KplabError):
            latency.parse_sizes(bad)


def test_table_without_results_says_not_measured(tmp_path):
    md = compare.markdown(compare.table(tmp_path))
    lines = md.splitlines()
    assert lines[0] == "| Feature | Userspace | iptables (default) | IPVS | nftables | eBPF (no kube-proxy) |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == [
        "**Speed**", "**Scalability**", "**Load Balancing**", "**Kernel-Level Processing**", "**Best For**"]
    assert "not measured" in lines[2]


def test_a_failing_plain_loader_is_one_line():
    """Two benchmarks at once: iptables-legacy-restore -w 5 gave up on the shared xtables lock and
    `kplab bench sync` ended in a CalledProcessError traceback."""
    import subprocess

    from kplab.bench.sync import timed

    with pytest.raises(KplabError, match=r"plain loader false failed \(exit 1"):
        timed(lambda: subprocess.run(["false"], check=True))
    with pytest.raises(KplabError, match=r"plain loader sh failed \(exit 4"):
        timed(lambda: subprocess.run(["env", "--", "sh", "-c", "exit 4"], check=True))


def test_a_benchmark_in_the_throwaway_vm_writes_to_its_results_window(tmp_path, monkeypatch):
    """In the VM the source tree is read-only: `bench/sync.py` without --json ended in a traceback."""
    monkeypatch.setenv("KPLAB_BENCH_RESULTS", str(tmp_path))
    assert report.save({"bench": "sync-ipvs", "rows": []}) == tmp_path / "sync-ipvs.json"
    assert report.load("sync-ipvs") == {"bench": "sync-ipvs", "rows": []}
