"""The controllers a real cluster runs, reduced to what kube-proxy's inputs need.

* Deployment -> Pods (ReplicaSet-style names, spread over nodes, IPs from the node's pod CIDR);
* Service selector + Pods -> EndpointSlices with ready/serving/terminating, nodeName, the
  node's zone and, for `trafficDistribution`, the topology hints, like the endpointslice
  controller (named target ports resolved per pod; hints as its trafficdist package writes
  them); `stamp_trigger_times` adds its last-change-trigger-time annotation.

Readiness is driven by annotations, since no real container runs: `kplab.io/ready: "false"`
makes a pod unready, `kplab.io/terminating: "true"` makes it a terminating-but-serving pod.
All functions are pure over the lab's object store (plain dicts).
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import re
import time
from typing import Any

from kplab.errors import LabError

READY_ANN = "kplab.io/ready"
TERMINATING_ANN = "kplab.io/terminating"
OWNER_LABEL = "kplab.io/deployment"
MANAGED_BY = "endpointslice-controller.k8s.io"
ZONE_LABEL = "topology.kubernetes.io/zone"
TRIGGER_ANN = "endpoints.kubernetes.io/last-change-trigger-time"
PREFER_CLOSE = ("PreferClose", "PreferSameZone", "PreferSameNode")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's name suffix alphabet


def _suffix(seed: str, n: int) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:n])


def pod_condition(pod: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(ready, serving, terminating) of a lab pod from its annotations."""
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    terminating = ann.get(TERMINATING_ANN) == "true"
    serving = ann.get(READY_ANN, "true") != "false"
    return (serving and not terminating, serving, terminating)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def reconcile_pods(objects: dict[str, dict[str, Any]], nodes: list[str], pod_cidrs: dict[str, str]) -> None:
    """Create/delete Deployment pods to match replicas; place and address every pod (in place)."""
    pods = objects.setdefault("Pod", {})
    for dkey, dep in sorted(objects.get("Deployment", {}).items()):
        ns, name = dkey.split("/", 1)
        spec = dep.get("spec") or {}
        template = spec.get("template") or {}
        tmpl_hash = _suffix(repr(sorted((template.get("metadata") or {}).get("labels", {}).items())) + name, 10)
        owned = sorted((k for k, p in pods.items() if (p["metadata"].get("labels") or {}).get(OWNER_LABEL) == name
                        and p["metadata"]["namespace"] == ns), key=lambda k: pods[k]["metadata"].get("uid", k))
        replicas = int(spec.get("replicas", 1))
        for k in owned[replicas:]:
            del pods[k]
        i = 0
        while len([k for k in pods if (pods[k]["metadata"].get("labels") or {}).get(OWNER_LABEL) == name
                   and pods[k]["metadata"]["namespace"] == ns]) < replicas:
            pname = f"{name}-{tmpl_hash}-{_suffix(f'{dkey}/{i}', 5)}"
            i += 1
            if f"{ns}/{pname}" in pods:
                continue
            md = copy.deepcopy(template.get("metadata") or {})
            md.update(name=pname, namespace=ns, uid=f"{len(pods):06d}-{pname}")
            md.setdefault("labels", {})[OWNER_LABEL] = name
            md["labels"]["pod-template-hash"] = tmpl_hash
            pods[f"{ns}/{pname}"] = {"apiVersion": "v1", "kind": "Pod", "metadata": md,
                                     "spec": copy.deepcopy(template.get("spec") or {"containers": []})}
    # place unplaced pods on the node with the fewest pods (ties: lowest name), then address them
    load = {n: 0 for n in nodes}
    for p in pods.values():
        node = p["spec"].get("nodeName")
        if node in load:
            load[node] += 1
    for key in sorted(pods, key=lambda k: pods[k]["metadata"].get("uid", k)):
        p = pods[key]
        if not p["spec"].get("nodeName"):
            node = min(nodes, key=lambda n: (load[n], n))
            p["spec"]["nodeName"] = node
            load[node] += 1
    used: dict[str, set[str]] = {n: set() for n in nodes}
    for p in pods.values():
        ip = (p.get("status") or {}).get("podIP")
        if ip:
            used.setdefault(p["spec"]["nodeName"], set()).add(ip)
    for key in sorted(pods, key=lambda k: pods[k]["metadata"].get("uid", k)):
        p = pods[key]
        status = p.setdefault("status", {})
        if not status.get("podIP"):
            node = p["spec"]["nodeName"]
            net = ipaddress.ip_network(pod_cidrs[node])
            for host in list(net.hosts())[1:]:  # .1 is the node's bridge
                if str(host) not in used[node]:
                    status["podIP"] = str(host)
                    used[node].add(str(host))
                    break
        status["hostIP"] = ""  # filled by the lab with the node IP
        ready, _, _ = pod_condition(p)
        status["phase"] = "Running"
        status["podIPs"] = [{"ip": status["podIP"]}]
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]


def _resolve_target(port: dict[str, Any], pod: dict[str, Any]) -> int | None:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for c in pod["spec"].get("containers") or []:
        for cp in c.get("ports") or []:
            if cp.get("name") == target and cp.get("protocol", "TCP") == port.get("protocol", "TCP"):
                return int(cp["containerPort"])
    return None  # the named port does not exist on this pod: it is left out, as upstream


def endpoint_slices(objects: dict[str, dict[str, Any]],
                    node_zones: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """EndpointSlices for every Service with a selector (others keep what the user gave).

    `node_zones` (node -> its topology.kubernetes.io/zone label) gives each endpoint its zone.
    """
    node_zones = node_zones or {}
    out: dict[str, dict[str, Any]] = {}
    pods = objects.get("Pod", {})
    for skey, svc in sorted(objects.get("Service", {}).items()):
        ns, name = skey.split("/", 1)
        spec = svc.get("spec") or {}
        selector = spec.get("selector") or {}
        if not selector:
            continue
        groups: dict[tuple[tuple[str, int, str], ...], list[dict[str, Any]]] = {}
        for p in sorted(pods.values(), key=lambda p: p["metadata"]["name"]):
            if p["metadata"]["namespace"] != ns or not _matches(selector, p["metadata"].get("labels") or {}):
                continue
            resolved = []
            for port in spec.get("ports") or []:
                tp = _resolve_target(port, p)
                if tp is not None:
                    resolved.append((port.get("name") or "", tp, port.get("protocol", "TCP")))
            groups.setdefault(tuple(resolved), []).append(p)
        if not groups:
            groups[tuple((p.get("name") or "", p.get("targetPort", p["port"]) if isinstance(
                p.get("targetPort", p["port"]), int) else p["port"], p.get("protocol", "TCP"))
                for p in spec.get("ports") or [])] = []
        for ports, members in groups.items():
            sname = f"{name}-{_suffix(skey + repr(ports), 5)}"
            eps = []
            for p in members:
                ready, serving, terminating = pod_condition(p)
                ep = {
                    "addresses": [p["status"]["podIP"]],
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                    "nodeName": p["spec"]["nodeName"],
                    "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": ns},
                }
                if node_zones.get(p["spec"]["nodeName"]):
                    ep["zone"] = node_zones[p["spec"]["nodeName"]]
                eps.append(_with_hints(ep, spec.get("trafficDistribution")))
            out[f"{ns}/{sname}"] = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": sname, "namespace": ns, "labels": {
                    "kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
                "addressType": "IPv4",
                "endpoints": eps,
                "ports": [{"name": n, "port": pt, "protocol": pr} for n, pt, pr in ports],
            }
    return out


def _with_hints(ep: dict[str, Any], traffic_distribution: str | None) -> dict[str, Any]:
    """The trafficdist heuristic: with PreferClose/PreferSameZone every ready endpoint is hinted for
    its own zone, with PreferSameNode also for its own node; not-ready endpoints get no hints."""
    if traffic_distribution not in PREFER_CLOSE or not ep["conditions"]["ready"]:
        return ep
    hints: dict[str, Any] = {}
    if ep.get("zone"):
        hints["forZones"] = [{"name": ep["zone"]}]
    if traffic_distribution == "PreferSameNode":
        hints["forNodes"] = [{"name": ep["nodeName"]}]
    return {**ep, "hints": hints} if hints else ep


def stamp_trigger_times(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], now: float) -> None:
    """Give every managed slice its endpoints.kubernetes.io/last-change-trigger-time: kept when its
    content is unchanged, `now` (as Go's RFC3339Nano, UTC) when it is new or changed.  kube-proxy's
    network_programming_duration_seconds measures from this time to the end of its sync."""
    secs, frac = divmod(now, 1)
    ns = f"{int(frac * 1e9):09d}".rstrip("0")
    stamp_now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + (f".{ns}" if ns else "") + "Z"
    for key, s in new.items():
        before = old.get(key)
        same = before is not None and {k: v for k, v in before.items() if k != "metadata"} == {
            k: v for k, v in s.items() if k != "metadata"}
        stamp = ((before or {}).get("metadata", {}).get("annotations") or {}).get(TRIGGER_ANN) if same else None
        s["metadata"].setdefault("annotations", {})[TRIGGER_ANN] = stamp or stamp_now


def node_labels(node: str, nodes: list[str], zones: list[str]) -> dict[str, str]:
    """The labels of a lab node: its hostname, and its zone when the lab has `zones` (given to the
    nodes in turn: zones a,b put node-1 in a, node-2 in b, node-3 in a)."""
    labels = {"kubernetes.io/hostname": node}
    if zones:
        zone = str(zones[nodes.index(node) % len(zones)])
        if not LABEL_VALUE.match(zone):
            raise LabError(f"zone {zone!r}: a label value is 1-63 letters, digits, '-', '_' or '.', "
                           "starting and ending with a letter or digit")
        labels[ZONE_LABEL] = zone
    return labels
