"""Explain `ipvsadm -Ln` (or `ipvsadm -Sn`) output of kube-proxy's IPVS mode.

IPVS carries no names: one Service port is N virtual servers (ClusterIP, each external/LB
IP, one per node IP for a NodePort), each endpoint a real server.  Without `--services`,
virtual servers on the same NodePort-range port with the same real servers are grouped as
one NodePort; every other virtual server stands alone.  With `--services`, virtual servers
are matched to Service ports by address, protocol and port (ClusterIP, externalIPs, LB
IPs, NodePort).  Shares follow the scheduler: rr splits evenly among servers of weight > 0,
weighted schedulers by weight; weight 0 is a draining (terminating) endpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kplab.inspect.views import EndpointView, Entry, Explanation, ServiceView, uneven

if TYPE_CHECKING:
    from kplab.inspect.catalog import Catalog

NODEPORT_RANGE = range(30000, 32768)
WEIGHTED = {"wrr", "wlc", "lblc", "lblcr", "sed", "nq", "mh"}
_VS = re.compile(r"^(TCP|UDP|SCTP)\s+(\S+):(\d+)\s+(\S+)(.*)$")
_RS = re.compile(r"^->\s+(\S+):(\d+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)")


@dataclass
class RealServer:
    address: str  # "10.244.1.6:80"
    forward: str  # Masq | Route | Tunnel
    weight: int
    active: int
    inactive: int


@dataclass
class VirtualServer:
    protocol: str
    ip: str
    port: int
    scheduler: str
    persistent: int = 0  # seconds, 0 = no persistence (affinity)
    reals: list[RealServer] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


_SAVE_VS = re.compile(r"^-A\s+-(t|u|-sctp-service)\s+(\S+):(\d+)\s+-s\s+(\S+)(.*)$")
_SAVE_RS = re.compile(r"^-a\s+-(t|u|-sctp-service)\s+(\S+):(\d+)\s+-r\s+(\S+):(\d+)\s+-([mgi])\s+-w\s+(\d+)")
_SAVE_PROTO = {"t": "TCP", "u": "UDP", "-sctp-service": "SCTP"}
_SAVE_FWD = {"m": "Masq", "g": "Route", "i": "Tunnel"}


def _parse_save(line: str, out: list[VirtualServer]) -> None:
    """`ipvsadm -Sn` / `ipvsadm --restore` lines (what the IPVS mode's render shows)."""
    m = _SAVE_VS.match(line)
    if m:
        proto, ip, port, sched, flags = m.groups()
        pm = re.search(r"-p\s+(\d+)", flags)
        out.append(
            VirtualServer(_SAVE_PROTO[proto], ip.strip("[]"), int(port), sched, int(pm.group(1)) if pm else 0)
        )
        return
    m = _SAVE_RS.match(line)
    if m:
        proto, ip, port, rip, rport, fwd, w = m.groups()
        key = (_SAVE_PROTO[proto], ip.strip("[]"), int(port))
        vs = next((v for v in out if (v.protocol, v.ip, v.port) == key), None)
        if vs is not None:
            vs.reals.append(RealServer(f"{rip}:{rport}", _SAVE_FWD[fwd], int(w), 0, 0))


def parse(text: str) -> list[VirtualServer]:
    """`ipvsadm -Ln` listings and `ipvsadm -Sn` saves alike."""
    out: list[VirtualServer] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("-A ", "-a ")):
            _parse_save(line, out)
            continue
        m = _VS.match(line)
        if m:
            proto, ip, port, sched, flags = m.groups()
            pm = re.search(r"persistent\s+(\d+)", flags)
            out.append(VirtualServer(proto, ip.strip("[]"), int(port), sched, int(pm.group(1)) if pm else 0))
            continue
        m = _RS.match(line)
        if m and out and not line.startswith("-> RemoteAddress"):
            ip, port, fwd, w, act, inact = m.groups()
            out[-1].reals.append(RealServer(f"{ip}:{port}", fwd, int(w), int(act), int(inact)))
    return out


def looks_like(text: str) -> bool:
    return "IP Virtual Server" in text or bool(
        re.search(r"^(TCP|UDP|SCTP)\s+\S+:\d+\s+\w+|^-A\s+-[tu]\s+\S+:\d+\s+-s\s", text, re.MULTILINE)
    )


def _shares(vs: VirtualServer) -> list[EndpointView]:
    live = [r for r in vs.reals if r.weight > 0]
    total = sum(r.weight for r in live) if vs.scheduler in WEIGHTED else len(live)
    out = []
    for r in vs.reals:
        part = 0 if r.weight == 0 else (r.weight if vs.scheduler in WEIGHTED else 1)
        share = 100.0 * part / total if total else 0.0
        rule = f"{vs.scheduler} weight {r.weight}" + ("" if r.forward == "Masq" else f", forward {r.forward}")
        out.append(EndpointView(r.address, "", share, rule, affinity=bool(vs.persistent)))
    return out


def _group_key(vs: VirtualServer, catalog: Catalog | None) -> tuple[str, str, str]:
    """(key, name, entry kind) for one virtual server."""
    if catalog:
        hit = catalog.by_vip.get((vs.ip, vs.protocol, vs.port))
        if hit:
            return f"{hit[0].name}/{vs.protocol}", hit[0].name, hit[1]
        known = catalog.by_nodeport.get((vs.protocol, vs.port))
        if known:
            return f"{known.name}/{vs.protocol}", known.name, "NodePort"
    if vs.port in NODEPORT_RANGE:
        reals = ",".join(sorted(r.address for r in vs.reals))
        return f"{vs.protocol} *:{vs.port} [{reals}]", "", "NodePort"
    return f"{vs.protocol} {vs.address}", "", "virtual server"


EXTERNAL = {"NodePort", "ExternalIP", "LoadBalancer"}


def _reals(vs: VirtualServer) -> list[str]:
    return sorted(r.address for r in vs.reals)


def read(servers: list[VirtualServer], catalog: Catalog | None = None) -> Explanation:
    ex = Explanation("ipvs")
    groups: dict[str, list[tuple[VirtualServer, str]]] = {}
    names: dict[str, str] = {}
    for vs in servers:
        key, names[key], kind = _group_key(vs, catalog)
        groups.setdefault(key, []).append((vs, kind))
    for key, members in groups.items():
        ex.services.append(_view(key, names[key], members, catalog))
    if not catalog:
        ex.notes.append("IPVS output names no Services: pass --services to name them")
    return ex


def _view(
    key: str, name: str, members: list[tuple[VirtualServer, str]], catalog: Catalog | None
) -> ServiceView:
    """One Service port from its virtual servers.  The ClusterIP one holds every endpoint; an
    external one (NodePort, externalIP, LB IP) holding only some of them is externalTrafficPolicy
    Local (upstream's syncEndpoint gives those only the node's own endpoints)."""
    base = next((vs for vs, kind in members if kind == "ClusterIP"), members[0][0])
    v = ServiceView(key=key, name=name, protocol=base.protocol)
    v.name_from = "--services (address and port)" if name else ""
    v.endpoints = _shares(base)
    v.affinity_seconds = base.persistent
    known = catalog.get(name, base.protocol) if catalog and name else None
    local = bool(known and known.port.external_policy_local)
    for vs, kind in members:
        note = f"{vs.scheduler}" + (f" persistent {vs.persistent}" if vs.persistent else "")
        v.entries.append(Entry(kind, vs.address, "", note))
        if kind in EXTERNAL and _reals(vs) != _reals(base) and set(_reals(vs)) < set(_reals(base)):
            local = True
            if v.local_endpoints and sorted(e.address for e in v.local_endpoints) != _reals(vs):
                v.anomalies.append(
                    f"virtual server {vs.address} has other real servers than the other external ones"
                )
            v.local_endpoints = v.local_endpoints or _shares(vs)
        elif _reals(vs) != _reals(base):
            v.anomalies.append(f"virtual server {vs.address} has other real servers than {base.address}")
        if not vs.reals:
            v.anomalies.append(
                f"{vs.address} has no real servers: new connections get no answer (IPVS has no REJECT)"
            )
        for r in vs.reals:
            if r.weight == 0 and not any(f"{r.address} has weight 0" in a for a in v.anomalies):
                v.anomalies.append(
                    f"{r.address} has weight 0: draining (terminating), gets no new connections"
                )
    if any(kind in EXTERNAL for _, kind in members):
        v.external_policy = "Local" if local else "Cluster"
    if msg := uneven([e for e in v.endpoints if e.share > 0]):
        v.anomalies.append(msg)
    return v
