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
import io
import json
import os
import socket
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from kplab.errors import CheckError
from kplab.grading.runner import NA, CheckResult

FORMATS = ("json", "junit", "csv")
CSV_FIELDS = ["learner", "lab", "kplab_version", "graded", "check", "outcome", "passed", "seconds",
              "digest", "started", "message", "hostname", "work"]


def kplab_version() -> str:
    try:
        return metadata.version("kplab")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Report:
    learner: str
    lab: str
    results: list[CheckResult]
    kplab_version: str = field(default_factory=kplab_version)
    graded: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    hostname: str = field(default_factory=socket.gethostname)
    work: str = ""  # the work folder graded: with hostname, tells two learners who share an id apart
    notebooks: list[dict[str, Any]] = field(default_factory=list)  # per notebook: seconds, problems
    progress: dict[str, str] = field(default_factory=dict)  # check id -> first pass in the progress record

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def applicable(self) -> int:
        """The denominator: checks this machine could run (not-applicable ones are left out)."""
        return sum(r.applicable for r in self.results)

    @property
    def percent(self) -> float:
        return round(100.0 * self.passed / self.applicable, 1) if self.applicable else 0.0

    @property
    def checks(self) -> dict[str, str]:
        """check id -> digest of the check's source."""
        return {r.id: r.digest for r in self.results}


def make_report(results: list[CheckResult], *, learner: str, lab: str | None = None, **extra: Any) -> Report:
    return Report(learner, lab or os.environ.get("KPLAB_LAB") or "default", results, **extra)


def to_json(rep: Report) -> str:
    doc = {
        "learner": rep.learner, "lab": rep.lab, "kplab_version": rep.kplab_version, "graded": rep.graded,
        "hostname": rep.hostname, "work": rep.work, "passed": rep.passed, "applicable": rep.applicable,
        "total": len(rep.results), "percent": rep.percent, "checks": rep.checks,
        "results": [{**r.to_dict(), "first_passed_in_progress": rep.progress.get(r.id, "")} for r in rep.results],
        "notebooks": rep.notebooks,
    }
    return json.dumps(doc, indent=2) + "\n"


def to_junit(rep: Report) -> str:
    """JUnit XML as pytest's junitxml writes it: testsuites > testsuite > testcase."""
    counts = {o: sum(r.outcome == o for r in rep.results) for o in ("failed", "error", NA)}
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", {
        "name": "kplab", "tests": str(len(rep.results)), "failures": str(counts["failed"]),
        "errors": str(counts["error"]), "skipped": str(counts[NA]),
        "time": f"{sum(r.seconds for r in rep.results):.3f}", "timestamp": rep.graded, "hostname": rep.hostname,
    })
    props = ET.SubElement(suite, "properties")
    for name, value in (("learner", rep.learner), ("lab", rep.lab), ("kplab_version", rep.kplab_version),
                        ("work", rep.work),
                        ("checks", ",".join(f"{k}={v}" for k, v in rep.checks.items()))):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for r in rep.results:
        case = ET.SubElement(suite, "testcase", {"classname": r.notebook, "name": r.id.partition("/")[2],
                                                 "time": f"{r.seconds:.3f}"})
        cprops = ET.SubElement(case, "properties")
        for name, value in (("id", r.id), ("digest", r.digest), ("title", r.title), ("started", r.started)):
            ET.SubElement(cprops, "property", {"name": name, "value": value})
        tag = {"failed": "failure", "error": "error", NA: "skipped"}.get(r.outcome)
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
                         "message": r.message, "hostname": rep.hostname, "work": rep.work})
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
                  doc.get("graded", ""), doc.get("hostname", ""), doc.get("work", ""), doc.get("notebooks", []))


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
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", NA)):
            el = case.find(tag)
            if el is not None:
                outcome, message = name, el.get("message", "")
        cid = cprops.get("id") or f"{case.get('classname')}/{case.get('name')}"
        results.append(_result(cid, outcome, message=message, seconds=float(case.get("time") or 0),
                               digest=cprops.get("digest", ""), title=cprops.get("title", "")))
    return Report(props.get("learner", ""), props.get("lab", ""), results, props.get("kplab_version", "unknown"),
                  suite.get("timestamp", ""), suite.get("hostname", ""), props.get("work", ""))


def _from_csv(text: str) -> Report:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "check" not in rows[0]:
        raise ValueError("not a kplab CSV report")
    results = [_result(r["check"], r["outcome"], message=r.get("message", ""), digest=r.get("digest", ""),
                       seconds=float(r.get("seconds") or 0), started=r.get("started", "")) for r in rows]
    first = rows[0]
    return Report(first["learner"], first.get("lab", ""), results, first.get("kplab_version", "unknown"),
                  first.get("graded", ""), first.get("hostname", ""), first.get("work", ""))


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


def duplicates(reports: list[tuple[Path, Report]]) -> list[str]:
    """Learner ids that two different machines or work folders handed in (not one learner graded twice)."""
    seen: dict[str, dict[tuple[str, str], Path]] = {}
    for path, rep in reports:
        seen.setdefault(rep.learner, {}).setdefault((rep.hostname, rep.work), path)
    return [f"{learner!r} in {', '.join(sorted(str(p) for p in where.values()))}"
            for learner, where in sorted(seen.items()) if len(where) > 1]


def latest(reports: list[Report]) -> dict[str, Report]:
    out: dict[str, Report] = {}
    for rep in sorted(reports, key=lambda r: r.graded):
        out[rep.learner] = rep
    return out


def gradebook(reports: list[Report]) -> str:
    """One CSV row per learner (their latest report); a column per check (1, 0, n/a, error); changed checks named."""
    last = latest(reports)
    current: dict[str, str] = {}  # check id -> digest in the newest report that has it
    for rep in sorted(last.values(), key=lambda r: r.graded):
        current.update({k: v for k, v in rep.checks.items() if v})
    ids = sorted({r.id for rep in last.values() for r in rep.results})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["learner", "kplab_version", "graded", "passed", "total", "percent", *ids, "changed_checks"])
    for learner in sorted(last):
        rep = last[learner]
        by_id = {r.id: r for r in rep.results}
        cells = [_cell(by_id.get(i)) for i in ids]
        changed = [k for k, v in rep.checks.items() if v and current.get(k) not in ("", v)]
        writer.writerow([learner, rep.kplab_version, rep.graded, rep.passed, rep.applicable, rep.percent, *cells,
                         " ".join(changed)])
    return out.getvalue()


def _cell(r: CheckResult | None) -> str:
    if r is None:
        return ""
    return {"passed": "1", "failed": "0", NA: "n/a"}.get(r.outcome, "error")


def class_summary(reports: list[Report]) -> list[dict[str, Any]]:
    """Per check: how many learners it applied to, how many passed, and the most common failure."""
    rows = []
    last = list(latest(reports).values())
    for cid in sorted({r.id for rep in last for r in rep.results}):
        mine = [r for rep in last for r in rep.results if r.id == cid]
        applicable = [r for r in mine if r.applicable]
        passed = sum(r.passed for r in applicable)
        messages = Counter(r.message for r in applicable if not r.passed and r.message)
        common, times = messages.most_common(1)[0] if messages else ("", 0)
        rows.append({"check": cid, "learners": len(applicable), "passed": passed,
                     "pass_rate": round(passed / len(applicable), 3) if applicable else "",
                     "most_common_failure": common, "how_many": times})
    return rows


def summary_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["check", "learners", "passed", "pass_rate", "most_common_failure", "how_many"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def summary_text(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'check':40} {'passed':>9}  most common failure"]
    for r in rows:
        rate = f"{r['passed']}/{r['learners']}"
        lines.append(f"{r['check']:40} {rate:>9}  {r['most_common_failure'][:70]}")
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], stem: Path) -> list[Path]:
    """A horizontal bar per check (the class's pass rate) as PNG and SVG; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    shown = [r for r in rows if r["learners"]]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(shown) + 1.2))
    rates = [100 * float(r["pass_rate"]) for r in shown]
    ax.barh([r["check"] for r in shown], rates, color=["#d93025" if x < 50 else "#1a73e8" for x in rates])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the class who passed (of those it applied to)")
    ax.set_title("Which exercise stumped the room")
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def read_all(directory: Path, exclude: list[Path] | None = None) -> list[tuple[Path, Report]]:
    """Every report in `directory` (recursively; not the files in `exclude`)."""
    if not directory.is_dir():
        raise CheckError(f"{directory} is not a directory of reports")
    skip = {p.resolve() for p in exclude or []}
    paths = sorted(p for p in directory.rglob("*")
                   if p.suffix.lower() in (".json", ".xml", ".csv") and p.resolve() not in skip
                   and not p.name.endswith(SUMMARY_SUFFIX + ".csv"))
    if not paths:
        raise CheckError(f"no reports (.json, .xml, .csv) in {directory}")
    return [(p, load(p)) for p in paths]


SUMMARY_SUFFIX = "-checks"


def collect(directory: Path, exclude: Path | None = None, allow_shared_ids: bool = False) -> tuple[str, int]:
    """The gradebook of every report in `directory`, and how many were read; two learners with one id refuse."""
    found = read_all(directory, [exclude] if exclude else None)
    dup = duplicates(found)
    if dup and not allow_shared_ids:
        raise CheckError("two learners handed in under one id (" + "; ".join(dup) + "): grade them again "
                         "with --learner NAME, or pass --allow-shared-ids to keep the newest of each")
    return gradebook([rep for _, rep in found]), len(found)
