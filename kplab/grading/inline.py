"""`check("03-iptables/affinity")` in a notebook: run checks in a fresh process, show them inline.

The checks run in a child process (`python -m kplab.grading`) so that a learner's kernel never
imports the check modules and each run sees the current lab afresh.  Each outcome is added to the
learner's progress record (`kplab.grading.progress`).  The returned object renders
as HTML in JupyterLab (a green or red box with the hint on failure) and as text elsewhere; its
HTML carries `data-outcome`, which the notebook tests read.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys

from kplab.grading import progress
from kplab.grading.runner import NA, CheckResult

COLORS = {"passed": ("#e6f4ea", "#1e8e3e", "PASS"), "failed": ("#fce8e6", "#d93025", "FAIL"),
          "error": ("#fef7e0", "#b06000", "ERROR"), NA: ("#f1f3f4", "#5f6368", "N/A")}


class Checked:
    """The results of one `check()` call: truthy when every check passed."""

    def __init__(self, results: list[CheckResult]) -> None:
        self.results = results

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        lines = []
        for r in self.results:
            lines.append(f"{COLORS[r.outcome][2]:5} {r.id}: {r.title}")
            if not r.passed:
                lines += [f"      {r.message}"] + ([f"      Hint: {r.hint}"] if r.hint else [])
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return "".join(_box(r) for r in self.results)


def _box(r: CheckResult) -> str:
    bg, fg, word = COLORS.get(r.outcome, COLORS["error"])
    parts = [f"<b style='color:{fg}'>{word}</b> <code>{html.escape(r.id)}</code> {html.escape(r.title)}"]
    if not r.passed and r.message:
        parts.append(f"<div style='margin-top:4px'>{html.escape(r.message)}</div>")
    if not r.passed and r.hint:
        parts.append(f"<div style='margin-top:4px'><i>Hint:</i> {html.escape(r.hint)}</div>")
    return (f"<div class='kplab-check' data-check-id='{html.escape(r.id)}' data-outcome='{r.outcome}' "
            f"style='background:{bg};border-left:4px solid {fg};padding:6px 10px;margin:4px 0'>"
            + "".join(parts) + "</div>")


def _could_not_run(selection: tuple[str, ...], why: str) -> Checked:
    """A red box instead of a traceback: the learner sees why, in one line."""
    return Checked([CheckResult(" ".join(selection) or "all checks", "could not run", outcome="error", message=why)])


def check(*selection: str, lab: str | None = None, timeout: float = 300.0) -> Checked:
    """Run checks by id (`03-iptables/affinity`) or notebook (`03-iptables`) against the lab."""
    env = dict(os.environ)
    if lab:
        env["KPLAB_LAB"] = lab
    argv = [sys.executable, "-m", "kplab.grading", *selection]
    try:
        cp = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return _could_not_run(selection, f"the checks did not finish within {timeout:.0f}s")
    if cp.returncode != 0:
        lines = (cp.stderr.strip() or cp.stdout.strip() or "the check runner failed").splitlines()
        return _could_not_run(selection, lines[-1].removeprefix("error: "))
    fields = CheckResult.__dataclass_fields__
    results = [CheckResult(**{k: v for k, v in d.items() if k in fields}) for d in json.loads(cp.stdout)]
    progress.record(results, via="check()")
    return Checked(results)
