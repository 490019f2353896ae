"""The controllers a real cluster runs, reduced to what kube-proxy's inputs need.

* Deployment -> Pods: kplab.cluster.deployments (ReplicaSet-style names, rolling updates);
* scheduling and IPAM here: unplaced pods go to the node with the fewest pods, addresses come
  from the node's pod CIDR host-local style (the next free one after the last handed out,
  never one a pod namespace still holds);
* Service selector + Pods -> EndpointSlices with ready/serving/terminating, nodeName, the
  node's zone and, for `trafficDistribution`, the topology hints, like the endpointslice
  controller (named target ports resolved per pod; hints as its trafficdist package writes
  them; a Service without endpoints gets a placeholder slice with no ports, as upstream);
  `stamp_trigger_times` adds its last-change-trigger-time annotation.

Readiness is driven by annotations, since no real container runs: `kplab.io/ready: "false"`
makes a pod unready, `kplab.io/terminating: "true"` makes it a terminating-but-serving pod,
as does a `metadata.deletionTimestamp` (a pod a rollout is replacing).
All functions are pure over the lab's object store (plain dicts).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
from typing import Any

from kplab.errors import LabError

READY_ANN = "kplab.io/ready"
TERMINATING_ANN = "kplab.io/terminating"
MANAGED_BY = "endpointslice-controller.k8s.io"
ZONE_LABEL = "topology.kubernetes.io/zone"
TRIGGER_ANN = "endpoints.kubernetes.io/last-change-trigger-time"
PREFER_CLOSE = ("PreferClose", "PreferSameZone", "PreferSameNode")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's name suffix alphabet


def suffix(seed: str, n: int) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(ALPHABET[b % len(ALPHABET)] for b in digest[:n])


def pod_condition(pod: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(ready, serving, terminating) of a lab pod from its annotations and deletionTimestamp."""
    md = pod.get("metadata") or {}
    ann = md.get("annotations") or {}
    terminating = ann.get(TERMINATING_ANN) == "true" or bool(md.get("deletionTimestamp"))
    serving = ann.get(READY_ANN, "true") != "false"
    return (serving and not terminating, serving, terminating)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())




def creation_order(pod: dict[str, Any]) -> tuple[str, str]:
    md = pod["metadata"]
    return (md.get("creationTimestamp") or "", md["name"])


def place_and_address(pods: dict[str, dict[str, Any]], nodes: list[str], pod_cidrs: dict[str, str],
                      held: dict[str, set[str]] | None = None, last: dict[str, str] | None = None) -> None:
    """Schedule unplaced pods and give unaddressed ones an IP (in place).

    `held`: addresses per node that a pod namespace still holds (never handed out again until
    it is gone).  `last`: the last address handed out per node, updated: the next pod gets the
    next free address after it, as CNI's host-local IPAM does, so a deleted pod's address is
    not the first one reused.
    """
    load = {n: 0 for n in nodes}
    for p in pods.values():
        if p["spec"].get("nodeName") in load:
            load[p["spec"]["nodeName"]] += 1
    ordered = sorted(pods.values(), key=creation_order)
    for p in ordered:
        if not p["spec"].get("nodeName"):
            node = min(nodes, key=lambda n: (load[n], n))
            p["spec"]["nodeName"] = node
            load[node] += 1
    used: dict[str, set[str]] = {n: set(ips) for n, ips in (held or {}).items()}
    for p in pods.values():
        ip = (p.get("status") or {}).get("podIP")
        if ip:
            used.setdefault(p["spec"]["nodeName"], set()).add(ip)
    last = {} if last is None else last
    for p in ordered:
        status = p.setdefault("status", {})
        if not status.get("podIP"):
            node = p["spec"]["nodeName"]
            status["podIP"] = _next_free(pod_cidrs[node], used.setdefault(node, set()), last.get(node))
            used[node].add(status["podIP"])
            last[node] = status["podIP"]
        ready, _, _ = pod_condition(p)
        status["phase"] = "Running"
        status["podIPs"] = [{"ip": status["podIP"]}]
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]


def _next_free(cidr: str, used: set[str], last: str | None) -> str:
    net = ipaddress.ip_network(cidr)
    hosts = list(net.hosts())[1:]  # .1 is the node's bridge
    start = 0
    if last and ipaddress.ip_address(last) in net:
        start = (int(ipaddress.ip_address(last)) - int(hosts[0]) + 1) % len(hosts)
    for i in range(len(hosts)):
        ip = str(hosts[(start + i) % len(hosts)])
        if ip not in used:
            return ip
    from kplab.errors import LabError

    raise LabError(f"no free pod address left in {cidr}: delete some pods")


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
            if p["metadata"]["namespace"] != ns or not matches(selector, p["metadata"].get("labels") or {}):
                continue
            resolved = []
            for port in spec.get("ports") or []:
                tp = _resolve_target(port, p)
                if tp is not None:
                    resolved.append((port.get("name") or "", tp, port.get("protocol", "TCP")))
            groups.setdefault(tuple(resolved), []).append(p)
        if not groups:
            groups[()] = []  # upstream's placeholder slice: no endpoints, ports <unset>
        for ports, members in groups.items():
            sname = f"{name}-{suffix(skey + repr(ports), 5)}"
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
            }
            if ports:  # none resolved (or no endpoints at all): the field is unset, as upstream leaves it
                out[f"{ns}/{sname}"]["ports"] = [{"name": n, "port": pt, "protocol": pr} for n, pt, pr in ports]
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
