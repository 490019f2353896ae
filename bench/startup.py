"""bench/startup: how fast a lab comes up, against a plain `ip` script building the same topology.

    .venv/bin/python bench/startup.py [--pods 4 100] [--rounds 3] [--json bench/results/startup.json]

The same as `kplab bench startup`; the measuring code lives in kplab/bench/startup.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kplab.bench import report, startup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, nargs="*", default=[4, 100], help="4 = the default lab")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", default="iptables")
    ap.add_argument("--json", default=None, help="default bench/results/startup.json")
    args = ap.parse_args()
    result = startup.run_startup(args.pods, args.rounds, args.mode)
    report.show(result, startup.COLUMNS)
    print(f"written: {report.save(result, args.json)}")


if __name__ == "__main__":
    main()
