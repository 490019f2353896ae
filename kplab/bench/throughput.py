"""throughput: requests per second and latency through each mode, against the pod IPs directly.

    kplab bench throughput --mode userspace,iptables,nftables [--rounds 6]

One lab (default `bdp`, the default app: Service `web` over 3 echo pods, client pod on
node-1) measured in one run, so the ratios compare like with like on this machine:

    pod IPs     the client connects to the 3 pod IPs in turn: no kube-proxy on the path,
                the physical limit of this machine for this workload
    <mode>      ClusterIP:80 through the mode (iptables/nftables/IPVS: DNAT in the kernel;
                userspace: REDIRECT to the node's proxy process, which relays the bytes)

Per target, three loads from kplab.bench.loadgen in the client pod's namespace: `connect`
(a new TCP connection per request, one at a time: latency), `connect xC` (C in flight:
throughput) and `keepalive` (one connection, request after request).  The echo workload
answers every pod from one Python process, so it bounds every target alike; what differs is
the path.  The pod IPs are measured in each mode's phase; the modes alternate their order
over the rounds (the lab switches with set_mode); the summary gives medians over the rounds
and ratios paired within each round (robust on a busy, shared machine).  Then, per mode,
`spread` fresh connections through the Service show how it balances over the 3 pods.
(Measuring logic by the userspace mode's author, moved here from bench/datapath.py.)
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kplab.bench import report
from kplab.bench.loadgen import DEADLINE
from kplab.bench.report import Column
from kplab.errors import KplabError, LabError

LAB = "bdp"
DEFAULT_MODES = ("userspace", "iptables")
LOADGEN = str(Path(__file__).with_name("loadgen.py"))

COLUMNS = [
    Column("target", "target"),
    Column("load", "load", left=True),
    Column("rps", "req/s", "{:.0f}"),
    Column("p50_ms", "p50 ms", "{:.3f}"),
    Column("p99_ms", "p99 ms", "{:.3f}"),
    Column("rps_vs_pods", "rps/pods", "{:.2f}"),
    Column("p50_vs_pods", "p50/pods", "{:.2f}"),
    Column("p99_vs_pods", "p99/pods", "{:.2f}"),
    Column("rps_vs_iptables", "rps/ipt", "{:.2f}"),
    Column("p50_vs_iptables", "p50/ipt", "{:.2f}"),
]
SPREAD_COLUMNS = [
    Column("mode", "mode"),
    Column("requests", "requests"),
    Column("shares", "answers per pod", left=True),
    Column("max_dev_pct", "max dev %", "{:.1f}"),
    Column("chi2", "chi²", "{:.2f}"),
    Column("p_uniform", "p (uniform)", "{:.3f}"),
]


def measure(netns: str, targets: list[tuple[str, int]], load: str, n: int, conc: int,
            cgroup: str | None = None) -> dict[str, Any]:
    from kplab.cluster.run import netns_argv

    spec = {"targets": targets, "load": load, "n": n, "concurrency": conc, "timeout": 2.0, "cgroup": cgroup}
    argv = netns_argv(netns, [sys.executable, LOADGEN, json.dumps(spec)])
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE + 30, check=True)
    raw = json.loads(cp.stdout)
    lat = sorted(raw["latencies"])
    ok = len(lat)
    return {"load": load, "concurrency": conc, "requests": ok + raw["failed"], "failed": raw["failed"],
            "rps": ok / raw["seconds"] if raw["seconds"] else 0.0,
            "p50_ms": 1000 * lat[ok // 2] if ok else None,
            "p99_ms": 1000 * lat[min(ok - 1, int(ok * 0.99))] if ok else None,
            "mean_ms": 1000 * statistics.fmean(lat) if ok else None}


def run_round(lab: Any, modes: Sequence[str], loads: list[tuple[str, int, int]], rows: list[dict[str, Any]],
              rnd: int, bar: Any = None, task: Any = None) -> None:
    netns = lab.netns("client")
    pods = sorted(p.metadata.name for p in lab.pods() if (p.metadata.labels or {}).get("app") == "web")
    pod_targets = [(lab.pod_ip(p), 8080) for p in pods]
    svc = [(lab.service_ip("web"), 80)]
    order = tuple(modes) if rnd % 2 else tuple(reversed(modes))  # alternate, so drift does not favour one
    for mode in order:
        if lab.mode != mode:
            lab.set_mode(mode)
        for target, addrs in ((mode, svc), ("pod IPs", pod_targets)):
            for name, n, conc in loads:
                r = measure(netns, addrs, name.split()[0], n, conc, lab.client_cgroup("client"))
                r.update(target=target, load=name, round=rnd, mode=mode)
                rows.append(r)
                if bar is not None:
                    bar.advance(task)


def summarize(rows: list[dict[str, Any]], modes: Sequence[str]) -> list[dict[str, Any]]:
    """Per (target, load): medians over rounds, and ratios paired within each round.

    Each ratio is taken between runs of the same round (a mode / the pod IPs measured in the
    same mode phase, a mode / iptables of that round), then the median over rounds is
    reported: on a shared, busy machine this cancels most of the drift between rounds.
    """
    def pick(target: str, load: str, rnd: int, mode: str | None = None) -> dict[str, Any] | None:
        for r in rows:
            if (r["target"], r["load"], r["round"]) == (target, load, rnd) and mode in (None, r["mode"]):
                return r
        return None

    out = []
    for load in dict.fromkeys(r["load"] for r in rows):
        for target in ("pod IPs", *modes):
            rs = [r for r in rows if (r["target"], r["load"]) == (target, load) and r["p50_ms"] is not None]
            if not rs:
                continue
            s: dict[str, Any] = {"target": target, "load": load, "runs": len(rs),
                                 "rps": statistics.median(r["rps"] for r in rs),
                                 "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                                 "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                                 "failed": sum(r["failed"] for r in rs)}
            if target != "pod IPs":
                for base, key in (("pod IPs", "pods"), ("iptables", "iptables")):
                    pairs = [(r, pick(base, load, r["round"], target if base == "pod IPs" else None)) for r in rs]
                    pairs = [(r, b) for r, b in pairs if b is not None and b is not r and b["p50_ms"]]
                    if pairs:
                        for m in ("rps", "p50_ms", "p99_ms"):
                            s[f"{m.split('_')[0]}_vs_{key}"] = statistics.median(r[m] / b[m] for r, b in pairs)
            out.append(s)
    return out


def spread(counts: dict[str, int], pods: int) -> dict[str, Any]:
    """How evenly answers fell on `pods` backends: max deviation from even, chi² and its p-value."""
    total = sum(counts.values())
    if not total or pods < 2:
        return {"requests": total, "counts": counts}
    expected = total / pods
    observed = list(counts.values()) + [0] * (pods - len(counts))
    chi2 = sum((o - expected) ** 2 / expected for o in observed)
    df = pods - 1
    p = None
    if df % 2 == 0:  # chi² survival function, closed form for an even df
        p = math.exp(-chi2 / 2) * sum((chi2 / 2) ** i / math.factorial(i) for i in range(df // 2))
    return {"requests": total, "counts": dict(sorted(counts.items())), "shares": "/".join(map(str, sorted(observed))),
            "chi2": chi2, "df": df, "p_uniform": p,
            "max_dev_pct": 100 * max(abs(o - expected) for o in observed) / expected}


def run_throughput(modes: Sequence[str] = DEFAULT_MODES, *, rounds: int = 6, requests: int = 1000,
                   latency_requests: int = 300, concurrency: int = 16, spread_requests: int = 300,
                   lab: str = LAB, replace: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Throughput and latency per mode against the pod IPs; `replace` removes a lab of that name first."""
    from kplab import Lab, clean
    from kplab.proxy.base import proxier_class

    if not modes:
        raise KplabError("--mode: name at least one mode")
    for m in modes:
        proxier_class(m)
    rounds = max(1, min(rounds, 10))
    requests = max(10, min(requests, 100_000))
    latency_requests = max(10, min(latency_requests, 100_000))
    if not 1 <= concurrency <= 256:
        raise KplabError(f"--concurrency {concurrency}: choose 1..256")
    if replace:
        clean(lab=lab)
    elif Lab(lab).store.exists:
        raise LabError(f"lab {lab!r} exists: a benchmark builds its own lab "
                       f"(`kplab down --lab {lab}`, or pick another with --lab)")
    loads = [("connect", latency_requests, 1), (f"connect x{concurrency}", requests, concurrency),
             ("keepalive", latency_requests, 1)]
    result = report.new_result("throughput", {
        "modes": list(modes), "rounds": rounds, "requests": requests, "latency_requests": latency_requests,
        "concurrency": concurrency, "spread_requests": spread_requests, "lab": lab})
    runs: list[dict[str, Any]] = []
    spreads = []
    with report.progress(show_progress) as bar:
        task = bar.add_task(f"throughput {','.join(modes)}", total=rounds * len(modes) * 2 * len(loads) + len(modes))
        lab_ = Lab.up(lab, mode=modes[0])
        try:
            for rnd in range(1, rounds + 1):
                run_round(lab_, modes, loads, runs, rnd, bar, task)
            n_pods = sum(1 for p in lab_.pods() if (p.metadata.labels or {}).get("app") == "web")
            for mode in modes:
                if lab_.mode != mode:
                    lab_.set_mode(mode)
                got = lab_.curl("client", "web", n=spread_requests) if spread_requests else None
                spreads.append({"mode": mode, **spread(got.backends if got else {}, n_pods)})
                bar.advance(task)
        finally:
            lab_.down()
    result["rows"] = summarize(runs, modes)
    result["runs"] = runs
    result["spread"] = spreads
    result["notes"].append("rps/pods, p50/pods: paired with the pod IPs measured in the same round and mode "
                           "phase; medians over rounds")
    return result
