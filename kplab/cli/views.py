"""What the core commands print: render input, the doctor's report (`get` is kplab.cluster.kubeviews)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kplab.cluster import controller, manifests


def render_state(files: list[Path], notes: list[str] | None = None, **config: Any) -> Any:
    """ProxyState from manifests taken as kube-proxy receives them: as given.

    EndpointSlices are used as given; only a Service that has none gets them derived from the
    given Pods (which then need status.podIP), the way the endpointslice controller would.
    A Service without a clusterIP (a manifest as written, not as `kubectl get -o yaml` prints
    it) gets its addresses allocated as `kplab up` would, and `notes` says so; a Deployment's
    pods are not made up: `notes` says its Services have no endpoints from it.
    """
    from kplab.proxy.core import build_state

    notes = [] if notes is None else notes
    docs = manifests.load(files)
    objects: dict[str, dict[str, Any]] = {}
    for d in docs:
        objects.setdefault(d.kind, {})[d.key] = d.body
    _allocate(docs, objects, notes, config.get("service_cidr"))
    with_ip = [p for p in objects.get("Pod", {}).values() if (p.get("status") or {}).get("podIP")]
    for d in docs:
        sel = ((d.body.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if d.kind == "Deployment" and not objects.get("EndpointSlice") and not any(
                controller.matches(sel, (p["metadata"].get("labels") or {})) for p in with_ip):
            notes.append(f"deployment/{d.body['metadata']['name']}: its pods are not in the input, so no endpoints "
                         "come from it (give Pods with status.podIP or EndpointSlices, e.g. `kplab get pods,"
                         "endpointslices -o yaml` of a running lab)")
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


def _allocate(docs: list[Any], objects: dict[str, dict[str, Any]], notes: list[str], service_cidr: str | None) -> None:
    """Services without a clusterIP get one (and nodePorts, an LB IP) as the lab's admission gives them."""
    def unallocated(d: Any) -> bool:
        spec = d.body.get("spec") or {}
        return d.kind == "Service" and not spec.get("clusterIP") and spec.get("type") != "ExternalName"

    todo = [d for d in docs if unallocated(d)]
    if not todo:
        return
    given = {k: s for k, s in objects["Service"].items() if (s.get("spec") or {}).get("clusterIP")}
    adm = manifests.Admission(manifests.Network(**({"service_cidr": service_cidr} if service_cidr else {})), given)
    for d in todo:
        body = adm.admit(d).body
        objects["Service"][d.key] = body
        spec = body["spec"]
        extra = [f"nodePort {p['nodePort']}" for p in spec.get("ports") or [] if p.get("nodePort")
                 and not any(q.get("nodePort") for q in (d.body.get("spec") or {}).get("ports") or [])]
        extra += [f"LoadBalancer IP {i['ip']}" for i in ((body.get("status") or {}).get("loadBalancer") or {})
                  .get("ingress") or []]
        notes.append(f"service/{body['metadata']['name']}: no clusterIP in {d.source}: allocated {spec['clusterIP']}"
                     + (f" ({', '.join(extra)})" if extra else "") + " as `kplab up` would")


def render_text(mode: str, files: list[Path], notes: list[str] | None = None,
                options: dict[str, Any] | None = None, **config: Any) -> str:
    """`config`: the node's (ProxyState fields); `options`: the mode's (e.g. nftables_version)."""
    from kplab.proxy.base import proxier_class

    cls = proxier_class(mode)
    text = cls.preview(render_state(files, notes, **config), **(options or {}))
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
        except OSError as e:  # a tool the check runs is missing or cannot run: say which, no traceback
            what = f"{e.filename} not found on PATH" if isinstance(e, FileNotFoundError) else str(e)
            entry = {"available": False, "detail": what, "fix": "install it (`make setup`)", "note": ""}
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
