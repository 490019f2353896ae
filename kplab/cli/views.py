"""What the core commands print: kubectl-shaped lists, render input, the doctor's report."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kplab.cluster import controller, manifests

KIND_ALIASES = {
    "nodes": "Node", "node": "Node", "no": "Node",
    "pods": "Pod", "pod": "Pod", "po": "Pod",
    "services": "Service", "service": "Service", "svc": "Service",
    "endpointslices": "EndpointSlice", "endpointslice": "EndpointSlice",
    "deployments": "Deployment", "deployment": "Deployment", "deploy": "Deployment",
}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def get_view(lab: Any, kind: str, output: str | None) -> tuple[dict[str, Any], str]:
    k = KIND_ALIASES.get(kind.lower())
    if k is None:
        from kplab.errors import LabError

        raise LabError(f"unknown resource {kind!r}: nodes, pods, services, endpointslices or deployments")
    if k == "Node":
        items = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n, "labels": lab.node_labels(n)},
                  "spec": {"podCIDR": lab.pod_cidr(n), "podCIDRs": [lab.pod_cidr(n)]},
                  "status": {"addresses": [{"type": "InternalIP", "address": lab.node_ip(n)}]}} for n in lab.nodes]
        rows = [["NAME", "INTERNAL-IP", "POD-CIDR", "MODE"]] + [
            [i["metadata"]["name"], lab.node_ip(i["metadata"]["name"]), i["spec"]["podCIDR"], lab.mode] for i in items]
    else:
        items = lab.objects(k)
        rows = [_header(k, output)] + [_row(k, o, output) for o in items]
    return {"apiVersion": "v1", "kind": "List", "items": items}, _table(rows)


def _header(kind: str, output: str | None) -> list[str]:
    return {
        "Pod": ["NAME", "READY", "IP", "NODE"] + (["LABELS", "PORTS"] if output == "wide" else []),
        "Service": ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"] + (["SELECTOR"] if output == "wide" else []),
        "EndpointSlice": ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"],
        "Deployment": ["NAME", "READY", "SELECTOR"],
    }[kind]


def _row(kind: str, o: dict[str, Any], output: str | None) -> list[str]:
    md, spec = o["metadata"], o.get("spec") or {}
    if kind == "Pod":
        ready, _, term = controller.pod_condition(o)
        row = [md["name"], "Terminating" if term else ("1/1" if ready else "0/1"), o["status"]["podIP"],
               spec.get("nodeName", "")]
        if output == "wide":
            ports = [f"{p['containerPort']}/{p.get('protocol', 'TCP')}" for c in spec.get("containers") or []
                     for p in c.get("ports") or []]
            row += [",".join(f"{k}={v}" for k, v in (md.get("labels") or {}).items()), ",".join(ports)]
        return row
    if kind == "Service":
        ext = list(spec.get("externalIPs") or []) + [i.get("ip", "") for i in ((o.get("status") or {}).get(
            "loadBalancer") or {}).get("ingress") or []]
        ports = ",".join(f"{p['port']}" + (f":{p['nodePort']}" if p.get("nodePort") else "") + f"/{p.get('protocol', 'TCP')}"
                         for p in spec.get("ports") or [])
        row = [md["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP", ""), ",".join(ext) or "<none>", ports]
        if output == "wide":
            row.append(",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items()) or "<none>")
        return row
    if kind == "EndpointSlice":
        eps = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
        return [md["name"], o.get("addressType", ""), ",".join(str(p.get("port")) for p in o.get("ports") or []) or "<unset>",
                ",".join(eps[:3]) + (f" + {len(eps) - 3} more" if len(eps) > 3 else "") or "<unset>"]
    dep = spec.get("replicas", 1)
    return [md["name"], f"{dep}/{dep}", ",".join(f"{k}={v}" for k, v in
                                                 ((spec.get("selector") or {}).get("matchLabels") or {}).items())]


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
