"""Stale UDP conntrack entries, deleted after every sync as upstream kube-proxy does.

UDP has no close: a client that keeps sending from the same port keeps its conntrack entry,
and with it the DNAT to the endpoint it first reached, long after that endpoint stopped
serving.  Upstream's kernel modes call `conntrack.CleanStaleEntries` after each sync
(kubernetes/kubernetes pkg/proxy/conntrack/cleanup.go, followed here at 1601b9e2):

* for each UDP service port with at least one serving endpoint (any node, any policy, any
  topology: existing flows are not re-balanced), the serving endpoint IPs;
* an entry whose original destination is that port's ClusterIP, external IP or LB IP and port,
  or whose original destination port is its NodePort, and whose reply source is not one of
  those IPs, is deleted.  That covers flows pinned to an endpoint that went away and flows
  that were never DNATed because the Service had no endpoint yet (reply source = the Service
  IP): the next datagram takes the rules again.

Upstream clears UDP only (SCTP and TCP flows end on their own).  The lab option
`conntrack_cleanup: false` turns it off, for teaching the failure it prevents.  Entries are
read and deleted over netlink (pyroute2), no `conntrack` process per sync.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kplab.proxy.core import ProxyState, sloppy_ipv4

KERNEL_MODES = frozenset({"iptables", "ipvs", "nftables"})
OPTION = "conntrack_cleanup"
UDP = socket.IPPROTO_UDP


@dataclass(frozen=True)
class Flow:
    """The parts of a conntrack entry the cleanup looks at, and its original tuple to delete it."""

    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    reply_src: str


def serving(state: ProxyState) -> tuple[dict[tuple[str, int], set[str]], dict[int, set[str]]]:
    """(service IP, port) -> serving endpoint IPs, and NodePort -> the same, for UDP ports."""
    by_ip: dict[tuple[str, int], set[str]] = {}
    by_node_port: dict[int, set[str]] = {}
    for name, svc in state.services.items():
        if svc.protocol.upper() != "UDP":
            continue
        ips = {e.ip for e in state.endpoints.get(name, []) if e.serving}
        if not ips:
            continue  # nothing to move to: entries of a Service without endpoints stay
        for vip in (svc.cluster_ip, *svc.load_balancer_ips, *svc.external_ips):
            ip = sloppy_ipv4(vip) if vip else None
            if ip:
                by_ip[(ip, svc.port)] = ips
        if svc.node_port:
            by_node_port[svc.node_port] = ips
    return by_ip, by_node_port


def stale(state: ProxyState, flows: Iterable[Flow], targets: Any = None) -> list[Flow]:
    """The flows upstream's CleanStaleEntries deletes (`targets`: serving(state), if known)."""
    by_ip, by_node_port = targets or serving(state)
    out = []
    for f in flows:
        if f.proto != UDP:
            continue
        ips = by_ip.get((f.dst, f.dport))
        nodeport_ips = by_node_port.get(f.dport)
        if (ips is not None and f.reply_src not in ips) or (
            nodeport_ips is not None and f.reply_src not in nodeport_ips
        ):
            out.append(f)
    return out


def clean(netns: str, state: ProxyState) -> int:
    """Delete the node's stale UDP entries over netlink; how many were deleted."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    targets = serving(state)
    if not targets[0] and not targets[1]:
        return 0  # no UDP Service with endpoints: nothing can be stale (and no dump)
    ct = Conntrack(netns=netns)
    try:
        flows = []
        for e in ct.dump_entries():
            o, r = e.tuple_orig, e.tuple_reply
            if o.proto == UDP:
                flows.append(Flow(o.proto, o.saddr, o.sport or 0, o.daddr, o.dport or 0, r.saddr))
        deleted = 0
        for f in stale(state, flows, targets):
            try:
                ct.delete(NFCTAttrTuple(saddr=f.src, daddr=f.dst, proto=f.proto, sport=f.sport, dport=f.dport))
                deleted += 1
            except OSError:
                pass  # expired or deleted meanwhile
        return deleted
    finally:
        ct.close()


def enabled(options: dict[str, Any]) -> bool:
    value = options.get(OPTION, True)
    return str(value).strip().lower() not in ("false", "0", "no", "off")


def after_sync(proxier: Any, state: ProxyState) -> tuple[float, int] | None:
    """What a kernel mode does at the end of each sync: (seconds it took, entries deleted), for
    the conntrack_reconciler metrics; None for other modes or with the option off."""
    if proxier.mode not in KERNEL_MODES or not enabled(proxier.ctx.options):
        return None
    start = time.monotonic()
    deleted = clean(proxier.ctx.netns, state)
    return time.monotonic() - start, deleted
