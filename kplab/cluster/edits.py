"""kubectl's small writes as object edits: label/annotate, and the objects `run` and `expose` make.

Pure functions; each bad argument is one LabError line naming it.  The lab then stores and
converges the result like any apply.
"""

from __future__ import annotations

import re
from typing import Any

from kplab.errors import LabError

NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ECHO_IMAGE = "kplab/echo"


def _check_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        raise LabError(f"invalid key {key!r}: the prefix must be a DNS subdomain, e.g. example.com/{name}")
    if not name or len(name) > 63 or not NAME_PART.match(name):
        raise LabError(
            f"invalid key {key!r}: at most 63 characters of a-z, 0-9, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )


def parse_changes(args: list[str], labels: bool = True) -> dict[str, str | None]:
    """['app=web', 'tier-'] -> {'app': 'web', 'tier': None}; values checked as the API server does."""
    what = "label" if labels else "annotation"
    if not args:
        raise LabError(f"give at least one {what}: KEY=VALUE to set, KEY- to remove")
    out: dict[str, str | None] = {}
    for a in args:
        if "=" in a:
            key, value = a.split("=", 1)
            if labels and value and (len(value) > 63 or not NAME_PART.match(value)):
                raise LabError(
                    f"invalid label value {a!r}: empty, or at most 63 characters of a-z, 0-9, '-', '_' "
                    "or '.', starting and ending with a letter or digit"
                )
        elif a.endswith("-"):
            key, value = a[:-1], None
        else:
            raise LabError(f"{a!r} is neither KEY=VALUE nor KEY-: e.g. app=web to set, app- to remove")
        _check_key(key)
        if key in out:
            raise LabError(f"{what} {key!r} is given twice")
        out[key] = value
    return out


def change_metadata(obj: dict[str, Any], field: str, changes: dict[str, str | None], overwrite: bool) -> bool:
    """Apply changes to obj.metadata[field] ('labels' or 'annotations'); True if anything changed."""
    current = obj["metadata"].get(field) or {}
    for key, value in changes.items():
        if value is not None and key in current and current[key] != value and not overwrite:
            raise LabError(f"{key!r} already has a value ({current[key]}), and --overwrite is false")
    updated = dict(current)
    for key, value in changes.items():
        if value is None:
            updated.pop(key, None)
        else:
            updated[key] = value
    if updated == current:
        return False
    obj["metadata"][field] = updated
    return True


def run_pod(
    name: str, port: int | None, labels: dict[str, str | None] | None, image: str = ECHO_IMAGE
) -> dict[str, Any]:
    """What `kubectl run NAME --port P [--labels k=v,...]` creates: one Pod, label run=NAME by default."""
    container: dict[str, Any] = {"name": name, "image": image}
    if port is not None:
        if not 1 <= port <= 65535:
            raise LabError(f"--port {port}: a port is 1-65535")
        container["ports"] = [{"containerPort": port, "protocol": "TCP"}]
    given = {k: v for k, v in (labels or {}).items() if v is not None}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": given or {"run": name}},
        "spec": {"containers": [container]},
    }


def parse_label_list(text: str) -> dict[str, str | None]:
    """--labels 'a=b,c=d' as kubectl run takes it."""
    return parse_changes([p for p in text.split(",") if p]) if text else {}


SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")


def expose(
    kind: str,
    obj: dict[str, Any],
    port: int | None,
    target_port: str | None,
    service_type: str | None,
    name: str | None,
    protocol: str = "TCP",
) -> dict[str, Any]:
    """The Service `kubectl expose KIND NAME` makes: the selector of obj, one port."""
    md = obj["metadata"]
    if kind == "Deployment":
        selector = dict(((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        containers = ((obj["spec"].get("template") or {}).get("spec") or {}).get("containers") or []
    elif kind == "Pod":
        selector = dict(md.get("labels") or {})
        containers = obj["spec"].get("containers") or []
    else:  # Service
        selector = dict((obj.get("spec") or {}).get("selector") or {})
        containers = []
    if not selector:
        raise LabError(
            f"{kind.lower()}/{md['name']} has no labels to select its pods: "
            f"`kplab label {kind.lower()} {md['name']} app={md['name']}` first"
        )
    if service_type is not None and service_type not in SERVICE_TYPES:
        raise LabError(f"--type {service_type!r}: choose {', '.join(SERVICE_TYPES)}")
    if protocol not in ("TCP", "UDP", "SCTP"):
        raise LabError(f"--protocol {protocol!r}: choose TCP, UDP or SCTP")
    if port is None:
        given = [p for c in containers for p in c.get("ports") or []]
        if kind == "Service":
            given = [{"containerPort": p["port"]} for p in obj["spec"].get("ports") or []]
        if not given:
            raise LabError(f"{kind.lower()}/{md['name']} declares no port: give one with --port")
        port = int(given[0]["containerPort"])
    if not 1 <= port <= 65535:
        raise LabError(f"--port {port}: a port is 1-65535")
    target: int | str = port
    if target_port is not None:
        target = int(target_port) if target_port.isdigit() else target_port
        if isinstance(target, int) and not 1 <= target <= 65535:
            raise LabError(f"--target-port {target_port}: a port is 1-65535, or the name of a container port")
    spec: dict[str, Any] = {
        "selector": selector,
        "ports": [{"port": port, "targetPort": target, "protocol": protocol}],
    }
    if service_type:
        spec["type"] = service_type
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name or md["name"],
            "namespace": md.get("namespace", "default"),
            "labels": dict(md.get("labels") or {}),
        },
        "spec": spec,
    }
