"""The nftables mode's transactions compared with upstream kube-proxy's own expectations (no root).

Inputs are upstream's nftables proxier_test.go cases re-typed as YAML under data/nftables/;
expected dumps are upstream's, compared the way its assertNFTablesTransactionEqual does
(sortNFTablesTransaction of a knftables-Fake-style dump); the cases upstream checks by tracing
packets (runPacketFlowTests) are traced with the same semantics over the same kind of dump.
The dumps here are the 1.33 layout's (`nftables_version="1.33"`); the current layout's are
held against data/nftables/v1.34/ by test_nftables_v134.py; the packet flows run on both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from nftables_upstream import DATA, NODE_IPS, Ruleset, load_state, normalize, state_of

from kplab.errors import KplabError
from kplab.formats.naming import hash_and_truncate, nft_endpoint_base, nft_service_base
from kplab.proxy.nftables.proxier import Memory, NftablesProxier, plan

BASE = (DATA / "base.nft").read_text()
V133 = {"nftables_version": "1.33"}


def loaded(text: str) -> Ruleset:
    rs = Ruleset()
    rs.apply(text)
    return rs


def test_upstream_name_vectors():
    assert "service-" + hash_and_truncate("ns1/svc1/tcp/p80") == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    # Test_servicePortChainNameBase
    assert (
        hash_and_truncate(nft_service_base("testing", "service", "tcp", "http"))
        == "P4ZYZVCF-testing/service/tcp/http"
    )
    assert (
        hash_and_truncate(nft_service_base("testing", "service", "tcp", "https"))
        == "LZBRENCP-testing/service/tcp/https"
    )
    ns = "very-long-namespace-name-abcdefghijklmnopqrstuvwxyz0123456789xx"
    name = "very-long-service-name-why-would-you-even-do-this-i-mean-really"
    port = "port-443-providing-the-hypertext-transmission-protocol-with-tls"
    long_base = nft_service_base(ns, name, "sctp", port)
    assert hash_and_truncate(long_base) == f"KR6NACJP-{ns}/{name}/sctp/{port}"
    # Test_servicePortEndpointChainNameBase
    base = nft_service_base("testing", "service", "tcp", "http")
    assert (
        hash_and_truncate(nft_endpoint_base(base, "10.180.0.1", 80))
        == "JO2XBXZR-testing/service/tcp/http__10.180.0.1/80"
    )
    assert (
        hash_and_truncate(nft_endpoint_base(base, "10.180.0.2", 80))
        == "5S6H3H22-testing/service/tcp/http__10.180.0.2/80"
    )
    assert (
        hash_and_truncate(nft_endpoint_base(base, "fd80:abcd:12::a1b2:c3d4:e5f6:9999", 80))
        == "U7E2ET36-testing/service/tcp/http__fd80.abcd.12..a1b2.c3d4.e5f6.9999/80"
    )
    long = f"{ns}/{name}/sctp/{port}__"
    assert (
        hash_and_truncate(nft_endpoint_base(long_base, "1234:5678:9abc:def0::abc:1234", 443))
        == f"5YS7AFEA-{long}1234.5678.9abc.def0..abc.1234/443"
    )
    assert (
        hash_and_truncate(nft_endpoint_base(long_base, "1234:5678:9abc:def0::abcd:1234:5678", 443))
        == f"CI6C53Q3-{long}1234.5678.9abc.def0..abcd.1234..."
    )
    assert (
        hash_and_truncate(nft_endpoint_base(long_base, "1234:5678:9abc:def0::abcd:1234:8765", 443))
        == f"2FLXFK6X-{long}1234.5678.9abc.def0..abcd.1234..."
    )


def test_overall_nftables_rules():
    """TestOverallNFTablesRules: every kind of service in one table."""
    state = load_state(DATA / "overall" / "manifests.yaml")
    got = loaded(NftablesProxier.preview(state, **V133)).dump()
    assert normalize(got) == normalize(BASE + (DATA / "overall" / "expected.nft").read_text())


def test_bad_ips():
    """TestBadIPs: leading zeros in IPs and CIDRs come out as valid, canonical nft addresses."""
    state = load_state(DATA / "bad-ips" / "manifests.yaml")
    got = loaded(NftablesProxier.preview(state, **V133)).dump()
    assert normalize(got) == normalize(BASE + (DATA / "bad-ips" / "expected.nft").read_text())


def test_render_is_one_transaction_of_upstream_shape():
    state = load_state(DATA / "overall" / "manifests.yaml")
    text = NftablesProxier.preview(state)
    assert text.startswith('add table ip kube-proxy { comment "rules for kube-proxy" ; }\n')
    # a freshly started kube-proxy recreates its base chains once, then creates and flushes its
    # chains; map elements are diffed against what the kernel holds, not flushed
    assert "add chain ip kube-proxy nat-prerouting\ndelete chain ip kube-proxy nat-prerouting\n" in text
    assert "flush chain ip kube-proxy services\n" in text
    assert "flush map" not in text
    assert "# ns5/svc5:p80\n" in text  # readable section headers (nft ignores comments)


def test_counters_only_add_counter_statements():
    state = load_state(DATA / "overall" / "manifests.yaml")
    plain = NftablesProxier.preview(state).split("\n")
    counted = NftablesProxier.preview(state, counters=True).split("\n")
    assert len(plain) == len(counted)
    for a, b in zip(plain, counted):
        assert a == b or (b.startswith("add rule ") and b.replace(" counter", "", 1) == a), (a, b)
    assert "meta l4proto tcp counter dnat to 10.180.0.1:80" in "\n".join(counted)


def _flows(case: str) -> list[tuple[str, str, dict, dict]]:
    spec = yaml.safe_load((DATA / case / "flows.yaml").read_text())
    out = [(case, "base", {}, {})]
    for variant, v in (spec.get("variants") or {}).items():
        out.append((case, variant, v.get("config", {}), v.get("overrides", {})))
    return out


FLOW_CASES = [
    f
    for case in (
        "no-endpoints-reject",
        "cluster-ip-general",
        "load-balancer",
        "node-ports",
        "etp-local",
        "etp-cluster",
        "internal-external-masquerade",
    )
    for f in _flows(case)
]


@pytest.mark.parametrize("layout", ["1.34", "1.33"])
@pytest.mark.parametrize(
    "case,variant,config,overrides", FLOW_CASES, ids=[f"{c}-{v}" for c, v, _, _ in FLOW_CASES]
)
def test_packet_flows_like_upstream(case, variant, config, overrides, layout):
    """runPacketFlowTests of TestNoEndpointsReject, TestClusterIPGeneral, TestLoadBalancer,
    TestNodePorts, TestExternalTrafficPolicyLocal/Cluster and TestInternalExternalMasquerade."""
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    rs = loaded(NftablesProxier.preview(load_state(DATA / case / "manifests.yaml", **config),
                                       nftables_version=layout))
    flows = yaml.safe_load((DATA / case / "flows.yaml").read_text())["flows"]
    assert set(overrides) <= {f["name"] for f in flows}
    failures = []
    for f in flows:
        want = {"output": f.get("output", ""), "masq": f.get("masq", False), **overrides.get(f["name"], {})}
        output, masq = rs.trace(f["src"], f.get("proto", "tcp"), f["dst"], f["port"], NODE_IPS)
        if (output, masq) != (want["output"], want["masq"]):
            failures.append(
                f"{f['name']}: got {output!r} masq={masq}, want {want['output']!r} masq={want['masq']}"
            )
    assert not failures, "\n".join(failures)


def test_sync_proxy_rules_repeated():
    """TestSyncProxyRulesRepeated: partial syncs rewrite only what changed, diff the map
    elements, flush stale chains and delete them in a sync more than a second later."""
    objects = yaml.safe_load((DATA / "repeated" / "objects.yaml").read_text())
    spec = yaml.safe_load((DATA / "repeated" / "steps.yaml").read_text())
    rs, memory, now = Ruleset(), Memory(), 1000.0
    for i, step in enumerate(spec["steps"]):
        if step.get("age"):
            now += 2.0
        p = plan(state_of([objects[n] for n in step["objects"]]), memory, now=now, layout="1.33")
        ops = rs.apply(p.tx.text())
        memory.commit(p.delta)
        where = f"step {i} ({step['name']})"
        if "expected" in step:
            want = BASE + "".join(spec["blocks"][b] for b in step["expected"])
            assert normalize(rs.dump()) == normalize(want), where
        if "ops" in step:
            assert ops == step["ops"] + step.get("stale_deleted", 0), where
            assert not p.full and (ops == 0) == (not p.tx.ops), where
        if "stale" in step:
            assert sorted(memory.stale()) == sorted(step["stale"]), where
        now += 0.1


def test_first_sync_flushes_leftovers_it_finds():
    """With no memory (restart), chains and affinity sets found in the kernel are handled."""
    from kplab.proxy.nftables.proxier import Existing

    state = load_state(DATA / "overall" / "manifests.yaml")
    leftover = "service-AAAAAAAA-old/svc/tcp/p80"
    p = plan(
        state, None, now=5.0, existing=Existing({leftover}, {"affinity-AAAAAAAA-old/svc/tcp/p80__1.2.3.4/80"})
    )
    text = p.tx.text()
    assert f"flush chain ip kube-proxy {leftover}\n" in text
    assert "delete set ip kube-proxy affinity-AAAAAAAA-old/svc/tcp/p80__1.2.3.4/80\n" in text
    assert p.delta.stale == {leftover: 5.0}


def test_config_change_forces_full_sync():
    state = load_state(DATA / "overall" / "manifests.yaml")
    memory = Memory()
    memory.commit(plan(state, None, now=0.0).delta)
    again = plan(state, memory, now=1.0)
    assert not again.full and again.tx.ops == 0
    state.masquerade_all = True
    changed = plan(state, memory, now=2.0)
    assert changed.full and changed.changed == len(state.services)


def test_nodeport_addresses():
    """nftables' default is the primary node IP; 0.0.0.0/0 means every local address (fib)."""
    state = load_state(DATA / "node-ports" / "manifests.yaml", nodeport_addresses=())
    text = NftablesProxier.preview(state)
    assert "add element ip kube-proxy nodeport-ips { 192.168.0.2 }\n" in text
    state = load_state(DATA / "node-ports" / "manifests.yaml", nodeport_addresses=("0.0.0.0/0",))
    rs = loaded(NftablesProxier.preview(state))
    assert "nodeport-ips" not in rs.containers
    assert rs.chains["services"].rules[1][0] == (
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    )
    assert rs.trace("203.0.113.2", "tcp", "192.168.1.2", 3001, NODE_IPS)[0] == "10.180.0.1:80, 10.180.2.1:80"


def test_memory_is_a_file_that_outlives_the_process(tmp_path: Path):
    """The CLI and a notebook are separate processes: the next sync reads what the last one left."""
    state = load_state(DATA / "overall" / "manifests.yaml")
    first = Memory(tmp_path / "m.sqlite")
    first.commit(plan(state, None, now=0.0).delta)
    first.close()
    again = Memory(tmp_path / "m.sqlite")
    assert plan(state, again, now=1.0).tx.ops == 0
    assert len(again.digests()) == len(state.services)


@pytest.mark.parametrize(
    "field,value",
    [("nodeport_addresses", ("10.0.0/8x",)), ("cluster_cidr", "banana"), ("service_cidr", "10.96.0.0/99")],
)
def test_bad_configuration_is_one_clear_error(field, value):
    state = load_state(DATA / "node-ports" / "manifests.yaml", **{field: value})
    with pytest.raises(KplabError, match="is not a CIDR"):
        NftablesProxier.preview(state)
