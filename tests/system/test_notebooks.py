"""Every notebook runs end to end against a real lab, and every exercise is really graded.

The session's `course` fixture (kplab.testing.course) runs the learner edition in order, in one
lab, with every solution typed in from the instructor edition: before a solution, its check
reports `failed`; after it, `passed` (`not-applicable` both times only where the machine lacks
what it needs: IPVS here, the IPVS notebook's documented path).  Any error in any cell fails the
notebook's test.  The same saved notebooks are graded by replay in test_grading.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kplab.testing.course import LABS, CourseRun

pytestmark = [pytest.mark.root, pytest.mark.slow]

NOTEBOOKS = sorted(LABS.glob("[0-9][0-9]-*.ipynb"))  # the learner edition names them


def test_every_notebook_is_built_from_its_source() -> None:
    cp = subprocess.run([sys.executable, str(LABS / "build.py"), "--check"], capture_output=True, text=True,
                        check=False, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_checks_fail_then_pass(path: Path, course: CourseRun) -> None:
    failed = course.upto(path.stem)
    assert failed is None, failed
    n = course.exercises[path.stem]
    assert n >= 2, f"{path.name} has {n} graded exercises; every notebook needs at least two"
    print(f"{path.stem}: {course.seconds[path.stem]:.0f} s")
