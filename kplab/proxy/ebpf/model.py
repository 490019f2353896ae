"""What the eBPF maps of one node should hold, rendered from the proxy state: pure, no kernel.

Cilium's lb4 layout (bpf/lib/lb.h), as bpf/kplab_lb.c reads it:

    lb4_services    {frontend ip, port, slot, proto, scope} -> slot 0: {affinity timeout, count,
                    rev-NAT id, flags}; slot i (1..count): {backend id}
    lb4_backends    backend id -> {ip, port, proto, local?}
    lb4_reverse_nat rev-NAT id -> frontend {ip, port} (what replies are rewritten back to)
    lb_aff_match    {backend id, rev-NAT id} -> 1 for every backend affinity may keep using
    lb4_src_range   {rev-NAT id, CIDR} -> 1 (loadBalancerSourceRanges)

Which endpoints a frontend gets is decided once, by kplab.proxy.core.categorize_endpoints
(upstream's rules: ready ones, else serving+terminating ones; Local policies; topology): only
those get slots, so terminating endpoints receive no new connections while ready ones exist.
Scope 0 is what outside clients use; when in-cluster clients must see other endpoints
(externalTrafficPolicy: Local) a scope 1 key is written too, as Cilium's "/i" entries.

Backend and rev-NAT ids must stay the same from one sync to the next (the datapath holds them
in connections and affinity entries): `render` takes the previous allocation and returns the
new one.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from kplab.proxy.core import Endpoint, ProxyState, ServicePort, categorize_endpoints

PROTOS = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
SCOPE_EXT, SCOPE_INT = 0, 1

# lb4_service.flags and flags2, Cilium's values
EXTERNAL_IP, NODEPORT, EXT_LOCAL, AFFINITY, LOADBALANCER, ROUTABLE, SOURCE_RANGE = 1, 2, 4, 16, 32, 64, 128
INT_LOCAL, TWO_SCOPES = 16, 32
BE_LOCAL = 1

MAPS = ("lb4_backends", "lb_aff_match", "lb4_src_range", "lb4_reverse_nat", "lb4_services")


@dataclass(frozen=True, order=True)
class Frontend:
    ip: str
    port: int
    proto: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}/{PROTO_NAMES.get(self.proto, self.proto)}"


@dataclass
class Ids:
    """The id allocation carried from one sync to the next (kept as JSON in the node's state dir)."""

    backends: dict[str, int] = field(default_factory=dict)  # "ip:port/PROTO" -> id (1..)
    frontends: dict[str, int] = field(default_factory=dict)  # "ip:port/PROTO" -> rev-NAT id (1..65535)
    next: dict[str, int] = field(default_factory=dict)  # per table, the next id to hand out
    _used: dict[str, set[int]] = field(default_factory=dict, repr=False)

    def _take(self, name: str, key: str, limit: int) -> int:
        """Ids count up, so a freed id is not handed out again at once (connections and affinity
        entries may still name it); after the limit, the lowest free one."""
        table: dict[str, int] = getattr(self, name)
        n = table.get(key)
        if n is not None:
            return n
        used = self._used.get(name)
        if used is None:
            used = self._used[name] = set(table.values())
        n = max(self.next.get(name, 1), 1)
        while n in used:
            n += 1
        if n > limit:
            n = next((i for i in range(1, limit + 1) if i not in used), 0)
            if not n:
                raise ValueError(f"more than {limit} ids needed")
        table[key] = n
        used.add(n)
        self.next[name] = n + 1
        return n

    def backend(self, key: str) -> int:
        return self._take("backends", key, 2**32 - 1)

    def frontend(self, key: str) -> int:
        return self._take("frontends", key, 65535)


@dataclass
class Contents:
    """Every map's entries (key bytes -> value bytes), plus readable notes for the views."""

    maps: dict[str, dict[bytes, bytes]] = field(default_factory=lambda: {m: {} for m in MAPS})
    services: dict[int, str] = field(default_factory=dict)  # rev-NAT id -> "ns/name:port"
    pods: dict[str, str] = field(default_factory=dict)  # "ip:port" -> pod name


# ------------------------------------------------------------------ byte layouts (bpf/kplab_lb.c)
def ip4(ip: str) -> bytes:
    return socket.inet_aton(ip)


def be16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def service_key(fe: Frontend, slot: int = 0, scope: int = SCOPE_EXT) -> bytes:
    return ip4(fe.ip) + be16(fe.port) + slot.to_bytes(2, "little") + bytes([fe.proto, scope, 0, 0])


def service_value(backend_id: int, count: int = 0, rev_nat: int = 0, flags: int = 0, flags2: int = 0) -> bytes:
    return (backend_id.to_bytes(4, "little") + count.to_bytes(2, "little") + rev_nat.to_bytes(2, "little")
            + bytes([flags, flags2, 0, 0]))


def backend_value(ip: str, port: int, proto: int, flags: int) -> bytes:
    return ip4(ip) + be16(port) + bytes([proto, flags])


def rev_nat_value(fe: Frontend) -> bytes:
    return ip4(fe.ip) + be16(fe.port) + b"\0\0"


def src_range_key(rev_nat: int, cidr: str) -> bytes:
    net = ipaddress.ip_network(cidr, strict=False)
    return (32 + net.prefixlen).to_bytes(4, "little") + rev_nat.to_bytes(2, "little") + b"\0\0" + net.network_address.packed


def aff_match_key(backend_id: int, rev_nat: int) -> bytes:
    return backend_id.to_bytes(4, "little") + rev_nat.to_bytes(2, "little") + b"\0\0"


# ------------------------------------------------------------------ the render
def node_addresses(state: ProxyState) -> list[str]:
    """The node IPs NodePorts answer on: every node IP, or those inside --nodeport-addresses."""
    nets = [ipaddress.ip_network(c, strict=False) for c in state.nodeport_addresses]
    return [ip for ip in state.node_ips if not nets or any(ipaddress.ip_address(ip) in n for n in nets)]


def _frontends(svc: ServicePort, state: ProxyState) -> list[tuple[Frontend, int]]:
    """(frontend, flags) of one service port: its ClusterIP, NodePorts, externalIPs, LB IPs."""
    proto = PROTOS.get(svc.protocol, 6)
    out = [(Frontend(svc.cluster_ip, svc.port, proto), 0)]
    ext = EXT_LOCAL if svc.external_policy_local else 0
    if svc.node_port:
        out += [(Frontend(ip, svc.node_port, proto), NODEPORT | ROUTABLE | ext) for ip in node_addresses(state)]
    out += [(Frontend(ip, svc.port, proto), EXTERNAL_IP | ROUTABLE | ext) for ip in svc.external_ips]
    ranges = SOURCE_RANGE if svc.load_balancer_source_ranges else 0
    out += [(Frontend(ip, svc.port, proto), LOADBALANCER | ROUTABLE | ext | ranges) for ip in svc.load_balancer_ips]
    return out


def render(state: ProxyState, ids: Ids | None = None) -> tuple[Contents, Ids]:
    """The maps' desired contents for `state`, and the id allocation they use."""
    ids = Ids(dict(ids.backends), dict(ids.frontends), dict(ids.next)) if ids else Ids()
    c = Contents()
    m = c.maps
    live_be: set[str] = set()
    live_fe: set[str] = set()
    for svc in state.sorted_services():
        if svc.cluster_ip in ("", "None"):
            continue
        cat = categorize_endpoints(state.endpoints_of(svc.name), svc)
        internal = cat.local if svc.internal_policy_local else cat.cluster
        external = cat.local if svc.external_policy_local else cat.cluster
        for fe, flags in _frontends(svc, state):
            fkey = str(fe)
            if fkey in live_fe:  # two Services claiming one external IP: the first keeps it
                continue
            live_fe.add(fkey)
            rev = ids.frontend(fkey)
            c.services[rev] = f"{svc.name}/{svc.protocol}"
            m["lb4_reverse_nat"][rev.to_bytes(2, "little")] = rev_nat_value(fe)
            flags |= AFFINITY if svc.session_affinity_seconds else 0
            flags2 = INT_LOCAL if svc.internal_policy_local else 0
            scopes = [(SCOPE_EXT, external if flags & ROUTABLE else internal)]
            if flags & ROUTABLE and _addrs(external) != _addrs(internal):
                scopes.append((SCOPE_INT, internal))
                flags2 |= TWO_SCOPES
            for scope, eps in scopes:
                ids_here = [_backend(ids, e, fe.proto, c, m, live_be) for e in eps]
                m["lb4_services"][service_key(fe, 0, scope)] = service_value(
                    svc.session_affinity_seconds, len(ids_here), rev, flags, flags2)
                for slot, bid in enumerate(ids_here, 1):
                    m["lb4_services"][service_key(fe, slot, scope)] = service_value(bid, 0, rev)
                    if svc.session_affinity_seconds:
                        m["lb_aff_match"][aff_match_key(bid, rev)] = b"\1"
            if flags & SOURCE_RANGE:
                for cidr in svc.load_balancer_source_ranges:
                    m["lb4_src_range"][src_range_key(rev, cidr)] = b"\1"
    ids.backends = {k: v for k, v in ids.backends.items() if k in live_be}
    ids.frontends = {k: v for k, v in ids.frontends.items() if k in live_fe}
    return c, ids


def _addrs(eps: list[Endpoint]) -> list[str]:
    return [e.address for e in eps]


def _backend(ids: Ids, e: Endpoint, proto: int, c: Contents, m: dict[str, dict[bytes, bytes]],
             live: set[str]) -> int:
    key = f"{e.address}/{PROTO_NAMES.get(proto, proto)}"
    bid = ids.backend(key)
    live.add(key)
    m["lb4_backends"][bid.to_bytes(4, "little")] = backend_value(e.ip, e.port, proto, BE_LOCAL if e.is_local else 0)
    if e.pod_name:
        c.pods[e.address] = e.pod_name
    return bid
