"""The check runner: graded checks are pytest tests, run programmatically against the current lab.

A check is a test function in `checks/<notebook>/test_*.py`; its id is `<notebook>/<name>`, the
function `test_affinity` in `checks/03-iptables/` being `03-iptables/affinity` (underscores
in the name become dashes).  Its docstring is
the learner-facing text, by convention:

    def test_affinity(lab):
        '''The Service `web` pins each client to one backend (sessionAffinity: ClientIP).

        Hint: set `spec.sessionAffinity: ClientIP` on the Service and apply it again.
        '''

The first paragraph is the title, the rest (with or without "Hint:") is the hint shown when the
check fails.  An AssertionError is a failed check (its message is shown); any other exception means
the check could not run, reported as an error.  Each result carries a digest of the check's source
so a report shows when a check changed between two gradings.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from kplab.errors import CheckError

REPO = Path(__file__).resolve().parents[2]
NA = "not-applicable"  # a check this machine cannot run (no IPVS): left out of the percentage


@dataclass
class CheckResult:
    """One check's outcome, as reports and notebooks show it."""

    id: str  # "03-iptables/affinity"
    title: str = ""
    hint: str = ""
    outcome: str = "error"  # passed | failed | error | not-applicable; a check that never ran is an error
    message: str = "did not run"  # the assertion message, or why the check could not run
    seconds: float = 0.0
    digest: str = ""  # first 12 hex of sha256(check source): a changed check shows
    started: str = ""  # ISO time

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    @property
    def applicable(self) -> bool:
        return self.outcome != NA

    @property
    def notebook(self) -> str:
        return self.id.partition("/")[0]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "notebook": self.notebook}


def checks_dir() -> Path:
    """Where the checks live: `$KPLAB_CHECKS`, else `checks/` beside the kplab package."""
    return Path(os.environ.get("KPLAB_CHECKS") or REPO / "checks")


def check_id(item: pytest.Item) -> str:
    """`checks/03-iptables/test_x.py::test_walk_the_chains` -> `03-iptables/walk-the-chains`."""
    name = getattr(item, "originalname", item.name).removeprefix("test_").replace("_", "-")
    return f"{item.path.parent.name}/{name}"


def split_docstring(doc: str | None) -> tuple[str, str]:
    """(title, hint) from a check's docstring: first paragraph, then the rest."""
    text = inspect.cleandoc(doc or "")
    title, _, rest = text.partition("\n\n")
    hint = rest.strip()
    hint = hint[len("Hint:"):].strip() if hint.lower().startswith("hint:") else hint
    return " ".join(title.split()), hint


def digest(obj: Any) -> str:
    try:
        src = inspect.getsource(obj)
    except (OSError, TypeError):
        return ""
    return hashlib.sha256(src.encode()).hexdigest()[:12]


def _matches(cid: str, wanted: list[str]) -> bool:
    """`03-iptables/affinity`, `03-iptables`, or just `03` select checks."""
    nb = cid.partition("/")[0]
    return any(w == cid or w == nb or nb.startswith(f"{w}-") for w in wanted)


def _short(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """The learner-facing part of a failure: the assertion message without pytest's rewrite."""
    text = str(excinfo.value).strip()
    if excinfo.errisinstance(AssertionError):
        text = text.split("\nassert ")[0].strip()
        if not text or text.startswith("assert "):
            return "the check's condition is not met" + (f": {text.splitlines()[0]}" if text else "")
        return text
    return f"{type(excinfo.value).__name__}: {text}"


class _Collector:
    """A pytest plugin that selects checks by id and records one CheckResult per check."""

    def __init__(self, wanted: list[str]) -> None:
        self.wanted = wanted
        self.results: dict[str, CheckResult] = {}
        self.collect_errors: list[str] = []

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        keep, drop = [], []
        for item in items:
            (keep if not self.wanted or _matches(check_id(item), self.wanted) else drop).append(item)
        items[:] = keep
        if drop:
            config.hook.pytest_deselected(items=drop)
        for item in keep:
            title, hint = split_docstring(item.obj.__doc__)  # type: ignore[attr-defined]
            self.results[check_id(item)] = CheckResult(check_id(item), title, hint, digest=digest(item.obj))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append(f"{report.nodeid}: {str(report.longrepr).strip().splitlines()[-1]}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        res = self.results.get(check_id(item))
        if res is not None:
            self._record(res, call)
        return report

    @staticmethod
    def _record(res: CheckResult, call: pytest.CallInfo[None]) -> None:
        if call.when == "setup":
            res.started = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(call.start))
        res.seconds = round(res.seconds + call.duration, 4)
        exc = call.excinfo
        if exc is None:
            if call.when == "call":
                res.outcome, res.message = "passed", ""
        elif call.when == "teardown" and res.outcome != "passed":
            pass  # keep the first problem
        elif exc.errisinstance(pytest.skip.Exception):
            res.outcome, res.message = NA, str(getattr(exc.value, "msg", exc.value))
        elif call.when == "call" and exc.errisinstance(AssertionError):
            res.outcome, res.message = "failed", _short(exc)
        else:
            res.outcome, res.message = "error", _short(exc)


def _pytest(wanted: list[str], *extra: str) -> _Collector:
    root = checks_dir()
    if not (root / "pytest.ini").is_file():
        raise CheckError(f"no checks at {root} (set KPLAB_CHECKS to the checks/ folder)")
    collector = _Collector(wanted)
    args = [str(root), "-c", str(root / "pytest.ini"), "--rootdir", str(root),
            "-p", "no:cacheprovider", "-p", "no:terminal", "--import-mode=importlib", *extra]
    code = pytest.main(args, plugins=[collector])
    if code in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        raise CheckError(f"pytest could not run the checks in {root} (exit {int(code)})")
    if collector.collect_errors:
        raise CheckError("checks could not be loaded: " + "; ".join(collector.collect_errors))
    if wanted and not collector.results:
        raise CheckError(f"no check matches {', '.join(wanted)}: `kplab check --list` shows them")
    return collector


def run_checks(selection: list[str] | None = None, *, lab: str | None = None) -> list[CheckResult]:
    """Run the selected checks (ids, notebooks, or all) in this process; one result per check."""
    if lab:
        os.environ["KPLAB_LAB"] = lab
    collector = _pytest([s.strip("/") for s in selection or []])
    return sorted(collector.results.values(), key=lambda r: r.id)


def list_checks(selection: list[str] | None = None) -> list[CheckResult]:
    """The checks that exist (id, title, hint, digest), without running them."""
    collector = _pytest([s.strip("/") for s in selection or []], "--collect-only")
    return sorted(collector.results.values(), key=lambda r: r.id)
