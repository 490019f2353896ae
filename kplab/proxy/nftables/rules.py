"""The rules of kube-proxy's nftables mode, written as `nft -f` text (pure, no kernel).

Upstream's static skeleton (`nftablesBaseChains`, `nftablesJumpChains`, the maps and sets)
is data here; `write_skeleton()` writes it for a full sync, and `Transaction` writes each
operation the way knftables does, counting operations as it does.  One service port's chains
and elements: kplab.proxy.nftables.services.  kplab.proxy.nftables.proxier decides what a sync
writes and runs it.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from kplab.errors import KplabError
from kplab.formats.ipv4 import sloppy_ipv4_cidr as _cidr
from kplab.proxy.core import MASQ_MARK, ProxyState
from kplab.proxy.localdetect import detector

TABLE = "kube-proxy"
FAMILY = "ip"
TABLE_COMMENT = "rules for kube-proxy"

# The layouts of upstream releases: (name, type, hook, priority) of the base chains, then
# (chain, jumped to from, condition) in upstream's order; knftables writes priorities as numbers
# (dstnat = -100, srcnat = 100, filter = 0).  "1.34" is current upstream (kubernetes#132456:
# filter-input/forward/output after DNAT, so host traffic short-circuited to a cluster
# endpoint is no longer dropped by the no-endpoint check); "1.33" is 1.33.0-1.33.5.
LAYOUTS = ("1.34", "1.33")
DEFAULT_LAYOUT = LAYOUTS[0]
BASE_CHAINS_BY_LAYOUT = {
    "1.34": (
        ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
        ("filter-output-pre-dnat", "filter", "output", -110),
        ("filter-input", "filter", "input", 0),
        ("filter-forward", "filter", "forward", 0),
        ("filter-output", "filter", "output", 0),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
    ),
    "1.33": (
        ("filter-prerouting", "filter", "prerouting", -110),
        ("filter-input", "filter", "input", -110),
        ("filter-forward", "filter", "forward", -110),
        ("filter-output", "filter", "output", -110),
        ("filter-output-post-dnat", "filter", "output", -90),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
    ),
}
BASE_CHAINS = BASE_CHAINS_BY_LAYOUT[DEFAULT_LAYOUT]
JUMP_CHAINS_BY_LAYOUT = {
    "1.34": (
        ("nodeport-endpoints-check", "filter-input", "ct state new"),
        ("service-endpoints-check", "filter-input", "ct state new"),
        ("service-endpoints-check", "filter-forward", "ct state new"),
        ("service-endpoints-check", "filter-output", "ct state new"),
        ("firewall-check", "filter-prerouting-pre-dnat", "ct state new"),
        ("firewall-check", "filter-output-pre-dnat", "ct state new"),
        ("services", "nat-output", ""),
        ("services", "nat-prerouting", ""),
        ("masquerading", "nat-postrouting", ""),
        ("cluster-ips-check", "filter-forward", "ct state new"),
        ("cluster-ips-check", "filter-output", "ct state new"),
    ),
    "1.33": (
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
    ),
}
JUMP_CHAINS = JUMP_CHAINS_BY_LAYOUT[DEFAULT_LAYOUT]
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
    if_local: str  # the local-traffic detector's nft matches; "" when not implemented
    if_not_local: str
    service_cidrs: str  # "a,b" as upstream passes ServiceCIDRs to knftables
    nodeport_ips: tuple[str, ...] | None  # None: every local address (match-all)
    masquerade_all: bool
    counters: bool
    layout: str = DEFAULT_LAYOUT  # which upstream release's base chains (LAYOUTS)

    @classmethod
    def of(cls, state: ProxyState, counters: bool, layout: str = DEFAULT_LAYOUT) -> Config:
        layout = str(layout or DEFAULT_LAYOUT)
        if layout not in LAYOUTS:
            raise KplabError(
                f"nftables_version {layout!r} is not one kplab writes: choose {' or '.join(LAYOUTS)}"
            )
        local = detector(state)
        return cls(
            node_ip=state.node_ips[0] if state.node_ips else "",
            if_local=local.nft_local,
            if_not_local=local.nft_not_local,
            service_cidrs=",".join(
                c for c in (_flag_cidr(s, "--service-cidr") for s in state.service_cidr.split(",")) if c
            ),
            nodeport_ips=_nodeport_ips(state),
            masquerade_all=state.masquerade_all,
            counters=counters,
            layout=layout,
        )

    def digest(self) -> str:
        return repr((self, sys.version_info[:2]))


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


def write_skeleton(
    tx: Transaction, cfg: Config, recreate_base: bool, foreign_base: Iterable[str] = ()
) -> None:
    """The table, base and jump chains, sets and maps.  The maps are not flushed: their
    elements are diffed against what the kernel holds (upstream's restart behaviour since
    TestSyncProxyRulesStartup).  `foreign_base`: base chains of another layout found in the
    kernel, deleted so that a table loaded by another release's layout keeps no extra hooks."""
    tx.table(f"comment {_q(TABLE_COMMENT)} ;")
    base_chains = BASE_CHAINS_BY_LAYOUT[cfg.layout]
    for name in sorted(foreign_base):
        tx.delete("chain", name)
    if recreate_base:  # upstream does this once per start, so that changed priorities apply
        for name, *_ in base_chains:
            tx.add("chain", name)
            tx.delete("chain", name)
    for name, ctype, hook, prio in base_chains:
        tx.add("chain", name, f"type {ctype} hook {hook} priority {prio} ;")
        tx.flush("chain", name)
    created: set[str] = set()

    def ensure(chain: str) -> None:
        if chain not in created:
            created.add(chain)
            tx.add("chain", chain)
            tx.flush("chain", chain)

    for chain, source, condition in JUMP_CHAINS_BY_LAYOUT[cfg.layout]:
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
