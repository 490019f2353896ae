"""Where each notebook starts, and how to put the lab back there.

`labs/manifest.yaml` declares, per notebook, its starting state: the kube-proxy mode, the
manifests (paths relative to `labs/`, `default` being the lab's default app) and the node
count.  `reset(notebook)` rebuilds the lab exactly so (down, then up with that state): rules a
learner deleted, sysctls they changed and conntrack entries all go, and the notebooks on disk
are never touched.  A notebook's first cell calls `start("03-iptables")`, which is the same thing
seen from a kernel; re-running it is how a learner starts over.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kplab.errors import CheckError, KplabError, LabError
from kplab.grading.netns import current_lab
from kplab.grading.runner import REPO
from kplab.lab import Lab, default_manifest

LABS = REPO / "labs"
FIRST = "00-welcome"


@dataclass
class Start:
    notebook: str
    mode: str = "iptables"
    manifests: list[str] = field(default_factory=lambda: ["default"])
    nodes: int = 2
    options: dict[str, Any] = field(default_factory=dict)  # Lab.up's options, e.g. conntrack_cleanup

    def sources(self) -> list[str | Path]:
        return [default_manifest() if m == "default" else LABS / m for m in self.manifests]


def starts(path: Path | None = None) -> dict[str, Start]:
    """Every notebook's starting state, from labs/manifest.yaml."""
    path = path or LABS / "manifest.yaml"
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CheckError(f"{path}: cannot read the notebooks' starting states: {e}") from None
    out = {}
    for name, spec in (doc.get("notebooks") or {}).items():
        unknown = set(spec or {}) - {"mode", "manifests", "nodes", "options"}
        if unknown:
            raise CheckError(f"{path}: {name}: unknown field(s) {', '.join(sorted(unknown))}")
        out[name] = Start(name, **(spec or {}))
    return out


def start_of(notebook: str) -> Start:
    """`03`, `3`, `iptables` or `03-iptables` -> that notebook's Start."""
    all_starts = starts()
    word = notebook.zfill(2) if notebook.isdigit() else notebook
    for name, start in all_starts.items():
        if word in (name, *name.split("-", 1)):
            return start
    raise CheckError(f"no notebook {notebook!r} in labs/manifest.yaml: choose one of {', '.join(all_starts)}")


def _marker(lab: str) -> Path:
    return Lab(lab).store.dir / "course.json"


def last_notebook(lab: str) -> str:
    try:
        return str(json.loads(_marker(lab).read_text())["notebook"])
    except (OSError, ValueError, KeyError):
        return FIRST


def reset(notebook: str | None = None, lab: str | None = None, for_replay: bool = False) -> Lab:
    """Rebuild `lab` in `notebook`'s starting state (default: the notebook last reset to).

    `for_replay`: the grader built it for a replay; the notebook's own `start(...)` then uses it
    as it is, once, instead of building it a second time."""
    name = lab or current_lab()
    start = start_of(notebook or last_notebook(name))
    sources = start.sources()
    try:
        Lab(name).down()
    except KplabError:
        pass  # not up: nothing to take down
    try:
        built = Lab.up(name, mode=start.mode, manifests=sources, nodes=start.nodes, **start.options)
    except LabError:  # up is all-or-nothing; on a loaded machine one more try usually succeeds
        built = Lab.up(name, mode=start.mode, manifests=sources, nodes=start.nodes, **start.options)
    _marker(name).write_text(json.dumps({"notebook": start.notebook, "fresh_for_replay": for_replay}))
    return built


def _fresh_for_replay(notebook: str, lab: str) -> Lab | None:
    """The lab the grader just built for this notebook, taken once (a second `start` rebuilds)."""
    try:
        marker = json.loads(_marker(lab).read_text())
    except (OSError, ValueError):
        return None
    if not marker.get("fresh_for_replay") or marker.get("notebook") != start_of(notebook).notebook:
        return None
    _marker(lab).write_text(json.dumps({"notebook": marker["notebook"], "fresh_for_replay": False}))
    try:
        return Lab.attach(lab)
    except KplabError:
        return None


def start(notebook: str, lab: str | None = None) -> Lab:
    """A notebook's first cell: the lab in this notebook's starting state, as a Lab handle, and
    where the learner stands (the checks of this notebook and of the course they passed)."""
    name = lab or current_lab()
    built = _fresh_for_replay(notebook, name) or reset(notebook, name)
    if os.environ.get("KPLAB_PROGRESS") != "off":
        from kplab.grading.progress import standing

        try:
            print(standing(start_of(notebook).notebook))
        except Exception:  # noqa: BLE001, S110 - a progress line must never stop the first cell
            pass
    return built
