"""bench/sync: a mode's sync time against loading the very same input with the plain tool.

    .venv/bin/python bench/sync.py --mode iptables --services 1000,5000,10000 --endpoints 2 [--rounds 1]

The same as `kplab bench sync`; the measuring code (and RAW_LOADERS, where a mode adds its
plain loader) lives in kplab/bench/sync.py.  Writes bench/results/sync-<mode>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kplab.bench import report, sync
from kplab.errors import KplabError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="iptables", choices=sorted(sync.RAW_LOADERS))
    ap.add_argument("--services", default="1000,5000,10000")
    ap.add_argument("--endpoints", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--option", action="append", default=[], help="mode option KEY=VALUE, e.g. iptables_backend=legacy"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    options = dict(o.split("=", 1) for o in args.option)
    try:
        result = sync.run_sync(args.mode, args.services, args.endpoints, args.rounds, options)
    except KplabError as e:
        print(f"bench/sync: {e}", file=sys.stderr)
        return 2
    report.show(result, sync.COLUMNS)
    print(f"wrote {report.save(result, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
