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


def test_grade_junit_is_valid_junit_xml(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "tester.xml"
    cp = kplab("grade", "-o", "junit", "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    cases = suite.findall("testcase")
    listed = json.loads(kplab("check", "--list", "-o", "json").stdout)
    assert int(suite.get("tests", -1)) == len(cases) == len(listed) > 0
    bad = sum(c.find("failure") is not None for c in cases)
    errors = sum(c.find("error") is not None for c in cases)
    skipped = sum(c.find("skipped") is not None for c in cases)
    assert (int(suite.get("failures", -1)), int(suite.get("errors", -1)), int(suite.get("skipped", -1))) == (
        bad, errors, skipped)
    assert errors == 0, [c.get("name") for c in cases if c.find("error") is not None]
    for case in cases:
        assert case.get("classname") and case.get("name") and float(case.get("time", "x")) >= 0
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["learner"] == "tester" and props["kplab_version"]
    assert {f"{c['id']}={c['digest']}" for c in listed} == set(props["checks"].split(","))


def test_collect_three_reports_gives_three_learners(lab: Lab, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    for learner, fmt, suffix in (("ada", "json", "json"), ("bob", "junit", "xml"), ("cy", "csv", "csv")):
        cp = kplab("grade", "-o", fmt, "--out", str(reports / f"{learner}.{suffix}"), learner=learner)
        assert cp.returncode == 0, cp.stderr
    book = reports / "gradebook.csv"
    cp = kplab("grade", "collect", str(reports), "--out", str(book))
    assert cp.returncode == 0, cp.stderr
    rows = list(csv.DictReader(io.StringIO(book.read_text())))
    assert [r["learner"] for r in rows] == ["ada", "bob", "cy"]
    assert len({r["passed"] for r in rows}) == 1  # the same lab graded three times
    cp = kplab("grade", "collect", str(reports), "--out", str(book))  # the gradebook itself is not a report
    assert cp.returncode == 0 and "3 reports" in cp.stdout


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
