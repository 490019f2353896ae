"""The rules of kube-proxy's nftables mode, written as `nft -f` text (pure, no kernel).

Upstream's static skeleton (`nftablesBaseChains`, `nftablesJumpChains`, the maps and sets)
is data here; `write_skeleton()` writes it for a full sync, `write_service()` writes one
service port's chains, rules and map elements (the loop body of upstream's syncProxyRules),
and `Transaction` writes each operation the way knftables does, counting operations as it does.
kplab.proxy.nftables decides what a sync writes and runs it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import marshal
import sys
from dataclasses import dataclass

from kplab.errors import KplabError
from kplab.proxy.core import MASQ_MARK, Endpoint, ProxyState, ServicePort, categorize_endpoints
from kplab.proxy.naming import hash_and_truncate, nft_endpoint_base, nft_service_base

TABLE = "kube-proxy"
FAMILY = "ip"
TABLE_COMMENT = "rules for kube-proxy"

# (name, type, hook, priority); knftables writes priorities as numbers: dstnat = -100, srcnat = 100.
BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)
# (chain, jumped to from, condition), in upstream's order.
JUMP_CHAINS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
)
ADDR_KEY = "ipv4_addr . inet_proto . inet_service : verdict"
PORT_KEY = "inet_proto . inet_service : verdict"
# The sets and maps whose elements follow the services, diffed between syncs: (kind, type, comment).
CONTAINERS = {
    "cluster-ips": ("set", "ipv4_addr", "Active ClusterIPs"),
    "service-ips": ("map", ADDR_KEY, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    "firewall-ips": ("map", ADDR_KEY, "destinations that are subject to LoadBalancerSourceRanges"),
    "no-endpoint-services": ("map", ADDR_KEY, "vmap to drop or reject packets to services with no endpoints"),
    "no-endpoint-nodeports": (
        "map",
        PORT_KEY,
        "vmap to drop or reject packets to service nodeports with no endpoints",
    ),
    "service-nodeports": ("map", PORT_KEY, "NodePort traffic"),
}
PREFIXES = ("service-", "local-", "external-", "firewall-", "endpoint-")
REJECT = "goto reject-chain"


def _q(text: str) -> str:
    """Go's %q for the plain ASCII comments kube-proxy writes."""
    return json.dumps(text)


class Transaction:
    """One `nft -f` input written the way knftables writes it; `ops` counts operations likewise.

    With `counters`, every rule gets a `counter` statement before its action (upstream has
    none; the lab loads them so that `kplab rules` can show which rule packets took).
    """

    def __init__(self, counters: bool = False) -> None:
        self.lines: list[str] = []
        self.ops = 0
        self.counters = counters

    def _op(self, line: str) -> None:
        self.lines.append(line)
        self.ops += 1

    def note(self, text: str) -> None:
        self.lines.append(f"# {text}")

    def table(self, spec: str) -> None:
        self._op(f"add table {FAMILY} {TABLE} {{ {spec} }}")

    def add(self, kind: str, name: str, spec: str = "") -> None:
        self._op(f"add {kind} {FAMILY} {TABLE} {name}" + (f" {{ {spec} }}" if spec else ""))

    def flush(self, kind: str, name: str) -> None:
        self._op(f"flush {kind} {FAMILY} {TABLE} {name}")

    def delete(self, kind: str, name: str) -> None:
        self._op(f"delete {kind} {FAMILY} {TABLE} {name}")

    def rule(self, chain: str, match: str, action: str, comment: str | None = None) -> None:
        counter = "counter " if self.counters else ""
        body = f"{match} {counter}{action}" if match else counter + action
        self._op(f"add rule {FAMILY} {TABLE} {chain} {body}" + (f" comment {_q(comment)}" if comment else ""))

    def element(
        self, verb: str, container: str, key: str, value: str = "", comment: str | None = None
    ) -> None:
        extra = ""
        if verb == "add":
            extra = (f" comment {_q(comment)}" if comment else "") + (f" : {value}" if value else "")
        self._op(f"{verb} element {FAMILY} {TABLE} {container} {{ {key}{extra} }}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@dataclass
class Config:
    """The node-wide settings a sync depends on (a change forces a full sync)."""

    node_ip: str
    local_cidr: str  # the local-traffic detector; "" when not implemented
    service_cidrs: str  # "a,b" as upstream passes ServiceCIDRs to knftables
    nodeport_ips: tuple[str, ...] | None  # None: every local address (match-all)
    masquerade_all: bool
    counters: bool

    @classmethod
    def of(cls, state: ProxyState, counters: bool) -> Config:
        return cls(
            node_ip=state.node_ips[0] if state.node_ips else "",
            local_cidr=_flag_cidr(state.cluster_cidr, "--cluster-cidr") or "",
            service_cidrs=",".join(
                c for c in (_flag_cidr(s, "--service-cidr") for s in state.service_cidr.split(",")) if c
            ),
            nodeport_ips=_nodeport_ips(state),
            masquerade_all=state.masquerade_all,
            counters=counters,
        )

    def digest(self) -> str:
        return repr((self, sys.version_info[:2]))


def _ip(text: str) -> str | None:
    """An IPv4 address in canonical form, accepting the leading zeros older Kubernetes allowed
    (upstream's ParseIPSloppy); None for anything else (IPv6 belongs to the other proxier)."""
    parts = text.strip().split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        return None
    octets = [int(p) for p in parts]
    return ".".join(map(str, octets)) if max(octets) <= 255 else None


def _cidr(text: str) -> str | None:
    addr, _, bits = text.strip().partition("/")
    ip = _ip(addr)
    if ip is None or not bits.isdigit() or int(bits) > 32:
        return None
    return str(ipaddress.ip_network(f"{ip}/{int(bits)}", strict=False))


def _flag_cidr(text: str, flag: str) -> str | None:
    """A configured CIDR: IPv4 in canonical form, None when empty or IPv6 (the other family's)."""
    if not text.strip():
        return None
    v4 = _cidr(text)
    if v4 is not None:
        return v4
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise KplabError(f"{flag} {text.strip()!r} is not a CIDR (e.g. 10.244.0.0/16)") from None
    return None


def _nodeport_ips(state: ProxyState) -> tuple[str, ...] | None:
    """nftables mode's --nodeport-addresses: default "primary" (the node IP), CIDRs pick node IPs."""
    wanted = [a for a in state.nodeport_addresses if a.strip()]
    if not wanted or wanted == ["primary"]:
        return tuple(state.node_ips[:1])
    nets = [ipaddress.ip_network(c) for c in (_flag_cidr(a, "--nodeport-addresses") for a in wanted) if c]
    if any(n.prefixlen == 0 for n in nets):
        return None
    ips = [ip for ip in state.node_ips if any(ipaddress.ip_address(ip) in n for n in nets)]
    return tuple(ip for ip in ips if not ipaddress.ip_address(ip).is_loopback)


# ---------------------------------------------------------------------------------------------
# The node-wide skeleton (upstream's setupNFTables), written on full syncs only.
# ---------------------------------------------------------------------------------------------


def write_skeleton(tx: Transaction, cfg: Config, recreate_base: bool) -> None:
    tx.table(f"comment {_q(TABLE_COMMENT)} ;")
    if recreate_base:  # upstream does this once per start, so that changed priorities apply
        for name, *_ in BASE_CHAINS:
            tx.add("chain", name)
            tx.delete("chain", name)
    for name, ctype, hook, prio in BASE_CHAINS:
        tx.add("chain", name, f"type {ctype} hook {hook} priority {prio} ;")
        tx.flush("chain", name)
    created: set[str] = set()

    def ensure(chain: str) -> None:
        if chain not in created:
            created.add(chain)
            tx.add("chain", chain)
            tx.flush("chain", chain)

    for chain, source, condition in JUMP_CHAINS:
        ensure(chain)
        tx.rule(source, condition, f"jump {chain}")
    for chain in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
        ensure(chain)
    tx.rule("mark-for-masquerade", "", f"mark set mark or {MASQ_MARK}")
    tx.rule("masquerading", f"mark and {MASQ_MARK} == 0", "return")
    tx.rule("masquerading", "", f"mark set mark xor {MASQ_MARK}")
    tx.rule("masquerading", "", "masquerade fully-random")

    kind, ctype, comment = CONTAINERS["cluster-ips"]
    tx.add(kind, "cluster-ips", f"type {ctype} ; comment {_q(comment)} ;")
    tx.rule(
        "cluster-ips-check",
        "ip daddr @cluster-ips",
        "reject",
        "Reject traffic to invalid ports of ClusterIPs",
    )
    if cfg.service_cidrs:
        tx.rule(
            "cluster-ips-check",
            f"ip daddr {{ {cfg.service_cidrs} }}",
            "drop",
            "Drop traffic to unallocated ClusterIPs",
        )

    tx.add("set", "nodeport-ips", f"type ipv4_addr ; comment {_q('IPs that accept NodePort traffic')} ;")
    if cfg.nodeport_ips is None:
        tx.delete("set", "nodeport-ips")
    else:
        tx.flush("set", "nodeport-ips")
        for ip in cfg.nodeport_ips:
            tx.element("add", "nodeport-ips", ip)

    for name in ("no-endpoint-services", "no-endpoint-nodeports"):
        kind, ctype, comment = CONTAINERS[name]
        tx.add(kind, name, f"type {ctype} ; comment {_q(comment)} ;")
    tx.add(
        "chain",
        "reject-chain",
        f"comment {_q('helper for @no-endpoint-services / @no-endpoint-nodeports')} ;",
    )
    tx.flush("chain", "reject-chain")
    tx.rule("reject-chain", "", "reject")
    tx.rule("service-endpoints-check", "", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services")
    nodeports = "ip daddr != 127.0.0.0/8" if cfg.nodeport_ips is None else "ip daddr @nodeport-ips"
    tx.rule("nodeport-endpoints-check", nodeports, "meta l4proto . th dport vmap @no-endpoint-nodeports")

    kind, ctype, comment = CONTAINERS["firewall-ips"]
    tx.add(kind, "firewall-ips", f"type {ctype} ; comment {_q(comment)} ;")
    tx.rule("firewall-check", "", "ip daddr . meta l4proto . th dport vmap @firewall-ips")

    for name in ("service-ips", "service-nodeports"):
        kind, ctype, comment = CONTAINERS[name]
        tx.add(kind, name, f"type {ctype} ; comment {_q(comment)} ;")
    tx.rule("services", "", "ip daddr . meta l4proto . th dport vmap @service-ips")
    if cfg.nodeport_ips is None:
        tx.rule(
            "services",
            "fib daddr type local ip daddr != 127.0.0.0/8",
            "meta l4proto . th dport vmap @service-nodeports",
        )
    else:
        tx.rule("services", "ip daddr @nodeport-ips", "meta l4proto . th dport vmap @service-nodeports")
    for name, (kind, _, _) in CONTAINERS.items():
        tx.flush(kind, name)


# ---------------------------------------------------------------------------------------------
# One service port (upstream's loop body in syncProxyRules).
# ---------------------------------------------------------------------------------------------

Element = tuple[str, str, str, str]  # (container, key, value, comment)


@dataclass
class ServiceEntry:
    """What one service port owns in the table; kept between syncs so unchanged ones are skipped."""

    namespaced: str
    digest: bytes
    chains: tuple[str, ...]
    affinity_sets: tuple[str, ...]
    elements: tuple[Element, ...]
    pods: tuple[tuple[str, str], ...] = ()  # (endpoint ip:port, pod name), for the rules view


def service_digest(svc: ServicePort, eps: list[Endpoint]) -> bytes:
    """A stable digest of a service port and its endpoints (marshal v2 is deterministic)."""
    fields = list(svc.__dict__.values())
    fields[0] = None  # the ServicePortName: the entry's key already
    blob = marshal.dumps((fields, [tuple(e.__dict__.values()) for e in eps]), 2)
    return hashlib.blake2b(blob, digest_size=8).digest()


def write_service(
    tx: Transaction, svc: ServicePort, eps: list[Endpoint], cfg: Config, write: bool, active: set[str]
) -> ServiceEntry | None:
    """Rules and elements of one service port; `write=False` only computes what it owns."""
    cluster_ip = _ip(svc.cluster_ip)
    if cluster_ip is None:
        return None  # headless, or not IPv4: not this proxier's
    spn = svc.name
    proto = svc.protocol.lower()
    base = nft_service_base(spn.namespace, spn.name, proto, spn.port)
    hashed = hash_and_truncate(base)
    cluster_chain, local_chain = "service-" + hashed, "local-" + hashed
    external_chain, fw_chain = "external-" + hashed, "firewall-" + hashed
    cat = categorize_endpoints(eps, svc)
    affinity = svc.session_affinity_seconds > 0
    reachable = [(e, e.address) for e in cat.all_reachable]
    ep_chain = {a: hash_and_truncate(nft_endpoint_base(base, e.ip, e.port)) for e, a in reachable}
    chains: list[str] = []

    def ensure(chain: str) -> None:
        chains.append(chain)
        if chain not in active:
            active.add(chain)
            if write:
                tx.add("chain", chain)
                tx.flush("chain", chain)

    if write:
        tx.note(str(spn) + ("" if spn.protocol == "TCP" else f" ({spn.protocol})"))
    for _, a in reachable:
        ensure("endpoint-" + ep_chain[a])
    affinity_sets = tuple("affinity-" + ep_chain[a] for _, a in reachable) if affinity else ()
    uses_cluster = bool(cat.cluster) and (not svc.internal_policy_local or svc.uses_external)
    if uses_cluster:
        ensure(cluster_chain)
    uses_local = bool(cat.local) and (
        svc.internal_policy_local or (svc.external_policy_local and svc.uses_external)
    )
    if uses_local:
        ensure(local_chain)
    has_endpoints = cat.has_any
    internal_chain = local_chain if svc.internal_policy_local else cluster_chain
    has_internal = has_endpoints and not (svc.internal_policy_local and not cat.local)
    external_local = svc.external_policy_local
    external_policy_chain = local_chain if external_local else cluster_chain
    has_external = has_endpoints and not (external_local and not cat.local)
    uses_external_chain = has_endpoints and svc.uses_external
    if uses_external_chain:
        ensure(external_chain)
    internal_verdict = REJECT if not has_endpoints else "drop"
    external_verdict = internal_verdict
    name = str(spn)

    els: list[Element] = [("cluster-ips", cluster_ip, "", "")]
    port_key = f"{proto} . {svc.port}"
    if has_internal:
        els.append(("service-ips", f"{cluster_ip} . {port_key}", f"goto {internal_chain}", ""))
    else:
        els.append(("no-endpoint-services", f"{cluster_ip} . {port_key}", internal_verdict, name))
    for ext in filter(None, map(_ip, svc.external_ips)):
        if has_endpoints:
            els.append(("service-ips", f"{ext} . {port_key}", f"goto {external_chain}", ""))
        if not has_external:
            els.append(("no-endpoint-services", f"{ext} . {port_key}", external_verdict, name))
    lb_ips = [ip for ip in map(_ip, svc.load_balancer_ips) if ip]
    sources = [c for c in map(_cidr, svc.load_balancer_source_ranges) if c]
    uses_fw = bool(lb_ips) and bool(sources)
    if uses_fw:
        ensure(fw_chain)
    for lb in lb_ips:
        if has_endpoints:
            els.append(("service-ips", f"{lb} . {port_key}", f"goto {external_chain}", ""))
        if uses_fw:
            els.append(("firewall-ips", f"{lb} . {port_key}", f"goto {fw_chain}", ""))
    if not has_external:
        els += [("no-endpoint-services", f"{lb} . {port_key}", external_verdict, name) for lb in lb_ips]
    if svc.node_port:
        if has_endpoints:
            els.append(("service-nodeports", f"{proto} . {svc.node_port}", f"goto {external_chain}", ""))
        if not has_external:
            els.append(("no-endpoint-nodeports", f"{proto} . {svc.node_port}", external_verdict, name))
    pods = tuple((a, e.pod_name) for e, a in reachable if e.pod_name)
    entry = ServiceEntry(spn.namespaced_name, b"", tuple(chains), affinity_sets, tuple(els), pods)
    if not write:
        return entry

    if has_internal:
        if cfg.masquerade_all:
            tx.rule(
                internal_chain, f"ip daddr {cluster_ip} {proto} dport {svc.port}", "jump mark-for-masquerade"
            )
        elif cfg.local_cidr:
            tx.rule(
                internal_chain,
                f"ip daddr {cluster_ip} {proto} dport {svc.port} ip saddr != {cfg.local_cidr}",
                "jump mark-for-masquerade",
            )
    if uses_external_chain:
        if not external_local:
            tx.rule(external_chain, "", "jump mark-for-masquerade")
        else:
            if cfg.local_cidr:
                tx.rule(
                    external_chain,
                    f"ip saddr {cfg.local_cidr}",
                    f"goto {cluster_chain}",
                    "short-circuit pod traffic",
                )
            tx.rule(
                external_chain, "fib saddr type local", "jump mark-for-masquerade", "masquerade local traffic"
            )
            tx.rule(
                external_chain, "fib saddr type local", f"goto {cluster_chain}", "short-circuit local traffic"
            )
        if has_external:
            tx.rule(external_chain, "", f"goto {external_policy_chain}")
    if uses_fw:
        allowed = list(sources)
        if cfg.node_ip and any(ipaddress.ip_address(cfg.node_ip) in ipaddress.ip_network(c) for c in sources):
            allowed += lb_ips  # a node reaching its own LB IP may be SNATed to that IP
        tx.rule(fw_chain, f"ip saddr != {{ {' , '.join(allowed)} }}", "drop")
    for aff in affinity_sets:
        tx.add(
            "set", aff, f"type ipv4_addr ; flags dynamic,timeout ; timeout {svc.session_affinity_seconds}s ;"
        )
    if uses_cluster:
        _dispatch(tx, cluster_chain, cat.cluster, ep_chain, affinity)
    if uses_local:
        _dispatch(tx, local_chain, cat.local, ep_chain, affinity)
    for e, a in reachable:
        chain = "endpoint-" + ep_chain[a]
        tx.rule(chain, f"ip saddr {e.ip}", "jump mark-for-masquerade")
        if affinity:
            tx.rule(chain, "", f"update @affinity-{ep_chain[a]} {{ ip saddr }}")
        tx.rule(chain, f"meta l4proto {proto}", f"dnat to {a}")
    return entry


def _dispatch(
    tx: Transaction, chain: str, eps: list[Endpoint], ep_chain: dict[str, str], affinity: bool
) -> None:
    """Upstream's writeServiceToEndpointRules: affinity lookups, then one uniform numgen vmap."""
    names = [ep_chain[e.address] for e in eps]
    if affinity:
        for n in names:
            tx.rule(chain, f"ip saddr @affinity-{n}", f"goto endpoint-{n}")
    targets = " , ".join(f"{i} : goto endpoint-{n}" for i, n in enumerate(names))
    tx.rule(chain, "", f"numgen random mod {len(names)} vmap {{ {targets} }}")
