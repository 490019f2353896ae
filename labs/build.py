"""Build the notebooks in labs/ from their reviewable sources in labs/src/ (py:percent format).

    .venv/bin/python labs/build.py            # write labs/NN-name.ipynb for every labs/src/NN-name.py
    .venv/bin/python labs/build.py --check    # exit 1 if a notebook is out of date

A source is cells separated by `# %%` lines: `# %% [markdown]` starts a markdown cell (its lines
lose their leading `# `), and `# %% tags=["solution"]` tags a cell.  Cells tagged `solution`
are collapsed in JupyterLab (the learner opens them when stuck); the notebook tests run a
notebook without them first, so each exercise's `check` cell must fail before its solution.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
HEADER = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def cells(source: str) -> list[tuple[str, list[str], str]]:
    """(kind, tags, text) for each `# %%` cell of a py:percent source."""
    out: list[tuple[str, list[str], list[str]]] = []
    for line in source.splitlines():
        m = HEADER.match(line)
        if m:
            out.append(("markdown" if m["md"] else "code", json.loads(m["tags"] or "[]"), []))
        elif out:
            out[-1][2].append(line)
    result = []
    for kind, tags, lines in out:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        result.append((kind, tags, "\n".join(lines).strip("\n")))
    return result


def build(src: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    for i, (kind, tags, text) in enumerate(cells(src.read_text())):
        new = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = new(text, id=f"{src.stem[:2]}-{i:02d}")
        if tags:
            cell.metadata["tags"] = tags
        if "solution" in tags:
            cell.metadata["jupyter"] = {"source_hidden": True}
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str]) -> int:
    stale = []
    for src in sorted((HERE / "src").glob("[0-9][0-9]-*.py")):
        target = HERE / f"{src.stem}.ipynb"
        text = nbformat.writes(build(src)) + "\n"
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target.name)
        if "--check" not in argv:
            target.write_text(text)
    if stale:
        print(("out of date: " if "--check" in argv else "wrote: ") + ", ".join(stale))
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
