"""bench/sync: a mode's sync time against loading the very same input with the plain tool.

    .venv/bin/python bench/sync.py --mode iptables --services 1000,5000,10000 --endpoints 2

For N Services x K endpoints (a synthetic ProxyState, one node of a 2-node lab), in throwaway
namespaces `kplab-bench-<mode>-{kp,raw}` made and removed here:

* full sync: kplab's `sync()` (render, node checks, ensure, load) in a fresh netns, against
  the raw loader given exactly the input kplab loaded, in another fresh netns;
* add one Service: kplab's (partial) sync of N+1 Services on top of that, against the raw
  loader given exactly the input kplab loaded for it, on top of the raw full load.

A mode takes part by keeping its last kernel input in `state_dir/last-input.txt` when
`ctx.options["keep_input"]` is set, and by an entry in RAW_LOADERS (mode -> an untimed
preparation of the raw netns and the timed plain load of that text into it).  Prints a table of seconds and ratios; writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kplab.cluster.store import Store
from kplab.proxy.base import NodeContext, proxier_class
from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName

BENCH_LAB = "bench"  # namespaces kplab-bench-*: a state dir marked "up" keeps `kplab clean` off them


def prepare_iptables(text: str, netns: str, options: dict[str, str]) -> None:
    """Untimed: what the input relies on that kplab set up on its node (the nfacct counters)."""
    from kplab.proxy.iptables_rules import NFACCT_INVALID, NFACCT_LOCALHOST_NP

    for name in (NFACCT_INVALID, NFACCT_LOCALHOST_NP):
        if name in text:
            subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", "nfacct", "add", name], check=False)


def load_iptables(text: str, netns: str, options: dict[str, str]) -> None:
    from kplab.proxy.iptables import TOOLS, detect_backend

    restore = TOOLS[detect_backend(options.get("iptables_backend"))][2]
    ns = ["nsenter", f"--net=/run/netns/{netns}", "--"]
    subprocess.run([*ns, restore, "-w", "5", "--noflush", "--counters"], input=text, text=True, check=True)


def prepare_nothing(text: str, netns: str, options: dict[str, str]) -> None:
    """The nftables input needs nothing from the node beyond the netns."""


def load_nftables(text: str, netns: str, options: dict[str, str]) -> None:
    subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", "nft", "-f", "-"], input=text, text=True, check=True)


Loader = Callable[[str, str, dict[str, str]], None]
# mode -> (untimed preparation of the raw netns, timed raw load of kplab's exact input)
RAW_LOADERS: dict[str, tuple[Loader, Loader]] = {
    "iptables": (prepare_iptables, load_iptables),
    "nftables": (prepare_nothing, load_nftables),
}


def synthetic_state(services: int, endpoints: int) -> ProxyState:
    """N ClusterIP Services (half of them also NodePort) with K endpoints spread over 2 nodes."""
    state = ProxyState(node_name="node-1", node_ips=("172.18.0.11",))
    for i in range(services):
        add_service(state, i, endpoints)
    return state


def add_service(state: ProxyState, i: int, endpoints: int) -> None:
    name = ServicePortName(f"ns{i % 97}", f"svc{i}", "http", "TCP")
    state.services[name] = ServicePort(
        name, f"10.96.{i // 250}.{i % 250 + 1}", 80, node_port=30000 + i % 2700 if i % 2 else 0,
        service_type="NodePort" if i % 2 else "ClusterIP",
    )  # fmt: skip
    eps = []
    for k in range(endpoints):
        n = i * endpoints + k
        node = f"node-{k % 2 + 1}"
        eps.append(Endpoint(f"10.{244 + k % 2}.{n // 250 % 250}.{n % 250 + 1}", 8080, node, node == "node-1"))
    state.endpoints[name] = eps


def netns_add(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["nsenter", f"--net=/run/netns/{name}", "ip", "link", "set", "lo", "up"], check=True)


def netns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_one(mode: str, services: int, endpoints: int, options: dict[str, str]) -> dict[str, float]:
    cls = proxier_class(mode)
    kp, raw = f"kplab-bench-{mode[:4]}-kp", f"kplab-bench-{mode[:4]}-raw"
    state = synthetic_state(services, endpoints)
    with tempfile.TemporaryDirectory(prefix="kplab-bench-") as tmp:
        ctx = NodeContext(BENCH_LAB, "node-1", kp, Path(tmp), {**options, "keep_input": True})
        proxier = cls(ctx)
        last = Path(tmp) / "last-input.txt"
        try:
            for ns in (kp, raw):
                netns_add(ns)
            full = timed(lambda: proxier.sync(state))
            full_input = last.read_text()
            prepare, load = RAW_LOADERS[mode]
            prepare(full_input, raw, options)
            full_raw = timed(lambda: load(full_input, raw, options))
            add_service(state, services, endpoints)
            add = timed(lambda: proxier.sync(state))
            add_input = last.read_text()
            add_raw = timed(lambda: load(add_input, raw, options))
        finally:
            for ns in (kp, raw):
                netns_del(ns)
    return {
        "services": services,
        "endpoints": endpoints,
        "full_kplab": full,
        "full_raw": full_raw,
        "full_ratio": full / full_raw,
        "full_lines": full_input.count("\n"),
        "add_one_kplab": add,
        "add_one_raw": add_raw,
        "add_one_ratio": add / add_raw,
        "add_one_lines": add_input.count("\n"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="iptables", choices=sorted(RAW_LOADERS))
    ap.add_argument("--services", default="1000,5000,10000")
    ap.add_argument("--endpoints", type=int, default=2)
    ap.add_argument(
        "--option", action="append", default=[], help="mode option KEY=VALUE, e.g. iptables_backend=legacy"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/sync needs root (network namespaces)", file=sys.stderr)
        return 2
    options = dict(o.split("=", 1) for o in args.option)
    store = Store(BENCH_LAB)
    store.dir.mkdir(parents=True, exist_ok=True)
    store.save({"status": "up", "purpose": "bench/sync namespaces"})
    rows = []
    try:
        print(
            f"{'services':>8} {'lines':>7} {'full kplab':>10} {'full raw':>9} {'ratio':>5}   {'add-1 kplab':>11} {'add-1 raw':>9} {'ratio':>5}"
        )
        for n in (int(x) for x in args.services.split(",")):
            r = bench_one(args.mode, n, args.endpoints, options)
            rows.append(r)
            print(f"{n:>8} {r['full_lines']:>7} {r['full_kplab']:>10.3f} {r['full_raw']:>9.3f} {r['full_ratio']:>5.2f}   "
                  f"{r['add_one_kplab']:>11.3f} {r['add_one_raw']:>9.3f} {r['add_one_ratio']:>5.2f}", flush=True)  # fmt: skip
    finally:
        if not any(n.startswith("kplab-bench-") for n in os.listdir("/run/netns")):
            subprocess.run(["rm", "-rf", str(store.dir)], check=False)
    out = args.json or ROOT / "bench" / "results" / f"sync-{args.mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "mode": args.mode,
        "options": options,
        "load_avg": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
