"""Every notebook in labs/ runs end to end against a real lab, and every exercise is really graded.

The notebook is executed cell by cell with nbclient.  Before a cell tagged `solution` runs, the
exercise's `check` cell (the next one) is executed first and must report `failed`; after the
solution, the check cell runs in its turn and must report `passed`.  A check may report
`skipped` both times only where the machine lacks what it needs (IPVS here), which is the
IPVS notebook's documented path.  Any error in any cell fails the test.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from kplab.errors import KplabError
from kplab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

LABS = Path(__file__).resolve().parents[2] / "labs"
NOTEBOOKS = sorted(LABS.glob("[0-9][0-9]-*.ipynb"))
LAB = "crsnb"
OUTCOME = re.compile(r"data-outcome='(\w+)'")


def outcomes(cell: nbformat.NotebookNode) -> list[str]:
    found = []
    for out in cell.get("outputs", []):
        found += OUTCOME.findall(str(out.get("data", {}).get("text/html", "")))
    return found


def graded(cell: nbformat.NotebookNode, allowed: set[str], when: str) -> None:
    got = outcomes(cell)
    assert got, f"check cell printed no result {when}: {cell.source!r}"
    assert set(got) <= allowed, f"{cell.source.strip()} {when}: {got}, wanted {sorted(allowed)}"


@pytest.fixture
def lab_env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KPLAB_LAB", LAB)
    monkeypatch.setenv("KPLAB_LEARNER", "notebook-test")
    yield
    try:
        Lab(LAB).down()
    except KplabError:
        pass


def test_every_notebook_is_built_from_its_source() -> None:
    import subprocess
    import sys

    cp = subprocess.run([sys.executable, str(LABS / "build.py"), "--check"], capture_output=True, text=True,
                        check=False, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_checks_fail_then_pass(path: Path, lab_env: None) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(LABS)}})
    cells = nb.cells
    exercises = 0
    with client.setup_kernel():
        for i, cell in enumerate(cells):
            if cell.cell_type != "code":
                continue
            tags = cell.metadata.get("tags", [])
            if "solution" in tags:
                j = next(k for k in range(i + 1, len(cells)) if "check" in cells[k].metadata.get("tags", []))
                client.execute_cell(cells[j], j)
                skipped = set(outcomes(cells[j])) == {"skipped"}
                graded(cells[j], {"skipped"} if skipped else {"failed"}, "before its solution")
                exercises += 1
            client.execute_cell(cell, i)
            if "check" in tags:
                graded(cell, {"skipped"} if set(outcomes(cell)) == {"skipped"} else {"passed"}, "after its solution")
    assert exercises >= 2, f"{path.name} has {exercises} graded exercises; every notebook needs at least two"
