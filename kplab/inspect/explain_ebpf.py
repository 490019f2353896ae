"""`kplab explain` of an eBPF load balancer's Service map: `cilium-dbg bpf lb list` (or `kplab rules`
in eBPF mode, which prints the same shape with a name column).

Each frontend (ClusterIP, NodePort surrogate or node address, externalIP, LB IP; `/i` for the
in-cluster scope) is an entry; backends are picked at random, so each has 1/count of the new
connections.  Names come from kplab's column, or from --services by address and port (Cilium's
listing has none).
"""

from __future__ import annotations

from typing import Any

from kplab.inspect.views import EndpointView, Entry, Explanation, ServiceView
from kplab.proxy.ebpf.view import parse_lb_list

KINDS = ("NodePort", "LoadBalancer", "ExternalIPs", "HostPort", "LocalRedirect", "ClusterIP")


def _name(fe: dict[str, Any], catalog: Any) -> tuple[str, str]:
    if fe.get("name"):
        name = fe["name"].rsplit("/", 1)[0] if fe["name"].count("/") >= 2 else fe["name"]
        return name, "kplab's column"
    if catalog is None:
        return "", ""
    ip, _, rest = fe["frontend"].partition(":")
    port, _, proto = rest.partition("/")
    proto = proto.split("/")[0]
    hit = catalog.by_vip.get((ip, proto, int(port)))
    if hit is None and port.isdigit():
        known = catalog.by_nodeport.get((proto, int(port)))
        hit = (known, "NodePort") if known else None
    return (hit[0].name, "--services (address and port)") if hit else ("", "")


def read(text: str, catalog: Any = None) -> Explanation:
    ex = Explanation("ebpf")
    views: dict[str, ServiceView] = {}
    for fe in parse_lb_list(text):
        proto = fe["frontend"].split("/")[1] if "/" in fe["frontend"] else ""
        name, source = _name(fe, catalog)
        key = f"{name}/{proto}" if name else fe["frontend"]
        v = views.get(key)
        if v is None:
            v = views[key] = ServiceView(key=key, name=name, protocol=proto, name_from=source)
        kind = next((k for k in KINDS if k in fe["flags"]), "ClusterIP")
        scope = " (in-cluster scope)" if fe["frontend"].endswith("/i") else ""
        count = len(fe["backends"])
        note = ", ".join(f for f in fe["flags"] if f != kind) + scope
        v.entries.append(Entry(kind, fe["frontend"].split("/")[0], f"rev-NAT {fe['rev_nat']}", note.strip(", ")))
        eps = [EndpointView(b.rsplit("/", 1)[0], share=100.0 / count, rule=f"slot {i} of {count}",
                            pod=fe.get("pods", {}).get(b, ""), affinity="sessionAffinity" in fe["flags"])
               for i, b in enumerate(fe["backends"], 1)]
        local = "Local" in fe["flags"] and not scope
        target = v.local_endpoints if local else v.endpoints
        if not target:
            target.extend(e for e in eps if not e.address.startswith("backend"))
        if kind != "ClusterIP":
            v.external_policy = "Local" if "Local" in fe["flags"] else (v.external_policy or "Cluster")
        if "InternalLocal" in fe["flags"]:
            v.internal_policy = "Local"
        if "check source-range" in fe["flags"]:
            v.source_ranges = v.source_ranges or ["(in lb4_src_range: `--source-ranges` lists them)"]
        if count == 0:
            v.no_endpoints = "no backends: connect() refused (socket LB), packets dropped (tc)"
        v.anomalies += [f"{fe['frontend']}: {b}" for b in fe["backends"] if b.startswith("backend")]
    ex.services = list(views.values())
    ex.notes.append("backends are chosen at random: each has 1/count of the new connections")
    return ex
