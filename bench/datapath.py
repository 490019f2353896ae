"""bench/datapath: requests per second and latency through a Service, per mode, against the pod IPs.

    .venv/bin/python bench/datapath.py [--modes userspace,iptables] [--rounds 6] [--requests 1000]
                                       [--concurrency 16] [--json bench/results/datapath.json]

The same as `kplab bench throughput`; the measuring code lives in kplab/bench/throughput.py
(the load generator in kplab/bench/loadgen.py).  Removes a leftover lab `bdp` first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kplab.bench import report, throughput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default=",".join(throughput.DEFAULT_MODES))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=1000, help="requests per throughput run")
    ap.add_argument("--latency-requests", type=int, default=300, help="requests per one-at-a-time run")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--json", default=str(report.results_dir() / "datapath.json"))
    args = ap.parse_args()
    result = throughput.run_throughput(args.modes.split(","), rounds=args.rounds, requests=args.requests,
                                       latency_requests=args.latency_requests, concurrency=args.concurrency,
                                       lab=throughput.LAB, replace=True)
    report.show(result, throughput.COLUMNS)
    report.show({"bench": "spread", "rows": result["spread"]}, throughput.SPREAD_COLUMNS)
    print(f"written: {report.save(result, args.json)}")


if __name__ == "__main__":
    main()
