"""Conntrack entries of a lab node, with both tuples, so DNAT and SNAT are visible.

Read over netlink with pyroute2's `Conntrack(netns=...)` (no fork, works in a named netns;
`conntrack -L` shows the same).  Each connection the node tracks has an original tuple (what
the client sent: client -> ClusterIP:port) and a reply tuple (what the answer looks like:
pod:targetPort -> client, or -> the node when it masqueraded).  When the two differ, the node
rewrote the packet:

    tcp ESTABLISHED  10.244.1.3:41234 -> 10.96.0.20:80   reply 10.244.2.2:8080 -> 10.244.1.3:41234   DNAT

`clear(lab, node, service)` deletes a Service's entries in one call: what upstream kube-proxy
does for UDP when endpoints change (`conntrack.CleanStaleEntries`), so that the next
datagram takes the new rules instead of following a stale entry.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from kplab.errors import EnvironmentProblem, LabError
from kplab.inspect.labview import LabView

PROTOS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp", 132: "sctp"}
STATUS_BITS = {
    1: "EXPECTED",
    2: "SEEN_REPLY",
    4: "ASSURED",
    8: "CONFIRMED",
    16: "SRC_NAT",
    32: "DST_NAT",
    512: "DYING",
    1024: "FIXED_TIMEOUT",
}


@dataclass(frozen=True)
class FlowTuple:
    src: str
    dst: str
    sport: int = 0
    dport: int = 0

    def __str__(self) -> str:
        if not self.sport and not self.dport:
            return f"{self.src} -> {self.dst}"
        return f"{self.src}:{self.sport} -> {self.dst}:{self.dport}"


@dataclass
class Entry:
    proto: str
    original: FlowTuple
    reply: FlowTuple
    state: str = ""  # TCP state (ESTABLISHED, TIME_WAIT, ...); "" for other protocols
    status: list[str] = field(default_factory=list)
    timeout: int = 0
    mark: int = 0

    @property
    def dnat(self) -> bool:
        """The destination was rewritten: the reply comes from someone else than the original target."""
        return (self.reply.src, self.reply.sport) != (self.original.dst, self.original.dport)

    @property
    def snat(self) -> bool:
        """The source was rewritten (masquerade): the reply goes to someone else than the client."""
        return (self.reply.dst, self.reply.dport) != (self.original.src, self.original.sport)

    @property
    def nat(self) -> str:
        return " ".join(n for n, on in (("DNAT", self.dnat), ("SNAT", self.snat)) if on)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(dnat=self.dnat, snat=self.snat)
        return d

    def text(self) -> str:
        return f"{self.proto:<4} {self.state or '-':<11} {self.original!s:<44} reply {self.reply!s:<44} {self.nat}".rstrip()


def _entry(e: Any) -> Entry:
    o, r = e.tuple_orig, e.tuple_reply
    state = e.protoinfo.state_name() if getattr(e, "protoinfo", None) is not None else ""
    status = [name for bit, name in STATUS_BITS.items() if (e.status or 0) & bit]
    return Entry(
        PROTOS.get(o.proto, str(o.proto)),
        FlowTuple(o.saddr, o.daddr, o.sport or 0, o.dport or 0),
        FlowTuple(r.saddr, r.daddr, r.sport or 0, r.dport or 0),
        state,
        status,
        int(e.timeout or 0),
        int(e.mark or 0),
    )


def _socket(netns: str) -> Any:
    from pyroute2 import Conntrack

    try:
        return Conntrack(netns=netns)
    except OSError as e:
        raise EnvironmentProblem(
            f"cannot read conntrack in {netns}: {e.strerror or e} (modprobe nf_conntrack?)"
        ) from None


def entries(netns: str) -> list[Entry]:
    """Every IPv4 conntrack entry of one namespace."""
    ct = _socket(netns)
    try:
        return [_entry(e) for e in ct.dump_entries()]
    finally:
        ct.close()


@dataclass(frozen=True)
class ServiceMatch:
    """The destinations that mean "this Service": (ip or "", proto, port); "" = any node address."""

    name: str
    targets: frozenset[tuple[str, str, int]]

    def __call__(self, e: Entry) -> bool:
        o = e.original
        return (o.dst, e.proto, o.dport) in self.targets or ("", e.proto, o.dport) in self.targets


def service_match(lab: LabView, service: str) -> ServiceMatch:
    """ClusterIP:port, externalIPs:port, LB IPs:port, and nodePort on any node address."""
    svc = lab.service(service)
    spec = svc.get("spec") or {}
    ips = [spec.get("clusterIP")] + list(spec.get("externalIPs") or [])
    ips += [
        i["ip"]
        for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if i.get("ip")
    ]
    targets = set()
    for p in spec.get("ports") or []:
        proto = str(p.get("protocol") or "TCP").lower()
        targets.update((ip, proto, int(p["port"])) for ip in ips if ip and ip != "None")
        if p.get("nodePort"):
            targets.add(("", proto, int(p["nodePort"])))
    if not targets:
        raise LabError(f"Service {service!r} has no ClusterIP or NodePort: conntrack has nothing to match")
    return ServiceMatch(service, frozenset(targets))


class Entries(list[Entry]):
    """A list of entries that prints as a table (in a notebook too)."""

    def __repr__(self) -> str:
        return text(self)


def list_entries(lab: LabView, node: str, service: str | None = None) -> list[Entry]:
    """A node's entries, only those of `service` when given (sorted: protocol, original tuple)."""
    found = entries(lab.netns(node))
    if service:
        match = service_match(lab, service)
        found = [e for e in found if match(e)]
    order = sorted(
        found, key=lambda e: (e.proto, e.original.dst, e.original.dport, e.original.src, e.original.sport)
    )
    return Entries(order)


def clear(
    lab: LabView, service: str, nodes: Iterable[str] | None = None, protocols: Iterable[str] | None = None
) -> int:
    """Delete the Service's entries on `nodes` (default: every node); how many were deleted.

    `protocols` limits it (upstream clears only UDP); default: every protocol the Service uses.
    """
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    match = service_match(lab, service)
    wanted = {p.lower() for p in protocols} if protocols else None
    deleted = 0
    for node in nodes or lab.nodes:
        ct = _socket(lab.netns(node))
        try:
            for raw in list(ct.dump_entries()):
                e = _entry(raw)
                if not match(e) or (wanted and e.proto not in wanted):
                    continue
                o = raw.tuple_orig
                try:
                    ct.delete(
                        NFCTAttrTuple(
                            saddr=o.saddr, daddr=o.daddr, proto=o.proto, sport=o.sport, dport=o.dport
                        )
                    )
                    deleted += 1
                except OSError:
                    pass  # gone meanwhile (expired or deleted by someone else)
        finally:
            ct.close()
    return deleted


def text(found: list[Entry]) -> str:
    if not found:
        return "no conntrack entries"
    return "\n".join(e.text() for e in found)
