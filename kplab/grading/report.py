"""Grading reports: one learner's check results as JSON, JUnit XML or CSV, and a gradebook of many.

Every report records who (learner id), where (lab, host), when, the kplab version, and each
check's id with a digest of its source, so an instructor sees when two learners were graded by
different versions of a check.  `collect(DIR)` reads any mix of the three formats back and
writes one CSV row per learner:

    learner,kplab_version,graded,passed,total,00-welcome/lab-is-up,...,changed_checks
    alice,0.1.0,2025-05-01T10:02:11+0000,7,9,1,...,
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import os
import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from kplab.errors import CheckError
from kplab.grading.runner import CheckResult

FORMATS = ("json", "junit", "csv")
CSV_FIELDS = ["learner", "lab", "kplab_version", "graded", "check", "outcome", "passed", "seconds",
              "digest", "started", "message"]


def kplab_version() -> str:
    try:
        return metadata.version("kplab")
    except metadata.PackageNotFoundError:
        return "unknown"


def learner_id(explicit: str | None = None) -> str:
    """`--learner`, else `$KPLAB_LEARNER`, else the user name."""
    return explicit or os.environ.get("KPLAB_LEARNER") or getpass.getuser()


@dataclass
class Report:
    learner: str
    lab: str
    results: list[CheckResult]
    kplab_version: str = field(default_factory=kplab_version)
    graded: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    hostname: str = field(default_factory=socket.gethostname)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def checks(self) -> dict[str, str]:
        """check id -> digest of the check's source."""
        return {r.id: r.digest for r in self.results}


def make_report(results: list[CheckResult], *, learner: str | None = None, lab: str | None = None) -> Report:
    return Report(learner_id(learner), lab or os.environ.get("KPLAB_LAB") or "default", results)


def to_json(rep: Report) -> str:
    doc = {
        "learner": rep.learner, "lab": rep.lab, "kplab_version": rep.kplab_version, "graded": rep.graded,
        "hostname": rep.hostname, "passed": rep.passed, "total": len(rep.results), "checks": rep.checks,
        "results": [r.to_dict() for r in rep.results],
    }
    return json.dumps(doc, indent=2) + "\n"


def to_junit(rep: Report) -> str:
    """JUnit XML as pytest's junitxml writes it: testsuites > testsuite > testcase."""
    counts = {o: sum(r.outcome == o for r in rep.results) for o in ("failed", "error", "skipped")}
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", {
        "name": "kplab", "tests": str(len(rep.results)), "failures": str(counts["failed"]),
        "errors": str(counts["error"]), "skipped": str(counts["skipped"]),
        "time": f"{sum(r.seconds for r in rep.results):.3f}", "timestamp": rep.graded, "hostname": rep.hostname,
    })
    props = ET.SubElement(suite, "properties")
    for name, value in (("learner", rep.learner), ("lab", rep.lab), ("kplab_version", rep.kplab_version),
                        ("checks", ",".join(f"{k}={v}" for k, v in rep.checks.items()))):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for r in rep.results:
        case = ET.SubElement(suite, "testcase", {"classname": r.notebook, "name": r.id.partition("/")[2],
                                                 "time": f"{r.seconds:.3f}"})
        cprops = ET.SubElement(case, "properties")
        for name, value in (("id", r.id), ("digest", r.digest), ("title", r.title), ("started", r.started)):
            ET.SubElement(cprops, "property", {"name": name, "value": value})
        tag = {"failed": "failure", "error": "error", "skipped": "skipped"}.get(r.outcome)
        if tag:
            el = ET.SubElement(case, tag, {"message": r.message})
            el.text = f"Hint: {r.hint}" if r.hint and tag != "skipped" else None
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def to_csv(rep: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rep.results:
        writer.writerow({"learner": rep.learner, "lab": rep.lab, "kplab_version": rep.kplab_version,
                         "graded": rep.graded, "check": r.id, "outcome": r.outcome, "passed": int(r.passed),
                         "seconds": f"{r.seconds:.3f}", "digest": r.digest, "started": r.started,
                         "message": r.message})
    return out.getvalue()


def render(rep: Report, fmt: str) -> str:
    writers = {"json": to_json, "junit": to_junit, "csv": to_csv}
    if fmt not in writers:
        raise CheckError(f"unknown report format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return writers[fmt](rep)


def _result(cid: str, outcome: str, **kw: Any) -> CheckResult:
    known = {k: v for k, v in kw.items() if k in CheckResult.__dataclass_fields__}
    return CheckResult(cid, outcome=outcome, **known)


def _from_json(text: str) -> Report:
    doc = json.loads(text)
    results = [_result(r["id"], r["outcome"], **{k: v for k, v in r.items() if k not in ("id", "outcome")})
               for r in doc["results"]]
    return Report(doc["learner"], doc.get("lab", ""), results, doc.get("kplab_version", "unknown"),
                  doc.get("graded", ""), doc.get("hostname", ""))


def _from_junit(text: str) -> Report:
    root = ET.fromstring(text)
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        raise ValueError("no <testsuite>")
    props = {p.get("name"): p.get("value", "") for p in suite.findall("properties/property")}
    results = []
    for case in suite.findall("testcase"):
        cprops = {p.get("name"): p.get("value", "") for p in case.findall("properties/property")}
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            el = case.find(tag)
            if el is not None:
                outcome, message = name, el.get("message", "")
        cid = cprops.get("id") or f"{case.get('classname')}/{case.get('name')}"
        results.append(_result(cid, outcome, message=message, seconds=float(case.get("time") or 0),
                               digest=cprops.get("digest", ""), title=cprops.get("title", "")))
    return Report(props.get("learner", ""), props.get("lab", ""), results, props.get("kplab_version", "unknown"),
                  suite.get("timestamp", ""), suite.get("hostname", ""))


def _from_csv(text: str) -> Report:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "check" not in rows[0]:
        raise ValueError("not a kplab CSV report")
    results = [_result(r["check"], r["outcome"], message=r.get("message", ""), digest=r.get("digest", ""),
                       seconds=float(r.get("seconds") or 0), started=r.get("started", "")) for r in rows]
    first = rows[0]
    return Report(first["learner"], first.get("lab", ""), results, first.get("kplab_version", "unknown"),
                  first.get("graded", ""))


def load(path: Path) -> Report:
    """Read a report written by `kplab grade` in any of its formats."""
    readers = {".json": _from_json, ".xml": _from_junit, ".csv": _from_csv}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise CheckError(f"{path}: not a report (expected .json, .xml or .csv)")
    try:
        rep = reader(path.read_text())
    except (OSError, ValueError, KeyError, ET.ParseError) as e:
        raise CheckError(f"{path}: cannot read this report: {e}") from None
    if not rep.learner:
        raise CheckError(f"{path}: the report names no learner")
    return rep


def gradebook(reports: list[Report]) -> str:
    """One CSV row per learner (their latest report); a column per check; changed checks named."""
    latest: dict[str, Report] = {}
    for rep in sorted(reports, key=lambda r: r.graded):
        latest[rep.learner] = rep
    current: dict[str, str] = {}  # check id -> digest in the newest report that has it
    for rep in sorted(latest.values(), key=lambda r: r.graded):
        current.update({k: v for k, v in rep.checks.items() if v})
    ids = sorted({r.id for rep in latest.values() for r in rep.results})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["learner", "kplab_version", "graded", "passed", "total", *ids, "changed_checks"])
    for learner in sorted(latest):
        rep = latest[learner]
        by_id = {r.id: r for r in rep.results}
        cells = [("" if i not in by_id else int(by_id[i].passed)) for i in ids]
        changed = [k for k, v in rep.checks.items() if v and current.get(k) not in ("", v)]
        writer.writerow([learner, rep.kplab_version, rep.graded, rep.passed, len(rep.results), *cells,
                         " ".join(changed)])
    return out.getvalue()


def collect(directory: Path, exclude: Path | None = None) -> tuple[str, int]:
    """The gradebook of every report in `directory` (recursively; not `exclude`), and how many were read."""
    if not directory.is_dir():
        raise CheckError(f"{directory} is not a directory of reports")
    skip = exclude.resolve() if exclude else None
    paths = sorted(p for p in directory.rglob("*")
                   if p.suffix.lower() in (".json", ".xml", ".csv") and p.resolve() != skip)
    if not paths:
        raise CheckError(f"no reports (.json, .xml, .csv) in {directory}")
    reports = [load(p) for p in paths]
    return gradebook(reports), len(reports)
