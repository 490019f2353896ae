"""Build the course's two editions from one source per notebook (`labs/src/NN-name.py`, py:percent).

    .venv/bin/python labs/build.py                      # the learner edition: labs/NN-name.ipynb
    .venv/bin/python labs/build.py --check              # exit 1 if a learner notebook is out of date
    .venv/bin/python labs/build.py --instructor DIR     # the instructor edition (with solutions) in DIR

jupytext reads the sources (`# %%` cells, `# %% [markdown]`, `# %% tags=["solution"]`).  An exercise
is a cell tagged `solution` followed by a cell tagged `check` that calls `check("NN-name/id")`.
The learner edition (committed, served by `make lab`, the container and the hub) keeps every cell
but replaces each solution's text by an empty cell to fill in; the instructor edition has the
solutions.  Exercise cells get ids that survive edits (`03-check-affinity`, `03-solution-affinity`)
so `kplab grade` finds a learner's check cells again, and each notebook records its release (a
digest of its check cells) so a notebook from another course version is named as such.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
CHECK_CALL = re.compile(r'check\("([^"/]+)/([^"]+)"\)')
TO_FILL = "# Your solution here: write the code for this exercise, then run the check below."


def exercise_name(cells: list[nbformat.NotebookNode], i: int) -> str:
    """The check id (after the slash) that grades cell i: its own, or the next check cell's."""
    for cell in cells[i:]:
        if "check" in cell.metadata.get("tags", []):
            m = CHECK_CALL.search(cell.source)
            if m:
                return m.group(2)
    raise ValueError(f"cell {i} is tagged solution but no check cell with check(\"NN-name/id\") follows it")


def release(nb: nbformat.NotebookNode) -> str:
    """What a learner's notebook must match to be graded by this release: its check cells."""
    checks = [c.source.strip() for c in nb.cells if "check" in c.metadata.get("tags", [])]
    return hashlib.sha256("\n".join(checks).encode()).hexdigest()[:12]


def build(src: Path, edition: str = "learner") -> nbformat.NotebookNode:
    """One notebook of `edition` (learner | instructor) from its py:percent source."""
    nb = jupytext.read(src, fmt="py:percent")
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    prefix = src.stem[:2]
    cells = []
    for i, cell in enumerate(nb.cells):
        tags = list(cell.metadata.get("tags", []))
        new = nbformat.v4.new_markdown_cell if cell.cell_type == "markdown" else nbformat.v4.new_code_cell
        source = cell.source.strip("\n")
        if "check" in tags or "solution" in tags:
            kind = "check" if "check" in tags else "solution"
            cid = f"{prefix}-{kind}-{exercise_name(nb.cells, i)}"
        else:
            cid = f"{prefix}-{i:02d}"
        if "solution" in tags and edition == "learner":
            source = TO_FILL
        out = new(source, id=cid)
        if tags:
            out.metadata["tags"] = tags
        if "check" in tags:  # the grader runs the release's check cell, whatever the learner made of it
            out.metadata["editable"] = False
            out.metadata["deletable"] = False
        cells.append(out)
    nb.cells = cells
    nb.metadata["kplab"] = {"notebook": src.stem, "edition": edition, "release": release(nb)}
    ids = [c.id for c in cells]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{src.name}: two exercises are graded by the same check")
    nbformat.validate(nb)
    return nb


def sources() -> list[Path]:
    return sorted((HERE / "src").glob("[0-9][0-9]-*.py"))


def write(target_dir: Path, edition: str, check_only: bool = False) -> list[str]:
    """Write every notebook of `edition` into target_dir; the names that were (or would be) rewritten."""
    stale = []
    for src in sources():
        target = target_dir / f"{src.stem}.ipynb"
        text = nbformat.writes(build(src, edition)) + "\n"
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target.name)
        if not check_only:
            target_dir.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    return stale


def main(argv: list[str]) -> int:
    if "--instructor" in argv:
        i = argv.index("--instructor")
        if i + 1 >= len(argv):
            print("usage: labs/build.py --instructor DIR (where to write the edition with solutions)")
            return 2
        out = Path(argv[i + 1])
        write(out, "instructor")
        print(f"instructor edition (with solutions) in {out}")
        return 0
    check_only = "--check" in argv
    stale = write(HERE, "learner", check_only)
    if stale:
        print(("out of date: " if check_only else "wrote: ") + ", ".join(stale))
    return 1 if stale and check_only else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
