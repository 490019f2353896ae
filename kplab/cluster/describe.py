"""What `kplab describe` shows: kubectl's fields, and what only this lab can add.

    pod             kubectl's fields, its network namespace, the EndpointSlices that list it
    service         kubectl's fields, then what each node's kube-proxy holds for it: the lines
                    of the mode's own read-back (`kplab rules NODE`) that belong to the Service
                    (rules, chains, map/set elements, IPVS virtual and real servers, userspace
                    proxy table) and that node's last sync
    node            kubectl's fields, its pods, its kube-proxy mode and last sync
    endpointslice   kubectl's fields
    deployment      kubectl's fields, ReplicaSets old and new

Names may be prefixes, as with kubectl (`describe pod web` describes every web-... pod).
"""

from __future__ import annotations

import re
import time
from typing import Any

from kplab.cluster import controller, deployments, kubeviews, selectors
from kplab.cluster.apiserver import NotFound
from kplab.errors import KplabError, LabError

DESCRIBED = ("Pod", "Service", "Node", "EndpointSlice", "Deployment")


def fields(pairs: list[tuple[str, Any]], indent: str = "") -> list[str]:
    """kubectl's 'Key:   value' block; a list value continues on aligned lines."""
    width = max(len(k) for k, _ in pairs) + 2
    out = []
    for key, value in pairs:
        values = value if isinstance(value, list) else [value]
        values = [str(v) for v in values] or ["<none>"]
        out.append(f"{indent}{key + ':':<{width}}{values[0]}".rstrip())
        out += [f"{indent}{'':<{width}}{v}" for v in values[1:]]
    return out


def _map(d: dict[str, str] | None) -> list[str] | str:
    return [f"{k}={v}" for k, v in sorted((d or {}).items())] or "<none>"


def _joined(d: dict[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((d or {}).items())) or "<none>"


def _ago(t: float | None, now: float) -> str:
    return "never" if not t else f"{kubeviews.age(deployments.rfc3339(t), now)} ago"


def sync_line(sync: dict[str, Any] | None, now: float) -> str:
    if not sync:
        return "no sync recorded"
    kind = "full" if sync.get("full") else "partial"
    return (
        f"last sync {_ago(sync.get('at'), now)}: {kind}, {sync.get('changed_services', 0)} service ports "
        f"rewritten, {1000 * float(sync.get('seconds', 0)):.1f} ms"
    )


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" #"))


def rules_for(text: str, namespace: str, name: str, ips: set[str]) -> list[str]:
    """The lines of a mode's read-back that belong to one Service, each with its heading.

    A line belongs when it names the Service (`ns/name:port` in comments, `ns/name/proto/port`
    in nftables chain names) or one of its IPs; a heading that belongs brings the lines indented
    under it (a chain's rules, a virtual server's real servers), and a line that belongs brings
    its heading (the map or chain it sits in).
    """
    who = re.compile(rf"(?<![a-z0-9.])(?<![a-z]-){re.escape(namespace)}/{re.escape(name)}(?=[:/\"\s),]|$)")
    addr = (
        re.compile(r"(?<![\d.])(" + "|".join(re.escape(i) for i in sorted(ips)) + r")(?!\d)") if ips else None
    )
    lines = text.splitlines()
    keep: set[int] = set()
    for i, line in enumerate(lines):
        if not (who.search(line) or (addr and addr.search(line))):
            continue
        keep.add(i)
        depth = _indent(line)
        j = i + 1
        while j < len(lines) and lines[j].strip() and _indent(lines[j]) > depth:
            keep.add(j)
            j += 1
        for h in range(i - 1, -1, -1):  # the heading it sits under (not the end of a table)
            if lines[h].strip() and _indent(lines[h]) < depth:
                keep.update([h] if lines[h].strip() != "COMMIT" else [])
                break
    return [lines[i] for i in sorted(keep)]


def _proxy_section(lab: Any, svc: dict[str, Any], now: float) -> list[str]:
    mode = lab.mode
    if mode == "none":
        return ["Kube-proxy:               none in this lab (mode none): no node programs this Service"]
    spec, md = svc["spec"], svc["metadata"]
    ips = (
        {spec.get("clusterIP", "")}
        | set(spec.get("externalIPs") or [])
        | {
            i.get("ip", "")
            for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        }
    )
    out = [
        f"Kube-proxy ({mode} mode), what each node holds for this Service (read back, as `kplab rules NODE`):"
    ]
    syncs = lab.last_syncs
    for node in lab.nodes:
        out.append(f"  {node}: {sync_line(syncs.get(node), now)}")
        try:
            text = lab.rules(node).get("text", "")
        except KplabError as e:
            out.append(f"    cannot read the rules back: {e}")
            continue
        lines = rules_for(text, md.get("namespace", "default"), md["name"], ips - {"", "None"})
        out += [f"    {line}" for line in lines] or ["    nothing: this node programs no rule for it"]
    return out


def describe_pod(lab: Any, pod: dict[str, Any], now: float) -> list[str]:
    md, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    ready, _, terminating = controller.pod_condition(pod)
    rs = deployments.replica_set(pod)
    head = [
        ("Name", md["name"]),
        ("Namespace", md.get("namespace", "default")),
        ("Priority", 0),
        ("Service Account", "default"),
        ("Node", f"{spec.get('nodeName')}/{status.get('hostIP', '')}"),
        ("Start Time", md.get("creationTimestamp", "<unknown>")),
        ("Labels", _map(md.get("labels"))),
        ("Annotations", _map(md.get("annotations"))),
        (
            "Status",
            "Terminating" + (f" (lasts {md.get('deletionGracePeriodSeconds', 0)}s)")
            if terminating
            else status.get("phase", "Pending"),
        ),
    ]
    if md.get("deletionTimestamp"):
        head.append(("Termination Grace Period", f"{md.get('deletionGracePeriodSeconds', 0)}s"))
    head += [("IP", status.get("podIP", "")), ("IPs", [f"IP: {status.get('podIP', '')}"])]
    if rs:
        head.append(("Controlled By", f"ReplicaSet/{rs}"))
    out = fields(head)
    out.append("Containers:")
    for c in spec.get("containers") or []:
        ports = [
            f"{p['containerPort']}/{p.get('protocol', 'TCP')}" + (f" ({p['name']})" if p.get("name") else "")
            for p in c.get("ports") or []
        ]
        out.append(f"  {c.get('name', '')}:")
        out += fields(
            [
                ("Image", c.get("image", "<none>") + "   (not run: the lab's echo workload answers)"),
                ("Ports", ports or "<none>"),
                ("State", "Running"),
                ("Ready", str(ready)),
                ("Restart Count", 0),
            ],
            "    ",
        )
    out.append("Conditions:")
    out += ["  Type     Status", f"  Ready    {ready}"]
    ns = lab.netns(md["name"])
    slices = [
        f"endpointslice/{s['metadata']['name']} "
        f"(service/{s['metadata']['labels'].get('kubernetes.io/service-name')}): "
        f"ready={e['conditions']['ready']} serving={e['conditions']['serving']} "
        f"terminating={e['conditions']['terminating']}"
        for s in lab.stored_objects().get("EndpointSlice", {}).values()
        for e in s.get("endpoints") or []
        if (e.get("targetRef") or {}).get("name") == md["name"]
    ]
    out += fields(
        [
            ("Network namespace", f"{ns}   (kplab exec {md['name']} -- CMD)"),
            ("Endpoint of", slices or "<none>"),
            ("Events", "<none>"),
        ]
    )
    return out


def describe_service(lab: Any, svc: dict[str, Any], now: float) -> list[str]:
    md, spec = svc["metadata"], svc["spec"]
    ns = md.get("namespace", "default")
    eps = [
        o
        for o in kubeviews.endpoints(lab.stored_objects())
        if o["metadata"]["name"] == md["name"] and o["metadata"]["namespace"] == ns
    ]
    pairs: list[tuple[str, Any]] = [
        ("Name", md["name"]),
        ("Namespace", ns),
        ("Labels", _map(md.get("labels"))),
        ("Annotations", _map(md.get("annotations"))),
        ("Selector", ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items()) or "<none>"),
        ("Type", spec.get("type", "ClusterIP")),
        ("IP Family Policy", "SingleStack"),
        ("IP Families", "IPv4"),
        ("IP", spec.get("clusterIP", "<none>")),
        ("IPs", ",".join(spec.get("clusterIPs") or []) or "<none>"),
    ]
    if spec.get("externalIPs"):
        pairs.append(("External IPs", ",".join(spec["externalIPs"])))
    ingress = [
        i.get("ip") for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ]
    if spec.get("type") == "LoadBalancer":
        pairs.append(("LoadBalancer Ingress", ", ".join(i for i in ingress if i) or "<pending>"))
    for p in spec.get("ports") or []:
        pname = p.get("name") or "<unset>"
        proto = p.get("protocol", "TCP")
        pairs += [
            ("Port", f"{pname}  {p['port']}/{proto}"),
            ("TargetPort", f"{p.get('targetPort', p['port'])}/{proto}"),
        ]
        if p.get("nodePort"):
            pairs.append(("NodePort", f"{pname}  {p['nodePort']}/{proto}"))
        addrs = [
            f"{a['ip']}:{q['port']}"
            for o in eps
            for s in o.get("subsets") or []
            for q in s["ports"]
            if q.get("name", "") == p.get("name", "") and q.get("protocol", "TCP") == proto
            for a in s.get("addresses") or []
        ]
        pairs.append(("Endpoints", ",".join(addrs) or "<none>"))
    pairs += [("Session Affinity", spec.get("sessionAffinity", "None"))]
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        pairs.append(("External Traffic Policy", spec.get("externalTrafficPolicy", "Cluster")))
    pairs += [("Internal Traffic Policy", spec.get("internalTrafficPolicy", "Cluster"))]
    if spec.get("healthCheckNodePort"):
        pairs.append(("HealthCheck NodePort", spec["healthCheckNodePort"]))
    pairs.append(("Events", "<none>"))
    return fields(pairs) + _proxy_section(lab, svc, now)


def describe_node(lab: Any, node: dict[str, Any], now: float) -> list[str]:
    md, spec = node["metadata"], node["spec"]
    pods = [
        p
        for p in kubeviews.items(lab, "Pod")
        if p["spec"].get("nodeName") == md["name"] and not controller.pod_condition(p)[2]
    ]
    rows = [["  Namespace", "Name", "IP"]] + [
        [f"  {p['metadata']['namespace']}", p["metadata"]["name"], p["status"]["podIP"]] for p in pods
    ]
    syncs, mode = lab.last_syncs, lab.mode
    out = fields(
        [
            ("Name", md["name"]),
            ("Roles", "<none>"),
            ("Labels", _map(md.get("labels"))),
            ("CreationTimestamp", md.get("creationTimestamp")),
            ("Addresses", [f"{a['type']}: {a['address']}" for a in node["status"]["addresses"]]),
            ("PodCIDR", spec["podCIDR"]),
            ("PodCIDRs", ",".join(spec["podCIDRs"])),
            ("Network namespace", lab.netns(md["name"])),
            (
                "Kube-proxy",
                f"{mode} mode, " + (sync_line(syncs.get(md["name"]), now) if mode != "none" else "not running"),
            ),
            ("Non-terminated Pods", f"({len(pods)} in total)"),
        ]
    )
    return out + (kubeviews.table(rows).splitlines() if pods else []) + ["Events:              <none>"]


def describe_slice(lab: Any, s: dict[str, Any], now: float) -> list[str]:
    md = s["metadata"]
    out = fields(
        [
            ("Name", md["name"]),
            ("Namespace", md.get("namespace", "default")),
            ("Labels", _map(md.get("labels"))),
            ("Annotations", _map(md.get("annotations"))),
            ("AddressType", s.get("addressType", "IPv4")),
        ]
    )
    out.append("Ports:")
    ports = s.get("ports") or []
    if ports:
        out += kubeviews.table(
            [["  Name", "Port", "Protocol"], ["  ----", "----", "--------"]]
            + [
                [f"  {p.get('name') or '<unset>'}", str(p.get("port")), p.get("protocol", "TCP")]
                for p in ports
            ]
        ).splitlines()
    else:
        out.append("  <unset>")
    out.append("Endpoints:")
    for e in s.get("endpoints") or []:
        cond = e.get("conditions") or {}
        ref = e.get("targetRef") or {}
        block = fields(
            [
                ("Addresses", ",".join(e.get("addresses") or [])),
                (
                    "Conditions",
                    [
                        f"Ready:        {str(cond.get('ready', True)).lower()}",
                        f"Serving:      {str(cond.get('serving', True)).lower()}",
                        f"Terminating:  {str(cond.get('terminating', False)).lower()}",
                    ],
                ),
                ("Hostname", e.get("hostname") or "<unset>"),
                ("TargetRef", f"{ref.get('kind')}/{ref.get('name')}" if ref else "<unset>"),
                ("NodeName", e.get("nodeName") or "<unset>"),
                ("Zone", e.get("zone") or "<unset>"),
            ],
            "    ",
        )
        out += ["  - " + block[0][4:], *block[1:]]
    if not s.get("endpoints"):
        out.append("  <none>")
    return out + ["Events:  <none>"]


def describe_deployment(lab: Any, dep: dict[str, Any], now: float) -> list[str]:
    md, spec, status = dep["metadata"], dep["spec"], dep.get("status") or {}
    strategy = (spec.get("strategy") or {}).get("type", "RollingUpdate")
    ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    rss = [
        r
        for r in kubeviews.replica_sets(lab.stored_objects())
        if r["metadata"]["ownerReferences"][0]["name"] == md["name"]
        and r["metadata"]["namespace"] == md.get("namespace", "default")
    ]
    current = f"{md['name']}-{deployments.template_hash(spec.get('template') or {})}"
    total = sum(
        1
        for p in lab.stored_objects().get("Pod", {}).values()
        if deployments.owner(p) == f"{md.get('namespace', 'default')}/{md['name']}"
    )
    tmpl = spec.get("template") or {}
    pairs: list[tuple[str, Any]] = [
        ("Name", md["name"]),
        ("Namespace", md.get("namespace", "default")),
        ("CreationTimestamp", md.get("creationTimestamp")),
        ("Labels", _map(md.get("labels"))),
        ("Annotations", _map(md.get("annotations"))),
        (
            "Selector",
            ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).get("matchLabels", {}).items()),
        ),
        (
            "Replicas",
            (
                f"{spec.get('replicas', 1)} desired | {status.get('updatedReplicas', 0)} updated | {total} "
                f"total | {status.get('availableReplicas', 0)} available | "
                f"{status.get('unavailableReplicas', 0)} unavailable"
            ),
        ),
        ("StrategyType", strategy),
    ]
    if strategy == "RollingUpdate":
        pairs.append(
            (
                "RollingUpdateStrategy",
                f"{ru.get('maxUnavailable', '25%')} max unavailable, {ru.get('maxSurge', '25%')} max surge",
            )
        )
    tmd = tmpl.get("metadata") or {}
    pairs += [
        (
            "Pod Template",
            [
                f"Labels:       {_joined(tmd.get('labels'))}",
                f"Annotations:  {_joined(tmd.get('annotations'))}",
            ]
            + [
                f"Container {c.get('name')}: ports "
                + (
                    ", ".join(
                        f"{p['containerPort']}/{p.get('protocol', 'TCP')}" for p in c.get("ports") or []
                    )
                    or "<none>"
                )
                for c in (tmpl.get("spec") or {}).get("containers") or []
            ],
        ),
        ("OldReplicaSets", [_rs_line(r) for r in rss if r["metadata"]["name"] != current] or "<none>"),
        ("NewReplicaSet", [_rs_line(r) for r in rss if r["metadata"]["name"] == current] or "<none>"),
        ("Events", "<none>"),
    ]
    return fields(pairs)


def _rs_line(rs: dict[str, Any]) -> str:
    return f"{rs['metadata']['name']} ({rs['status']['replicas']}/{rs['spec']['replicas']} replicas created)"


DESCRIBERS = {
    "Pod": describe_pod,
    "Service": describe_service,
    "Node": describe_node,
    "EndpointSlice": describe_slice,
    "Deployment": describe_deployment,
}


def describe(
    lab: Any, kind_word: str, names: list[str], namespace: str | None = None, selector: str | None = None
) -> str:
    """kubectl describe KIND [NAME...]; a NAME may be a prefix. NotFound when nothing matches."""
    kind = kubeviews.kind_of(kind_word)
    if kind not in DESCRIBERS:
        raise LabError(f"describe shows {', '.join(k.lower() for k in DESCRIBED)}, not {kind_word!r}")
    lab.refresh()
    now = time.time()
    pool = [
        o
        for o in kubeviews.items(lab, kind)
        if kind == "Node"
        or o["metadata"].get("namespace", "default") == (namespace or "default")
        or (namespace is None and not names)
    ]
    if selector:
        reqs = selectors.parse(selector)
        pool = [o for o in pool if selectors.selects(reqs, o["metadata"].get("labels") or {})]
    chosen: list[dict[str, Any]] = []
    missing = []
    for name in names:
        exact = [o for o in pool if o["metadata"]["name"] == name]
        hits = exact or [o for o in pool if o["metadata"]["name"].startswith(name)]
        if not hits:
            missing.append(f'{kubeviews.RESOURCE[kind][0]} "{name}" not found')
        chosen += [o for o in hits if o not in chosen]
    if missing:
        raise NotFound(missing)
    chosen = chosen if names else pool
    if not chosen:
        raise NotFound(
            [f"no {kubeviews.RESOURCE[kind][0]} found" + (f" with labels {selector!r}" if selector else "")]
        )
    return "\n\n".join("\n".join(DESCRIBERS[kind](lab, o, now)) for o in chosen)
