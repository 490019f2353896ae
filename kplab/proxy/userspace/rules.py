"""The userspace mode's rules and table, pure: what the proxy serves and how iptables steers to it.

`build_table()` gives each service port a proxy port (stable across syncs) and its endpoints;
`render_restore()` writes upstream's portal rules for it (REDIRECT or DNAT: see the module
docstring of kplab.proxy.userspace.proxier); `proxy_input()` is table.json, what the proxy
process (kplab.proxy.userspace.proxy) serves.  No kernel here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from kplab.errors import KplabError, ProxierError
from kplab.proxy.core import ProxyState
from kplab.proxy.userspace.relay import DEFAULT_UDP_IDLE_TIMEOUT
from kplab.proxy.xtables import owned_by

DEFAULT_PORT_RANGE = "20000-20999"  # below the NodePort range and the ephemeral ports
PORTALS_CONTAINER = "KUBE-PORTALS-CONTAINER"
PORTALS_HOST = "KUBE-PORTALS-HOST"
NODEPORT_CONTAINER = "KUBE-NODEPORT-CONTAINER"
NODEPORT_HOST = "KUBE-NODEPORT-HOST"
NODEPORT_NON_LOCAL = "KUBE-NODEPORT-NON-LOCAL"
CHAINS = {
    "nat": (PORTALS_CONTAINER, PORTALS_HOST, NODEPORT_CONTAINER, NODEPORT_HOST),
    "filter": (NODEPORT_NON_LOCAL,),
}
owned = owned_by(CHAINS)  # cleanup removes these chains and the jumps to them, nothing else
_PORTALS_FIRST = '-m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort rules"'
_NODEPORTS_LAST = (
    "-m addrtype --dst-type LOCAL -m comment --comment "
    '"handle service NodePorts; NOTE: this must be the last rule in the chain"'
)
# upstream's iptablesInit(), as data: (table, built-in chain, insert first?, matches, our chain)
JUMPS = (
    ("nat", "PREROUTING", True, _PORTALS_FIRST, PORTALS_CONTAINER),
    ("nat", "OUTPUT", True, _PORTALS_FIRST, PORTALS_HOST),
    ("nat", "PREROUTING", False, _NODEPORTS_LAST, NODEPORT_CONTAINER),
    ("nat", "OUTPUT", False, _NODEPORTS_LAST, NODEPORT_HOST),
    (
        "filter",
        "INPUT",
        True,
        '-m comment --comment "Ensure that non-local NodePort traffic can flow"',
        NODEPORT_NON_LOCAL,
    ),
)


@dataclass(frozen=True)
class Portal:
    """One service port in the proxy's table: where traffic is caught, where it goes."""

    name: str  # "default/web:http", upstream's ServicePortName.String()
    protocol: str  # TCP or UDP
    proxy_port: int
    cluster_ip: str
    port: int
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    affinity_seconds: int = 0
    endpoints: tuple[str, ...] = ()  # ready endpoints "ip:port" (upstream read v1 Endpoints' addresses)
    pods: tuple[str, ...] = ()  # the pod behind each endpoint, for the learner's view

    @property
    def key(self) -> str:
        return f"{self.name}/{self.protocol}"


@dataclass(frozen=True)
class Table:
    portals: tuple[Portal, ...]
    host_ip: str  # where the *-HOST rules DNAT to when listening on 0.0.0.0
    listen_ip: str = "0.0.0.0"
    udp_timeout: float = DEFAULT_UDP_IDLE_TIMEOUT
    skipped: tuple[str, ...] = ()  # service ports the userspace proxy could not serve, with why


def parse_port_range(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(text))
    if not m or not 0 < int(m[1]) <= int(m[2]) <= 65535:
        raise KplabError(f"bad proxy_port_range {text!r}: expected FIRST-LAST, e.g. {DEFAULT_PORT_RANGE}")
    return int(m[1]), int(m[2])


def allocate_proxy_ports(keys: list[str], previous: dict[str, int], port_range: str) -> dict[str, int]:
    """A proxy port per key: kept while the key exists, new keys get the lowest free port.

    Upstream's range allocator picked a random free port; lowest-free is deterministic, so the
    rendered rules and the tests do not change from run to run.
    """
    lo, hi = parse_port_range(port_range)
    ports = {k: p for k, p in previous.items() if k in keys and lo <= p <= hi}
    used = set(ports.values())
    free = (p for p in range(lo, hi + 1) if p not in used)
    for key in sorted(k for k in keys if k not in ports):
        port = next(free, None)
        if port is None:
            raise ProxierError(f"proxy port range {port_range} is exhausted ({len(keys)} service ports)")
        ports[key] = port
    return ports


def build_table(state: ProxyState, previous_ports: dict[str, int] | None = None, **options: Any) -> Table:
    """The proxy's table for `state`: a Portal per servable service port, pure."""
    if not state.node_ips:
        raise ProxierError("the userspace proxy needs a node IP to DNAT host traffic to")
    servable, skipped = [], []
    for svc in state.sorted_services():
        if svc.protocol not in ("TCP", "UDP"):
            skipped.append(f"{svc.name} {svc.protocol}: not supported by the userspace proxy (as upstream)")
        else:
            servable.append(svc)
    keys = [f"{svc.name}/{svc.protocol}" for svc in servable]
    ports = allocate_proxy_ports(
        keys, previous_ports or {}, options.get("proxy_port_range") or DEFAULT_PORT_RANGE
    )
    portals = []
    for svc, key in zip(servable, keys):
        ready = [e for e in state.endpoints_of(svc.name) if e.ready]
        portals.append(
            Portal(
                name=str(svc.name),
                protocol=svc.protocol,
                proxy_port=ports[key],
                cluster_ip=svc.cluster_ip,
                port=svc.port,
                node_port=svc.node_port,
                external_ips=svc.external_ips,
                load_balancer_ips=svc.load_balancer_ips,
                affinity_seconds=svc.session_affinity_seconds,
                endpoints=tuple(e.address for e in ready),
                pods=tuple(e.pod_name for e in ready),
            )
        )
    return Table(
        tuple(portals),
        host_ip=options.get("host_ip") or state.node_ips[0],
        listen_ip=options.get("listen_ip") or "0.0.0.0",
        udp_timeout=float(options.get("udp_timeout") or DEFAULT_UDP_IDLE_TIMEOUT),
        skipped=tuple(skipped),
    )


def _match(p: Portal, dport: int, dest: str = "", extra: str = "") -> str:
    """Upstream's iptablesCommonPortalArgs, in the order iptables-save prints them."""
    proto = p.protocol.lower()
    head = f"-d {dest}/32 " if dest else ""
    return f'{head}-p {proto} -m comment --comment "{p.name}" -m {proto} --dport {dport}{extra}'


def _portal_rules(t: Table, p: Portal) -> dict[str, list[str]]:
    listen_any = t.listen_ip == "0.0.0.0"
    to_proxy = (
        f"-j REDIRECT --to-ports {p.proxy_port}"
        if listen_any
        else f"-j DNAT --to-destination {t.listen_ip}:{p.proxy_port}"
    )
    to_host = f"-j DNAT --to-destination {t.host_ip if listen_any else t.listen_ip}:{p.proxy_port}"
    local = " -m addrtype --dst-type LOCAL"
    out: dict[str, list[str]] = {c: [] for c in (*CHAINS["nat"], NODEPORT_NON_LOCAL)}
    for ip in (p.cluster_ip, *p.load_balancer_ips):  # not "external": caught everywhere
        out[PORTALS_CONTAINER].append(f"{_match(p, p.port, ip)} {to_proxy}")
        out[PORTALS_HOST].append(f"{_match(p, p.port, ip)} {to_host}")
    for ip in p.external_ips:  # external: from off-node (not bridged), or when the IP is the node's
        out[PORTALS_CONTAINER].append(f"{_match(p, p.port, ip, ' -m physdev ! --physdev-is-in')} {to_proxy}")
        out[PORTALS_CONTAINER].append(f"{_match(p, p.port, ip, local)} {to_proxy}")
        out[PORTALS_HOST].append(f"{_match(p, p.port, ip, local)} {to_host}")
    if p.node_port:
        out[NODEPORT_CONTAINER].append(f"{_match(p, p.node_port)} {to_proxy}")
        out[NODEPORT_HOST].append(f"{_match(p, p.node_port)} {to_host}")
        out[NODEPORT_NON_LOCAL].append(f"{_match(p, p.proxy_port)} -m state --state NEW -j ACCEPT")
    return out


def render_restore(t: Table, jumps: bool | set[tuple[str, str, str]] = True) -> str:
    """The iptables-restore --noflush input for a table.

    `jumps`: True writes every jump from the built-in chains (a first sync), False none, a
    set writes only those (table, built-in chain, our chain) that are missing.
    """
    rules: dict[str, list[str]] = {c: [] for c in (*CHAINS["nat"], NODEPORT_NON_LOCAL)}
    for p in t.portals:
        for chain, lines in _portal_rules(t, p).items():
            rules[chain].extend(lines)
    out: list[str] = []
    for table, chains in CHAINS.items():
        out.append(f"*{table}")
        out.extend(f":{c} - [0:0]" for c in chains)  # declaring a chain flushes it, even with --noflush
        for tbl, builtin, first, matches, chain in JUMPS:
            if tbl == table and (jumps is True or (jumps and (tbl, builtin, chain) in jumps)):
                out.append(f"{'-I ' + builtin + ' 1' if first else '-A ' + builtin} {matches} -j {chain}")
        for chain in chains:
            out.extend(f"-A {chain} {r}" for r in rules[chain])
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def table_text(t: Table, stats: dict[str, Any] | None = None) -> str:
    """The proxy's table for people: service port -> proxy port -> endpoints (with live counts)."""
    live = {f"{s['name']}/{s['protocol']}": s for s in (stats or {}).get("services", [])}
    where = (
        "0.0.0.0 (REDIRECT from pods/off-node, DNAT to " + t.host_ip + " from the node)"
        if t.listen_ip == "0.0.0.0"
        else f"{t.listen_ip} (DNAT)"
    )
    lines = [f"# userspace proxy table: service port -> proxy port -> endpoints; listening on {where}"]
    for p in t.portals:
        caught = [
            f"{p.cluster_ip}:{p.port}",
            *(f"{ip}:{p.port}" for ip in (*p.external_ips, *p.load_balancer_ips)),
        ]
        if p.node_port:
            caught.append(f"nodePort {p.node_port}")
        s = live.get(p.key)
        how = "round robin" + (f", ClientIP affinity {p.affinity_seconds}s" if p.affinity_seconds else "")
        if s and s.get("next"):
            how += f", next {s['next']}"
        lines.append(f"# {p.name} {p.protocol} {', '.join(caught)} -> :{p.proxy_port} ({how})")
        if not p.endpoints:
            lines.append("#     no endpoints: connections are accepted, then closed")
        for ep, pod in zip(p.endpoints, p.pods):
            row = f"#     {ep:<21} {pod or '-':<24}"
            if s:
                c = s["endpoints"].get(ep, {})
                row += (
                    f" connections {c.get('connections', 0):>5}  active {c.get('active', 0):>3}"
                    f"  failed {c.get('failed', 0):>3}"
                )
            lines.append(row.rstrip())
    lines.extend(f"# skipped: {why}" for why in t.skipped)
    return "\n".join(lines) + "\n"


def proxy_input(t: Table) -> dict[str, Any]:
    """table.json: what the proxy process serves (it ignores the keys it does not use)."""
    services = [{**asdict(p), "udp_timeout": t.udp_timeout} for p in t.portals]
    hold = [{"protocol": p.protocol, "port": p.node_port, "owner": p.name} for p in t.portals if p.node_port]
    return {
        "listen_ip": t.listen_ip,
        "host_ip": t.host_ip,
        "udp_timeout": t.udp_timeout,
        "skipped": list(t.skipped),
        "services": services,
        "hold": hold,
    }


def table_from_input(data: dict[str, Any]) -> Table:
    fields = Portal.__dataclass_fields__
    portals = tuple(
        Portal(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items() if k in fields})
        for s in data.get("services", [])
    )
    return Table(
        portals,
        host_ip=data.get("host_ip", ""),
        listen_ip=data.get("listen_ip", "0.0.0.0"),
        udp_timeout=data.get("udp_timeout", DEFAULT_UDP_IDLE_TIMEOUT),
        skipped=tuple(data.get("skipped", ())),
    )


def _ours(saved: str) -> dict[str, list[str]]:
    """Our lines of an iptables-save dump, per table: chain declarations, rules in and jumps to our chains."""
    out: dict[str, list[str]] = {}
    table = ""
    mine = {c for cs in CHAINS.values() for c in cs}
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
            continue
        body = re.sub(r"^\[\d+:\d+\] ", "", line)
        words = body.split()
        if len(words) < 2 or table not in CHAINS:
            continue
        if (
            (words[0].startswith(":") and words[0][1:] in mine)
            or (words[0] == "-A" and words[1] in mine)
            or (words[0] == "-A" and words[-2:-1] == ["-j"] and words[-1] in mine)
        ):
            out.setdefault(table, []).append(line)
    return out


def _served(t: Table | None) -> list[str]:
    """What the proxy process serves, as comparable lines: service port, proxy port, endpoint."""
    return [f"proxy {p.key} :{p.proxy_port} -> {ep}" for p in (t.portals if t else ()) for ep in p.endpoints]


