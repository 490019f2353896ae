"""Grading against a real lab: the netns testinfra backend, `kplab check/grade/grade collect/reset`."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra

import kplab.grading  # registers netns://
from kplab.errors import CheckError, KplabError
from kplab.lab import Lab
from kplab.testing.course import CourseRun, edition

pytestmark = [pytest.mark.root]

LAB = "crsgr"
KPLAB = [sys.executable, "-m", "kplab.cli"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    try:
        Lab(LAB).down()
    except KplabError:
        pass
    built = Lab.up(LAB, mode="nftables")
    yield built
    built.down()


def kplab(*args: str, learner: str = "tester") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KPLAB_LAB": LAB, "KPLAB_LEARNER": learner}
    return subprocess.run([*KPLAB, *args], capture_output=True, text=True, env=env, check=False, timeout=300)


def test_netns_backend_runs_testinfra_modules_inside_the_lab(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    node = testinfra.get_host(f"netns://{lab.netns('node-1')}")
    assert lab.node_ip("node-1") in node.interface("eth0").addresses
    assert node.run("nft list table ip kube-proxy").rc == 0
    assert node.iptables.rules("nat") == ["-P PREROUTING ACCEPT", "-P INPUT ACCEPT", "-P OUTPUT ACCEPT",
                                          "-P POSTROUTING ACCEPT"]  # nftables mode: no iptables rules
    monkeypatch.setenv("KPLAB_LAB", LAB)
    pod = testinfra.get_host("netns://client")  # resolved against $KPLAB_LAB
    assert pod.backend.netns == f"kplab-{LAB}-client"
    assert lab.pod_ip("client") in pod.interface("eth0").addresses
    assert "default via" in pod.run("ip route").stdout
    with pytest.raises(CheckError, match="is the lab up"):
        testinfra.get_host("netns://no-such-pod")


def test_check_reports_failures_with_hints_and_passes_after_a_fix(lab: Lab) -> None:
    cp = kplab("check", "05-nftables/one-more-element", "-o", "json")
    assert cp.returncode == 1, cp.stderr
    [res] = json.loads(cp.stdout)
    assert res["outcome"] == "failed" and "no Service named api" in res["message"] and "api.yaml" in res["hint"]
    lab.apply(Path(__file__).resolve().parents[2] / "labs" / "manifests" / "api.yaml")
    cp = kplab("check", "05-nftables/one-more-element")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "PASS" in cp.stdout and "1 of 1 checks passed" in cp.stdout


def test_grade_junit_is_valid_junit_xml(tmp_path: Path) -> None:
    work = edition(tmp_path / "work", "learner")
    out = tmp_path / "tester.xml"
    cp = kplab("grade", "--work", str(work), "--notebook", "00", "--grading-lab", GRADE_LAB, "-o", "junit",
               "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    assert "tester: 0 of 2 applicable checks passed" in cp.stderr
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    cases = suite.findall("testcase")
    listed = json.loads(kplab("check", "--list", "-o", "json", "00").stdout)
    assert int(suite.get("tests", -1)) == len(cases) == len(listed) == 2
    bad = sum(c.find("failure") is not None for c in cases)
    errors = sum(c.find("error") is not None for c in cases)
    assert (int(suite.get("failures", -1)), int(suite.get("errors", -1))) == (bad, errors) == (2, 0)
    for case in cases:
        assert case.get("classname") == "00-welcome" and case.get("name") and float(case.get("time", "x")) >= 0
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["learner"] == "tester" and props["kplab_version"] and props["work"] == str(work.resolve())
    assert {f"{c['id']}={c['digest']}" for c in listed} == set(props["checks"].split(","))


def test_reset_restores_a_notebooks_starting_state(lab: Lab) -> None:
    lab.scale("web", 1)
    cp = kplab("reset", "01-before-proxy")
    assert cp.returncode == 0, cp.stderr
    again = Lab.attach(LAB)
    assert again.mode == "none" and len([p for p in again.pods() if p.metadata.name.startswith("web-")]) == 3
    assert "api" not in [s.metadata.name for s in again.services()]
    cp = kplab("reset", "99-nope")
    assert cp.returncode == 1 and cp.stderr.startswith("kplab: no notebook '99-nope'")
    assert "Traceback" not in cp.stderr


# ------------------------------------------------------------------ whole-course grading by replay
LABS = Path(__file__).resolve().parents[2] / "labs"
GRADE_LAB = "crsgrd"


def grade(work: Path, learner: str, *extra: str) -> dict:
    out = work / f"{learner}.json"
    env = {**os.environ, "KPLAB_LEARNER": ""}
    cp = subprocess.run([*KPLAB, "grade", "--work", str(work), "--learner", learner, "--grading-lab", GRADE_LAB,
                         "--out", str(out), *extra], capture_output=True, text=True, env=env, check=False,
                        timeout=1800)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert "Traceback" not in cp.stderr
    print(cp.stderr)  # the per-notebook times, for the note
    assert not Lab(GRADE_LAB).store.exists, "the grading lab is left behind"
    return json.loads(out.read_text())


def outcomes_of(rep: dict) -> dict[str, str]:
    return {r["id"]: r["outcome"] for r in rep["results"]}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, course: CourseRun) -> dict[str, dict]:
    """Two learners, graded by replay: the learner edition untouched, and a learner who typed the
    solutions into the learner edition and ran 00 to 08 in order first (the session's `course`, whose
    run test_notebooks.py checks notebook by notebook)."""
    base = tmp_path_factory.mktemp("course")
    out = {"untouched": grade(edition(base / "untouched", "learner"), "untouched")}
    course.all()
    out["typed"] = grade(course.work, "typed")
    out["typed"]["_work"] = str(course.work)
    return out


def test_learner_edition_untouched_grades_zero(reports: dict[str, dict]) -> None:
    rep = reports["untouched"]
    assert rep["applicable"] >= 18 and rep["passed"] == 0, {k: v for k, v in outcomes_of(rep).items() if v == "passed"}
    assert set(outcomes_of(rep).values()) <= {"failed", "not-applicable"}, outcomes_of(rep)


def test_learner_who_ran_everything_in_order_grades_all(reports: dict[str, dict]) -> None:
    rep = reports["typed"]
    bad = {r["id"]: r["message"] for r in rep["results"] if r["outcome"] not in ("passed", "not-applicable")}
    assert rep["passed"] == rep["applicable"] == reports["untouched"]["applicable"] >= 18, bad
    assert rep["percent"] == 100.0, bad
    # their own runs were recorded as they went, and the report shows the first pass beside the grade
    firsts = [r["first_passed_in_progress"] for r in rep["results"] if r["outcome"] == "passed"]
    assert all(firsts), rep["results"]
    cp = subprocess.run([*KPLAB, "progress", "--work", rep["_work"]], capture_output=True, text=True, check=False,
                        timeout=120)
    assert cp.returncode == 0 and f"the course: {rep['passed']} of" in cp.stdout, cp.stdout


def test_without_ipvs_04_is_not_applicable_and_left_out(reports: dict[str, dict]) -> None:
    from kplab.proxy.base import proxier_class

    if proxier_class("ipvs").doctor().available:
        pytest.skip("this kernel has IPVS: 04's checks apply here")
    rep = reports["typed"]
    nb04 = [r for r in rep["results"] if r["notebook"] == "04-ipvs"]
    # the kernel checks (ipvsadm) are left out; the on-paper one (IPVS mode's render of the lab) applies
    on_paper = [r for r in nb04 if r["id"] == "04-ipvs/web-virtual-servers"]
    kernel = [r for r in nb04 if r not in on_paper]
    assert kernel and all(r["outcome"] == "not-applicable" and "IPVS" in r["message"] for r in kernel), nb04
    assert [r["outcome"] for r in on_paper] == ["passed"], nb04
    na = [r for r in rep["results"] if r["outcome"] == "not-applicable"]
    assert rep["applicable"] == rep["total"] - len(na) and rep["percent"] == 100.0


def test_collect_three_replayed_reports(reports: dict[str, dict], tmp_path: Path) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    # a third learner who handed in the same work as "typed" (collect reads only the reports)
    learners = {**reports, "instructor": {**reports["typed"], "learner": "instructor"}}
    for who, rep in learners.items():
        (folder / f"{who}.json").write_text(json.dumps({k: v for k, v in rep.items() if k != "_work"}))
    book = folder / "gradebook.csv"
    cp = kplab("grade", "collect", str(folder), "--out", str(book))
    assert cp.returncode == 0, cp.stderr
    rows = list(csv.DictReader(io.StringIO(book.read_text())))
    assert [r["learner"] for r in rows] == ["instructor", "typed", "untouched"]
    rates = list(csv.DictReader(io.StringIO((folder / "gradebook-checks.csv").read_text())))
    applicable = [r for r in rates if r["learners"] != "0"]
    assert applicable and all(r["passed"] == "2" and r["learners"] == "3" for r in applicable), applicable
    assert all(r["most_common_failure"] for r in applicable)
    assert (folder / "gradebook-checks.png").stat().st_size > 1000 and (folder / "gradebook-checks.svg").exists()
    assert "3 reports, 3 learners" in cp.stdout


def test_every_check_fails_right_after_reset(lab: Lab) -> None:
    """Nothing is passed before the learner does something; a failing check answers fast (seconds printed)."""
    from kplab.grading.progress import course_checks

    slow = {}
    from kplab.grading.replay import _mode_unavailable

    for notebook in course_checks():
        if _mode_unavailable(notebook):  # graded as not applicable on this machine
            continue
        cp = kplab("reset", notebook)
        assert cp.returncode == 0, cp.stderr
        cp = kplab("check", notebook, "-o", "json")
        results = json.loads(cp.stdout)
        assert {r["outcome"] for r in results} <= {"failed", "not-applicable"}, [
            (r["id"], r["outcome"], r["message"]) for r in results]
        slow.update({r["id"]: r["seconds"] for r in results})
    print("seconds per failing check:", json.dumps(slow))


def test_bad_notebooks_cost_only_their_own_checks(tmp_path: Path) -> None:
    import nbformat

    work = edition(tmp_path / "work", "learner")
    (work / "00-welcome.ipynb").unlink()
    (work / "01-before-proxy.ipynb").write_text("{not json")
    old = nbformat.read(work / "02-userspace.ipynb", as_version=4)
    old.metadata["kplab"]["release"] = "0123456789ab"
    nbformat.write(old, work / "02-userspace.ipynb")
    hang = nbformat.read(work / "03-iptables.ipynb", as_version=4)
    sol = next(c for c in hang.cells if c.id == "03-solution-four-way-cascade")
    sol.source = "import time\ntime.sleep(3600)"
    del next(c for c in hang.cells if c.id == "03-check-affinity").metadata["tags"]  # and a check cell "deleted"
    hang.cells = [c for c in hang.cells if c.id != "03-check-affinity"]
    nbformat.write(hang, work / "03-iptables.ipynb")
    rep = grade(work, "bad", "--notebook", "00", "--notebook", "01", "--notebook", "02", "--notebook", "03",
                "--cell-timeout", "20")
    by = {r["id"]: r for r in rep["results"]}
    assert by["00-welcome/four-replicas"]["outcome"] == "error" and "not in" in by["00-welcome/four-replicas"]["message"]
    assert by["01-before-proxy/dnat-by-hand"]["outcome"] == "error" and "not a notebook" in by["01-before-proxy/dnat-by-hand"]["message"]
    msg = by["02-userspace/sticky"]["message"]
    assert by["02-userspace/sticky"]["outcome"] == "error" and "release 0123456789ab" in msg and "another version" in msg
    hung = by["03-iptables/four-way-cascade"]
    assert hung["outcome"] == "error" and "time.sleep(3600)" not in hung["message"] and "did not finish" in hung["message"]
    assert "cell" in hung["message"]
    assert by["03-iptables/affinity"]["outcome"] == "failed"  # put back in its place and graded


def check_one(cid: str) -> dict:
    cp = kplab("check", cid, "-o", "json")
    [res] = json.loads(cp.stdout)
    return res


def test_checks_reject_the_wrong_ways_and_accept_the_right_ones(lab: Lab) -> None:
    """The ways of passing without the skill (and the right ways rejected) that the first checks had."""
    def reset(nb: str) -> Lab:
        cp = kplab("reset", nb)
        assert cp.returncode == 0, cp.stderr
        return Lab.attach(LAB)

    # 01: a cascade of 0.33, 0.33, rest reaches every pod, but not evenly
    lab = reset("01")
    cip = lab.service_ip("web")
    ips = [lab.pod_ip(p) for p in sorted(p.metadata.name for p in lab.pods() if p.metadata.name.startswith("web-"))]
    for ip, p in zip(ips, ["0.33", "0.33", None]):
        match = ["-m", "statistic", "--mode", "random", "--probability", p] if p else []
        lab.exec("node-1", ["iptables", "-t", "nat", "-A", "PREROUTING", "-d", cip, "-p", "tcp", "--dport", "80",
                            *match, "-j", "DNAT", "--to-destination", f"{ip}:8080"])
    res = check_one("01-before-proxy/spread-by-hand")
    assert res["outcome"] == "failed" and "not 33% each" in res["message"], res

    # 02: restarting the stopped server is not the exercise; one replica is not stickiness
    lab = reset("02")
    web = sorted(p.metadata.name for p in lab.pods() if p.metadata.name.startswith("web-"))
    lab.echo_stop(web[0])
    lab.echo_start(web[0])
    res = check_one("02-userspace/udp-all-answered")
    assert res["outcome"] == "failed" and "every web pod's server answers" in res["message"], res
    lab.scale("web", 1)
    lab.apply(LABS / "manifests" / "web-affinity.yaml")
    res = check_one("02-userspace/sticky")
    assert res["outcome"] == "failed" and "1 ready endpoint" in res["message"], res

    # 03: affinity on a hand-written Service whose port has no name is right
    lab = reset("03")
    lab.apply("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
              "spec: {selector: {app: web}, sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 8080}]}")
    res = check_one("03-iptables/affinity")
    assert res["outcome"] == "passed", res

    # 08: relabelling cart's pods is right; putting the pinned pod back is not; another mode is said in words
    lab = reset("08")
    lab.apply("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cart}\nspec:\n  replicas: 2\n"
              "  selector: {matchLabels: {app: kart}}\n  template:\n    metadata: {labels: {app: kart}}\n"
              "    spec: {containers: [{name: echo, image: kplab/echo, ports: [{name: http, containerPort: 8080}]}]}")
    res = check_one("08-troubleshooting/cart-answers")
    assert res["outcome"] == "passed", res
    pinned = lab.packets("client").udp("web:dns", sport=5353).json()["pod"]
    lab.set_ready(pinned, False)
    lab.set_ready(pinned, True)
    res = check_one("08-troubleshooting/udp-flow-moved")
    assert res["outcome"] == "failed" and "every web pod is ready" in res["message"], res
    res = check_one("08-troubleshooting/web-chain-restored")
    assert res["outcome"] == "failed" and "has not started over" in res["message"], res
    lab.set_mode("nftables")
    res = check_one("08-troubleshooting/web-chain-restored")
    assert res["outcome"] == "failed" and res["message"].startswith("the lab runs nftables"), res
    assert "CommandResult" not in res["message"]
