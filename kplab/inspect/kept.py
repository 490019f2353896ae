"""The traces a lab keeps (the last 20 of `lab.trace`), so an answer can be held against the
connection it is about (kplab.course.answers) after the notebook's kernel moved on."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

KEEP = 20


def _dir(lab: Any, what: str) -> Path:
    d = Path(lab.store.dir) / what
    d.mkdir(exist_ok=True)
    return d


def keep_trace(lab: Any, trace: dict[str, Any]) -> None:
    """Called by lab.trace: remember this trace (atomically), drop the oldest beyond KEEP."""
    d = _dir(lab, "traces")
    tmp = d / f".{trace['id']}.tmp"
    tmp.write_text(json.dumps(trace))
    os.replace(tmp, d / f"{trace['at']:.6f}-{trace['id']}.json")
    for old in sorted(d.glob("*.json"))[:-KEEP]:
        old.unlink(missing_ok=True)


def traces(lab: Any) -> list[dict[str, Any]]:
    """The kept traces, oldest first."""
    out = []
    for f in sorted(_dir(lab, "traces").glob("*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    return out


def trace_by_id(lab: Any, trace_id: str) -> dict[str, Any] | None:
    return next((t for t in traces(lab) if t.get("id") == trace_id), None)
