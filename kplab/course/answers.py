"""Answers a learner gives in a notebook, graded against what the kernel did, never a stored key.

    t = lab.trace("client", "web")              # the kernel traces one connection; kept in the lab
    answer("03-iptables/which-endpoint", "KUBE-SEP-...")   # which endpoint chain took it?
    check("03-iptables/which-endpoint")         # compares with *that* trace, and the live rules

Every `lab.trace` is kept in the lab's state directory (`traces/`, the last 20), and an answer
records the trace it is about (the newest one when it was given).  The checks then hold the
answer against the endpoint the kernel's tracer saw that connection DNATed to (the chain whose
rule did the DNAT, its address, the pod that answered), and check the chain still DNATs there
on the node.  Prediction questions (`answer("03-iptables/predict-share", 1/3)`) are held
against a measurement the check makes itself.  A reset or `kplab down` forgets both.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from kplab.errors import LabError

from kplab.inspect.kept import keep_trace, trace_by_id, traces  # noqa: F401  (what checks read)


class Answered:
    """What `answer()` returns: a line saying what was recorded and what it will be held against."""

    def __init__(self, question: str, record: dict[str, Any]) -> None:
        self.question, self.record = question, record

    def __repr__(self) -> str:
        t = self.record.get("trace")
        about = f"; about the trace of {t['proto']} {t['client']} -> {t['destination']}" if t else ""
        return f"recorded for {self.question}: {self.record['value']!r}{about}. Run the check below."


def answer(question: str, value: Any, lab: Any = None) -> Answered:
    """Record `value` as the learner's answer to `question` ("03-iptables/which-endpoint")."""
    from kplab.lab import Lab

    if "/" not in question:
        raise LabError(f"question {question!r}: name it as in the notebook, e.g. '03-iptables/which-endpoint'")
    _known(question)
    if lab is None:
        from kplab.grading.netns import current_lab

        lab = Lab.attach(current_lab())
    kept = traces(lab)
    last = kept[-1] if kept else None
    record = {"value": value, "at": time.time(),
              "trace": {k: last[k] for k in ("id", "proto", "client", "destination", "frm", "target", "mode")}
              if last else None}
    path = Path(lab.store.dir) / "answers.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    recorded[question] = record
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(recorded, default=str))
    os.replace(tmp, path)
    return Answered(question, record)


def _known(question: str) -> None:
    """A question is a check id: a typo would be recorded where no check ever reads it."""
    from kplab.grading.runner import checks_dir

    root = checks_dir()
    if not root.is_dir():  # no checks shipped here: nothing to hold the id against
        return
    ids = sorted(f"{f.parent.name}/{name.replace('_', '-')}"
                 for f in root.glob("*/test_*.py") for name in re.findall(r"^def test_(\w+)", f.read_text(), re.M))
    if question not in ids:
        near = difflib.get_close_matches(question, ids, n=1)
        hint = f"did you mean {near[0]!r}?" if near else "`kplab check --list` shows the check ids"
        raise LabError(f"no question {question!r}: {hint}")


def answer_of(lab: Any, question: str) -> dict[str, Any]:
    """The recorded answer (AssertionError, for a check, when there is none)."""
    try:
        recorded = json.loads((Path(lab.store.dir) / "answers.json").read_text())
    except (OSError, ValueError):
        recorded = {}
    got = recorded.get(question)
    assert got is not None, f'no answer recorded: run answer("{question}", ...) in the notebook'
    return dict(got)


def dnat_hop(trace: dict[str, Any]) -> dict[str, Any] | None:
    """The hop whose rule rewrote the destination (the endpoint's chain), from the tracer's lines."""
    from kplab.inspect.trace_parse import Hop

    for h in trace.get("hops") or []:
        if Hop(h["node"], 0, "", "", "", rule=h.get("rule", "")).nat.startswith("DNAT"):
            return dict(h)
    return None


def traced_endpoint(lab: Any, question: str, mode: str, frm: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Check the answer to "which endpoint took the traced connection?" against that connection's trace.

    Returns (the answer, the DNAT hop, the trace); raises AssertionError naming what differs.
    Accepted answers: the endpoint chain's name, the endpoint's ip:port, or the pod's name.
    """
    got = answer_of(lab, question)
    about = got.get("trace")
    assert about, f"no trace before the answer: run lab.trace({frm!r}, ...) first, then answer again"
    trace = trace_by_id(lab, about["id"])
    assert trace is not None, "the trace this answer is about is gone (the lab was reset?): trace and answer again"
    assert trace["mode"] == mode, f"that trace was taken in {trace['mode']} mode: this question is about {mode}"
    assert trace["frm"] == frm, f"that trace started at {trace['frm']}, this question is about a connection from {frm}"
    hop = dnat_hop(trace)
    assert hop is not None, f"the kernel's trace of that connection shows no DNAT: {trace.get('error') or 'no rule matched'}"
    address = hop["rule"].split("--to-destination")[-1].split()[0] if "--to-destination" in hop["rule"] else \
        hop["rule"].split("dnat to")[-1].split()[0]
    pod = str((trace.get("answer") or {}).get("pod", ""))
    value = str(got["value"]).strip()
    accepted = {hop["chain"], address, pod} - {""}
    assert value in accepted, (
        f"{value!r} is not the endpoint the kernel's trace of {trace['client']} -> {trace['destination']} was DNATed "
        "by: read the trace's path again (the chain whose rule did the DNAT, its address, or the pod that answered)")
    return value, hop, trace


def traced_drop(lab: Any, question: str, frm: str, destination: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the answer to "in which chain did the kernel drop/reject the traced connection?".

    `destination` is "ip:port" the trace must have gone to (":port": any address).  Returns (the
    dropping hop, the trace).
    """
    got = answer_of(lab, question)
    about = got.get("trace")
    assert about, f"no trace before the answer: run lab.trace({frm!r}, ...) first, then answer again"
    trace = trace_by_id(lab, about["id"])
    assert trace is not None, "the trace this answer is about is gone (the lab was reset?): trace and answer again"
    to = trace["destination"]
    assert trace["frm"] == frm and (to == destination or (destination.startswith(":") and to.endswith(destination))), (
        f"that trace went from {trace['frm']} to {trace['destination']}; this question is about {frm} -> {destination}")
    hop = next((h for h in trace.get("hops") or [] if h.get("verdict") in ("DROP", "REJECT")
                or str(h.get("rule", "")).rstrip().endswith(("reject", "drop"))), None)
    assert hop is not None, "the kernel's trace of that connection shows no drop or reject: trace it while it fails"
    value = str(got["value"]).strip()
    assert value == hop["chain"], (
        f"{value!r} is not the chain where the kernel's trace of {trace['client']} -> {trace['destination']} "
        "ended: read the last rule the packet met")
    return hop, trace
