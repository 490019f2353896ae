"""Stale UDP conntrack entries with real packets: a UDP flow pinned by conntrack to an endpoint
that stops serving moves on its next datagram, in every kernel mode, because the sync deletes
the entry (upstream's CleanStaleEntries); with `conntrack_cleanup: false` it stays pinned."""

from __future__ import annotations

import re

import pytest

from kplab.proxy.servers.feed import http_get

pytestmark = [pytest.mark.root]
SPORT = 5353


def pinned_flow_moves(lab) -> tuple[str, str]:
    """(the pod the flow first reached, the pod its next datagram reached after that pod left)."""
    packets = lab.packets("client")
    first = packets.udp("web:dns", sport=SPORT).json()["pod"]
    lab.set_ready(first, False)
    try:
        return first, packets.udp("web:dns", sport=SPORT).json()["pod"]
    finally:
        lab.set_ready(first, True)


@pytest.mark.parametrize("mode", ["iptables", "nftables", "ipvs"])
def test_a_pinned_udp_flow_moves_when_its_endpoint_stops_serving(lab_factory, mode):
    from kplab.proxy.base import proxier_class

    if not proxier_class(mode).doctor().available:
        pytest.skip(f"{mode} cannot run here")
    lab = lab_factory(f"udp{mode}", mode=mode)
    first, then = pinned_flow_moves(lab)
    assert then != first, f"{mode}: the stale entry was deleted, the next datagram took the rules"
    metrics = http_get(lab.netns("outside"), lab.node_ip("node-1"), 10249, "/metrics")[2].decode()
    m = re.search(r'^kubeproxy_conntrack_reconciler_deleted_entries_total\{ip_family="IPv4"\} (\S+)$', metrics, re.MULTILINE)
    assert m and float(m.group(1)) >= 1, "the reconciler's counter counts the deletion"


def test_with_the_cleanup_off_the_flow_stays_pinned(lab_factory):
    """What notebook 08's case 5 teaches: the entry keeps the DNAT to the pod that left."""
    lab = lab_factory("udpoff", mode="iptables", conntrack_cleanup=False)
    first, then = pinned_flow_moves(lab)
    assert then == first
    # turning it back on: the next sync (here a readiness change) deletes the entry
    lab.set_mode("iptables", conntrack_cleanup=True)
    first, then = pinned_flow_moves(lab)
    assert then != first
