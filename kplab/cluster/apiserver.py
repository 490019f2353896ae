"""What the API server keeps and says for kubectl's writes, over the lab's object store.

store()   create or update one admitted object: "created", "configured" or "unchanged";
          what the server owns (uid, creationTimestamp, a Pod's status and placement, a
          Deployment's status) survives a re-apply, as it does with `kubectl apply`
names     kubectl's: `deployment.apps/web created`, `service "web" deleted`,
          `Error from server (NotFound): deployments.apps "web" not found`
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from kplab.cluster.deployments import rfc3339
from kplab.errors import LabError

RESOURCES = {  # kind -> (plural, API group): what kubectl prints
    "Pod": ("pods", ""),
    "Service": ("services", ""),
    "Deployment": ("deployments", "apps"),
    "EndpointSlice": ("endpointslices", "discovery.k8s.io"),
}
SERVER_FIELDS = ("uid", "creationTimestamp", "generation", "ownerReferences", "generateName")


class NotFound(LabError):
    """kubectl's NotFound; `done` lists what the same command did before it hit the missing object."""

    def __init__(self, messages: list[str], done: list[str] | None = None) -> None:
        super().__init__("; ".join(messages))
        self.messages, self.done = messages, done or []


def resource(kind: str) -> str:
    """'deployment.apps', 'service': how kubectl names one object's type."""
    _, group = RESOURCES[kind]
    return kind.lower() + (f".{group}" if group else "")


def not_found(kind: str, name: str) -> str:
    plural, group = RESOURCES[kind]
    return f'{plural}{"." + group if group else ""} "{name}" not found'


def store(
    objects: dict[str, dict[str, Any]], kind: str, key: str, body: dict[str, Any], now: float
) -> tuple[str, str]:
    """Create or update; returns (verb, note): the note says where the lab is laxer than a server."""
    new = copy.deepcopy(body)
    md = new.setdefault("metadata", {})
    old = objects.get(kind, {}).get(key)
    if old is None:
        md.setdefault("uid", str(uuid.uuid4()))
        md.setdefault("creationTimestamp", rfc3339(now))
        if kind == "Deployment":
            md["generation"] = 1
        objects.setdefault(kind, {})[key] = new
        return "created", ""
    for f in SERVER_FIELDS:
        if f in old["metadata"]:
            md[f] = old["metadata"][f]
    note = ""
    if kind in ("Pod", "Deployment") and "status" in old:
        new["status"] = old["status"]
    if kind == "Pod":
        spec, old_spec = new.setdefault("spec", {}), old.get("spec") or {}
        spec.setdefault("nodeName", old_spec.get("nodeName"))
        if md.get("deletionTimestamp") is None and old["metadata"].get("deletionTimestamp"):
            md["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        if spec != old_spec:
            note = (
                f"pod/{md['name']}: a real API server refuses most changes to a Pod's spec (pods are "
                "immutable but for images and a few fields); the lab applies them"
            )
            if spec["nodeName"] != old_spec.get("nodeName"):
                new["status"] = {}  # a new node: a new address from its pod CIDR, a new namespace
                note += ": the pod is rebuilt on " + str(spec["nodeName"])
    if kind == "Deployment" and new.get("spec") != old.get("spec"):
        md["generation"] = int(old["metadata"].get("generation", 1)) + 1
    if new == old:
        return "unchanged", ""
    objects[kind][key] = new
    return "configured", note
