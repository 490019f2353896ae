"""Upstream's current (1.34+) nftables expectations held against the render (no root).

data/nftables/v1.34/ is re-typed from upstream's proxier_test.go at 81810de6: the base chains
of kubernetes#132456, the ClusterIP masquerade rule without the port match (#131492), and
TestSyncProxyRulesStartup.  The 1.33 layout stays available (`nftables_version="1.33"`) and is
held against data/nftables/ by test_nftables_render.py; here, that it differs from the current
one exactly by the lines those two upstream changes name.
"""

from __future__ import annotations

import pytest
import yaml
from nftables_upstream import DATA, NODE_IPS, Ruleset, load_state, normalize, state_of

from kplab.errors import KplabError
from kplab.proxy.nftables.proxier import Existing, Memory, NftablesProxier, plan
from kplab.proxy.nftables.rules import CONTAINERS

V134 = DATA / "v1.34"
BASE = (V134 / "base.nft").read_text()
# what the v1.33 layout has and 1.34 has not, and the other way round (base chains and rules)
OLD_ONLY = {
    "add chain ip kube-proxy filter-prerouting { type filter hook prerouting priority -110 ; }",
    "add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }",
    "add chain ip kube-proxy filter-input { type filter hook input priority -110 ; }",
    "add chain ip kube-proxy filter-output { type filter hook output priority -110 ; }",
    "add chain ip kube-proxy filter-output-post-dnat { type filter hook output priority -90 ; }",
    "add rule ip kube-proxy filter-prerouting ct state new jump firewall-check",
    "add rule ip kube-proxy filter-output ct state new jump firewall-check",
    "add rule ip kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check",
}
NEW_ONLY = {
    "add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }",
    "add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }",
    "add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }",
    "add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }",
    "add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }",
    "add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check",
    "add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check",
    "add rule ip kube-proxy filter-output ct state new jump cluster-ips-check",
}


def rendered(case: str, **options) -> str:
    rs = Ruleset()
    rs.apply(NftablesProxier.preview(load_state(DATA / case / "manifests.yaml"), **options))
    return rs.dump()


def differences(got: str, want: str) -> tuple[set[str], set[str]]:
    g, w = set(normalize(got).split("\n")), set(normalize(want).split("\n"))
    return g - w, w - g


@pytest.mark.parametrize("case", ["overall", "bad-ips"])
def test_render_matches_current_upstream(case):
    """TestOverallNFTablesRules and TestBadIPs as upstream expects them today (the default)."""
    assert normalize(rendered(case)) == normalize(BASE + (V134 / case / "expected.nft").read_text())
    assert rendered(case) == rendered(case, nftables_version="1.34")


@pytest.mark.parametrize("case", ["overall", "bad-ips"])
def test_the_133_layout_differs_by_the_two_upstream_changes_only(case):
    only_kplab, only_upstream = differences(
        rendered(case, nftables_version="1.33"), BASE + (V134 / case / "expected.nft").read_text()
    )
    assert only_kplab - OLD_ONLY == {l.replace(" ip saddr !=", " tcp dport 80 ip saddr !=") for l in
                                     only_upstream - NEW_ONLY}, "only the base chains and the masquerade match"


def test_unknown_version_is_one_clear_error():
    with pytest.raises(KplabError, match="nftables_version '1.32' .* choose 1.34 or 1.33"):
        rendered("overall", nftables_version="1.32")


def test_sync_proxy_rules_repeated_current():
    """TestSyncProxyRulesRepeated (same steps and operation counts as in 1.33)."""
    objects = yaml.safe_load((DATA / "repeated" / "objects.yaml").read_text())
    spec = yaml.safe_load((V134 / "repeated" / "steps.yaml").read_text())
    rs, memory, now = Ruleset(), Memory(), 1000.0
    for step in spec["steps"]:
        now += 2.0 if step.get("age") else 0.0
        p = plan(state_of([objects[n] for n in step["objects"]]), memory, now=now)
        ops = rs.apply(p.tx.text())
        memory.commit(p.delta)
        if "expected" in step:
            want = BASE + "".join(spec["blocks"][b] for b in step["expected"])
            assert normalize(rs.dump()) == normalize(want), step["name"]
        if "ops" in step:
            assert ops == step["ops"] + step.get("stale_deleted", 0), step["name"]
        now += 0.1


def existing_in(rs: Ruleset) -> Existing:
    """What kplab's sync reads back from the kernel (`nft -j list table`), from the fake table."""
    ex = Existing()
    for name, chain in rs.chains.items():
        if "hook" in chain.spec:
            ex.base_chains.add(name)
        elif "/" in name:
            ex.chains.add(name)
            if name.startswith("endpoint-"):
                ex.endpoints[name] = (len(chain.rules), any(" counter " in f" {r} " for r, _ in chain.rules))
    for name, c in rs.containers.items():
        if name.startswith("affinity-"):
            ex.affinity_sets.add(name)
        elif name in CONTAINERS:
            for key, (value, comment) in c.elements.items():
                ex.elements[f"{name}\t{key}"] = (value, comment)
    return ex


def test_sync_proxy_rules_startup():
    """TestSyncProxyRulesStartup: a restarted proxier finds part of its state in the kernel;
    its first sync keeps the map elements and endpoint chains that are right (no flush), and
    costs an empty proxier's first sync plus 14 operations, as upstream counts."""
    state = load_state(V134 / "startup" / "manifests.yaml")
    setup_ops = Ruleset().apply(NftablesProxier.preview(state_of([])))  # upstream's setupOps
    rs = Ruleset()
    rs.apply(BASE + (V134 / "startup" / "before.nft").read_text())
    p = plan(state, None, now=0.0, existing=existing_in(rs))
    ops = rs.apply(p.tx.text())
    assert normalize(rs.dump()) == normalize(BASE + (V134 / "startup" / "expected.nft").read_text())
    assert ops == setup_ops + 14, p.tx.text()


def test_startup_rewrites_an_endpoint_chain_that_is_not_right():
    """An endpoint chain from the kernel is kept only when it holds what would be written:
    with session affinity now on (one rule more) it is rewritten, and with counters too."""
    rs = Ruleset()
    rs.apply(BASE + (V134 / "startup" / "before.nft").read_text())
    ex = existing_in(rs)
    docs = [d for d in yaml.safe_load_all((V134 / "startup" / "manifests.yaml").read_text()) if d]
    docs[1]["spec"]["sessionAffinity"] = "ClientIP"  # ns2/svc2
    text = plan(state_of(docs), None, now=0.0, existing=ex).tx.text()
    assert "add chain ip kube-proxy endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080\n" in text
    assert "add chain ip kube-proxy endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80\n" not in text
    counted = plan(load_state(V134 / "startup" / "manifests.yaml"), None, now=0.0, existing=ex, counters=True)
    assert "add chain ip kube-proxy endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80\n" in counted.tx.text()


def test_startup_removes_leftover_elements_and_the_other_layouts_base_chains():
    """A table an older layout (or a run with other Services) left: its base chains that the
    current layout lacks are deleted, elements of Services that are gone are deleted."""
    rs = Ruleset()
    rs.apply(NftablesProxier.preview(load_state(DATA / "overall" / "manifests.yaml"), nftables_version="1.33"))
    state = load_state(V134 / "startup" / "manifests.yaml")
    rs.apply(plan(state, None, now=0.0, existing=existing_in(rs)).tx.text())
    fresh = Ruleset()
    fresh.apply(NftablesProxier.preview(state))
    got, want = rs.dump(), fresh.dump()
    # the Services of the old table leave flushed (stale) chains only, deleted a second later
    assert set(normalize(want).split("\n")) <= set(normalize(got).split("\n"))
    assert "filter-output-post-dnat" not in got and "filter-prerouting " not in got
    assert {n: len(c.elements) for n, c in rs.containers.items()} == {
        n: len(c.elements) for n, c in fresh.containers.items()
    }


ETP_LOCAL = """
apiVersion: v1
kind: Service
metadata: {namespace: ns1, name: svc1}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.41
  externalIPs: [192.168.99.33]
  externalTrafficPolicy: Local
  ports: [{name: p80, port: 80, protocol: TCP, nodePort: 3001}]
status: {loadBalancer: {ingress: [{ip: 1.2.3.4}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: ns1, name: svc1-1, labels: {kubernetes.io/service-name: svc1}}
addressType: IPv4
endpoints: [{addresses: [10.180.0.1], nodeName: other-node}]
ports: [{name: p80, port: 80, protocol: TCP}]
"""


@pytest.mark.parametrize("layout,want", [("1.34", "10.180.0.1:80"), ("1.33", "DROP")])
@pytest.mark.parametrize("dst", ["192.168.99.33", "1.2.3.4"])
def test_host_traffic_to_etp_local_external_ip_without_local_endpoint(layout, want, dst):
    """kubernetes#131765, fixed by #132456: a host process reaching the external/LB IP of an
    eTP=Local Service with no endpoint on this node is short-circuited to a cluster endpoint
    by nat-output; 1.33's filter-output ran before that DNAT and dropped it."""
    docs = [d for d in yaml.safe_load_all(ETP_LOCAL) if d]
    rs = Ruleset()
    rs.apply(NftablesProxier.preview(state_of(docs), nftables_version=layout))
    output, masq = rs.trace_output("192.168.0.2", "tcp", dst, 80, NODE_IPS)
    assert output.split(", ")[-1] == want
    assert masq == (layout == "1.34"), "host traffic short-circuited to a cluster endpoint is masqueraded"
    # and from off the node, the same packet is dropped in both (no local endpoint)
    assert rs.trace("203.0.113.9", "tcp", dst, 80, NODE_IPS)[0] == "DROP"
