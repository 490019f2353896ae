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


def pods_of_deployment(lab: Lab, deployment: str) -> list[str]:
    """Names of the pods the Deployment owns (through its ReplicaSet), whatever their labels say."""
    from kplab.cluster.deployments import owner

    return sorted(p["metadata"]["name"] for p in lab.objects("Pod")
                  if owner(p) == f"{p['metadata'].get('namespace', 'default')}/{deployment}")


def service_of(lab: Lab, name: str) -> Any:
    """The Service object, or an AssertionError that says it is missing."""
    for s in lab.services():
        if s.metadata.name == name:
            return s
    raise AssertionError(f"there is no Service named {name}")


def nat_rules(host: Any, chain: str) -> list[str] | None:
    """`iptables -t nat -S chain` in a testinfra host: its rules, or None when there is no such chain
    (testinfra's own helper fails with a raw CommandResult there)."""
    res = host.run(f"iptables -t nat -S {chain}")
    return res.stdout.splitlines() if res.rc == 0 else None


def svc_chain(host: Any, lab: Lab, service: str, port: int = 80, proto: str = "tcp") -> str:
    """The KUBE-SVC-... chain that KUBE-SERVICES sends the Service's ClusterIP:port to ("" if none).

    Found by address and port, not by the comment, so a Service port without a name counts too."""
    ip = lab.service_ip(service)
    for rule in nat_rules(host, "KUBE-SERVICES") or []:
        words = rule.split()
        if f"{ip}/32" in words and "--dport" in words and words[words.index("--dport") + 1] == str(port) \
                and proto in words and "-j" in words and words[words.index("-j") + 1].startswith("KUBE-SVC-"):
            return words[words.index("-j") + 1]
    return ""


def first_answers(lab: Lab, frm: str, target: str, n: int = 3, timeout: float = 0.5, **kw: Any) -> Any:
    """A few requests with a short timeout before the many: a broken Service fails within a second or two."""
    res = answers(lab, frm, target, n=n, timeout=timeout, **kw)
    assert res.ok == n, (f"{res.failed} of {n} requests from {frm} to {target} got no answer"
                         + (f" ({', '.join(sorted(set(res.errors)))})" if res.errors else ""))
    return res
