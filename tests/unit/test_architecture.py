"""Other packages read a lab through its public lookups, never through `lab.data` or `lab._x`
(issue 16): the raw state and the private methods belong to kplab/lab.py and its helpers in
kplab/cluster/ (and to test_lab_handle.py, which tests them from inside).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the Lab, the cluster modules it is made of, and the handle's own white-box test
OWNERS = ("kplab/lab.py", "kplab/cluster/", "tests/unit/test_lab_handle.py")
LAB = re.compile(r"_?\w*lab\w*", re.IGNORECASE)  # lab, self.lab, self._lab, other_lab, ...
PRIVATE = re.compile(r"\b_?\w*lab\w*\.(data\b|_[a-z]\w*)", re.IGNORECASE)


def private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """`<lab>.data` and `<lab>._x` (not dunders) where the receiver's name says it is a lab."""
    out = []
    for n in ast.walk(tree):
        if not isinstance(n, ast.Attribute) or not (n.attr == "data" or re.match(r"_[a-z]", n.attr)):
            continue
        receiver = n.value.id if isinstance(n.value, ast.Name) else getattr(n.value, "attr", None)
        if receiver and LAB.fullmatch(receiver):
            out.append((n.lineno, f"{receiver}.{n.attr}"))
    return out


def test_no_module_outside_the_lab_reads_its_private_state():
    found = []
    for path in sorted({*ROOT.glob("kplab/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("checks/**/*.py"),
                        *ROOT.glob("labs/*.py"), *ROOT.glob("bench/**/*.py")}):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(OWNERS) or rel.startswith(".venv"):
            continue
        found += [f"{rel}:{line}: {use}" for line, use in private_uses(ast.parse(path.read_text(), rel))]
    for nb in sorted(ROOT.glob("labs/*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "code":
                found += [f"labs/{nb.name} cell {i}: {m.group(0)}" for m in PRIVATE.finditer("".join(cell["source"]))]
    assert not found, ("read the lab through its public lookups (kplab.cluster.handle: mode, nodes, options, "
                       "stored_objects(), pod(), refresh(), ...), not its raw state:\n" + "\n".join(found))


def test_the_check_sees_what_it_forbids():
    tree = ast.parse("lab.data['mode']\nself.lab._load()\nlab.__class__\nlab.mode\nother.data\nlab._pod('x')")
    assert [u for _, u in private_uses(tree)] == ["lab.data", "lab._load", "lab._pod"]
