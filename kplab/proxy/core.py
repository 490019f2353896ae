"""The proxy core every mode shares: what one node's kube-proxy knows, as plain data.

Upstream kube-proxy turns Services and EndpointSlices into per-node maps
(`ServicePortMap`, `EndpointsMap`) of `ServicePort`s and `Endpoint`s, then each mode
programs the kernel from those maps.  This module is that layer for kplab:

    V1Service + discovery/v1 EndpointSlice  --build_state()-->  ProxyState (one node)
    ProxyState --categorize_endpoints()--> cluster / local endpoints (upstream's topology.go)
    ProxyState --fingerprints()--> which services changed since the last sync (partial syncs)

Everything here is pure: no kernel, no root.  Modes import it; nothing here imports a mode.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

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
    cluster_cidr: str = "10.244.0.0/16"  # the local-traffic detector (--cluster-cidr)
    service_cidr: str = "10.96.0.0/16"
    nodeport_addresses: tuple[str, ...] = ()  # () = all local addresses (iptables default)
    masquerade_all: bool = False
    localhost_nodeports: bool = True  # iptables mode's default (route_localnet)
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
    """Pick the endpoints each traffic policy uses, like upstream's pkg/proxy/topology.go.

    Cluster policy: ready endpoints; if none, serving+terminating ones (KEP-1669).
    Local policy: local ready endpoints; if none, local serving+terminating ones.
    Topology hints are not modelled (the lab has one zone).
    """
    eps = list(endpoints)
    cluster: list[Endpoint] = []
    has_any = False
    if uses_cluster_endpoints(svc):
        cluster = [e for e in eps if e.ready] or [e for e in eps if e.serving and e.terminating]
        has_any = bool(cluster)
    if not uses_local_endpoints(svc):
        return Categorized(cluster, [], cluster, has_any)
    local_ready = [e for e in eps if e.is_local and e.ready]
    local_term = [e for e in eps if e.is_local and not e.ready and e.serving and e.terminating]
    has_any = has_any or any(e.ready or (e.serving and e.terminating) for e in eps)
    local = local_ready or local_term
    if not uses_cluster_endpoints(svc):
        return Categorized([], local, local, has_any)
    if local_ready or not local_term:
        reachable = cluster  # local ready endpoints are a subset of the cluster ones
    else:
        seen = {e.address for e in cluster}
        reachable = sorted(cluster + [e for e in local if e.address not in seen], key=endpoint_sort_key)
    return Categorized(cluster, local, reachable, has_any)


def endpoint_sort_key(e: Endpoint) -> tuple[int, int, int]:
    ip = ipaddress.ip_address(e.ip)
    return (ip.version, int(ip), e.port)


def fingerprints(state: ProxyState) -> dict[str, str]:
    """A digest per service port (its spec and endpoints), to find what changed between syncs.

    Upstream's change trackers keep previous/current pairs; comparing digests of the two
    syncs gives the same answer: the set of services whose chains must be rewritten.
    """
    out: dict[str, str] = {}
    for key, svc in state.services.items():
        blob = json.dumps([asdict(svc), [asdict(e) for e in state.endpoints_of(key)]], sort_keys=True)
        out[f"{key}/{key.protocol}"] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return out


def changed_services(previous: dict[str, str], current: dict[str, str]) -> set[str]:
    """Keys of services added, removed or modified between two fingerprint maps."""
    return {k for k in previous.keys() | current.keys() if previous.get(k) != current.get(k)}


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
    """Every programmable ServicePort of a V1Service (headless and ExternalName give none)."""
    spec = svc.spec
    ns = svc.metadata.namespace or "default"
    name = svc.metadata.name
    stype = spec.type or "ClusterIP"
    cluster_ip = spec.cluster_ip or ""
    if stype == "ExternalName" or cluster_ip in ("", "None"):
        return []
    affinity = 0
    if spec.session_affinity == "ClientIP":
        affinity = _get(spec, "session_affinity_config", "client_ip", "timeout_seconds") or DEFAULT_AFFINITY_SECONDS
    lb_ips = tuple(i.ip for i in (_get(svc, "status", "load_balancer", "ingress") or []) if i.ip)
    external_ips = _get(spec, "external_ips") or _get(spec, "external_i_ps") or ()  # client >= 30 renamed it
    external = bool(external_ips) or stype in ("NodePort", "LoadBalancer")
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
                external_ips=tuple(external_ips),
                load_balancer_ips=lb_ips if stype == "LoadBalancer" else (),
                load_balancer_source_ranges=tuple(spec.load_balancer_source_ranges or ())
                if stype == "LoadBalancer"
                else (),
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


def _canonical_ip(addr: str) -> str:
    """IPv4 with leading zeros ("10.180.00.001") read the way upstream's ParseIPSloppy does."""
    parts = addr.strip().split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return ".".join(str(int(p)) for p in parts)
    return addr


def slice_endpoints(eps_slice: Any, node_name: str) -> dict[tuple[str, str], list[Endpoint]]:
    """Endpoints of one EndpointSlice keyed by (port name, protocol)."""
    out: dict[tuple[str, str], list[Endpoint]] = {}
    if (eps_slice.address_type or "IPv4") != "IPv4":
        return out
    for port in eps_slice.ports or []:
        key = (port.name or "", (port.protocol or "TCP").upper())
        lst = out.setdefault(key, [])
        if port.port is None:
            continue
        for ep in eps_slice.endpoints or []:
            cond = ep.conditions
            ready = True if cond is None or cond.ready is None else bool(cond.ready)
            serving = ready if cond is None or cond.serving is None else bool(cond.serving)
            terminating = False if cond is None or cond.terminating is None else bool(cond.terminating)
            ep_node = ep.node_name or ""
            pod = _get(ep, "target_ref", "name", default="")
            for addr in ep.addresses or []:
                lst.append(
                    Endpoint(
                        ip=_canonical_ip(addr),
                        port=int(port.port),
                        node_name=ep_node,
                        is_local=bool(ep_node) and ep_node == node_name,
                        ready=ready,
                        serving=serving,
                        terminating=terminating,
                        pod_name=pod,
                    )
                )
    return out


def build_state(services: Iterable[Any], slices: Iterable[Any], **config: Any) -> ProxyState:
    """ProxyState for one node from V1Service and V1EndpointSlice objects, taken as given.

    `config` sets ProxyState's fields (node_name, node_ips, cluster_cidr, ...).  Endpoints are
    deduplicated by address and sorted by IP, as upstream's EndpointSlice cache does.
    """
    state = ProxyState(**config)
    by_service: dict[tuple[str, str], list[Any]] = {}
    for s in slices:
        owner = (s.metadata.labels or {}).get("kubernetes.io/service-name")
        if owner:
            by_service.setdefault((s.metadata.namespace or "default", owner), []).append(s)
    for svc in services:
        for sp in service_ports(svc):
            state.services[sp.name] = sp
            merged: dict[str, Endpoint] = {}
            for s in by_service.get((sp.name.namespace, sp.name.name), []):
                for ep in slice_endpoints(s, state.node_name).get((sp.name.port, sp.protocol), []):
                    merged.setdefault(ep.address, ep)
            state.endpoints[sp.name] = sorted(merged.values(), key=endpoint_sort_key)
    return state
