"""The grading machinery without a lab: docstring convention, runner outcomes, report formats, gradebook."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kplab.errors import CheckError
from kplab.grading import report
from kplab.grading.inline import Checked
from kplab.grading.runner import CheckResult, split_docstring

CHECKS = '''
def test_good():
    """Something that holds.

    Hint: nothing to do.
    """

def test_bad():
    """Something that does not hold.

    Hint: make x one.
    """
    x = 2
    assert x == 1, "x is not one"

def test_broken():
    """A check that cannot run."""
    raise RuntimeError("no lab")
'''


def make_checks(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\npython_files = test_*.py\n")
    (tmp_path / "09-demo").mkdir()
    (tmp_path / "09-demo" / "test_demo.py").write_text(CHECKS)
    return tmp_path


def run_child(checks: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KPLAB_CHECKS": str(checks)}
    argv = [sys.executable, "-m", "kplab.grading", *args]
    return subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=60)


def test_docstring_gives_title_and_hint() -> None:
    assert split_docstring("Title on\n    two lines.\n\n    Hint: do this.\n") == ("Title on two lines.", "do this.")
    assert split_docstring("Only a title.") == ("Only a title.", "")
    assert split_docstring(None) == ("", "")


def test_runner_reports_each_outcome(tmp_path: Path) -> None:
    cp = run_child(make_checks(tmp_path))
    assert cp.returncode == 0, cp.stderr
    by_id = {d["id"]: d for d in json.loads(cp.stdout)}
    assert by_id["09-demo/good"]["outcome"] == "passed"
    assert by_id["09-demo/bad"]["outcome"] == "failed"
    assert by_id["09-demo/bad"]["message"] == "x is not one"
    assert by_id["09-demo/bad"]["hint"] == "make x one."
    assert by_id["09-demo/broken"]["outcome"] == "error"
    assert "no lab" in by_id["09-demo/broken"]["message"]
    assert all(len(d["digest"]) == 12 for d in by_id.values())


def test_runner_selects_by_id_and_notebook(tmp_path: Path) -> None:
    checks = make_checks(tmp_path)
    assert [d["id"] for d in json.loads(run_child(checks, "09-demo/good").stdout)] == ["09-demo/good"]
    assert len(json.loads(run_child(checks, "09").stdout)) == 3
    cp = run_child(checks, "09-demo/nope")
    assert cp.returncode == 2 and "no check matches 09-demo/nope" in cp.stderr


def sample(learner: str, digest: str = "aaaaaaaaaaaa", graded: str = "2025-05-01T10:00:00+0000") -> report.Report:
    results = [
        CheckResult("03-iptables/walk", "The walk", "look", "passed", "", 0.5, digest),
        CheckResult("03-iptables/affinity", "Sticky", "set it", "failed", "not sticky", 1.25, "bbbbbbbbbbbb"),
        CheckResult("04-ipvs/vs", "IPVS", "", "skipped", "no IPVS", 0.0, "cccccccccccc"),
    ]
    return report.Report(learner, "default", results, "0.1.0", graded, "box")


@pytest.mark.parametrize("fmt,suffix", [("json", ".json"), ("junit", ".xml"), ("csv", ".csv")])
def test_every_format_reads_back(tmp_path: Path, fmt: str, suffix: str) -> None:
    rep = sample("alice")
    path = tmp_path / f"alice{suffix}"
    path.write_text(report.render(rep, fmt))
    back = report.load(path)
    assert back.learner == "alice" and back.kplab_version == "0.1.0"
    assert [(r.id, r.outcome, r.digest) for r in back.results] == [(r.id, r.outcome, r.digest) for r in rep.results]


def test_junit_has_pytest_shape() -> None:
    root = ET.fromstring(report.to_junit(sample("bob")))
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("3", "1", "0", "1")
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["learner"] == "bob" and props["kplab_version"] == "0.1.0"
    assert "03-iptables/affinity=bbbbbbbbbbbb" in props["checks"]
    failure = suite.find("testcase[@name='affinity']/failure")
    assert failure is not None and failure.get("message") == "not sticky" and "set it" in (failure.text or "")


def test_gradebook_has_a_row_per_learner_and_names_changed_checks(tmp_path: Path) -> None:
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    (report_dir / "a.json").write_text(report.to_json(sample("alice", graded="2025-05-01T10:00:00+0000")))
    (report_dir / "b.xml").write_text(report.to_junit(sample("bob", digest="dddddddddddd",
                                                             graded="2025-05-02T10:00:00+0000")))
    (report_dir / "c.csv").write_text(report.to_csv(sample("carol", graded="2025-05-01T11:00:00+0000")))
    text, n = report.collect(report_dir)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert n == 3 and [r["learner"] for r in rows] == ["alice", "bob", "carol"]
    assert rows[0]["03-iptables/walk"] == "1" and rows[0]["03-iptables/affinity"] == "0"
    assert rows[0]["passed"] == "1" and rows[0]["total"] == "3"
    # bob was graded last with a different walk check: the others ran the older one
    assert rows[0]["changed_checks"] == "03-iptables/walk" and rows[1]["changed_checks"] == ""


def test_bad_reports_are_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CheckError, match="cannot read"):
        report.load(tmp_path / "x.json")
    with pytest.raises(CheckError, match="not a report"):
        report.load(tmp_path / "x.txt")
    with pytest.raises(CheckError, match="unknown report format"):
        report.render(sample("a"), "yaml")


def test_inline_result_renders_hint_only_on_failure() -> None:
    out = Checked(sample("a").results)
    page = out._repr_html_()
    assert "data-outcome='passed'" in page and "data-outcome='failed'" in page
    assert "set it" in page and "look" not in page
    assert not out and "FAIL  03-iptables/affinity" in repr(out)


def test_runner_failure_is_a_red_box_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kplab.grading import check

    monkeypatch.setenv("KPLAB_CHECKS", str(make_checks(tmp_path)))
    out = check("09-demo/nope")
    assert not out and out.results[0].outcome == "error" and "no check matches" in out.results[0].message
    assert check("09-demo/good").passed


def test_every_notebook_has_a_start_and_its_check_cells_name_real_checks() -> None:
    import re

    import nbformat

    from kplab.grading.course import LABS, starts

    declared = starts()
    cp = subprocess.run([sys.executable, "-m", "kplab.cli", "check", "--list", "-o", "json"], check=False,
                        capture_output=True, text=True, timeout=120)
    known = {c["id"] for c in json.loads(cp.stdout)}
    notebooks = sorted(LABS.glob("[0-9][0-9]-*.ipynb"))
    assert [nb.stem for nb in notebooks] == sorted(declared)
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        named = re.findall(r'check\("([^"]+)"\)', "\n".join(c.source for c in nb.cells if c.cell_type == "code"))
        assert len(named) >= 2 and set(named) <= known, (path.name, sorted(set(named) - known))
        assert all(n.startswith(path.stem + "/") for n in named), path.name
