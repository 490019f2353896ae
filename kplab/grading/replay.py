"""Whole-course grading by replay: each saved notebook, from its starting state, checked in place.

For every notebook of the release (the learner edition the grader ships, labs/*.ipynb): put the
grading lab in the notebook's starting state (`course.reset`), execute the learner's saved
notebook with nbclient (a bounded time per cell; a cell that raises is recorded with its number
and the run goes on), and at the place of each of the release's check cells run that check in a
child process against the lab.  The release's check cell is what counts, whatever the learner made
of theirs: found again by its cell id, or put back after the cell that preceded it in the release
when it was deleted (nbgrader's read-only test cells work this way).  So every exercise is judged
in the state it asked for, and a notebook that is missing, not a notebook, from another course
version or hangs costs only its own checks.  The grading lab is taken down at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from kplab.errors import KplabError
from kplab.grading.runner import NA, REPO, CheckResult

CHECK_CALL = re.compile(r'check\("([^"]+/[^"]+)"\)')
GRADING_LAB = "grading"


@dataclass
class Step:
    """A learner's code cell to execute, or the release's check ids to run at this place."""

    index: int  # the learner's cell number (1-based), 0 for a check put back
    cell: nbformat.NotebookNode | None = None
    checks: list[str] = field(default_factory=list)


@dataclass
class NotebookGrade:
    notebook: str
    results: list[CheckResult]
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # cells that raised or hung, why it was not run
    slowest: list[str] = field(default_factory=list)  # where the replay's time went: cells and checks


def release_notebooks(labs: Path | None = None) -> dict[str, nbformat.NotebookNode]:
    return {p.stem: nbformat.read(p, as_version=4) for p in sorted((labs or REPO / "labs").glob("[0-9][0-9]-*.ipynb"))}


def check_ids(cell: nbformat.NotebookNode) -> list[str]:
    return CHECK_CALL.findall(cell.source) if "check" in cell.metadata.get("tags", []) else []


def plan(learner: nbformat.NotebookNode, release: nbformat.NotebookNode) -> list[Step]:
    """The learner's code cells in their order, with each release check cell in its place."""
    release_checks = {c.id: check_ids(c) for c in release.cells if check_ids(c)}
    steps: list[Step] = []
    at: dict[str, int] = {}  # cell id -> position in steps (after it)
    for n, cell in enumerate(learner.cells, 1):
        cid = cell.get("id", "")
        if cid in release_checks:
            steps.append(Step(n, checks=release_checks[cid]))
        elif cell.cell_type == "code" and cell.source.strip():
            steps.append(Step(n, cell=cell))
        at.setdefault(cid, len(steps))
    # release check cells the learner deleted: after the nearest release cell before them that is left
    for i, cell in enumerate(release.cells):
        if cell.id in release_checks and cell.id not in at:
            anchor = next((at[c.id] for c in reversed(release.cells[:i]) if c.id in at), 0)
            steps.insert(anchor, Step(0, checks=release_checks[cell.id]))
            at = {k: (v + 1 if v >= anchor else v) for k, v in at.items()}
            at[cell.id] = anchor + 1
    return steps


def _errors(ids: list[str], message: str) -> list[CheckResult]:
    return [CheckResult(cid, outcome="error", message=message) for cid in ids]


def run_checks_child(ids: list[str], lab: str, timeout: float) -> list[CheckResult]:
    """The checks in a fresh process (as `check()` does), so no learner code can touch them."""
    env = {**os.environ, "KPLAB_LAB": lab, "KPLAB_PROGRESS": "off"}
    try:
        cp = subprocess.run([sys.executable, "-m", "kplab.grading", *ids], capture_output=True, text=True,
                            env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return _errors(ids, f"the check did not finish within {timeout:.0f}s")
    if cp.returncode != 0:
        return _errors(ids, (cp.stderr.strip() or "the check runner failed").splitlines()[-1].removeprefix("error: "))
    fields = CheckResult.__dataclass_fields__
    return [CheckResult(**{k: v for k, v in d.items() if k in fields}) for d in json.loads(cp.stdout)]


def _read(path: Path, release: nbformat.NotebookNode, name: str) -> tuple[nbformat.NotebookNode | None, str]:
    """The learner's notebook, or why it cannot be graded."""
    if not path.is_file():
        return None, f"{path.name} is not in {path.parent}: nothing to grade"
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # noqa: BLE001 - nbformat raises several kinds for "not a notebook"
        return None, f"{path.name} is not a notebook ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    want = release.metadata.get("kplab", {}).get("release", "")
    got = nb.metadata.get("kplab", {}).get("release", "")
    if got != want:
        said = f"release {got}" if got else "a course version without release marks"
        return None, (f"{path.name} is from another version of the course ({said}; this kplab grades "
                      f"release {want}): grade it with the kplab it came with, or redo it in the current notebook")
    return nb, ""


def _cell_label(step: Step) -> str:
    first = (step.cell.source.strip().splitlines() or [""])[0][:60] if step.cell else ""
    return f"cell {step.index} ({first!r})"


async def _execute(nb: nbformat.NotebookNode, steps: list[Step], work: Path, lab: str, cell_timeout: float,
                   check_timeout: float, problems: list[str], timings: list[tuple[float, str]]) -> dict[str, CheckResult]:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    results: dict[str, CheckResult] = {}
    client = NotebookClient(nb, timeout=int(cell_timeout), kernel_name="python3", allow_errors=False,
                            interrupt_on_timeout=True, resources={"metadata": {"path": str(work)}},
                            error_on_timeout={"ename": "CellTimeoutError",
                                              "evalue": f"did not finish within {cell_timeout:.0f}s",
                                              "traceback": []})
    hung = ""  # a cell since the last check that had to be interrupted
    dead = ""
    # The kernel's own stderr (not the cells' output, which comes over iopub) holds the noise of
    # interrupted cells and shutdown (zmq's "Uncaught exception in ZMQStream callback"): keep it in
    # a log beside the progress record instead of the grader's terminal.
    log_dir = work / ".kplab"
    log_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        kernel_log = stack.enter_context(open(log_dir / "replay-kernel.log", "ab"))
        await stack.enter_async_context(client.async_setup_kernel(stdout=kernel_log, stderr=kernel_log))
        for step in steps:
            if step.checks:
                if dead:
                    res = _errors(step.checks, dead)
                elif hung:
                    res = _errors(step.checks, f"not graded: {hung} did not finish within {cell_timeout:.0f}s")
                else:
                    t0 = time.monotonic()
                    res = await asyncio.to_thread(run_checks_child, step.checks, lab, check_timeout)
                    timings.append((time.monotonic() - t0, "check " + " ".join(step.checks)))
                results.update({r.id: r for r in res})
                hung = ""
                continue
            if dead:
                continue
            t0 = time.monotonic()
            try:
                await client.async_execute_cell(step.cell, step.index - 1)
            except CellExecutionError as e:
                if e.ename == "CellTimeoutError":
                    hung = _cell_label(step)
                    problems.append(f"{hung} did not finish within {cell_timeout:.0f}s and was interrupted")
                else:
                    problems.append(f"{_cell_label(step)} raised {e.ename}: {str(e.evalue)[:160]}")
            except DeadKernelError:
                dead = f"not graded: the notebook's kernel died at {_cell_label(step)}"
                problems.append(dead.removeprefix("not graded: "))
            timings.append((time.monotonic() - t0, _cell_label(step)))
    return results


def _mode_unavailable(name: str) -> str:
    """Why this machine cannot build the notebook's starting mode ("" when it can)."""
    from kplab.grading.course import start_of
    from kplab.proxy.base import proxier_class

    mode = start_of(name).mode
    if mode == "none":
        return ""
    try:
        found = proxier_class(mode).doctor()
    except KplabError as e:
        return f"this machine cannot run {mode} mode, where {name} starts: {e}"
    return "" if found.available else f"this machine cannot run {mode} mode, where {name} starts: {found.detail}"


def grade_notebook(name: str, release: nbformat.NotebookNode, work: Path, lab: str = GRADING_LAB,
                   cell_timeout: float = 120.0, check_timeout: float = 120.0) -> NotebookGrade:
    """Replay one learner notebook from its starting state; a result for every check of the release."""
    from kplab.grading.course import reset

    t0 = time.monotonic()
    ids = [cid for c in release.cells for cid in check_ids(c)]
    unable = _mode_unavailable(name)
    if unable:  # as a check that skips for want of IPVS: left out of the percentage, with the reason
        return NotebookGrade(name, [CheckResult(cid, outcome=NA, message=unable) for cid in ids],
                             time.monotonic() - t0, [unable])
    learner, why = _read(work / f"{name}.ipynb", release, name)
    if learner is None:
        return NotebookGrade(name, _errors(ids, why), time.monotonic() - t0, [why])
    try:
        reset(name, lab, for_replay=True)
    except KplabError as e:
        why = f"the lab could not be put in {name}'s starting state: {e}"
        return NotebookGrade(name, _errors(ids, why), time.monotonic() - t0, [why])
    problems: list[str] = []
    timings: list[tuple[float, str]] = []
    saved = {k: os.environ.get(k) for k in ("KPLAB_LAB", "KPLAB_PROGRESS", "KPLAB_WORK")}
    os.environ.update({"KPLAB_LAB": lab, "KPLAB_PROGRESS": "off", "KPLAB_WORK": str(work)})
    try:
        found = asyncio.run(_execute(learner, plan(learner, release), work, lab, cell_timeout, check_timeout,
                                     problems, timings))
    except Exception as e:  # noqa: BLE001 - the kernel would not start: say so, grade the next one
        why = f"the notebook could not be run: {type(e).__name__}: {e}"
        found, problems = {}, [*problems, why]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    results = []
    for cid in ids:
        res = found.get(cid) or CheckResult(cid, outcome="error", message=problems[-1] if problems else "did not run")
        if res.outcome == "failed" and problems:
            res.message = f"{res.message} (in this notebook: {problems[0]})"
        results.append(res)
    slowest = [f"{what} {secs:.1f}s" for secs, what in sorted(timings, reverse=True)[:3]]
    return NotebookGrade(name, results, round(time.monotonic() - t0, 1), problems, slowest)


def chosen_notebooks(work: Path, notebooks: list[str] | None = None,
                     labs: Path | None = None) -> dict[str, nbformat.NotebookNode]:
    """The release notebooks to grade (all, or those named: `03`, `03-iptables`); a CheckError for an
    unknown name or a work folder that is not there, before anything is asked or built."""
    from kplab.errors import CheckError

    releases = release_notebooks(labs)
    if notebooks:
        unknown = [w for w in notebooks if not any(w in (n, n.split("-", 1)[0]) for n in releases)]
        if unknown:
            raise CheckError(f"no notebook {', '.join(unknown)} in this course: choose from {', '.join(releases)}")
        releases = {n: r for n, r in releases.items() if any(w in (n, n.split("-", 1)[0]) for w in notebooks)}
    if not work.is_dir():
        raise CheckError(f"{work} is not a folder of notebooks: pass the learner's work folder")
    return releases


def grade_course(work: Path, notebooks: list[str] | None = None, lab: str = GRADING_LAB,
                 labs: Path | None = None, cell_timeout: float = 120.0, progress: Any = None) -> list[NotebookGrade]:
    """Every notebook of the release (or those named: `03`, `03-iptables`), each replayed; then the lab down."""
    from kplab.lab import Lab

    grades = []
    try:
        for name, release in chosen_notebooks(work, notebooks, labs).items():
            if progress:
                progress(f"grading {name} ...")
            grades.append(grade_notebook(name, release, work, lab, cell_timeout))
            if progress:
                g = grades[-1]
                slowest = f" (slowest: {'; '.join(g.slowest)})" if g.slowest else ""
                progress(f"  {sum(r.passed for r in g.results)} of {sum(r.applicable for r in g.results)} "
                         f"passed in {g.seconds:.0f}s{slowest}" + "".join(f"\n  {p}" for p in g.problems))
    finally:
        try:
            Lab(lab).down()
        except KplabError:
            pass  # never came up
    return grades
