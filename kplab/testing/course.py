"""The whole course, run once per test session the way a diligent learner runs it.

The learner edition, with each solution cell typed in from the instructor edition, is executed
notebook by notebook in order, in one lab and one work folder (so the progress record fills as it
would for a learner).  Before each solution its check cell runs and must report `failed`; after it,
the check must report `passed` (`not-applicable` both times only where the machine lacks what it
needs: IPVS).  test_notebooks.py asserts each notebook's outcome; test_grading.py grades the saved
notebooks by replay.  One run serves both: the course is the suite's slowest part.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LABS = Path(__file__).resolve().parents[2] / "labs"
OUTCOME = re.compile(r"data-outcome='([\w-]+)'")


def edition(folder: Path, which: str) -> Path:
    """A learner's work folder: the edition's notebooks ("learner" or "instructor") and the manifests."""
    folder.mkdir(parents=True, exist_ok=True)
    if which == "learner":
        for nb in LABS.glob("[0-9][0-9]-*.ipynb"):
            shutil.copy(nb, folder / nb.name)
    else:
        subprocess.run([sys.executable, str(LABS / "build.py"), "--instructor", str(folder)], check=True,
                       capture_output=True, timeout=120)
    shutil.copytree(LABS / "manifests", folder / "manifests")
    return folder


def outcomes(cell: dict) -> list[str]:
    """The outcomes a check cell printed (its HTML result carries data-outcome)."""
    found: list[str] = []
    for out in cell.get("outputs", []):
        found += OUTCOME.findall(str(out.get("data", {}).get("text/html", "")))
    return found


def _graded(cell: dict, allowed: set[str], when: str) -> None:
    got = outcomes(cell)
    assert got, f"check cell printed no result {when}: {cell['source']!r}"
    assert set(got) <= allowed, f"{cell['source'].strip()} {when}: {got}, wanted {sorted(allowed)}"


@dataclass
class CourseRun:
    """The course run by a learner in `work`, notebook by notebook, on demand and in order."""

    work: Path
    solutions: Path
    lab: str
    cell_timeout: int = 300
    done: dict[str, str | None] = field(default_factory=dict)  # stem -> None (ran clean) or what failed
    exercises: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def notebooks(self) -> list[Path]:
        return sorted(self.work.glob("[0-9][0-9]-*.ipynb"))

    def upto(self, stem: str) -> str | None:
        """Run every notebook not yet run, in order, through `stem`; what failed in `stem` (None: clean)."""
        for path in self.notebooks():
            if path.stem not in self.done:
                self._run(path)
            if path.stem == stem:
                return self.done[stem]
        raise KeyError(f"no notebook {stem} in {self.work}")

    def all(self) -> dict[str, str | None]:
        for path in self.notebooks():
            self.upto(path.stem)
        return self.done

    def _run(self, path: Path) -> None:
        start = time.monotonic()
        saved = {k: os.environ.get(k) for k in ("KPLAB_LAB", "KPLAB_WORK", "KPLAB_LEARNER")}
        os.environ.update({"KPLAB_LAB": self.lab, "KPLAB_WORK": str(self.work), "KPLAB_LEARNER": "typed"})
        try:
            self.exercises[path.stem] = self._execute(path)
            self.done[path.stem] = None
        except Exception as exc:  # the notebook's test reports it; the course goes on, as a learner would
            self.done[path.stem] = f"{type(exc).__name__}: {exc}"
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            self.seconds[path.stem] = time.monotonic() - start

    def _execute(self, path: Path) -> int:
        import nbformat
        from nbclient import NotebookClient

        nb = nbformat.read(path, as_version=4)
        answers = {c.id: c.source for c in nbformat.read(self.solutions / path.name, as_version=4).cells}
        client = NotebookClient(nb, timeout=self.cell_timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(self.work)}})
        cells, exercises = nb.cells, 0
        try:
            with client.setup_kernel():
                for i, cell in enumerate(cells):
                    if cell.cell_type != "code":
                        continue
                    tags = cell.metadata.get("tags", [])
                    if "solution" in tags:
                        j = next(k for k in range(i + 1, len(cells)) if "check" in cells[k].metadata.get("tags", []))
                        client.execute_cell(cells[j], j)  # the learner checks before solving: it fails
                        skipped = set(outcomes(cells[j])) == {"not-applicable"}
                        _graded(cells[j], {"not-applicable"} if skipped else {"failed"}, "before its solution")
                        cell.source = answers[cell.id]  # typed in by the learner
                        exercises += 1
                    client.execute_cell(cell, i)
                    if "check" in tags:
                        na = set(outcomes(cell)) == {"not-applicable"}
                        _graded(cell, {"not-applicable"} if na else {"passed"}, "after its solution")
        finally:
            nbformat.write(nb, path)  # saved, outputs and all, as far as it ran
        return exercises

    def close(self) -> None:
        from kplab.errors import KplabError
        from kplab.lab import Lab

        try:
            Lab(self.lab).down()
        except KplabError:
            pass
