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
        CheckResult("04-ipvs/vs", "IPVS", "", "not-applicable", "no IPVS", 0.0, "cccccccccccc"),
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
    assert rows[0]["passed"] == "1" and rows[0]["total"] == "2"  # not applicable: out of the denominator
    assert rows[0]["percent"] == "50.0" and rows[0]["04-ipvs/vs"] == "n/a"
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


def test_collect_refuses_one_id_from_two_machines_and_keeps_a_regrade(tmp_path: Path) -> None:
    a, b = sample("root"), sample("root", graded="2025-05-01T11:00:00+0000")
    a.hostname, b.hostname = "container-a", "container-b"
    (tmp_path / "a.json").write_text(report.to_json(a))
    (tmp_path / "b.json").write_text(report.to_json(b))
    with pytest.raises(CheckError, match="two learners handed in under one id .'root' in .*a.json, .*b.json"):
        report.collect(tmp_path)
    text, n = report.collect(tmp_path, allow_shared_ids=True)
    assert n == 2 and len(text.splitlines()) == 2
    b.hostname = "container-a"  # the same learner graded twice: the newest counts, no complaint
    (tmp_path / "b.json").write_text(report.to_json(b))
    assert report.collect(tmp_path)[1] == 2


def test_class_summary_gives_pass_rates_and_the_most_common_failure(tmp_path: Path) -> None:
    reps = [sample("ada"), sample("bob"), sample("cy")]
    reps[2].results[1] = CheckResult("03-iptables/affinity", outcome="passed", message="")
    reps[1].results[0] = CheckResult("03-iptables/walk", outcome="failed", message="no walk")
    rows = {r["check"]: r for r in report.class_summary(reps)}
    assert rows["03-iptables/affinity"]["passed"] == 1 and rows["03-iptables/affinity"]["learners"] == 3
    assert rows["03-iptables/affinity"]["most_common_failure"] == "not sticky"
    assert rows["03-iptables/affinity"]["how_many"] == 2
    assert rows["04-ipvs/vs"]["learners"] == 0 and rows["04-ipvs/vs"]["pass_rate"] == ""
    assert "03-iptables/walk" in report.summary_text(list(rows.values()))
    paths = report.chart(list(rows.values()), tmp_path / "book-checks")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in paths)


def test_progress_record_survives_and_summarises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kplab.grading import progress

    monkeypatch.delenv("KPLAB_PROGRESS", raising=False)
    fail = CheckResult("03-iptables/affinity", outcome="failed", message="not sticky", digest="d1")
    ok = CheckResult("03-iptables/affinity", outcome="passed", message="", digest="d1")
    progress.record([fail], "check()", tmp_path)
    progress.record([ok], "kplab check", tmp_path)
    progress.record([fail], "check()", tmp_path)  # passing once is what the record keeps
    with (tmp_path / ".kplab" / "progress.jsonl").open("a") as f:
        f.write("not json\n")
    recs = progress.load(tmp_path)
    assert [r["outcome"] for r in recs] == ["failed", "passed", "failed"] and recs[1]["digest"] == "d1"
    assert recs[0]["kplab_version"] and recs[0]["time"]
    row = next(r for r in progress.table(tmp_path) if r["id"] == "03-iptables/affinity")
    assert row["first_passed"] == recs[1]["time"] and row["last"] == "failed" and row["tries"] == 3
    line = progress.standing("03-iptables", tmp_path)
    from kplab.grading.runner import list_checks

    n = len(list_checks(["03-iptables"]))  # the notebook's checks, whatever their number
    assert line.startswith(f"Your progress: 03-iptables 1 of {n} checks passed") and "affinity ✓" in line
    monkeypatch.setenv("KPLAB_PROGRESS", "off")  # the grader's replay adds nothing
    progress.record([ok], "check()", tmp_path)
    assert len(progress.load(tmp_path)) == 3


def test_learner_id_is_explicit_or_the_hubs_or_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kplab.grading import progress

    for var in ("JUPYTERHUB_USER", "KPLAB_LEARNER"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(CheckError, match="pass --learner NAME"):
        progress.learner_id(None, tmp_path, ask=False)
    progress.keep_learner("ada", tmp_path)
    assert progress.learner_id(None, tmp_path) == "ada"
    monkeypatch.setenv("JUPYTERHUB_USER", "hubuser")
    assert progress.learner_id(None, tmp_path) == "hubuser"
    assert progress.learner_id("bob", tmp_path) == "bob"
    with pytest.raises(CheckError, match="learner id 'a b'"):
        progress.learner_id("a b", tmp_path)


def test_replay_plan_puts_every_release_check_in_its_place() -> None:
    import nbformat

    from kplab.grading.replay import plan

    def nb(*cells: tuple[str, str, list[str]]) -> nbformat.NotebookNode:
        book = nbformat.v4.new_notebook()
        for cid, src, tags in cells:
            cell = nbformat.v4.new_code_cell(src, id=cid)
            cell.metadata["tags"] = tags
            book.cells.append(cell)
        return book

    release = nb(("s", "start()", []), ("09-solution-a", "# fill", ["solution"]),
                 ("09-check-a", 'check("09-x/a")', ["check"]), ("m", "look()", []),
                 ("09-solution-b", "# fill", ["solution"]), ("09-check-b", 'check("09-x/b")', ["check"]))
    # the learner changed check a into a pass, deleted check b and added cells
    learner = nb(("s", "start()", []), ("09-solution-a", "do_a()", ["solution"]),
                 ("09-check-a", "True", ["check"]), ("new", "extra()", []), ("09-solution-b", "do_b()", ["solution"]),
                 ("mine", 'check("09-x/b")', []))
    steps = plan(learner, release)
    shape = [s.checks or s.cell.source for s in steps]
    assert shape == ["start()", "do_a()", ["09-x/a"], "extra()", "do_b()", ["09-x/b"], 'check("09-x/b")']
    # everything deleted but the first cell: both checks still run, at the start
    steps = plan(nb(("s", "start()", [])), release)
    assert [s.checks or s.cell.source for s in steps] == ["start()", ["09-x/a"], ["09-x/b"]]


def test_a_notebook_whose_mode_this_machine_lacks_is_not_applicable(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import kplab.proxy.base
    from kplab.grading.replay import grade_notebook, release_notebooks

    lacking = SimpleNamespace(doctor=lambda: SimpleNamespace(available=False, detail="no such kernel feature"))
    monkeypatch.setattr(kplab.proxy.base, "proxier_class", lambda mode: lacking)
    grade = grade_notebook("03-iptables", release_notebooks()["03-iptables"], Path("/nonexistent"))
    assert len(grade.results) >= 2 and {r.outcome for r in grade.results} == {"not-applicable"}  # every check of 03
    assert "cannot run iptables mode, where 03-iptables starts: no such kernel feature" in grade.results[0].message


def test_an_answer_to_a_mistyped_question_is_refused_with_the_near_id() -> None:
    """Seen in notebook 09: answer("09-capstone/broken-servce", ...) was recorded where no check reads it."""
    from kplab.course.answers import answer
    from kplab.errors import LabError

    with pytest.raises(LabError, match=r"did you mean .09-capstone/broken-service."):
        answer("09-capstone/broken-servce", "catalog", lab=object())


def test_capstone_answer_that_names_no_service_is_told_so(tmp_path: Path) -> None:
    """Seen in notebook 09: answer("09-capstone/broken-service", "catlog") was told "'catlog' has
    endpoints in node-1's rules", a claim about a Service that does not exist."""
    import importlib.util
    from types import SimpleNamespace

    from kplab.grading.runner import checks_dir

    spec = importlib.util.spec_from_file_location("capstone", checks_dir() / "09-capstone" / "test_capstone.py")
    assert spec and spec.loader
    capstone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(capstone)
    (tmp_path / "answers.json").write_text(json.dumps({"09-capstone/broken-service": {"value": "catlog"}}))
    lab = SimpleNamespace(mode="iptables", store=SimpleNamespace(dir=tmp_path))
    dump = ("*filter\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.96.4.135/32 -p tcp -m comment --comment "
            '"default/catalog:http has no endpoints" -m tcp --dport 80 -j REJECT\nCOMMIT\n')
    node = SimpleNamespace(run=lambda cmd: SimpleNamespace(stdout=dump))
    with pytest.raises(AssertionError, match="'catlog' is not one of the shop's Services"):
        capstone.test_broken_service(lab, lambda name: node)


@pytest.mark.parametrize("args, said", [
    (["--work", "/nonexistent"], "/nonexistent is not a folder of notebooks"),
    (["--notebook", "99"], "no notebook 99 in this course"),
    (["-o", "xml"], "unknown report format 'xml'"),
])
def test_grade_says_a_wrong_folder_or_typo_before_asking_who(args, said, tmp_path, capsys, monkeypatch):
    """`kplab grade --work /nonexistent` said "who is this? no learner id in /nonexistent/.kplab/learner"."""
    from kplab.cli import main

    for var in ("JUPYTERHUB_USER", "KPLAB_LEARNER", "KPLAB_WORK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["grade", *(args if "--work" in args else ["--work", str(tmp_path), *args])]) == 1
    err = capsys.readouterr().err
    assert said in err and "who is this" not in err, err


@pytest.mark.parametrize("word", ["03", "3", "iptables", "03-iptables"])
def test_a_notebook_is_named_as_a_learner_would(word):
    """`kplab reset 3` said "no notebook '3'" while `kplab reset 03` worked."""
    from kplab.grading.course import start_of

    assert start_of(word).notebook == "03-iptables"
