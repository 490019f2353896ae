"""The iptables mode's render compared with upstream kube-proxy's own expectations (no root).

Inputs are upstream's proxier_test.go cases re-typed as YAML under data/iptables/, expected
outputs are upstream's expected restore texts re-typed as golden files; both sides get the
normalisation upstream's assertIPTablesRulesEqual applies (sortIPTablesRules).
"""

from __future__ import annotations

import pytest
from iptables_upstream import DATA, Tracer, flow_cases, load_state, sort_rules, upstream_config

from kplab.formats.naming import iptables_chain, iptables_sep_chain
from kplab.proxy.iptables.rules import RenderOptions, build, changed_services, probability, service_digests


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
    expected = {
        1: "1.0000000000",
        2: "0.5000000000",
        10: "0.1000000000",
        100: "0.0100000000",
        1000: "0.0010000000",
        10000: "0.0001000000",
        100000: "0.0000100000",
        100001: "0.0000099999",
    }
    assert {n: probability(n) for n in expected} == expected
    values = [float(probability(n)) for n in range(2000, 1, -1)]
    assert values == sorted(set(values))  # strictly increasing: no two cascades share a value


def test_overall_iptables_rules():
    """TestOverallIPTablesRules: ClusterIP, LB eTP=Local, NodePort, externalIP, LB with source
    ranges and affinity, and a service without endpoints."""
    state = load_state(DATA / "overall" / "manifests.yaml")
    got = render(state).text
    assert sort_rules(got) == (DATA / "overall" / "expected.txt").read_text()


@pytest.mark.parametrize("reuse", [False, True], ids=["recompute", "reuse-previous"])
def test_sync_proxy_rules_repeated(reuse):
    """TestSyncProxyRulesRepeated: partial syncs (KEP-3453) write only the changed services'
    chains and delete stale ones; step 9 is the full resync after a failed partial restore.
    `reuse`: unchanged services' chains are taken from the last sync, as IptablesProxier does."""
    prev_digests: dict[str, str] = {}
    chains: set[str] = set()
    previous = None
    for step in range(1, 10):
        state = load_state(DATA / "sync_repeated" / f"{step:02d}-manifests.yaml")
        digests = service_digests(state)
        full = step in (1, 9)
        changed = None if full else changed_services(prev_digests, digests)
        ruleset = render(state, changed=changed, existing_chains=chains, previous=previous if reuse else None)
        expected = (DATA / "sync_repeated" / f"{step:02d}-expected.txt").read_text()
        assert sort_rules(ruleset.text) == expected, f"step {step}"
        prev_digests, chains, previous = digests, ruleset.active_nat_chains, ruleset.annotations


def test_bad_ips():
    """TestBadIPs: leading-zero IPs and CIDRs are rewritten canonically."""
    state = load_state(DATA / "bad_ips" / "manifests.yaml")
    assert sort_rules(render(state).text) == (DATA / "bad_ips" / "expected.txt").read_text()


TEST_NODE_IPS = ["192.168.0.2", "192.168.1.2", "192.168.99.11"]  # upstream's testNodeIPs (IPv4)


@pytest.mark.parametrize("case", [c for _, c in flow_cases()], ids=[i for i, _ in flow_cases()])
def test_packet_flows(case):
    """Upstream's packet-flow tests (runPacketFlowTests): trace packets through the rendered
    rules and compare where they end up (endpoints, DROP, REJECT) and whether they get
    masqueraded with upstream's expected results."""
    state = load_state(case["objects"], **case.get("state", {}))
    text = render(state).text
    tracer = Tracer(text, TEST_NODE_IPS)
    for name, src, proto, dst, port, output, masq in case["flows"]:
        assert tracer.trace(src, proto, dst, port) == (output, masq), name
    if "firewall" in case:
        assert ("-A KUBE-FIREWALL " in text) == case["firewall"]


def test_fast_hash_matches_naming():
    from kplab.formats.naming import port_proto_hash
    from kplab.proxy.iptables.rules import hash16

    for name in ("ns4/svc4:p80", "default/kubernetes:https", "a/b", "x" * 300):
        assert hash16(name + "tcp") == port_proto_hash(name, "tcp")
