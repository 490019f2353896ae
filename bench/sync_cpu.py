"""bench/sync_cpu: where a sync's CPU goes: kplab's own Python, or the kernel loader it runs.

    .venv/bin/python bench/sync_cpu.py --mode nftables --services 1000,5000,10000 [--rounds 3]

bench/sync.py compares wall times, which a busy shared machine blurs (other processes take
the CPU while nft waits). CPU seconds hold up better: for each full and add-one-Service sync
(the synthetic state of kplab.bench.sync), `kplab` is the CPU of this process (render, plan,
memory), `tool` the CPU of the processes it ran (nft or iptables-restore, the kernel work of
a netlink transaction included), `raw` the CPU of the plain tool loading the same input in
another namespace, same run. overhead = kplab / raw. Namespaces kplab-<name>-* are made and
removed here.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kplab.bench import report
from kplab.bench.report import Column
from kplab.bench.sync import RAW_LOADERS, add_service, netns_add, netns_del, synthetic_state
from kplab.cluster.store import Store
from kplab.proxy.base import NodeContext, proxier_class

COLUMNS = [
    Column("services", "Services", "{:,}"),
    Column("full_kplab", "full kplab cpu", "{:.3f}"),
    Column("full_tool", "tool", "{:.3f}"),
    Column("full_raw", "raw", "{:.3f}"),
    Column("full_overhead", "overhead", "{:.1%}"),
    Column("add_kplab", "add-1 kplab cpu", "{:.3f}"),
    Column("add_tool", "tool", "{:.3f}"),
    Column("add_raw", "raw", "{:.3f}"),
    Column("add_overhead", "overhead", "{:.1%}"),
]


def cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """(this process, its children) CPU seconds spent in fn()."""
    s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    fn()
    s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime,
            c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)  # fmt: skip


def one_round(mode: str, n: int, lab: str) -> dict[str, float]:
    kp, raw = f"kplab-{lab}-kp", f"kplab-{lab}-raw"
    state = synthetic_state(n, 2)
    prepare, load = RAW_LOADERS[mode]
    with tempfile.TemporaryDirectory(prefix=f"kplab-{lab}-") as tmp:
        proxier = proxier_class(mode)(NodeContext(lab, "node-1", kp, Path(tmp), {"keep_input": True}))
        last = Path(tmp) / "last-input.txt"
        made = []
        try:
            for ns in (kp, raw):
                netns_add(ns)
                made.append(ns)
            full = cpu(lambda: proxier.sync(state))
            text = last.read_text()
            prepare(text, raw, {})
            full_raw = cpu(lambda: load(text, raw, {}))[1]
            add_service(state, n, 2)
            add = cpu(lambda: proxier.sync(state))
            text = last.read_text()
            add_raw = cpu(lambda: load(text, raw, {}))[1]
        finally:
            for ns in made:
                netns_del(ns)
    return {"full_kplab": full[0], "full_tool": full[1], "full_raw": full_raw, "full_overhead": full[0] / full_raw,
            "add_kplab": add[0], "add_tool": add[1], "add_raw": add_raw, "add_overhead": add[0] / add_raw}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="nftables", choices=sorted(RAW_LOADERS))
    ap.add_argument("--services", default="1000,5000,10000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default="benchcpu", help="lab name of the throwaway namespaces")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/sync_cpu needs root (network namespaces)", file=sys.stderr)
        return 2
    store = Store(args.name)
    store.dir.mkdir(parents=True, exist_ok=True)
    store.save({"status": "up", "purpose": "bench/sync_cpu namespaces"})  # keeps `kplab clean` off them
    result = report.new_result("sync-cpu", {"mode": args.mode, "services": args.services, "rounds": args.rounds})
    try:
        for n in (int(x) for x in args.services.split(",")):
            rounds = [one_round(args.mode, n, args.name) for _ in range(args.rounds)]
            row = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            result["rows"].append({"services": n, **row, "loadavg": report.loadavg()})
    finally:
        shutil.rmtree(store.dir, ignore_errors=True)
    result["notes"].append("CPU seconds, medians over rounds; overhead = kplab's own CPU / the raw tool's CPU")
    report.show(result, COLUMNS)
    print(f"wrote {report.save(result, Path(__file__).parent / 'results' / f'sync-cpu-{args.mode}.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
