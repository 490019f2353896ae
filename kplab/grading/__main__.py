"""`python -m kplab.grading [ID|NOTEBOOK]...`: run checks, print their results as one JSON list.

The child process behind `check()` in notebooks; people use `kplab check` instead.
"""

from __future__ import annotations

import json
import sys

from kplab.errors import KplabError
from kplab.grading.runner import run_checks


def main(argv: list[str]) -> int:
    try:
        results = run_checks(argv)
    except KplabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps([r.to_dict() for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
