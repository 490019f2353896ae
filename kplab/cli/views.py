"""What the core commands print: render input, the doctor's report (`get` is kplab.cluster.kubeviews)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kplab.cluster import controller, manifests


def render_state(files: list[Path], **config: Any) -> Any:
    """ProxyState from manifests taken as kube-proxy receives them: as given.

    EndpointSlices are used as given; only a Service that has none gets them derived from the
    given Pods (which then need status.podIP), the way the endpointslice controller would.
    """
    from kplab.proxy.core import build_state

    docs = manifests.load(files)
    objects: dict[str, dict[str, Any]] = {}
    for d in docs:
        objects.setdefault(d.kind, {})[d.key] = d.body
    slices = dict(objects.get("EndpointSlice", {}))
    owned = {((s["metadata"].get("namespace") or "default"), (s["metadata"].get("labels") or {}).get(
        "kubernetes.io/service-name")) for s in slices.values()}
    pods_with_ip = {k: p for k, p in objects.get("Pod", {}).items() if (p.get("status") or {}).get("podIP")}
    if pods_with_ip:
        derived = controller.endpoint_slices({"Service": objects.get("Service", {}), "Pod": pods_with_ip})
        for k, s in derived.items():
            if (s["metadata"]["namespace"], s["metadata"]["labels"]["kubernetes.io/service-name"]) not in owned:
                slices[k] = s
    return build_state([manifests.model(s) for s in objects.get("Service", {}).values()],
                       [manifests.model(s) for s in slices.values()], **config)


def render_text(mode: str, files: list[Path], **config: Any) -> str:
    from kplab.proxy.base import proxier_class

    cls = proxier_class(mode)
    text = cls.render(render_state(files, **config))
    return text if text.endswith("\n") else text + "\n"


def doctor_report() -> tuple[dict[str, Any], str]:
    from kplab.errors import KplabError
    from kplab.proxy.base import MODES, proxier_class
    from kplab.proxy.servers.feed import doctor as servers_doctor

    problems = []
    if os.geteuid() != 0:
        problems.append("not root: run kplab as root (sudo) to create network namespaces")
    for tool, pkg in (("ip", "iproute2"), ("nsenter", "util-linux")):
        if not shutil.which(tool):
            problems.append(f"{tool} missing: apt-get install {pkg}")
    if not os.path.exists("/proc/self/ns/net"):
        problems.append("no network namespaces in this kernel: CONFIG_NET_NS")
    if not os.path.isdir("/proc/sys/net/bridge"):
        problems.append("bridge netfilter missing: modprobe br_netfilter (CONFIG_BRIDGE_NETFILTER)")
    data: dict[str, Any] = {"lab": {"ok": not problems, "problems": problems}, "modes": {}}
    lines = ["lab: " + ("ok" if not problems else "NOT READY")] + [f"  - {p}" for p in problems]
    for mode in MODES:
        try:
            a = proxier_class(mode).doctor()
            entry = {"available": a.available, "detail": a.detail, "fix": a.fix, "note": a.note}
        except KplabError as e:
            entry = {"available": False, "detail": str(e), "fix": "", "note": ""}
        data["modes"][mode] = entry
        mark = "ok " if entry["available"] else "no "
        lines.append(f"{mark} {mode:<10} {entry['detail']}" + (f"  [{entry['note']}]" if entry["note"] else ""))
        if entry["fix"] and not entry["available"]:
            lines.append(f"    fix: {entry['fix']}")
    data["servers"], more = servers_doctor(_running_lab())
    return data, "\n".join(lines + more)


def _running_lab() -> Any:
    """The current lab when it is up and we may enter its namespaces, else None."""
    from kplab.cli import current_lab
    from kplab.errors import KplabError
    from kplab.lab import Lab

    if os.geteuid() != 0:
        return None
    try:
        return Lab.attach(current_lab())
    except KplabError:
        return None
