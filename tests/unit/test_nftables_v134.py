"""Upstream's current (1.34+) nftables expectations, held against today's render (no root).

data/nftables/v1.34/ is re-typed from upstream's proxier_test.go at 81810de6.  The render still
follows v1.33 (filter chains at dstnat-10, `filter-output-post-dnat`, `<proto> dport` in the
ClusterIP masquerade rule) until the nftables mode moves to the current release (issue 15);
these tests are strict xfails so that the move turns them into failures to flip, and the
differences they find are exactly the known ones.
"""

from __future__ import annotations

import pytest
import yaml
from nftables_upstream import DATA, Ruleset, load_state, normalize, state_of

from kplab.proxy.nftables import Memory, NftablesProxier, plan

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


def rendered(case: str) -> str:
    rs = Ruleset()
    rs.apply(NftablesProxier.render(load_state(DATA / case / "manifests.yaml")))
    return rs.dump()


def differences(got: str, want: str) -> tuple[set[str], set[str]]:
    g, w = set(normalize(got).split("\n")), set(normalize(want).split("\n"))
    return g - w, w - g


@pytest.mark.parametrize("case", ["overall", "bad-ips"])
def test_known_differences_only(case):
    only_kplab, only_upstream = differences(rendered(case), BASE + (V134 / case / "expected.nft").read_text())
    assert only_kplab - OLD_ONLY == {l.replace(" ip saddr !=", " tcp dport 80 ip saddr !=") for l in
                                     only_upstream - NEW_ONLY}, "only the base chains and the masquerade match"


@pytest.mark.xfail(strict=True, reason="the nftables render follows v1.33 until issue 15's second part")
@pytest.mark.parametrize("case", ["overall", "bad-ips"])
def test_render_matches_current_upstream(case):
    assert normalize(rendered(case)) == normalize(BASE + (V134 / case / "expected.nft").read_text())


@pytest.mark.xfail(strict=True, reason="the nftables render follows v1.33 until issue 15's second part")
def test_sync_proxy_rules_repeated_current():
    objects = yaml.safe_load((DATA / "repeated" / "objects.yaml").read_text())
    spec = yaml.safe_load((V134 / "repeated" / "steps.yaml").read_text())
    rs, memory, now = Ruleset(), Memory(), 1000.0
    for step in spec["steps"]:
        now += 2.0 if step.get("age") else 0.0
        p = plan(state_of([objects[n] for n in step["objects"]]), memory, now=now)
        rs.apply(p.tx.text())
        memory.commit(p.delta)
        if "expected" in step:
            want = BASE + "".join(spec["blocks"][b] for b in step["expected"])
            assert normalize(rs.dump()) == normalize(want), step["name"]
        now += 0.1
