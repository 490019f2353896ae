"""The iptables rule-count gauges (sync_proxy_rules_iptables_total / _last) as upstream counts:
filterRules.Lines(), natRules.Lines() for the last sync, plus skippedNatRules.Lines() for the
total (TestOverallIPTablesRules and TestSyncProxyRulesRepeated compare them with countRules)."""

from __future__ import annotations

from iptables_upstream import DATA, load_state, upstream_config

from kplab.proxy.iptables.rules import RenderOptions, build, changed_services, service_digests
from kplab.proxy.servers.metrics import NodeMetrics


def render(state, **extra):
    _, options = upstream_config()
    options.update(extra)
    return build(state, RenderOptions(**options))


def count_rules(text: str, table: str) -> int:
    """upstream's countRules: the rules of one table of a restore input."""
    body = text.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
    return sum(1 for line in body.splitlines() if line.startswith(("-A ", "-X ")))


def test_overall_counts_are_the_tables_rules():
    r = render(load_state(DATA / "overall" / "manifests.yaml"))
    nat, flt = count_rules(r.text, "nat"), count_rules(r.text, "filter")
    assert r.rule_counts == {"filter": (flt, flt), "nat": (nat, nat)}
    assert nat > 30 and flt > 3


def test_partial_syncs_count_what_they_skipped():
    prev: dict[str, str] = {}
    chains: set[str] = set()
    for step in range(1, 10):
        state = load_state(DATA / "sync_repeated" / f"{step:02d}-manifests.yaml")
        digests = service_digests(state)
        full = step in (1, 9)
        r = render(state, changed=None if full else changed_services(prev, digests), existing_chains=chains)
        written = count_rules(r.text, "nat")
        deleted = r.text.count("\n-X ")
        whole = count_rules(render(state).text, "nat")  # what the kernel's nat table holds now
        assert r.rule_counts["nat"] == (whole + deleted, written), f"step {step}"
        if not full and r.rewritten < len(state.services):
            assert written < whole, f"step {step}: a partial sync writes less than it owns"
        prev, chains = digests, r.active_nat_chains


def test_gauges_are_served_in_iptables_mode_only():
    from prometheus_client import generate_latest

    m = NodeMetrics("iptables")
    m.apply({"kind": "synced", "ok": True, "t": 1.0, "seconds": 0.01, "full": False,
             "iptables_rules": {"nat": (40, 7), "filter": (5, 5)}})
    text = generate_latest(m.registry).decode()
    assert 'kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"} 40.0' in text
    assert 'kubeproxy_sync_proxy_rules_iptables_last{ip_family="IPv4",table="nat"} 7.0' in text
    assert "# HELP kubeproxy_sync_proxy_rules_iptables_total [ALPHA] Total number of iptables rules owned by kube-proxy" in text
    assert "iptables_total" not in generate_latest(NodeMetrics("nftables").registry).decode()
