"""bench/datapath: requests per second and latency through a Service, per mode, against the pod IPs.

    .venv/bin/python bench/datapath.py [--rounds 6] [--requests 1000] [--concurrency 16]
                                       [--json bench/results/datapath.json]

One lab (`bdp`, default app: Service `web` over 3 echo pods, client pod on node-1) measured in
one run, so the ratios compare like with like on this machine:

    pod IPs     the client connects to the 3 pod IPs in turn: no kube-proxy on the path
    iptables    ClusterIP:80, DNAT in the kernel (conntrack; the first packet walks the chains)
    userspace   ClusterIP:80, REDIRECT to the node's proxy process, which opens a second
                connection to the pod and relays the bytes (splice)

Per target, three loads from a load generator running in the client pod's namespace:
`connect` (a new TCP connection per request, like `kplab curl`, one at a time: latency),
`connect xC` (the same with C requests in flight: throughput) and `keepalive` (one
connection, request after request: what relaying costs once a connection exists).  The echo
workload answers every pod from one Python process, so it bounds every target alike; what
differs is the path.  The pod IPs are measured in both modes' phases; the modes alternate
their order over the rounds (the lab switches with set_mode); the summary gives medians over
the rounds and ratios paired within each round (robust on a busy, shared machine).  Every run is bounded in requests and in time, and the lab is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAB = "bdp"
MODES = ("userspace", "iptables")
DEADLINE = 30.0  # seconds per measurement, whatever the request count


# ------------------------------------------------------------------- the load generator (worker)
async def _request(loop: asyncio.AbstractEventLoop, addr: tuple[str, int], timeout: float) -> float:
    start = time.perf_counter()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(s, addr), timeout)
        await loop.sock_sendall(s, b"bench\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = await asyncio.wait_for(loop.sock_recv(s, 4096), timeout)
            if not chunk:
                raise ConnectionError("closed before the answer")
            buf += chunk
    finally:
        s.close()
    return time.perf_counter() - start


async def _connect_load(targets: list[tuple[str, int]], n: int, conc: int, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    failed = 0
    issued = 0
    deadline = time.monotonic() + DEADLINE

    async def worker() -> None:
        nonlocal issued, failed
        while issued < n and time.monotonic() < deadline:
            addr = targets[issued % len(targets)]
            issued += 1
            try:
                lat.append(await _request(loop, addr, timeout))
            except (TimeoutError, OSError):
                failed += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return {"seconds": time.perf_counter() - start, "latencies": lat, "failed": failed}


async def _keepalive_load(targets: list[tuple[str, int]], n: int, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    s = socket.create_connection(targets[0], timeout=timeout)
    s.setblocking(False)
    deadline = time.monotonic() + DEADLINE
    start = time.perf_counter()
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            await loop.sock_sendall(s, b"bench\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = await asyncio.wait_for(loop.sock_recv(s, 4096), timeout)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            lat.append(time.perf_counter() - t)
    finally:
        s.close()
    return {"seconds": time.perf_counter() - start, "latencies": lat, "failed": 0}


def worker_main(spec: dict[str, Any]) -> None:
    targets = [(ip, int(port)) for ip, port in spec["targets"]]
    if spec["load"] == "keepalive":
        res = asyncio.run(_keepalive_load(targets, spec["n"], spec["timeout"]))
    else:
        res = asyncio.run(_connect_load(targets, spec["n"], spec["concurrency"], spec["timeout"]))
    print(json.dumps(res))


# ------------------------------------------------------------------- the benchmark (driver)
def measure(netns: str, targets: list[tuple[str, int]], load: str, n: int, conc: int) -> dict[str, Any]:
    from kplab.cluster.run import netns_argv

    spec = {"targets": targets, "load": load, "n": n, "concurrency": conc, "timeout": 2.0}
    argv = netns_argv(netns, [sys.executable, __file__, "--worker", json.dumps(spec)])
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE + 30, check=True)
    raw = json.loads(cp.stdout)
    lat = sorted(raw["latencies"])
    ok = len(lat)
    return {"load": load, "concurrency": conc, "requests": ok + raw["failed"], "failed": raw["failed"],
            "rps": ok / raw["seconds"] if raw["seconds"] else 0.0,
            "p50_ms": 1000 * lat[ok // 2] if ok else None,
            "p99_ms": 1000 * lat[min(ok - 1, int(ok * 0.99))] if ok else None,
            "mean_ms": 1000 * statistics.fmean(lat) if ok else None}


def run_round(lab: Any, args: argparse.Namespace, rows: list[dict[str, Any]], rnd: int) -> None:
    netns = lab.netns("client")
    pods = sorted(p.metadata.name for p in lab.pods() if (p.metadata.labels or {}).get("app") == "web")
    pod_targets = [(lab.pod_ip(p), 8080) for p in pods]
    svc = [(lab.service_ip("web"), 80)]
    loads = [("connect", args.latency_requests, 1), (f"connect x{args.concurrency}", args.requests, args.concurrency),
             ("keepalive", args.latency_requests, 1)]
    order = MODES if rnd % 2 else tuple(reversed(MODES))  # alternate, so drift does not favour one
    for mode in order:
        if lab.mode != mode:
            lab.set_mode(mode)
        for target, addrs in ((mode, svc), ("pod IPs", pod_targets)):
            for name, n, conc in loads:
                r = measure(netns, addrs, name.split()[0], n, conc)
                r.update(target=target, load=name, round=rnd, mode=mode)
                rows.append(r)
                print(f"  round {rnd} {mode:<9} {target:<10} {name:<13} {r['rps']:>8.0f} req/s  "
                      f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  failed {r['failed']}", flush=True)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, load): medians over rounds, and ratios paired within each round.

    Each ratio is taken between runs of the same round (userspace / the pod IPs measured in
    the same mode phase, userspace / iptables of that round), then the median over rounds is
    reported: on a shared, busy machine this cancels most of the drift between rounds.
    """
    def pick(target: str, load: str, rnd: int, mode: str | None = None) -> dict[str, Any] | None:
        for r in rows:
            if (r["target"], r["load"], r["round"]) == (target, load, rnd) and mode in (None, r["mode"]):
                return r
        return None

    out = []
    for load in dict.fromkeys(r["load"] for r in rows):
        for target in ("pod IPs", *MODES):
            rs = [r for r in rows if (r["target"], r["load"]) == (target, load)]
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
                    pairs = [(r, b) for r, b in pairs if b is not None and b is not r]
                    if pairs:
                        for m in ("rps", "p50_ms", "p99_ms"):
                            s[f"{m.split('_')[0]}_vs_{key}"] = statistics.median(r[m] / b[m] for r, b in pairs)
            out.append(s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=1000, help="requests per throughput run")
    ap.add_argument("--latency-requests", type=int, default=300, help="requests per one-at-a-time run")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "datapath.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    args.rounds = max(1, min(args.rounds, 10))
    args.requests = max(10, min(args.requests, 100_000))
    args.latency_requests = max(10, min(args.latency_requests, 100_000))

    sys.path.insert(0, str(ROOT))
    from kplab import Lab, clean

    clean(lab=LAB)
    rows: list[dict[str, Any]] = []
    started = time.time()
    lab = Lab.up(LAB, mode=MODES[0])
    try:
        for rnd in range(1, args.rounds + 1):
            run_round(lab, args, rows, rnd)
    finally:
        clean(lab=LAB)
    summary = summarize(rows)
    print(f"\n{'target':<10} {'load':<13} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   "
          f"{'rps/pods':>8} {'p50/pods':>8} {'rps/ipt':>8} {'p50/ipt':>8} {'p99/ipt':>8}")
    for s in summary:
        def ratio(k: str, s: dict[str, Any] = s) -> str:
            return f"{s[k]:>8.2f}" if k in s else f"{'':>8}"

        print(f"{s['target']:<10} {s['load']:<13} {s['rps']:>8.0f} {s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f}   "
              f"{ratio('rps_vs_pods')} {ratio('p50_vs_pods')} {ratio('rps_vs_iptables')} "
              f"{ratio('p50_vs_iptables')} {ratio('p99_vs_iptables')}")
    out = {"bench": "datapath", "started": started, "lab": LAB, "rounds": args.rounds,
           "concurrency": args.concurrency, "requests": args.requests, "latency_requests": args.latency_requests,
           "summary": summary, "runs": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
