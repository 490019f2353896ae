"""The course's two editions, built from labs/src: the learner edition gives nothing away."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

LABS = Path(__file__).resolve().parents[2] / "labs"


def build_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("labs_build", LABS / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def solution_texts(mod) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    out = []
    for src in mod.sources():
        for cell in mod.build(src, "instructor").cells:
            if "solution" in cell.metadata.get("tags", []):
                out.append((src.stem, cell.source))
    return out


def significant_lines(text: str) -> list[str]:
    """The lines of a solution that give it away (not blank, not a bare comment or `else:`)."""
    return [ln.strip() for ln in text.splitlines()
            if ln.strip() and not ln.strip().startswith("#") and ln.strip() not in ("else:", "pass")]


def test_no_learner_notebook_contains_a_solution() -> None:
    """Not the solution's text, nor any line of it the notebook does not also run to look around.

    (A later notebook may show an earlier one's answer: 05 applies web-affinity.yaml, 02's answer,
    to show affinity in nftables mode; that is the course's order, not a leak.)
    """
    mod = build_module()
    solutions = solution_texts(mod)
    assert len(solutions) >= 18
    learner = {p.stem: nbformat.read(p, as_version=4) for p in sorted(LABS.glob("[0-9][0-9]-*.ipynb"))}
    assert sorted(learner) == [s.stem for s in mod.sources()]
    shown_in: dict[str, str] = {}
    for stem, text in solutions:
        nb = learner[stem]
        body = "\n".join(c.source for c in nb.cells)
        assert text not in body, f"{stem}.ipynb contains a solution"
        if stem not in shown_in:
            shown_in[stem] = "\n".join(c.source for c in mod.build(LABS / "src" / f"{stem}.py").cells
                                       if "solution" not in c.metadata.get("tags", []))
        shown = shown_in[stem]
        for line in significant_lines(text):
            if line in shown:  # a command the notebook also runs to look (`iptables -S`, `probe("shop")`)
                continue
            assert line not in body, (stem, line)


def test_learner_edition_is_current_and_marks_every_exercise() -> None:
    mod = build_module()
    assert mod.write(LABS, "learner", check_only=True) == [], "run `python labs/build.py`"
    for path in sorted(LABS.glob("[0-9][0-9]-*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        meta = nb.metadata["kplab"]
        assert meta["edition"] == "learner" and meta["notebook"] == path.stem and len(meta["release"]) == 12
        sols = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
        checks = [c for c in nb.cells if "check" in c.metadata.get("tags", [])]
        assert len(sols) >= 2 and len(checks) >= len(sols)
        assert all(c.source == mod.TO_FILL for c in sols)
        for c in checks:
            m = re.fullmatch(r'check\("([^"]+)/([^"]+)"\)', c.source.strip())
            assert m and m.group(1) == path.stem and c.id == f"{path.stem[:2]}-check-{m.group(2)}"
            assert c.metadata["editable"] is False


def test_instructor_edition_has_the_solutions(tmp_path: Path) -> None:
    mod = build_module()
    assert mod.main(["--instructor", str(tmp_path)]) == 0
    nb = nbformat.read(tmp_path / "03-iptables.ipynb", as_version=4)
    sols = [c.source for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert any("lab.scale(\"web\", 4)" in s for s in sols)
    assert nb.metadata["kplab"]["edition"] == "instructor"
    learner = nbformat.read(LABS / "03-iptables.ipynb", as_version=4)
    assert nb.metadata["kplab"]["release"] == learner.metadata["kplab"]["release"]


def test_a_solution_without_its_check_is_refused(tmp_path: Path) -> None:
    mod = build_module()
    src = tmp_path / "09-x.py"
    src.write_text('# %%\nx = 1\n\n# %% tags=["solution"]\nx = 2\n')
    with pytest.raises(ValueError, match="no check cell"):
        mod.build(src)
