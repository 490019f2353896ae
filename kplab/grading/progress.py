"""The learner's progress record and id, kept in their work folder (it survives `kplab down`/`up`).

Every `check()` in a notebook and every `kplab check` appends one JSON line per check to
`<work>/.kplab/progress.jsonl`: time, check id, outcome, the digest of the check's source and the
kplab version.  `kplab progress` and each notebook's first cell (`start(...)`) summarise it.  It
is a record of what the learner saw, never a grade: `kplab grade` replays the notebooks.

The work folder is `$KPLAB_WORK`, else the current folder when it holds the course's notebooks,
else its `labs/`, else the repository's `labs/`.  The learner id is kept there too (`learner`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kplab.errors import CheckError
from kplab.grading.runner import REPO, CheckResult

NOTEBOOK = "[0-9][0-9]-*.ipynb"
LEARNER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def work_dir(explicit: str | Path | None = None) -> Path:
    """The learner's work folder (see the module docstring)."""
    if explicit:
        return Path(explicit)
    if os.environ.get("KPLAB_WORK"):
        return Path(os.environ["KPLAB_WORK"])
    here = Path.cwd()
    for candidate in (here, here / "labs"):
        if any(candidate.glob(NOTEBOOK)):
            return candidate
    return REPO / "labs"


def _dir(work: Path) -> Path:
    return work / ".kplab"


def record(results: Iterable[CheckResult], via: str, work: Path | None = None) -> None:
    """Append each result to the progress record; never fails a check (a read-only folder: no record)."""
    if os.environ.get("KPLAB_PROGRESS") == "off":  # the grader's replay: not the learner's doing
        return
    from kplab.grading.report import kplab_version

    now, version = time.strftime("%Y-%m-%dT%H:%M:%S%z"), kplab_version()
    lines = [json.dumps({"time": now, "id": r.id, "outcome": r.outcome, "digest": r.digest,
                         "kplab_version": version, "via": via, "message": r.message[:200]}) + "\n"
             for r in results]
    try:
        folder = _dir(work or work_dir())
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "progress.jsonl", "a") as f:
            f.writelines(lines)
    except OSError:
        pass


def load(work: Path | None = None) -> list[dict[str, Any]]:
    """Every record, oldest first; lines that are not JSON are skipped."""
    path = _dir(work or work_dir()) / "progress.jsonl"
    out = []
    try:
        text = path.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec and "outcome" in rec:
            out.append(rec)
    return out


def course_checks(labs: Path | None = None) -> dict[str, list[str]]:
    """notebook -> its check ids, in order, read from the release (the learner edition in labs/)."""
    import nbformat

    out: dict[str, list[str]] = {}
    for path in sorted((labs or REPO / "labs").glob(NOTEBOOK)):
        nb = nbformat.read(path, as_version=4)
        ids = []
        for cell in nb.cells:
            if "check" in cell.metadata.get("tags", []):
                ids += re.findall(r'check\("([^"]+/[^"]+)"\)', cell.source)
        out[path.stem] = ids
    return out


def summary(records: list[dict[str, Any]], checks: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """check id -> {first_passed, last, tries}: when it first passed, its latest outcome, how many runs."""
    out: dict[str, dict[str, Any]] = {cid: {"first_passed": "", "last": "", "tries": 0}
                                      for ids in checks.values() for cid in ids}
    for rec in records:
        s = out.setdefault(rec["id"], {"first_passed": "", "last": "", "tries": 0})
        s["tries"] += 1
        s["last"] = rec["outcome"]
        if rec["outcome"] == "passed" and not s["first_passed"]:
            s["first_passed"] = rec.get("time", "")
    return out


def standing(notebook: str, work: Path | None = None) -> str:
    """One line for a notebook's first cell: this notebook's checks passed, and the course's."""
    checks = course_checks()
    done = summary(load(work), checks)
    course_ids = [cid for ids in checks.values() for cid in ids]
    passed = [cid for cid in course_ids if done[cid]["first_passed"]]
    mine = checks.get(notebook, [])
    mine_passed = [cid for cid in mine if done[cid]["first_passed"]]
    names = ", ".join(f"{cid.partition('/')[2]} {'✓' if cid in mine_passed else '·'}" for cid in mine)
    return (f"Your progress: {notebook} {len(mine_passed)} of {len(mine)} checks passed ({names}); "
            f"the course {len(passed)} of {len(course_ids)}. `kplab progress` shows it all.")


def table(work: Path | None = None) -> list[dict[str, Any]]:
    """A row per check of the course (and of any recorded check no longer in it)."""
    checks = course_checks()
    done = summary(load(work), checks)
    return [{"id": cid, "notebook": cid.partition("/")[0], **s} for cid, s in done.items()]  # course order


# ---------------------------------------------------------------------------- who is graded
def _valid(learner: str, where: str) -> str:
    learner = learner.strip()
    if not LEARNER_ID.match(learner):
        raise CheckError(f"learner id {learner!r} ({where}): use 1-64 letters, digits, '.', '_', '@' or '-'")
    return learner


def learner_id(explicit: str | None = None, work: Path | None = None, ask: bool = True) -> str:
    """`--learner`, else $JUPYTERHUB_USER (the hub's user name), else $KPLAB_LEARNER, else the id kept
    in the work folder, else asked once on a terminal and kept there."""
    if explicit:
        return _valid(explicit, "--learner")
    for var in ("JUPYTERHUB_USER", "KPLAB_LEARNER"):
        if os.environ.get(var):
            return _valid(os.environ[var], f"${var}")
    path = _dir(work or work_dir()) / "learner"
    try:
        kept = path.read_text().strip()
    except OSError:
        kept = ""
    if kept:
        return _valid(kept, str(path))
    if not (ask and sys.stdin.isatty()):
        raise CheckError(f"who is this? no learner id in {path}: pass --learner NAME "
                         "(it is kept there for next time)")
    name = _valid(input("Your name for the gradebook (kept in your work folder): "), "typed")
    keep_learner(name, work)
    return name


def keep_learner(name: str, work: Path | None = None) -> None:
    path = _dir(work or work_dir()) / "learner"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name + "\n")
    except OSError as e:
        raise CheckError(f"cannot keep the learner id in {path}: {e.strerror}") from None
