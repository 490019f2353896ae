"""What `kplab get` shows: kubectl's resource names, columns, selectors and output formats.

    kinds     pods (po), services (svc), deployments (deploy), replicasets (rs),
              endpointslices (eps), endpoints (ep), nodes (no), all
    objects   as stored (lab.json), plus views kubectl users know that the lab derives:
              Nodes, ReplicaSets (from the pods' ownerReferences), v1 Endpoints (from the slices)
    output    a table (-o wide adds columns), -o name, -o json|yaml (one object when one NAME
              was asked for, else a List), anything else is an error

Every namespaced kind lists all namespaces with a NAMESPACE column (`-A`, since a lab is small
and two `web` Services must look different); `-n NS` keeps one and drops the column.
"""

from __future__ import annotations

import time
from typing import Any

from kplab.cluster import controller, deployments, selectors
from kplab.errors import LabError

ALIASES = {
    "Pod": ("pods", "pod", "po"),
    "Service": ("services", "service", "svc"),
    "Deployment": ("deployments", "deployment", "deploy", "deployments.apps", "deployment.apps"),
    "ReplicaSet": ("replicasets", "replicaset", "rs", "replicasets.apps", "replicaset.apps"),
    "EndpointSlice": (
        "endpointslices",
        "endpointslice",
        "eps",
        "endpointslices.discovery.k8s.io",
        "endpointslice.discovery.k8s.io",
    ),
    "Endpoints": ("endpoints", "ep"),
    "Node": ("nodes", "node", "no"),
}
KIND_OF = {alias: kind for kind, names in ALIASES.items() for alias in names}
RESOURCE = {
    "Pod": ("pods", "pod"),
    "Service": ("services", "service"),
    "Deployment": ("deployments.apps", "deployment.apps"),
    "ReplicaSet": ("replicasets.apps", "replicaset.apps"),
    "EndpointSlice": ("endpointslices.discovery.k8s.io", "endpointslice.discovery.k8s.io"),
    "Endpoints": ("endpoints", "endpoints"),
    "Node": ("nodes", "node"),
}
ALL = ("Pod", "Service", "Deployment", "ReplicaSet")  # what `kubectl get all` lists
OUTPUTS = ("json", "yaml", "wide", "name")


def kind_of(word: str) -> str:
    kind = KIND_OF.get(word.lower())
    if kind is None:
        raise LabError(
            f'the server doesn\'t have a resource type "{word}": use pods (po), services (svc), '
            "deployments (deploy), replicasets (rs), endpointslices (eps), endpoints (ep), nodes (no) "
            "or all"
        )
    return kind


def writable(kind: str, verb: str) -> None:
    """Pods, Services, Deployments and EndpointSlices change; the rest are views of them."""
    if kind not in ("Pod", "Service", "Deployment", "EndpointSlice"):
        raise LabError(
            f"{verb} works on pods, services, deployments and endpointslices; {kind} objects are "
            "the lab's own views" + (": `kplab down` removes the lab" if kind == "Node" else "")
        )


def check_output(output: str | None) -> None:
    if output is not None and output not in OUTPUTS:
        raise LabError(
            f'unable to match a printer suitable for the output format "{output}": use {", ".join(OUTPUTS)}'
        )


# ------------------------------------------------------------------------------------ objects
def nodes(lab: Any) -> list[dict[str, Any]]:
    created = deployments.rfc3339(time.time() if lab.created is None else lab.created)
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": n,
                "creationTimestamp": created,
                "labels": {**lab.node_labels(n), "kubernetes.io/os": "linux"},
            },
            "spec": {"podCIDR": lab.pod_cidr(n), "podCIDRs": [lab.pod_cidr(n)]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": lab.node_ip(n)},
                    {"type": "Hostname", "address": n},
                ],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        for n in lab.nodes
    ]


def replica_sets(objects: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A ReplicaSet per pod-template hash that has pods (or is a Deployment's current one)."""
    out: dict[str, dict[str, Any]] = {}
    for dkey, dep in sorted(objects.get("Deployment", {}).items()):
        ns, name = dkey.split("/", 1)
        template = dep["spec"].get("template") or {}
        h = deployments.template_hash(template)
        current = f"{ns}/{name}-{h}"
        mine = [p for p in objects.get("Pod", {}).values() if deployments.owner(p) == dkey]
        names = {f"{ns}/{deployments.replica_set(p)}" for p in mine} | {current}
        for key in sorted(names):
            rs = key.split("/", 1)[1]
            pods = [p for p in mine if deployments.replica_set(p) == rs and not deployments.terminating(p)]
            first = min(
                (
                    p["metadata"].get("creationTimestamp", "")
                    for p in mine
                    if deployments.replica_set(p) == rs
                ),
                default=dep["metadata"].get("creationTimestamp"),
            )
            out[key] = {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs,
                    "namespace": ns,
                    "creationTimestamp": first,
                    "labels": {
                        **(template.get("metadata") or {}).get("labels", {}),
                        deployments.HASH_LABEL: rs[len(name) + 1 :],
                    },
                    "ownerReferences": [
                        {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "controller": True}
                    ],
                },
                "spec": {
                    "replicas": int(dep["spec"].get("replicas", 1)) if key == current else 0,
                    "selector": {
                        "matchLabels": {
                            **dep["spec"]["selector"].get("matchLabels", {}),
                            deployments.HASH_LABEL: rs[len(name) + 1 :],
                        }
                    },
                    "template": template,
                },
                "status": {
                    "replicas": len(pods),
                    "readyReplicas": sum(controller.pod_condition(p)[0] for p in pods),
                },
            }
    return [out[k] for k in sorted(out)]


def endpoints(objects: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """v1 Endpoints per Service, from its EndpointSlices: ready addresses, notReadyAddresses (the
    Endpoints controller leaves terminating pods out), one subset per set of ports."""
    out = []
    for skey, svc in sorted(objects.get("Service", {}).items()):
        ns, name = skey.split("/", 1)
        subsets: dict[str, dict[str, Any]] = {}
        for s in objects.get("EndpointSlice", {}).values():
            md = s["metadata"]
            if (
                md.get("namespace", "default") != ns
                or (md.get("labels") or {}).get("kubernetes.io/service-name") != name
            ):
                continue
            ports = [
                {k: p[k] for k in ("name", "port", "protocol") if p.get(k) not in (None, "")}
                for p in s.get("ports") or []
            ]
            if not ports:
                continue
            sub = subsets.setdefault(repr(ports), {"ports": ports})
            for e in s.get("endpoints") or []:
                cond = e.get("conditions") or {}
                if cond.get("terminating"):
                    continue
                field = "addresses" if cond.get("ready", True) else "notReadyAddresses"
                for ip in e.get("addresses") or []:
                    addr = {"ip": ip, "nodeName": e.get("nodeName"), "targetRef": e.get("targetRef")}
                    sub.setdefault(field, []).append({k: v for k, v in addr.items() if v})
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": dict(svc["metadata"].get("labels") or {}),
                "creationTimestamp": svc["metadata"].get("creationTimestamp"),
            },
        }
        kept = [s for s in subsets.values() if s.get("addresses") or s.get("notReadyAddresses")]
        if kept:
            body["subsets"] = kept
        out.append(body)
    return out


def items(lab: Any, kind: str) -> list[dict[str, Any]]:
    objects = lab.stored_objects()
    if kind == "Node":
        return nodes(lab)
    if kind == "ReplicaSet":
        return replica_sets(objects)
    if kind == "Endpoints":
        return endpoints(objects)
    found = objects.get(kind, {})
    return [found[k] for k in sorted(found)]


# ------------------------------------------------------------------------------------ tables
def age(ts: str | None, now: float) -> str:
    """kubectl's short duration (HumanDuration): 45s, 4m12s, 17m, 3h5m, 27h, 4d15h, 11d."""
    if not ts:
        return "<unknown>"
    s = max(0, int(now - deployments.parse_time(ts)))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 192:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    return f"{h // 24}d"


def _labels(d: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in (d or {}).items()) or "<none>"


def _containers(spec: dict[str, Any]) -> tuple[str, str]:
    cs = spec.get("containers") or []
    return ",".join(c.get("name", "") for c in cs) or "<none>", ",".join(
        c.get("image", "") for c in cs
    ) or "<none>"


def _service_ports(spec: dict[str, Any]) -> str:
    return (
        ",".join(
            f"{p['port']}"
            + (f":{p['nodePort']}" if p.get("nodePort") else "")
            + f"/{p.get('protocol', 'TCP')}"
            for p in spec.get("ports") or []
        )
        or "<none>"
    )


def _some(values: list[str], more: str = " more...") -> str:
    return (
        ",".join(values[:3]) + (f" + {len(values) - 3}{more}" if len(values) > 3 else "")
        if values
        else "<unset>"
    )


def columns(kind: str, wide: bool) -> list[str]:
    base = {
        "Pod": ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Service": ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        "Deployment": ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "ReplicaSet": ["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "EndpointSlice": ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        "Endpoints": ["NAME", "ENDPOINTS", "AGE"],
        "Node": ["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
    }[kind]
    extra = {
        "Pod": ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
        "Service": ["SELECTOR"],
        "Deployment": ["CONTAINERS", "IMAGES", "SELECTOR"],
        "ReplicaSet": ["CONTAINERS", "IMAGES", "SELECTOR"],
        "Node": ["INTERNAL-IP", "POD-CIDR", "KUBE-PROXY"],
    }.get(kind, [])
    return base + (extra if wide else [])


def row(kind: str, o: dict[str, Any], wide: bool, now: float, mode: str = "") -> list[str]:
    md, spec, status = o["metadata"], o.get("spec") or {}, o.get("status") or {}
    created = age(md.get("creationTimestamp"), now)
    if kind == "Pod":
        ready, _, term = controller.pod_condition(o)
        n = max(1, len(spec.get("containers") or []))
        r = [
            md["name"],
            f"{n if ready else 0}/{n}",
            "Terminating" if term else status.get("phase", "Pending"),
            "0",
            created,
        ]
        return r + (
            [status.get("podIP", "<none>"), spec.get("nodeName", "<none>"), "<none>", "<none>"]
            if wide
            else []
        )
    if kind == "Service":
        ext = list(spec.get("externalIPs") or [])
        ingress = [i.get("ip", "") for i in (status.get("loadBalancer") or {}).get("ingress") or []]
        shown = ",".join(ext + ingress) or ("<pending>" if spec.get("type") == "LoadBalancer" else "<none>")
        r = [
            md["name"],
            spec.get("type", "ClusterIP"),
            spec.get("clusterIP", "<none>"),
            shown,
            _service_ports(spec),
            created,
        ]
        return r + ([_labels(spec.get("selector"))] if wide else [])
    if kind in ("Deployment", "ReplicaSet"):
        tmpl_spec = (spec.get("template") or {}).get("spec") or {}
        sel = _labels((spec.get("selector") or {}).get("matchLabels"))
        if kind == "Deployment":
            r = [
                md["name"],
                f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
                str(status.get("updatedReplicas", 0)),
                str(status.get("availableReplicas", 0)),
                created,
            ]
        else:
            r = [
                md["name"],
                str(spec.get("replicas", 0)),
                str(status.get("replicas", 0)),
                str(status.get("readyReplicas", 0)),
                created,
            ]
        return r + ([*_containers(tmpl_spec), sel] if wide else [])
    if kind == "EndpointSlice":
        ips = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
        ports = ",".join(str(p.get("port")) for p in o.get("ports") or [] if p.get("port") is not None)
        return [md["name"], o.get("addressType", ""), ports or "<unset>", _some(ips), created]
    if kind == "Endpoints":
        pairs = [
            f"{a['ip']}:{p['port']}"
            for s in o.get("subsets") or []
            for a in s.get("addresses") or []
            for p in s["ports"]
        ]
        return [md["name"], _some(pairs) if pairs else "<none>", created]
    addr = next((a["address"] for a in status.get("addresses") or [] if a["type"] == "InternalIP"), "")
    r = [md["name"], "Ready", "<none>", created, "kplab"]
    return r + ([addr, spec.get("podCIDR", ""), mode] if wide else [])


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


# ------------------------------------------------------------------------------------ get
def get(
    lab: Any,
    words: list[str],
    selector: str | None = None,
    output: str | None = None,
    namespace: str | None = None,
) -> tuple[Any, str, list[str]]:
    """(data for -o json|yaml, the text to print, NotFound lines) of `kplab get WORDS...`."""
    check_output(output)
    if not words:
        raise LabError(
            "say what to get: pods, services, deployments, replicasets, endpointslices, endpoints, "
            "nodes or all (e.g. `kplab get pods`)"
        )
    reqs = selectors.parse(selector) if selector else []
    asked: list[tuple[str, str | None]] = []  # (kind, name or None)
    if "/" in words[0]:
        for w in words:
            if "/" not in w:
                raise LabError(f"{w!r}: give every argument as TYPE/NAME when the first is (e.g. pod/client)")
            k, _, n = w.partition("/")
            asked.append((kind_of(k), n))
    else:
        kinds = list(ALL) if words[0].lower() == "all" else [kind_of(k) for k in words[0].split(",")]
        asked = [(k, n) for k in kinds for n in (words[1:] or [None])]
    now, mode = time.time(), lab.mode
    found: dict[str, list[dict[str, Any]]] = {}
    missing: list[str] = []
    for kind, name in asked:
        pool = [
            o
            for o in items(lab, kind)
            if kind == "Node" or namespace is None or o["metadata"].get("namespace", "default") == namespace
        ]
        if name is None:
            hits = [o for o in pool if selectors.selects(reqs, o["metadata"].get("labels") or {})]
        else:
            hits = [
                o
                for o in pool
                if o["metadata"]["name"] == name
                and (kind == "Node" or o["metadata"].get("namespace", "default") == (namespace or "default"))
            ]
            if not hits:
                missing.append(f'{RESOURCE[kind][0]} "{name}" not found')
        found.setdefault(kind, []).extend(hits)
    objs = [o for k in found for o in found[k]]
    single = len(asked) == 1 and asked[0][1] is not None
    data: Any = (
        objs[0]
        if single and objs
        else {"apiVersion": "v1", "kind": "List", "items": objs, "metadata": {"resourceVersion": ""}}
    )
    if output == "name":
        return (
            data,
            "\n".join(f"{RESOURCE[k][1]}/{o['metadata']['name']}" for k in found for o in found[k]),
            missing,
        )
    prefix = len(found) > 1 or words[0].lower() == "all"
    blocks = []
    for kind, objs_of in found.items():
        if not objs_of:
            continue
        with_ns = namespace is None and kind != "Node"
        rows = [(["NAMESPACE"] if with_ns else []) + columns(kind, output == "wide")]
        for o in objs_of:
            r = row(kind, o, output == "wide", now, mode)
            if prefix:
                r[0] = f"{RESOURCE[kind][1]}/{r[0]}"
            rows.append(([o["metadata"].get("namespace", "default")] if with_ns else []) + r)
        blocks.append(table(rows))
    return data, "\n\n".join(blocks), missing
