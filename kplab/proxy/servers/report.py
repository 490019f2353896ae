"""What one node's kube-proxy servers learn from one sync: pure functions of a ProxyState.

Each mirrors the upstream code that feeds the servers after `syncProxyRules()`:

* health_check_ports:   ServicePortMap.HealthCheckNodePorts() -> ServiceHealthServer.SyncServices
* local_ready_endpoints: EndpointsMap.LocalReadyEndpoints() -> SyncEndpoints (distinct local ready
                        IPs per Service: 10.0.0.1:80 and 10.0.0.1:443 are one endpoint)
* no_local_endpoints:   the sync_proxy_rules_no_local_endpoints_total gauge (a Local policy with
                        endpoints elsewhere but none here; no endpoints at all counts as neither)
* object_changes:       how many Service / EndpointSlice events the node's change trackers saw
* trigger_times:        EndpointSlices' last-change-trigger-time annotations newer than the last
                        sync (network_programming_duration_seconds observes now minus each)
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from kplab.proxy.core import ProxyState, categorize_endpoints

TRIGGER_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


def health_check_ports(state: ProxyState) -> dict[str, int]:
    """namespace/name -> healthCheckNodePort, for every Service that has one."""
    return {sp.name.namespaced_name: sp.health_check_node_port
            for sp in state.services.values() if sp.health_check_node_port}


def local_ready_endpoints(state: ProxyState) -> dict[str, int]:
    """namespace/name -> number of distinct local ready endpoint IPs (terminating ones fail the check)."""
    ips: dict[str, set[str]] = {}
    for name, eps in state.endpoints.items():
        for e in eps:
            if e.is_local and e.ready:
                ips.setdefault(name.namespaced_name, set()).add(e.ip)
    return {nsn: len(v) for nsn, v in ips.items()}


def no_local_endpoints(state: ProxyState) -> dict[str, int]:
    """{"internal": n, "external": n}: Service ports whose Local policy finds no endpoint here."""
    out = {"internal": 0, "external": 0}
    for name, sp in state.services.items():
        cat = categorize_endpoints(state.endpoints_of(name), sp)
        if not cat.has_any or cat.local:
            continue
        if sp.internal_policy_local:
            out["internal"] += 1
        if sp.external_policy_local and sp.uses_external:
            out["external"] += 1
    return out


def object_key(o: dict[str, Any]) -> str:
    md = o.get("metadata") or {}
    return f"{md.get('namespace') or 'default'}/{md.get('name', '')}"


def digests(objects: list[dict[str, Any]]) -> dict[str, str]:
    """namespace/name -> digest of an object (what an informer would report as changed)."""
    return {object_key(o): hashlib.sha256(json.dumps(o, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for o in objects}


def object_changes(before: dict[str, str], after: dict[str, str]) -> int:
    """Adds, updates and deletes between two digest maps: one informer event each."""
    return sum(1 for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def trigger_times(slices: list[dict[str, Any]], seen: dict[str, float], since: float) -> dict[str, float]:
    """Trigger times (epoch seconds) of slices whose annotation changed since `seen`, newer than
    `since` (upstream ignores triggers from before its change tracker started)."""
    out = {}
    for s in slices:
        t = parse_time(((s.get("metadata") or {}).get("annotations") or {}).get(TRIGGER_ANNOTATION) or "")
        key = object_key(s)
        if t is not None and t > since and seen.get(key) != t:
            out[key] = t
    return out


def parse_time(text: str) -> float | None:
    """RFC 3339 (with or without fractional seconds, "Z" or an offset) -> epoch seconds."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
