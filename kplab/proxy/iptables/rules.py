"""The iptables-restore input that upstream kube-proxy's iptables proxier loads, built from a ProxyState.

Pure (no kernel, no root): `build(state, options)` walks the service ports the way upstream's
`syncProxyRules()` (pkg/proxy/iptables/proxier.go) does and returns the `*filter ... COMMIT
*nat ... COMMIT` text plus what a sync needs to remember (the active nat chains, an
annotation per hashed chain).  The shape, per service port `ns/name:port`:

    nat  KUBE-SERVICES  -d clusterIP --dport p      -> KUBE-SVC-h (or KUBE-SVL-h, iTP=Local)
                        -d externalIP / LB IP       -> KUBE-EXT-h (LB IP with source ranges: KUBE-FW-h)
         KUBE-NODEPORTS --dport nodePort            -> KUBE-EXT-h
         KUBE-EXT-h     masquerade (eTP=Cluster) or short-circuit pods/host (eTP=Local) -> SVC/SVL
         KUBE-SVC-h     ! -s clusterCIDR -> MARK-MASQ; statistic cascade -> KUBE-SEP-h2 ...
         KUBE-SEP-h2    -s epIP -> MARK-MASQ (hairpin); DNAT --to-destination ip:port
    filter KUBE-SERVICES / KUBE-EXTERNAL-SERVICES: REJECT (no endpoints) or DROP (no local ones)
           KUBE-PROXY-FIREWALL: DROP to LB IPs that KUBE-FW-h did not accept
           KUBE-NODEPORTS: ACCEPT healthCheckNodePort

Partial syncs (KEP-3453): with `changed` set, only those services' SVC/SVL/EXT/FW/SEP chains
are written; KUBE-SERVICES, KUBE-NODEPORTS and the filter chains are always written whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from kplab.formats.ipv4 import sloppy_ipv4 as sloppy_ip
from kplab.formats.ipv4 import sloppy_ipv4_network as sloppy_cidr
from kplab.formats.naming import hash16
from kplab.proxy.core import MASQ_MARK, Endpoint, ProxyState, ServicePort, categorize_endpoints
from kplab.proxy.localdetect import Detector, detector
from kplab.proxy.tracker import changed_services, service_digests  # noqa: F401 (re-exported)

LARGE_CLUSTER_ENDPOINTS = 1000  # upstream's largeClusterEndpointsThreshold
NFACCT_INVALID = "ct_state_invalid_dropped_pkts"
NFACCT_LOCALHOST_NP = "localhost_nps_accepted_pkts"
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")
CHAINS = {  # table -> the chains every restore declares, in upstream's order
    "filter": ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
               "KUBE-PROXY-FIREWALL"),
    "nat": ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"),
}
MARK_MASQ = "KUBE-MARK-MASQ"
NODEPORTS_LAST = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'


@dataclass
class RenderOptions:
    """What upstream learns from the node rather than from the API (all have upstream's defaults)."""

    random_fully: bool = True  # iptables >= 1.6.2 supports MASQUERADE --random-fully
    nfacct: bool = True  # the nfacct counters could be created (metrics rules)
    conntrack_liberal: bool = False  # nf_conntrack_tcp_be_liberal=1: no INVALID drop rule
    local_addresses: tuple[str, ...] | None = (
        None  # node addresses for --nodeport-addresses; None: node IPs + lo
    )
    changed: set[str] | None = None  # namespaced names to rewrite; None: full sync
    existing_chains: Iterable[str] = ()  # nat chains now in the kernel: stale ones get deleted
    previous: dict[str, list[str]] | None = None  # last sync's annotations: unchanged services' chains


@dataclass
class Ruleset:
    text: str
    active_nat_chains: set[str]
    annotations: dict[str, list[str]] = field(default_factory=dict)  # chain -> [service, endpoint, pod]
    # table -> (rules owned, rules written): upstream's filterRules/natRules(+skippedNatRules).Lines()
    rule_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    large_cluster: bool = False
    rewritten: int = 0  # service ports whose chains were written


def probability(n: int) -> str:
    """Upstream's computeProbability: 1/n formatted "%0.10f"."""
    return f"{1.0 / n:0.10f}"


class _Lines:
    """A line buffer; `discard` makes writes vanish (upstream's skipped-chains buffers)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *words: str) -> None:
        self.lines.append(" ".join(words))


class _Discard(_Lines):
    """Counts what it drops (upstream's skipped buffers count toward the rules kube-proxy owns)."""

    count = 0

    def add(self, *words: str) -> None:
        if words and words[0].startswith(("-A", "-X")):  # rules, not chain declarations
            self.count += 1


@dataclass
class _NodePortAddresses:
    match_all: bool
    cidrs: list[ipaddress.IPv4Network]
    contains_loopback: bool


def nodeport_addresses(cidrs: Iterable[str]) -> _NodePortAddresses:
    """Upstream's NewNodePortAddresses for IPv4: no IPv4 CIDR given means match all."""
    parsed = [c for c in (sloppy_cidr(s) for s in cidrs) if c is not None]
    if not parsed:
        parsed = [ipaddress.ip_network("0.0.0.0/0")]
    loopback = any(ipaddress.ip_address("127.0.0.1") in c for c in parsed)
    if any(c.prefixlen == 0 for c in parsed):
        return _NodePortAddresses(True, [ipaddress.ip_network("0.0.0.0/0")], loopback)
    return _NodePortAddresses(False, parsed, loopback)


def build(state: ProxyState, options: RenderOptions | None = None) -> Ruleset:
    """The restore input for `state`; see the module docstring for the structure."""
    opt = options or RenderOptions()
    npa = nodeport_addresses(state.nodeport_addresses)
    localhost_nodeports = state.localhost_nodeports and npa.contains_loopback
    local = detector(state)
    node_ip = ipaddress.ip_address(sloppy_ip(state.node_ips[0]) or "0.0.0.0") if state.node_ips else None

    filter_chains, filter_rules, nat_chains, nat_rules = _Lines(), _Lines(), _Lines(), _Lines()
    skipped = _Discard()
    for chain in CHAINS["filter"]:
        filter_chains.add(f":{chain} - [0:0]")
    for chain in CHAINS["nat"]:
        nat_chains.add(f":{chain} - [0:0]")
    mark = f"{MASQ_MARK}/{MASQ_MARK}"
    nat_rules.add("-A KUBE-POSTROUTING -m mark ! --mark", mark, "-j RETURN")
    nat_rules.add("-A KUBE-POSTROUTING -j MARK --xor-mark", MASQ_MARK)
    masq = (
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    )
    nat_rules.add(masq + (" --random-fully" if opt.random_fully else ""))
    nat_rules.add("-A KUBE-MARK-MASQ -j MARK --or-mark", MASQ_MARK)
    if localhost_nodeports:
        filter_chains.add(":KUBE-FIREWALL - [0:0]")
        filter_rules.add(
            '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections"',
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        )

    services = state.sorted_services()
    total_endpoints = sum(len(state.endpoints_of(s.name)) for s in services)
    large = total_endpoints > LARGE_CLUSTER_ENDPOINTS
    out = Ruleset("", set(), large_cluster=large)

    kept: set[str] = set()  # service ports whose chains stay as the last sync wrote them
    for svc in services:
        rewrite = opt.changed is None or svc.name.namespaced_name in opt.changed
        out.rewritten += rewrite
        if not rewrite and opt.previous is not None:
            kept.add(str(svc.name))
        _service(
            svc,
            state.endpoints_of(svc.name),
            state,
            out,
            filter_rules,
            nat_rules,
            nat_chains if rewrite else skipped,
            nat_rules if rewrite else skipped,
            large=large,
            masquerade_all=state.masquerade_all,
            local=local,
            node_ip=node_ip,
            localhost_np=localhost_nodeports and opt.nfacct,
            write=rewrite or opt.previous is None,
        )
    for chain, note in (opt.previous or {}).items():
        if note[0] in kept:
            out.active_nat_chains.add(chain)
            out.annotations[chain] = note

    for chain in sorted(set(opt.existing_chains) - out.active_nat_chains):
        if chain.startswith(SERVICE_CHAIN_PREFIXES):
            nat_chains.add(f":{chain} - [0:0]")
            nat_rules.add("-X", chain)

    if npa.match_all:
        dest = ["-m addrtype --dst-type LOCAL"] + ([] if localhost_nodeports else ["! -d 127.0.0.0/8"])
        nat_rules.add("-A KUBE-SERVICES -m comment --comment", NODEPORTS_LAST, *dest, "-j KUBE-NODEPORTS")
    else:
        for addr in opt.local_addresses or (*state.node_ips, "127.0.0.1"):
            ip = sloppy_ip(addr)
            if ip is None or not any(ipaddress.ip_address(ip) in c for c in npa.cidrs):
                continue
            if ip.startswith("127.") and not localhost_nodeports:
                continue
            nat_rules.add(
                "-A KUBE-SERVICES -m comment --comment", NODEPORTS_LAST, "-d", ip, "-j KUBE-NODEPORTS"
            )

    if not opt.conntrack_liberal:
        acct = [f"-m nfacct --nfacct-name {NFACCT_INVALID}"] if opt.nfacct else []
        filter_rules.add("-A KUBE-FORWARD -m conntrack --ctstate INVALID", *acct, "-j DROP")
    filter_rules.add(
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark', mark, "-j ACCEPT"
    )
    filter_rules.add(
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule"',
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    )
    parts = ["*filter", *filter_chains.lines, *filter_rules.lines, "COMMIT"]
    parts += ["*nat", *nat_chains.lines, *nat_rules.lines, "COMMIT", ""]
    out.text = "\n".join(parts)
    nat_written = sum(1 for line in nat_rules.lines if line.startswith(("-A ", "-X ")))
    out.rule_counts = {
        "filter": (len(filter_rules.lines), len(filter_rules.lines)),
        "nat": (nat_written + skipped.count, nat_written),
    }
    return out


def _service(
    svc: ServicePort,
    endpoints: list[Endpoint],
    state: ProxyState,
    out: Ruleset,
    filter_rules: _Lines,
    top_rules: _Lines,
    nat_chains: _Lines,
    nat_rules: _Lines,
    *,
    large: bool,
    masquerade_all: bool,
    local: Detector,
    node_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    localhost_np: bool,
    write: bool = True,
) -> None:
    """One service port: top-level rules into filter/top_rules, its own chains into nat_chains/nat_rules."""
    name = str(svc.name)
    proto = svc.protocol.lower()
    cluster_ip = sloppy_ip(svc.cluster_ip)
    if cluster_ip is None:
        return
    cat = categorize_endpoints(endpoints, svc)
    h = hash16(name + proto)
    svc_chain, svl_chain, ext_chain, fw_chain = (
        f"KUBE-SVC-{h}",
        f"KUBE-SVL-{h}",
        f"KUBE-EXT-{h}",
        f"KUBE-FW-{h}",
    )
    external_ips = [ip for ip in (sloppy_ip(i) for i in svc.external_ips) if ip]
    lb_ips = [ip for ip in (sloppy_ip(i) for i in svc.load_balancer_ips) if ip]
    ranges = [c for c in (sloppy_cidr(r) for r in svc.load_balancer_source_ranges) if c is not None]
    has_endpoints = cat.has_any
    uses_cluster_chain = bool(cat.cluster)
    uses_local_chain = bool(cat.local)
    internal_chain, has_internal = svc_chain, has_endpoints
    if svc.internal_policy_local:
        internal_chain, has_internal = svl_chain, bool(cat.local)
    external_policy_chain, has_external = svc_chain, has_endpoints
    if svc.external_policy_local:
        external_policy_chain, has_external = svl_chain, bool(cat.local)
    uses_ext_chain = has_endpoints and svc.uses_external
    uses_fw_chain = has_endpoints and bool(lb_ips) and bool(ranges)
    lb_chain = fw_chain if uses_fw_chain else ext_chain
    if not has_endpoints:
        int_target = ext_target = "REJECT"
        int_comment = ext_comment = f'"{name} has no endpoints"'
    else:
        int_target = ext_target = "DROP"
        int_comment = ext_comment = f'"{name} has no local endpoints"'
    port = str(svc.port)
    match = ["-m", proto, "-p", proto]

    if has_internal:
        top_rules.add("-A KUBE-SERVICES -m comment --comment", f'"{name} cluster IP"', *match,
                      "-d", cluster_ip, "--dport", port, "-j", internal_chain)  # fmt: skip
    else:
        filter_rules.add("-A KUBE-SERVICES -m comment --comment", int_comment, *match,
                         "-d", cluster_ip, "--dport", port, "-j", int_target)  # fmt: skip
    for ip in external_ips:
        if has_endpoints:
            top_rules.add("-A KUBE-SERVICES -m comment --comment", f'"{name} external IP"', *match,
                          "-d", ip, "--dport", port, "-j", ext_chain)  # fmt: skip
        if not has_external:
            filter_rules.add("-A KUBE-EXTERNAL-SERVICES -m comment --comment", ext_comment, *match,
                             "-d", ip, "--dport", port, "-j", ext_target)  # fmt: skip
    for ip in lb_ips:
        if has_endpoints:
            top_rules.add("-A KUBE-SERVICES -m comment --comment", f'"{name} loadbalancer IP"', *match,
                          "-d", ip, "--dport", port, "-j", lb_chain)  # fmt: skip
        if uses_fw_chain:
            filter_rules.add("-A KUBE-PROXY-FIREWALL -m comment --comment",
                             f'"{name} traffic not accepted by {fw_chain}"', *match,
                             "-d", ip, "--dport", port, "-j DROP")  # fmt: skip
    if not has_external:
        for ip in lb_ips:
            filter_rules.add("-A KUBE-EXTERNAL-SERVICES -m comment --comment", ext_comment, *match,
                             "-d", ip, "--dport", port, "-j", ext_target)  # fmt: skip
    if svc.node_port:
        node_port = str(svc.node_port)
        if has_endpoints:
            if localhost_np:
                top_rules.add("-A KUBE-NODEPORTS -m comment --comment", name, *match, "-d 127.0.0.0/8",
                              "--dport", node_port, "-m nfacct --nfacct-name", NFACCT_LOCALHOST_NP,
                              "-j", ext_chain)  # fmt: skip
            top_rules.add("-A KUBE-NODEPORTS -m comment --comment", name, *match,
                          "--dport", node_port, "-j", ext_chain)  # fmt: skip
        if not has_external:
            filter_rules.add("-A KUBE-EXTERNAL-SERVICES -m comment --comment", ext_comment,
                             "-m addrtype --dst-type LOCAL", *match,
                             "--dport", node_port, "-j", ext_target)  # fmt: skip
    if svc.health_check_node_port:
        filter_rules.add("-A KUBE-NODEPORTS -m comment --comment", f'"{name} health check node port"',
                         "-m tcp -p tcp --dport", str(svc.health_check_node_port), "-j ACCEPT")  # fmt: skip

    # The service's own chains: on a partial sync, an unchanged service's are the ones it had.
    if not write:
        return
    seps = {
        e.address: "KUBE-SEP-" + hash16(name + proto + e.address) for e in (*cat.all_reachable, *cat.local)
    }
    if has_internal:
        args = ["-m comment --comment", f'"{name} cluster IP"', *match, "-d", cluster_ip, "--dport", port]
        if masquerade_all:
            nat_rules.add("-A", internal_chain, *args, "-j", MARK_MASQ)
        elif local.implemented:
            nat_rules.add("-A", internal_chain, *args, *local.if_not_local, "-j", MARK_MASQ)
    if uses_ext_chain:
        _declare(nat_chains, out, ext_chain, name)
        if not svc.external_policy_local:
            nat_rules.add("-A", ext_chain, "-m comment --comment",
                          f'"masquerade traffic for {name} external destinations"', "-j", MARK_MASQ)  # fmt: skip
        else:
            if local.implemented:
                nat_rules.add("-A", ext_chain, "-m comment --comment",
                              f'"pod traffic for {name} external destinations"', *local.if_local,
                              "-j", svc_chain)  # fmt: skip
            nat_rules.add("-A", ext_chain, "-m comment --comment",
                          f'"masquerade LOCAL traffic for {name} external destinations"',
                          "-m addrtype --src-type LOCAL -j", MARK_MASQ)  # fmt: skip
            nat_rules.add("-A", ext_chain, "-m comment --comment",
                          f'"route LOCAL traffic for {name} external destinations"',
                          "-m addrtype --src-type LOCAL -j", svc_chain)  # fmt: skip
        if has_external:
            nat_rules.add("-A", ext_chain, "-j", external_policy_chain)
    if uses_fw_chain:
        _declare(nat_chains, out, fw_chain, name)
        head = ["-A", fw_chain, "-m comment --comment", f'"{name} loadbalancer IP"']
        allow_node = False
        for cidr in ranges:
            nat_rules.add(*head, "-s", str(cidr), "-j", ext_chain)
            allow_node = allow_node or (node_ip is not None and node_ip in cidr)
        if allow_node:
            for ip in lb_ips:
                nat_rules.add(*head, "-s", ip, "-j", ext_chain)
        nat_rules.add("-A", fw_chain, "-m comment --comment",
                      f'"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"')  # fmt: skip
    if uses_cluster_chain:
        _declare(nat_chains, out, svc_chain, name)
        _dispatch(nat_rules, svc, name, seps, svc_chain, cat.cluster, large)
    if uses_local_chain:
        _declare(nat_chains, out, svl_chain, name)
        _dispatch(nat_rules, svc, name, seps, svl_chain, cat.local, large)
    comment = [] if large else ["-m comment --comment", name]
    for ep in cat.all_reachable:
        sep = seps[ep.address]
        _declare(nat_chains, out, sep, name, ep)
        nat_rules.add("-A", sep, *comment, "-s", ep.ip, "-j", MARK_MASQ)
        recent = ["-m recent --name", sep, "--set"] if svc.session_affinity_seconds else []
        nat_rules.add("-A", sep, *comment, *recent, *match, "-j DNAT --to-destination", ep.address)


def _declare(chains: _Lines, out: Ruleset, chain: str, service: str, ep: Endpoint | None = None) -> None:
    chains.add(f":{chain} - [0:0]")
    out.active_nat_chains.add(chain)
    out.annotations[chain] = [service] if ep is None else [service, ep.address, ep.pod_name]


def _dispatch(
    rules: _Lines,
    svc: ServicePort,
    name: str,
    sep_of: dict[str, str],
    chain: str,
    endpoints: list[Endpoint],
    large: bool,
) -> None:
    """Upstream's writeServiceToEndpointRules: affinity checks first, then the probability cascade."""
    seps = [(ep, sep_of[ep.address]) for ep in endpoints]
    if svc.session_affinity_seconds:
        for ep, sep in seps:
            comment = [] if large else ["-m comment --comment", f'"{name} -> {ep.address}"']
            rules.add("-A", chain, *comment, "-m recent --name", sep, "--rcheck --seconds",
                      str(svc.session_affinity_seconds), "--reap -j", sep)  # fmt: skip
    n = len(seps)
    for i, (ep, sep) in enumerate(seps):
        comment = [] if large else ["-m comment --comment", f'"{name} -> {ep.address}"']
        stat = ["-m statistic --mode random --probability", probability(n - i)] if i < n - 1 else []
        rules.add("-A", chain, *comment, *stat, "-j", sep)
