"""03 · iptables: the KUBE-SERVICES -> KUBE-SVC -> KUBE-SEP walk, read with testinfra on node-1."""

import re

from kplab.grading.probes import answers, first_answers, nat_rules, ready_endpoints, svc_chain


def web_chain(lab, ns) -> tuple[str, list[str]]:
    assert lab.mode == "iptables", f"the lab runs {lab.mode}: this exercise is about iptables (kplab reset 03)"
    node = ns("node-1")
    chain = svc_chain(node, lab, "web", 80)
    assert chain, "KUBE-SERVICES on node-1 has no rule for web's ClusterIP, TCP port 80"
    return chain, nat_rules(node, chain) or []


def test_four_way_cascade(lab, ns):
    """node-1 spreads web:http over 4 endpoints: probabilities 0.25, 0.3333333333, 0.5, then the rest.

    Hint: scale `web` to 4 replicas, then read `iptables -t nat -S KUBE-SVC-...` for web:http on
    node-1 again: each rule takes 1/(endpoints not yet tried) of what reaches it.
    """
    chain, rules = web_chain(lab, ns)
    # the endpoint choice; affinity's `-m recent --rcheck` jumps come before it and are not endpoints
    jumps = [r for r in rules if "-j KUBE-SEP-" in r and "--rcheck" not in r]
    probs = [float(m.group(1)) for r in jumps if (m := re.search(r"--probability ([0-9.]+)", r))]
    assert len(jumps) == 4, f"{chain} chooses among {len(jumps)} endpoints, not 4"
    want = [1 / 4, 1 / 3, 1 / 2]  # written with 10 decimals; the kernel keeps a 32-bit fraction
    assert len(probs) == 3 and all(abs(p - w) < 1e-6 for p, w in zip(probs, want)), f"probabilities are {probs}"
    assert "--probability" not in jumps[-1], "the last endpoint rule should match everything left"
    first_answers(lab, "client", "web:80", n=2)
    sticky = any("--rcheck" in r for r in rules)
    res = answers(lab, "client", "web:80", n=60)
    if not sticky:  # with affinity one client reaches one pod; the rules above are the proof then
        assert set(ready_endpoints(lab, "web")) <= set(res.backends), f"60 requests reached only {sorted(res.backends)}"


def test_affinity(lab, ns):
    """web:http sticks each client to one endpoint with xt_recent, and `client` keeps hitting one pod.

    Hint: give Service `web` `sessionAffinity: ClientIP` (labs/manifests/web-affinity.yaml) and
    apply it.  Look for `-m recent --rcheck` in the KUBE-SVC chain and `--set` in each KUBE-SEP.
    """
    chain, rules = web_chain(lab, ns)
    recent = [r for r in rules if "--rcheck" in r]
    assert recent, f"{chain} has no `-m recent --rcheck` rules: no session affinity"
    assert len(ready_endpoints(lab, "web")) >= 2, "web needs two or more ready endpoints for stickiness to show"
    first_answers(lab, "client", "web:80", n=2)
    res = answers(lab, "client", "web:80", n=10)
    assert res.ok == 10 and len(res.backends) == 1, f"client's requests went to {res.backends}"
