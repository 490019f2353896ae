"""The lab's fixed topology: the node network, the nodes, `outside`, and removing all of it.

    kplab-<lab>-net        br0 (node_cidr's .1): the node network, one veth per node and outside
    kplab-<lab>-node-i     eth0 (.10+i), cni0 (the node's pod /24's .1), a route per other node's pods
    kplab-<lab>-outside    eth0 (.100): a client off the cluster

Every namespace is journaled before it is created, so a crash half-way is cleaned up by name.
Pods' namespaces come and go with the objects (kplab.cluster.converge).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from kplab.cluster import netns


def build(lab: Any) -> None:
    """Create the namespaces, bridges and routes of `lab` (a LabHandle whose data is being built)."""
    data = lab.data
    net = ipaddress.ip_network(data["network"]["node_cidr"])
    gw = str(net.network_address + 1)
    b = netns.Builder(on_create=lab.store.journal)
    try:
        net_ns = netns.ns_name(lab.name, "net")
        b.create_netns(net_ns)
        br = b.bridge(net_ns, "br0", f"{gw}/{net.prefixlen}")
        for node in data["nodes"]:
            ns = netns.ns_name(lab.name, node)
            b.create_netns(ns)
            b.attach(net_ns, br, node, ns, f"{lab.node_ip(node)}/{net.prefixlen}", gw)
            cidr = ipaddress.ip_network(lab.pod_cidr(node))
            b.bridge(ns, "cni0", f"{cidr.network_address + 1}/{cidr.prefixlen}")
            for other in data["nodes"]:
                if other != node:
                    b.route(ns, lab.pod_cidr(other), lab.node_ip(other))
            netns.write_sysctls(ns, {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"})
        outside = netns.ns_name(lab.name, "outside")
        b.create_netns(outside)
        b.attach(net_ns, br, "outside", outside, f"{lab.outside_ip()}/{net.prefixlen}", gw)
    finally:
        b.close()


def remove_namespaces(lab: str, journaled: list[str]) -> None:
    """Remove a lab's namespaces: the journal's (reverse order) and any left with its prefix."""
    prefix = netns.ns_name(lab, "")
    for name in reversed(journaled):
        if name.startswith(prefix):
            netns.remove_netns(name)
    for name in netns.lab_namespaces(lab):
        netns.remove_netns(name)
