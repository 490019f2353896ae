"""Graded checks: a testinfra `netns://` backend, the check runner, reports, and `check()` for notebooks.

    from kplab.grading import check
    check("03-iptables/affinity")      # PASS/FAIL inline, with the hint on failure

Checks are pytest tests in `checks/<notebook>/test_*.py` (see `runner` for the conventions);
`kplab check`, `kplab grade` and `kplab reset` are the command-line side (`kplab/cli/course.py`).
Importing this package registers the `netns://` testinfra backend.
"""

from __future__ import annotations

from kplab.grading import netns as _netns  # noqa: F401  (registers netns://)
from kplab.grading.course import reset, start
from kplab.grading.inline import Checked, check
from kplab.grading.runner import CheckResult, list_checks, run_checks

__all__ = ["CheckResult", "Checked", "check", "list_checks", "reset", "run_checks", "start"]
