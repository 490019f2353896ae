"""What `kplab explain` knows of a cluster's Service ports, indexed by every name kube-proxy derives.

Built by `kplab.inspect.explain.load_catalog` from `kubectl get svc,endpointslices -o yaml`; read by
the per-mode readers (explain_iptables, explain_nft, explain_ipvs), which is why it lives apart
from explain.py: the readers and explain.py import it, not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kplab.formats.naming import iptables_sep_chain, nft_service_base, port_proto_hash
from kplab.proxy.core import Endpoint, ServicePort


@dataclass
class KnownPort:
    """One Service port from --services, with the names upstream would give its objects."""

    name: str  # ns/name:port
    protocol: str  # TCP
    port: ServicePort
    endpoints: list[Endpoint]


@dataclass
class Catalog:
    """Service ports of a cluster, indexed by every name kube-proxy derives from them."""

    ports: list[KnownPort] = field(default_factory=list)
    by_ipt_hash: dict[str, KnownPort] = field(default_factory=dict)
    by_sep: dict[str, tuple[KnownPort, Endpoint]] = field(default_factory=dict)
    by_nft_base: dict[str, KnownPort] = field(default_factory=dict)
    by_vip: dict[tuple[str, str, int], tuple[KnownPort, str]] = field(default_factory=dict)
    by_nodeport: dict[tuple[str, int], KnownPort] = field(default_factory=dict)

    def add(self, sp: ServicePort, endpoints: list[Endpoint]) -> None:
        k = KnownPort(str(sp.name), sp.protocol, sp, endpoints)
        self.ports.append(k)
        proto = sp.protocol.lower()
        self.by_ipt_hash[port_proto_hash(k.name, proto)] = k
        for ep in endpoints:
            self.by_sep[iptables_sep_chain(k.name, proto, ep.address)] = (k, ep)
        base = nft_service_base(sp.name.namespace, sp.name.name, proto, sp.name.port)
        self.by_nft_base[base] = k
        self.by_vip[(sp.cluster_ip, sp.protocol, sp.port)] = (k, "ClusterIP")
        for ip in sp.external_ips:
            self.by_vip[(ip, sp.protocol, sp.port)] = (k, "ExternalIP")
        for ip in sp.load_balancer_ips:
            self.by_vip[(ip, sp.protocol, sp.port)] = (k, "LoadBalancer")
        if sp.node_port:
            self.by_nodeport[(sp.protocol, sp.node_port)] = k

    def get(self, name: str, protocol: str) -> KnownPort | None:
        return next((k for k in self.ports if k.name == name and k.protocol == protocol), None)
