"""The proxy core every mode shares: what one node's kube-proxy knows, as plain data.

Upstream kube-proxy turns Services and EndpointSlices into per-node maps
(`ServicePortMap`, `EndpointsMap`) of `ServicePort`s and `Endpoint`s, then each mode
programs the kernel from those maps.  This module is that layer for kplab:

    V1Service + discovery/v1 EndpointSlice  --build_state()-->  ProxyState (one node)
    ProxyState --categorize_endpoints()--> cluster / local endpoints (upstream's topology.go,
                                           topology hints included)
    (which Services changed since the last sync: kplab.proxy.tracker, for partial syncs)

Everything here is pure: no kernel, no root.  Modes import it; nothing here imports a mode.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kplab.errors import KplabError
from kplab.formats.ipv4 import sloppy_ipv4, sloppy_ipv4_cidr

DEFAULT_AFFINITY_SECONDS = 10800  # v1.DefaultClientIPServiceAffinitySeconds
MASQ_MARK = "0x4000"  # 1 << masqueradeBit(14), formatted "%#08x" as upstream


@dataclass(frozen=True, order=True)
class ServicePortName:
    """namespace/name:port plus protocol; str() is upstream's ServicePortName.String()."""

    namespace: str
    name: str
    port: str  # the Service port's name, "" when unnamed
    protocol: str = "TCP"  # TCP, UDP or SCTP

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" + (f":{self.port}" if self.port else "")

    @property
    def namespaced_name(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    """One port of one Service as kube-proxy sees it (upstream's BaseServicePortInfo)."""

    name: ServicePortName
    cluster_ip: str  # "" or "None" for headless (such ports are not programmed)
    port: int
    protocol: str = "TCP"
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity_seconds: int = 0  # 0: no affinity; else ClientIP timeout
    external_policy_local: bool = False  # externalTrafficPolicy: Local (only with external access)
    internal_policy_local: bool = False  # internalTrafficPolicy: Local
    health_check_node_port: int = 0
    service_type: str = "ClusterIP"

    @property
    def uses_external(self) -> bool:
        """Upstream's ExternallyAccessible(): NodePort, externalIPs or LB IPs."""
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def uses_local_chain(self) -> bool:
        """Whether a KUBE-SVL / local- chain exists (upstream: ExternalPolicyLocal || InternalPolicyLocal)."""
        return self.external_policy_local or self.internal_policy_local


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of one service port (upstream's BaseEndpointInfo)."""

    ip: str
    port: int
    node_name: str = ""
    is_local: bool = False
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    pod_name: str = ""  # targetRef name, for the lab's annotations only
    zone_hints: tuple[str, ...] = ()  # hints.forZones[].name
    node_hints: tuple[str, ...] = ()  # hints.forNodes[].name
    # whether a hint names this node's zone / this node: decided when the state is built for a
    # node, so that categorize_endpoints() needs nothing but the endpoints (upstream passes the
    # node name and its topology labels instead)
    hinted_for_zone: bool = False
    hinted_for_node: bool = False

    @property
    def address(self) -> str:
        """"ip:port" as upstream's Endpoint.String() (IPv6 bracketed)."""
        ip = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{ip}:{self.port}"


@dataclass
class ProxyState:
    """What one node's kube-proxy knows at one sync: configuration plus both maps."""

    node_name: str = "node-1"
    node_ips: tuple[str, ...] = ("172.18.0.11",)
    zone: str = ""  # the node's topology.kubernetes.io/zone label ("" = none)
    cluster_cidr: str = "10.244.0.0/16"  # the local-traffic detector (--cluster-cidr)
    service_cidr: str = "10.96.0.0/16"
    nodeport_addresses: tuple[str, ...] = ()  # () = all local addresses (iptables default)
    masquerade_all: bool = False
    localhost_nodeports: bool = True  # iptables mode's default (route_localnet)
    # the local-traffic detector (kplab.proxy.localdetect): --detect-local-mode and its values
    detect_local_mode: str = "ClusterCIDR"
    node_cidr: str = ""  # this node's podCIDR (NodeCIDR)
    pod_bridge_interface: str = ""  # BridgeInterface
    pod_interface_name_prefix: str = ""  # InterfaceNamePrefix
    services: dict[ServicePortName, ServicePort] = field(default_factory=dict)
    endpoints: dict[ServicePortName, list[Endpoint]] = field(default_factory=dict)

    def sorted_services(self) -> list[ServicePort]:
        return [self.services[k] for k in sorted(self.services)]

    def endpoints_of(self, name: ServicePortName) -> list[Endpoint]:
        return self.endpoints.get(name, [])


@dataclass(frozen=True)
class Categorized:
    """Upstream's CategorizeEndpoints() result."""

    cluster: list[Endpoint]  # endpoints for Cluster traffic policy ([] when unused)
    local: list[Endpoint]  # endpoints for Local traffic policy ([] when unused)
    all_reachable: list[Endpoint]  # every endpoint some policy may send to: the SEP chains
    has_any: bool  # a usable endpoint exists anywhere in the cluster (REJECT vs DROP)


def uses_cluster_endpoints(svc: ServicePort) -> bool:
    """Cluster internal policy, or any external access (needed for short-circuiting)."""
    return not svc.internal_policy_local or svc.uses_external


def uses_local_endpoints(svc: ServicePort) -> bool:
    return svc.internal_policy_local or (svc.external_policy_local and svc.uses_external)


def categorize_endpoints(endpoints: Iterable[Endpoint], svc: ServicePort) -> Categorized:
    """Pick the endpoints each traffic policy uses, like upstream's CategorizeEndpoints (topology.go).

    Cluster policy: ready endpoints, shrunk by topology hints (PreferSameNode, then
    PreferSameZone, see topology_mode()); if none is ready anywhere, serving+terminating ones
    (KEP-1669), topology ignored.  Local policy: local ready endpoints; if none, local
    serving+terminating ones; topology never applies to it.
    """
    eps = list(endpoints)
    cluster: list[Endpoint] = []
    has_any = False
    mode = ""
    if uses_cluster_endpoints(svc):
        mode = topology_mode(eps)
        cluster = [e for e in eps if e.ready and available_for_topology(e, mode)]
        cluster = cluster or [e for e in eps if e.serving and e.terminating]
        has_any = bool(cluster)
    if not uses_local_endpoints(svc):
        return Categorized(cluster, [], cluster, has_any)
    local_ready = [e for e in eps if e.is_local and e.ready]
    local_term = [e for e in eps if e.is_local and not e.ready and e.serving and e.terminating]
    has_any = has_any or any(e.ready or (e.serving and e.terminating) for e in eps)
    local = local_ready or local_term
    if not uses_cluster_endpoints(svc):
        return Categorized([], local, local, has_any)
    if mode == "" and (local_ready or not local_term):
        reachable = cluster  # every ready endpoint: the local ready ones are among them
    else:  # topology dropped some ready ones, or local uses terminating ones: merge
        seen = {e.address for e in cluster}
        reachable = sorted(cluster + [e for e in local if e.address not in seen], key=endpoint_sort_key)
    return Categorized(cluster, local, reachable, has_any)


PREFER_SAME_NODE = "PreferSameNode"
PREFER_SAME_ZONE = "PreferSameZone"


def topology_mode(endpoints: list[Endpoint]) -> str:
    """Upstream's topologyModeFromHints: which hints this node follows, judged on ready endpoints.

    PreferSameNode when every ready endpoint has a node hint and one names this node; else
    PreferSameZone when every ready endpoint has a zone hint and one names this node's zone;
    else "" (all endpoints: a missing hint anywhere, or none for us, disables topology).
    """
    ready = [e for e in endpoints if e.ready]
    if not ready:
        return ""
    if all(e.node_hints for e in ready) and any(e.hinted_for_node for e in ready):
        return PREFER_SAME_NODE
    if all(e.zone_hints for e in ready) and any(e.hinted_for_zone for e in ready):
        return PREFER_SAME_ZONE
    return ""


def available_for_topology(e: Endpoint, mode: str) -> bool:
    if mode == PREFER_SAME_NODE:
        return e.hinted_for_node
    if mode == PREFER_SAME_ZONE:
        return e.hinted_for_zone
    return True


def endpoint_sort_key(e: Endpoint) -> str:
    """Upstream sorts a service port's endpoints by their "ip:port" string (byEndpoint), not by
    number: 10.244.1.10:80 comes before 10.244.1.9:80.  That order picks the first KUBE-SEP rule
    and nftables' numgen index 0."""
    return e.address


# ---------------------------------------------------------------------------------------------
# From Kubernetes objects (kubernetes client models) to ProxyState.
# ---------------------------------------------------------------------------------------------


def _get(obj: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if obj is None:
            return default
        obj = getattr(obj, p, None) if not isinstance(obj, dict) else obj.get(p)
    return default if obj is None else obj


def service_ports(svc: Any) -> list[ServicePort]:
    """Every programmable ServicePort of a V1Service (headless and ExternalName give none).

    Read as upstream's newBaseServiceInfo does for an IPv4 proxier: addresses parsed "sloppily"
    (leading zeros), other families and unparseable entries left out, loadBalancerSourceRanges
    trimmed (validation lets " 203.0.113.0/25" through), LoadBalancer ingress with
    `ipMode: Proxy` left out (the load balancer proxies: no VIP rules on the node).
    """
    spec = svc.spec
    ns = svc.metadata.namespace or "default"
    name = svc.metadata.name
    stype = spec.type or "ClusterIP"
    cluster_ip = sloppy_ipv4(spec.cluster_ip or "") or ""
    if stype == "ExternalName" or not cluster_ip:
        return []
    affinity = 0
    if spec.session_affinity == "ClientIP":
        affinity = _get(spec, "session_affinity_config", "client_ip", "timeout_seconds") or DEFAULT_AFFINITY_SECONDS
    ingress = _get(svc, "status", "load_balancer", "ingress") or []
    lb_ips = _ipv4s(i.ip for i in ingress if i.ip and (getattr(i, "ip_mode", None) or "VIP") == "VIP")
    raw_external = _get(spec, "external_ips") or _get(spec, "external_i_ps") or ()  # client >= 30 renamed it
    external = bool(raw_external) or stype in ("NodePort", "LoadBalancer")  # ExternallyAccessible()
    ranges = tuple(c for c in (sloppy_ipv4_cidr(r) for r in spec.load_balancer_source_ranges or ()) if c)
    out = []
    for p in spec.ports or []:
        proto = (p.protocol or "TCP").upper()
        spn = ServicePortName(ns, name, p.name or "", proto)
        out.append(
            ServicePort(
                name=spn,
                cluster_ip=cluster_ip,
                port=int(p.port),
                protocol=proto,
                node_port=int(p.node_port or 0) if stype in ("NodePort", "LoadBalancer") else 0,
                external_ips=_ipv4s(raw_external),
                load_balancer_ips=lb_ips if stype == "LoadBalancer" else (),
                load_balancer_source_ranges=ranges if stype == "LoadBalancer" else (),
                session_affinity_seconds=int(affinity),
                external_policy_local=external and spec.external_traffic_policy == "Local",
                internal_policy_local=spec.internal_traffic_policy == "Local",
                health_check_node_port=int(spec.health_check_node_port or 0)
                if stype == "LoadBalancer" and spec.external_traffic_policy == "Local"
                else 0,
                service_type=stype,
            )
        )
    return out


def _ipv4s(addrs: Iterable[str]) -> tuple[str, ...]:
    return tuple(ip for ip in (sloppy_ipv4(a) for a in addrs) if ip)


def resolve_nodeport_addresses(addresses: Iterable[str], node_ips: tuple[str, ...]) -> tuple[str, ...]:
    """`--nodeport-addresses primary` as kube-proxy's server.go resolves it: the primary node IP as a
    /32 (nothing for a loopback one, which then means every address); any other value is kept."""
    given = tuple(a.strip() for a in addresses if a.strip())
    if "primary" not in given:
        return given
    if given != ("primary",):
        raise KplabError(f"--nodeport-addresses {','.join(given)}: 'primary' stands alone (or give CIDRs)")
    ip = sloppy_ipv4(node_ips[0]) if node_ips else None
    return (f"{ip}/32",) if ip and not ipaddress.ip_address(ip).is_loopback else ()


def slice_endpoints(eps_slice: Any, node_name: str, zone: str = "") -> dict[tuple[str, str], list[Endpoint]]:
    """Endpoints of one EndpointSlice keyed by (port name, protocol), read as upstream's
    EndpointSliceCache.addEndpoints: only addresses[0]; unset ready and unset serving both count
    as true; ports without a name or a number are ignored (upstream logs and skips them)."""
    out: dict[tuple[str, str], list[Endpoint]] = {}
    if (eps_slice.address_type or "IPv4") != "IPv4":
        return out
    for port in eps_slice.ports or []:
        if port.name is None or not port.port:
            continue
        lst = out.setdefault((port.name, (port.protocol or "TCP").upper()), [])
        for ep in eps_slice.endpoints or []:
            ip = sloppy_ipv4((ep.addresses or [""])[0])
            if ip is None:
                continue
            cond = ep.conditions
            ep_node = ep.node_name or ""
            zones = tuple(z.name for z in (_get(ep, "hints", "for_zones") or []) if z.name)
            nodes = tuple(n.name for n in (_get(ep, "hints", "for_nodes") or []) if n.name)
            lst.append(
                Endpoint(
                    ip=ip,
                    port=int(port.port),
                    node_name=ep_node,
                    is_local=bool(ep_node) and ep_node == node_name,
                    ready=_get(cond, "ready", default=True) is not False,
                    serving=_get(cond, "serving", default=True) is not False,
                    terminating=_get(cond, "terminating", default=False) is True,
                    pod_name=_get(ep, "target_ref", "name", default=""),
                    zone_hints=zones,
                    node_hints=nodes,
                    hinted_for_zone=bool(zone) and zone in zones,
                    hinted_for_node=bool(node_name) and node_name in nodes,
                )
            )
    return out


def _slice_name(s: Any) -> str:
    return str(s.metadata.name or "")


def build_state(services: Iterable[Any], slices: Iterable[Any], **config: Any) -> ProxyState:
    """ProxyState for one node from V1Service and V1EndpointSlice objects, taken as given.

    `config` sets ProxyState's fields (node_name, node_ips, zone, cluster_cidr, ...).  Endpoints
    of one service port are merged across its slices (a duplicate address: the non-terminating
    one wins, as upstream prefers a running pod over a terminating one that had its IP) and
    sorted by their "ip:port" string, as upstream's EndpointSliceCache does.
    """
    state = ProxyState(**config)
    state.nodeport_addresses = resolve_nodeport_addresses(state.nodeport_addresses, state.node_ips)
    by_service: dict[tuple[str, str], list[Any]] = {}
    for s in slices:
        owner = (s.metadata.labels or {}).get("kubernetes.io/service-name")
        if owner:
            by_service.setdefault((s.metadata.namespace or "default", owner), []).append(s)
    for svc in services:
        for sp in service_ports(svc):
            state.services[sp.name] = sp
            merged: dict[str, Endpoint] = {}
            for s in sorted(by_service.get((sp.name.namespace, sp.name.name), []), key=_slice_name):
                for ep in slice_endpoints(s, state.node_name, state.zone).get((sp.name.port, sp.protocol), []):
                    if ep.address not in merged or not ep.terminating:
                        merged[ep.address] = ep
            state.endpoints[sp.name] = sorted(merged.values(), key=endpoint_sort_key)
    return state
