"""latency: how long a new connection takes to set up through a mode, as Services are added.

    kplab bench latency --mode iptables,nftables --services 100,1000,5000,10000

The claim being reproduced (Kubernetes blog "NFTables mode for kube-proxy", KEP-3866): in
iptables mode the first packet of a connection walks KUBE-SERVICES, one rule per Service
port, so its latency grows with the number of Services (O(n)); nftables does one verdict-map
lookup (O(1)), and so does IPVS (a hash table).

Per mode, one lab (default name `blat`) of two nodes.  node-1 holds two echo pods and a
client pod; the bench Services are added to node-1's proxy state only (kplab.bench.workload:
real kubernetes models through the proxy core's build_state) and the mode's own `sync()`
programs them, so the ruleset is what kplab really loads.  All Services share the two echo
pods.  node-2 runs the same mode with no Services at all, and holds one echo pod and one
client pod of its own: the baseline.  At each size, interleaved connection by connection:

    first   node-1 client -> the Service whose rule comes first in the ruleset
    last    node-1 client -> the Service whose rule comes last (read back with `iptables-save`
            for iptables and userspace; nftables and IPVS look Services up in a hash table, so
            any two are equivalent: "first" and "last" are then the lowest and highest one)
    pod     node-1 client -> an echo pod's IP directly, through the loaded ruleset
    base    node-2 client -> node-2's echo pod IP: the same path through a node with no
            Services, the fastest this machine connects two pods (the baseline)

Measuring the baseline in the same loop as the targets, rather than once before the
Services were added, matters on a shared machine: a pause hits all four alike.  Connect
times are sampled by kplab.bench.probe (a separate process), bounded in samples and in time.
Ratios are p50 against the baseline's p50 within one round (one probe run over all targets),
then the median over `rounds` rounds.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kplab.bench import report, workload
from kplab.bench.report import Column
from kplab.cluster.run import run
from kplab.errors import EnvironmentProblem, KplabError, LabError

DEFAULT_SIZES = (100, 1000, 2000, 5000, 10000)
DEFAULT_MODES = ("iptables", "nftables")
# modes whose per-Service rules a new connection from a pod walks in order, and that chain
DISPATCH_CHAIN = {"iptables": "KUBE-SERVICES", "userspace": "KUBE-PORTALS-CONTAINER"}
ECHO_PORT = 8080
SYN_RETRANSMIT_US = 200_000  # a connect this slow waited for a SYN retransmission (1 s)
PROBE = str(Path(__file__).with_name("probe.py"))  # run as a file: no package import in the sampler

def _pod(name: str, node: str, app: str, port: bool) -> str:
    ports = f", ports: [{{containerPort: {ECHO_PORT}, protocol: TCP}}]" if port else ""
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\n"
            f"spec: {{nodeName: {node}, containers: [{{name: c{ports}}}]}}\n")


BASE_MANIFEST = "---\n".join([
    _pod("echo-a", "node-1", "echo", True), _pod("echo-b", "node-1", "echo", True),
    _pod("client", "node-1", "client", False),
    _pod("base-echo", "node-2", "base", True), _pod("base-client", "node-2", "client", False),
])

COLUMNS = [
    Column("mode", "mode"),
    Column("services", "Services", "{:,}"),
    Column("first_p50_us", "first p50 µs", "{:.0f}"),
    Column("first_p99_us", "p99", "{:.0f}"),
    Column("last_p50_us", "last p50 µs", "{:.0f}"),
    Column("last_p99_us", "p99", "{:.0f}"),
    Column("pod_p50_us", "pod IP p50 µs", "{:.0f}"),
    Column("pod_p99_us", "p99", "{:.0f}"),
    Column("base_p50_us", "base p50 µs", "{:.0f}"),
    Column("base_p99_us", "p99", "{:.0f}"),
    Column("first_ratio", "first/base", "{:.2f}"),
    Column("last_ratio", "last/base", "{:.2f}"),
    Column("pod_ratio", "pod/base", "{:.2f}"),
    Column("sync_s", "sync s", "{:.2f}"),
]


def parse_sizes(text: str | Sequence[int]) -> list[int]:
    """'100,1000,10000' -> [100, 1000, 10000], each 1..workload.MAX_SERVICES."""
    if isinstance(text, str):
        try:
            sizes = [int(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            raise KplabError(f"--services {text!r}: give numbers separated by commas, e.g. 100,1000,10000") from None
    else:
        sizes = [int(x) for x in text]
    if not sizes or any(not 1 <= n <= workload.MAX_SERVICES for n in sizes):
        raise KplabError(f"--services {text!r}: each size must be 1..{workload.MAX_SERVICES:,}")
    return sorted(set(sizes))


def _targets_in_order(netns: str, mode: str, ips: dict[str, str]) -> list[str]:
    """Bench Service IPs in the order the node's dispatch chain tests them (iptables-walked modes)."""
    if mode not in DISPATCH_CHAIN:
        return []
    text = run(["iptables-save", "-t", "nat"], netns, timeout=300).stdout
    seen: dict[str, None] = {}
    chain = re.escape(DISPATCH_CHAIN[mode])
    for m in re.finditer(rf"^-A {chain} .*?-d (\d+\.\d+\.\d+\.\d+)/32 ", text, re.MULTILINE):
        if m.group(1) in ips:
            seen.setdefault(m.group(1))
    return list(seen)


def first_last(netns: str, mode: str, n: int, taken: frozenset[str]) -> tuple[str, str, str]:
    """(first IP, last IP, how they were chosen) among bench Services 0..n-1."""
    ips = workload.cluster_ips(n, taken)
    by_ip = {ip: i for i, ip in enumerate(ips)}
    order = _targets_in_order(netns, mode, by_ip)
    if len(order) >= 2:
        return order[0], order[-1], f"first/last rule of {DISPATCH_CHAIN[mode]} (read back with iptables-save)"
    return ips[0], ips[-1], "lowest/highest bench Service: a hash lookup, any two are equivalent"


def sample(targets: list[tuple[str, str, str, int]], samples: int, warmup: int, deadline: float,
           cgroup: str | None = None) -> dict[str, Any]:
    """Run the probe: targets are (label, client netns, ip, port), interleaved; inside `cgroup` if given."""
    spec = {"targets": targets, "samples": samples, "warmup": warmup, "timeout": 2.0, "deadline": deadline,
            "cgroup": cgroup}
    res = run([sys.executable, PROBE, json.dumps(spec)], timeout=deadline + 60)
    return dict(json.loads(res.stdout))


def _fill(row: dict[str, Any], label: str, got: dict[str, Any]) -> None:
    lat = got["connect_us"]
    row[f"{label}_p50_us"] = report.percentile(lat, 50)
    row[f"{label}_p99_us"] = report.percentile(lat, 99)
    row[f"{label}_rtt_p50_us"] = report.percentile(got["rtt_us"], 50)
    row[f"{label}_samples"] = len(lat)
    row[f"{label}_failed"] = got["failed"]
    row[f"{label}_retransmits"] = sum(1 for x in lat if x > SYN_RETRANSMIT_US)


def measure_targets(targets: list[tuple[str, str, str, int]], samples: int, warmup: int, rounds: int,
                    deadline: float, cgroup: str | None = None) -> dict[str, Any]:
    """Percentiles over all samples; each ratio to the baseline is the median of per-round ratios.

    A round is one probe run over every target; taking the ratio within a round and then the
    median over rounds keeps a burst of load on the machine from moving one size's figure.
    """
    pooled: dict[str, dict[str, Any]] = {}
    ratios: dict[str, list[float]] = {}
    for _ in range(rounds):
        got = sample(targets, max(1, samples // rounds), warmup, deadline / rounds, cgroup)
        base = report.percentile(got["base"]["connect_us"], 50)
        for label, *_ in targets:
            acc = pooled.setdefault(label, {"connect_us": [], "rtt_us": [], "failed": 0})
            for k in ("connect_us", "rtt_us"):
                acc[k] += got[label][k]
            acc["failed"] += got[label]["failed"]
            r = report.ratio(report.percentile(got[label]["connect_us"], 50), base)
            if r is not None:
                ratios.setdefault(label, []).append(r)
    row: dict[str, Any] = {"rounds": rounds}
    for label, *_ in targets:
        _fill(row, label, pooled[label])
        row[f"{label}_ratio"] = report.median(ratios.get(label, []))
    return row


def measure_mode(mode: str, sizes: list[int], *, samples: int, warmup: int, rounds: int, lab_name: str,
                 deadline: float, bar: Any = None, task: Any = None) -> list[dict[str, Any]]:
    """Bring up a lab in `mode`, measure the baseline, then each size in turn; always take it down."""
    from kplab.lab import Lab

    if Lab(lab_name).store.exists:
        raise LabError(f"lab {lab_name!r} exists: a benchmark builds its own lab "
                       f"(`kplab down --lab {lab_name}`, or pick another with --lab)")
    lab = Lab.up(lab_name, mode=mode, nodes=2, manifests=[BASE_MANIFEST])
    rows: list[dict[str, Any]] = []
    try:
        node, client = "node-1", lab.netns("client")
        echo = [(lab.pod_ip(p), node) for p in ("echo-a", "echo-b")]
        pod_target = ("pod", client, lab.pod_ip("echo-a"), ECHO_PORT)
        base_target = ("base", lab.netns("base-client"), lab.pod_ip("base-echo"), ECHO_PORT)
        taken = frozenset(str(s.spec.cluster_ip) for s in lab.services() if s.spec.cluster_ip)
        proxier = lab.proxier(node)
        for n in [0, *sizes]:
            row: dict[str, Any] = {"mode": mode, "services": n, "pick": "", "sync_s": None}
            targets = [pod_target, base_target]
            if n:
                st = workload.state(lab, node, n, echo)
                t = time.monotonic()
                res = proxier.sync(st)
                row.update(sync_s=time.monotonic() - t, sync_full=res.full)
                first, last, row["pick"] = first_last(lab.netns(node), mode, n, taken)
                row.update(first_ip=first, last_ip=last)
                targets = [("first", client, first, workload.PORT), ("last", client, last, workload.PORT), *targets]
            row.update(measure_targets(targets, samples, warmup, rounds, deadline, lab.client_cgroup("client")))
            row["loadavg"] = report.loadavg()
            rows.append(row)
            if bar is not None:
                bar.advance(task)
    finally:
        lab.down()
    return rows


def run_latency(modes: Sequence[str] = DEFAULT_MODES, sizes: Sequence[int] | str = DEFAULT_SIZES, *,
                samples: int = 1000, warmup: int = 20, rounds: int = 5, lab: str = "blat",
                deadline: float = 120.0, show_progress: bool = True) -> dict[str, Any]:
    """The latency curve of each mode (see the module docstring); a result dict for report.save()."""
    from kplab.proxy.base import proxier_class

    sizes = parse_sizes(sizes)
    if not 10 <= samples <= 100_000:
        raise KplabError(f"--samples {samples}: choose 10..100000")
    if not 1 <= rounds <= min(50, samples):
        raise KplabError(f"--rounds {rounds}: choose 1..{min(50, samples)} (each round takes samples/rounds)")
    for m in modes:
        proxier_class(m)
    result = report.new_result("latency", {"modes": list(modes), "services": sizes, "samples": samples,
                                           "warmup": warmup, "rounds": rounds, "nodes": 2, "backends": 2,
                                           "lab": lab})
    with report.progress(show_progress) as bar:
        for mode in modes:
            task = bar.add_task(f"latency {mode}", total=len(sizes) + 1)
            try:
                result["rows"] += measure_mode(mode, sizes, samples=samples, warmup=warmup, rounds=rounds,
                                               lab_name=lab, deadline=deadline, bar=bar, task=task)
            except EnvironmentProblem as e:
                if mode != "ipvs":
                    raise
                raise EnvironmentProblem(f"{e} -- or run this benchmark there: python -m kplab.testing.vm "
                                         "--collect bench/results -- -m kplab.cli bench latency --mode ipvs "
                                         "--json '{results}/latency-vm.json' --no-progress") from None
    result["notes"].append("µs of TCP connect() (SYN -> SYN-ACK) from a pod; base = pod to pod IP on a node "
                           "with no Services, interleaved with the others; ratios: p50 / base p50 per round, "
                           "median over rounds")
    picks = {r["mode"]: r["pick"] for r in result["rows"] if r.get("pick")}
    result["notes"] += [f"{m}: first/last = {p}" for m, p in picks.items()]
    return result
