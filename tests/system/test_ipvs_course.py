"""04's IPVS traffic exercises graded for real: each check fails before its solution's steps and
passes after them, in the order the notebook gives them (marked `ipvs`: in the throwaway VM here).

The steps are the instructor edition's solution cells, called through the same API; the checks
run as a notebook's `check()` does, in this process (under emulation every child Python costs
about a minute of imports).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kplab.course import answer
from kplab.course.held import hold
from kplab.errors import KplabError
from kplab.grading.course import reset
from kplab.grading.runner import run_checks
from kplab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.ipvs, pytest.mark.slow]

LAB = "ipvs04"
LABS = Path(__file__).resolve().parents[2] / "labs"


def outcome(check: str) -> str:
    [res] = run_checks([f"04-ipvs/{check}"])
    return f"{res.outcome}: {res.message}" if res.outcome != "passed" else "passed"


def test_04_traffic_exercises_fail_then_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPLAB_LAB", LAB)
    monkeypatch.setenv("KPLAB_LEARNER", "tester")
    try:
        Lab(LAB).down()
    except KplabError:
        pass
    lab = reset("04-ipvs", lab=LAB)
    try:
        for check in ("virtual-servers", "scheduler-lc", "lc-next", "drain", "persistence"):
            assert outcome(check).startswith("failed"), check
        lab.set_mode("ipvs")
        assert outcome("virtual-servers") == "passed"
        lab.set_mode("ipvs", scheduler="lc")
        assert outcome("scheduler-lc") == "passed"

        held = hold(lab, "client", "web:80", n=6)
        quiet = min(held.by_pod())
        assert outcome("lc-next").startswith("failed")  # no answer yet
        held.close(quiet)
        answer("04-ipvs/lc-next", quiet, lab=lab)
        assert outcome("lc-next") == "passed"

        held.close()
        one = hold(lab, "client", "web:80")
        pod = one.conns[0][1]
        lab.set_ready(pod, False, terminating=True)
        assert outcome("drain") == "passed"
        assert one.ask() == [pod], "the drained pod's open connection must keep answering"

        lab.apply(LABS / "manifests" / "web-affinity.yaml")
        assert outcome("persistence") == "passed"
        one.close()
    finally:
        lab.down()
