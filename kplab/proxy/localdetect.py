"""kube-proxy's local-traffic detector: which packets come from this cluster's pods.

Every kernel mode masquerades traffic to a ClusterIP that does *not* come from a pod (so the
reply comes back through this node), and short-circuits pod traffic to an
`externalTrafficPolicy: Local` Service to its cluster endpoints.  Upstream
(pkg/proxy/util/localdetector.go; nftables matches by `iifname` since kubernetes#134024)
decides "from a pod" in one of four ways, `--detect-local-mode`:

    ClusterCIDR          source in --cluster-cidr             -s CIDR         ip saddr CIDR
    NodeCIDR             source in this node's podCIDR        -s CIDR         ip saddr CIDR
    BridgeInterface      arrived on --pod-bridge-interface    -i cni0         iifname cni0
    InterfaceNamePrefix  arrived on --pod-interface-name-prefix*  -i veth+    iifname veth*

A CIDR mode without a CIDR detects nothing (upstream's no-op detector): then only
masqueradeAll masquerades ClusterIP traffic.  In the lab, pods hang off the node's `cni0`
bridge, so a packet from a pod arrives on cni0, not on its veth: BridgeInterface `cni0`
recognises pods, InterfaceNamePrefix `veth` does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from kplab.errors import KplabError
from kplab.proxy.core import ProxyState, sloppy_ipv4_cidr

MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
OPTIONS = ("detect_local_mode", "pod_bridge_interface", "pod_interface_name_prefix")  # a lab's, as ProxyState's


@dataclass(frozen=True)
class Detector:
    """Upstream's IfLocal/IfNotLocal (iptables words) and IfLocalNFT/IfNotLocalNFT (nft text)."""

    if_local: tuple[str, ...] = ()
    if_not_local: tuple[str, ...] = ()
    nft_local: str = ""
    nft_not_local: str = ""

    @property
    def implemented(self) -> bool:
        return bool(self.if_local)


def _by_cidr(text: str, what: str) -> Detector:
    if not text.strip():
        return Detector()
    cidr = sloppy_ipv4_cidr(text)
    if cidr is None:
        if ":" in text:
            return Detector()  # the IPv6 proxier's; the lab programs IPv4 only
        raise KplabError(f"{what} {text.strip()!r} is not a CIDR (e.g. 10.244.0.0/16)")
    return Detector(("-s", cidr), ("!", "-s", cidr), f"ip saddr {cidr}", f"ip saddr != {cidr}")


def _by_interface(name: str, flag: str, mode: str, wildcard: tuple[str, str]) -> Detector:
    name = name.strip()
    if not name or not all(c.isalnum() or c in "-_." for c in name) or len(name) > 15:
        raise KplabError(f"--detect-local-mode {mode} needs {flag} set to an interface name (e.g. cni0)")
    ipt, nft = name + wildcard[0], name + wildcard[1]
    return Detector(("-i", ipt), ("!", "-i", ipt), f"iifname {nft}", f"iifname != {nft}")


def detector(state: ProxyState) -> Detector:
    """The detector `state`'s configuration asks for (one readable error for a bad one)."""
    mode = state.detect_local_mode or "ClusterCIDR"
    if mode == "ClusterCIDR":
        return _by_cidr(state.cluster_cidr, "--cluster-cidr")
    if mode == "NodeCIDR":
        return _by_cidr(state.node_cidr, "the node's podCIDR")
    if mode == "BridgeInterface":
        return _by_interface(state.pod_bridge_interface, "--pod-bridge-interface", mode, ("", ""))
    if mode == "InterfaceNamePrefix":
        return _by_interface(state.pod_interface_name_prefix, "--pod-interface-name-prefix", mode, ("+", "*"))
    raise KplabError(f"--detect-local-mode {mode!r}: choose one of {', '.join(MODES)}")
