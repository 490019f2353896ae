"""Small questions checks and notebooks ask of a live lab, answered from the lab and the kernel.

They read state (the lab's objects, a node's rules, conntrack) and behaviour (requests sent
through the real datapath); none of them trusts a value a learner typed.
"""

from __future__ import annotations

from typing import Any

from kplab.lab import Lab


def pods_of(lab: Lab, app: str) -> list[str]:
    """Names of the pods labelled app=<app>, sorted."""
    return sorted(p.metadata.name for p in lab.pods() if (p.metadata.labels or {}).get("app") == app)


def ready_endpoints(lab: Lab, service: str) -> dict[str, str]:
    """pod name -> IP for the Service's ready endpoints, as its EndpointSlices say."""
    out = {}
    for sl in lab.endpoint_slices():
        if (sl.metadata.labels or {}).get("kubernetes.io/service-name") != service:
            continue
        for ep in sl.endpoints or []:
            if ep.conditions is None or ep.conditions.ready is not False:
                out[ep.target_ref.name if ep.target_ref else ep.addresses[0]] = ep.addresses[0]
    return out


def node_of(lab: Lab, pod: str) -> str:
    for p in lab.pods():
        if p.metadata.name == pod:
            return str(p.spec.node_name)
    raise KeyError(pod)


def answers(lab: Lab, frm: str, target: str, n: int = 20, timeout: float = 1.0, **kw: Any) -> Any:
    """lab.curl with a short timeout: a check should fail fast, not hang."""
    return lab.curl(frm, target, n=n, timeout=timeout, **kw)
