"""One service port's chains, rules and map elements in kube-proxy's nftables mode (pure text).

`write_service()` is the loop body of upstream's syncProxyRules: the per-service chains
(service-, local-, external-, firewall-, endpoint-<hash>) and the elements it puts in the
node-wide maps that kplab.proxy.nftables.rules sets up.  `ServiceEntry` is what a service port
owns, kept between syncs so that an unchanged one is skipped (kplab.proxy.nftables.memory).
"""

from __future__ import annotations

import hashlib
import ipaddress
import marshal
from collections.abc import Mapping
from dataclasses import dataclass

from kplab.formats.ipv4 import sloppy_ipv4 as _ip
from kplab.formats.ipv4 import sloppy_ipv4_cidr as _cidr
from kplab.formats.naming import hash_and_truncate, nft_endpoint_base, nft_service_base
from kplab.proxy.core import Endpoint, ServicePort, categorize_endpoints
from kplab.proxy.nftables.rules import REJECT, Config, Transaction

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
    tx: Transaction,
    svc: ServicePort,
    eps: list[Endpoint],
    cfg: Config,
    write: bool,
    active: set[str],
    found: Mapping[str, tuple[int, bool]] | None = None,
) -> ServiceEntry | None:
    """Rules and elements of one service port; `write=False` only computes what it owns.
    `found`: endpoint chains already in the kernel (rule count, counters) at a restart; one
    that already holds what would be written is kept, not rewritten (as upstream does)."""
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
    shape = (3 if affinity else 2, cfg.counters)
    kept = {
        "endpoint-" + ep_chain[a] for _, a in reachable if (found or {}).get("endpoint-" + ep_chain[a]) == shape
    }

    def ensure(chain: str) -> None:
        chains.append(chain)
        if chain in kept:
            active.add(chain)
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
        # 1.34 dropped the port match of the off-cluster rule (kubernetes#131492: the chain is only
        # reached for that port); that PR describes the masqueradeAll=false rule only, so the
        # masqueradeAll one keeps its match here (its post-#131492 source was not at hand)
        daddr = f"ip daddr {cluster_ip} {proto} dport {svc.port}"
        if cfg.masquerade_all:
            tx.rule(internal_chain, daddr, "jump mark-for-masquerade")
        elif cfg.if_not_local:
            short = daddr if cfg.layout == "1.33" else f"ip daddr {cluster_ip}"
            tx.rule(internal_chain, f"{short} {cfg.if_not_local}", "jump mark-for-masquerade")
    if uses_external_chain:
        if not external_local:
            tx.rule(external_chain, "", "jump mark-for-masquerade")
        else:
            if cfg.if_local:
                tx.rule(
                    external_chain,
                    cfg.if_local,
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
        if chain in kept:
            continue
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
