"""The iptables rule-count gauges on a real node: /metrics says as many rules as the kernel's
KUBE-* chains hold (nat and filter), and a partial sync writes fewer than it owns."""

from __future__ import annotations

import re

import pytest

from kplab.proxy.servers.feed import http_get

pytestmark = [pytest.mark.root]


def gauge(text: str, name: str, table: str) -> float:
    m = re.search(rf'^{name}{{ip_family="IPv4",table="{table}"}} (\S+)$', text, re.MULTILINE)
    assert m, f"{name} {table} not in /metrics"
    return float(m.group(1))


def kube_rules(lab, node: str, table: str) -> int:
    out = lab.exec(node, ["iptables-save", "-t", table]).stdout
    return sum(1 for line in out.splitlines() if line.startswith("-A KUBE-"))


def test_rule_gauges_match_the_kernel(lab_factory):
    lab = lab_factory("gauges", mode="iptables")
    lab.scale("web", 5)  # a partial sync: only web's chains are written
    text = http_get(lab.netns("outside"), lab.node_ip("node-1"), 10249, "/metrics")[2].decode()
    for table in ("nat", "filter"):
        assert gauge(text, "kubeproxy_sync_proxy_rules_iptables_total", table) == kube_rules(lab, "node-1", table)
    assert 0 < gauge(text, "kubeproxy_sync_proxy_rules_iptables_last", "nat") <= kube_rules(lab, "node-1", "nat")
