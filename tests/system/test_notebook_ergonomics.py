"""The lab from a notebook kernel, as a learner meets it: errors, warnings, `!kplab`, a kernel restart.

Each case runs real cells in a real IPython kernel (nbclient) against one real lab:
a `lab.*` mistake is one line naming what to do (not a traceback through the worker thread),
the cell still fails; `kplab apply`'s warning shows under the cell; `!kplab status` works with
the environment `kplab lab` gives Jupyter even when the caller's PATH lacks the venv; after a
kernel restart `resume()` gives back the first cell's names and the lab exactly as it was.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from kplab.errors import KplabError
from kplab.grading.course import reset
from kplab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

LABS = Path(__file__).resolve().parents[2] / "labs"
ATTACH = "import os\nfrom kplab import Lab\nlab = Lab.attach(os.environ['KPLAB_LAB'])"
LAB = "crserg"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def lab():  # type: ignore[no-untyped-def]
    old = os.environ.get("KPLAB_LAB")
    os.environ["KPLAB_LAB"] = LAB
    built = reset("03-iptables", LAB)
    yield built
    try:
        Lab(LAB).down()
    except KplabError:
        pass
    if old is None:
        os.environ.pop("KPLAB_LAB", None)
    else:
        os.environ["KPLAB_LAB"] = old


def run(cells: list[str], env: dict[str, str] | None = None) -> list[nbformat.NotebookNode]:
    """Execute cells in one fresh kernel; every cell runs even when one fails. Returns the cells."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(LABS)}})
    if env is not None:
        with client.setup_kernel(env=env):
            for i, cell in enumerate(nb.cells):
                client.execute_cell(cell, i)
    else:
        client.execute()
    return nb.cells


def error_of(cell: nbformat.NotebookNode) -> tuple[str, list[str]]:
    errs = [o for o in cell.outputs if o.output_type == "error"]
    assert errs, f"{cell.source!r} did not fail"
    return errs[0].ename, [ANSI.sub("", line) for line in errs[0].traceback]


def text(cell: nbformat.NotebookNode, stream: str = "") -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and
                   (not stream or o.name == stream))


def test_lab_mistakes_are_one_line_saying_what_to_do(lab: Lab) -> None:
    cells = run([
        ATTACH,
        'lab.scale("web", 500)',
        'lab.scale("web", "4")',
        'lab.apply("manifests/web-afinity.yaml")',
        ('lab.apply("apiVersion: v1\\nkind: Service\\nmetadata: {name: m}\\nspec: {selector: {app: web}, '
        'ports: {port: 80}}")'),
        "print('after')",
    ])
    for cell, must in zip(cells[1:5], ["0 to 200", 'lab.scale(\'web\', 4)', "did you mean manifests/web-affinity.yaml",
                                       "spec.ports: a list, not a mapping"]):
        ename, tb = error_of(cell)
        assert len(tb) == 1, f"{cell.source!r}: {len(tb)} lines of traceback: {tb}"
        assert ename in ("LabError", "ManifestError") and must in tb[0], tb[0]
    assert text(cells[5]) == "after\n"


def test_a_failing_lab_call_stops_run_all(lab: Lab) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in
                                         [ATTACH, 'lab.scale("web", 500)',
                                          "print('not reached')"]])
    with pytest.raises(CellExecutionError, match="0 to 200"):
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()


def test_the_cli_warning_shows_under_the_cell(lab: Lab) -> None:
    cells = run([ATTACH,
                 ('lab.apply("apiVersion: v1\\nkind: Service\\nmetadata: {name: nosel}\\nspec: {selector: '
                 '{app: nothing}, ports: [{port: 80}]}")'),
                 'lab.delete_objects("Service", ["nosel"])'])
    assert "warning: service/nosel: selector app=nothing matches no pod" in text(cells[1], "stderr")


def test_bang_kplab_works_with_the_environment_kplab_lab_gives_jupyter(lab: Lab) -> None:
    from kplab.cli.course import jupyter_env

    bare = {k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(bare)
        env = jupyter_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    cells = run(["!kplab status"], env=env)
    out = text(cells[0])
    assert "command not found" not in out and LAB in out and "iptables" in out, out


def test_resume_after_a_kernel_restart_keeps_the_lab_and_the_first_cells_names(lab: Lab) -> None:
    lab.scale("web", 4)  # what a learner did before the kernel restarted
    cells = run(["from kplab.notebook import resume\nlab = resume('03-iptables')",
                 "print(len([p for p in lab.pods() if p.metadata.name.startswith('web')]), N1, svc_ip)"])
    assert "as you left it" in text(cells[0])
    count, n1, svc_ip = text(cells[1]).split()
    assert count == "4" and n1 == lab.netns("node-1") and svc_ip == lab.service_ip("web")
