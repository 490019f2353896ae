"""The iptables mode's render compared with upstream kube-proxy's own expectations (no root).

Inputs are upstream's proxier_test.go cases re-typed as YAML under data/iptables/, expected
outputs are upstream's expected restore texts re-typed as golden files; both sides get the
normalisation upstream's assertIPTablesRulesEqual applies (sortIPTablesRules).
"""

from __future__ import annotations

import pytest

from iptables_upstream import DATA, load_state, sort_rules, upstream_config
from kplab.proxy.iptables_rules import RenderOptions, build, probability
from kplab.proxy.naming import iptables_chain, iptables_sep_chain


def render(state, **extra):
    _, options = upstream_config()
    options.update(extra)
    return build(state, RenderOptions(**options))


def test_upstream_hash_vectors():
    assert iptables_chain("KUBE-SVC-", "ns4/svc4:p80", "tcp") == "KUBE-SVC-4SW47YFZTEDKD3PK"
    assert iptables_chain("KUBE-SVC-", "default/kubernetes:https", "tcp") == "KUBE-SVC-NPX46M4PTMTKRN6Y"
    assert iptables_chain("KUBE-SVC-", "ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert iptables_sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"


def test_compute_probability_like_upstream():
    # TestComputeProbability's table
    expected = {1: "1.0000000000", 2: "0.5000000000", 10: "0.1000000000", 100: "0.0100000000",
                1000: "0.0010000000", 10000: "0.0001000000", 100000: "0.0000100000", 100001: "0.0000099999"}
    assert {n: probability(n) for n in expected} == expected
    values = [float(probability(n)) for n in range(2000, 1, -1)]
    assert values == sorted(set(values))  # strictly increasing: no two cascades share a value


def test_overall_iptables_rules():
    """TestOverallIPTablesRules: ClusterIP, LB eTP=Local, NodePort, externalIP, LB with source
    ranges and affinity, and a service without endpoints."""
    state = load_state(DATA / "overall" / "manifests.yaml")
    got = render(state).text
    assert sort_rules(got) == (DATA / "overall" / "expected.txt").read_text()
