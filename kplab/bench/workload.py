"""Many Services for the benchmarks, as the API server would hand them to kube-proxy.

A scale benchmark needs 10,000 Services.  They are made here as kubernetes client models
(V1Service + V1EndpointSlice, the same objects `kplab apply` produces) and turned into a node's
ProxyState by the proxy core's own `build_state()`, so the mode programs exactly what it
would for that many real Services.  They skip the lab's object store: its admission checks each
new Service against every existing one, which is fine for a lesson and quadratic at 10k.

    services(n, endpoints)  -> ([V1Service], [V1EndpointSlice])   ClusterIPs from 10.96.32.1 up
    state(lab, node, n, endpoints) -> ProxyState                   the lab's own objects + n more

`endpoints` is either a number (that many made-up pod IPs per Service, 10.244.16.1 up, on a
node that is not `node`) or a list of real (pod IP, node) pairs every Service shares.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from kubernetes import client as k8s

from kplab.errors import KplabError
from kplab.proxy.core import ProxyState, build_state

NAMESPACE = "bench"
SERVICE_BASE = ipaddress.ip_address("10.96.32.1")  # clear of 10.96.0.1 / .0.10, like a real cluster
ENDPOINT_BASE = ipaddress.ip_address("10.244.16.1")  # clear of the lab's node pod CIDRs
PORT, TARGET_PORT = 80, 8080
MAX_SERVICES = 50_000

Backends = int | list[tuple[str, str]]


def service_name(i: int) -> str:
    return f"svc-{i:05d}"


def cluster_ips(count: int, taken: frozenset[str] = frozenset()) -> list[str]:
    """The first `count` ClusterIPs from SERVICE_BASE up, skipping the lab's own."""
    out, ip = [], SERVICE_BASE
    while len(out) < count:
        if str(ip) not in taken:
            out.append(str(ip))
        ip += 1
    return out


def _endpoints(i: int, backends: Backends, node: str) -> list[tuple[str, str]]:
    if isinstance(backends, int):
        return [(str(ENDPOINT_BASE + i * backends + j), f"not-{node}") for j in range(backends)]
    return list(backends)


def services(n: int, backends: Backends, *, first: int = 0, node: str = "node-1",
             taken: frozenset[str] = frozenset()) -> tuple[list[Any], list[Any]]:
    """Services first..first+n-1 (ClusterIP, TCP 80 -> 8080) and one EndpointSlice each."""
    if not 0 <= first + n <= MAX_SERVICES:
        raise KplabError(f"{first + n} Services: a benchmark makes 0 to {MAX_SERVICES}")
    ips = cluster_ips(first + n, taken)
    svcs, slices = [], []
    for i in range(first, first + n):
        name = service_name(i)
        svcs.append(k8s.V1Service(
            metadata=k8s.V1ObjectMeta(name=name, namespace=NAMESPACE),
            spec=k8s.V1ServiceSpec(type="ClusterIP", cluster_ip=ips[i], selector={"app": "echo"},
                                   ports=[k8s.V1ServicePort(name="http", port=PORT, target_port=TARGET_PORT,
                                                            protocol="TCP")])))
        slices.append(k8s.V1EndpointSlice(
            address_type="IPv4",
            metadata=k8s.V1ObjectMeta(name=f"{name}-bench", namespace=NAMESPACE,
                                      labels={"kubernetes.io/service-name": name}),
            endpoints=[k8s.V1Endpoint(addresses=[ip], node_name=ep_node,
                                      conditions=k8s.V1EndpointConditions(ready=True, serving=True,
                                                                          terminating=False))
                       for ip, ep_node in _endpoints(i, backends, node)],
            ports=[k8s.DiscoveryV1EndpointPort(name="http", port=TARGET_PORT, protocol="TCP")]))
    return svcs, slices


def state(lab: Any, node: str, n: int, backends: Backends) -> ProxyState:
    """The ProxyState of `node` in `lab` with bench Services 0..n-1 added to the lab's own."""
    base = lab.state(node)  # for the node's configuration (IPs, CIDRs) exactly as the lab syncs it
    own_svcs, own_slices = lab.services(), lab.endpoint_slices()
    taken = frozenset(str(s.spec.cluster_ip) for s in own_svcs if s.spec.cluster_ip)
    svcs, slices = services(n, backends, node=node, taken=taken)
    return build_state(own_svcs + svcs, own_slices + slices, node_name=base.node_name, node_ips=base.node_ips,
                       cluster_cidr=base.cluster_cidr, service_cidr=base.service_cidr)
