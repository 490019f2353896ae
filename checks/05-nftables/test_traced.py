"""05 · nftables, graded against the kernel's evidence: a traced connection, a counted chain."""

from kplab.course.answers import answer_of, traced_endpoint


def test_which_endpoint(lab, ns):
    """You named the endpoint chain (or its endpoint) that numgen picked for the connection you traced.

    Hint: `t = lab.trace("client", "web")`, then read `t.path`: after `services` and the Service's
    chain comes `endpoint-...`; answer("05-nftables/which-endpoint", that chain's name).
    """
    _value, hop, _trace = traced_endpoint(lab, "05-nftables/which-endpoint", "nftables", "client")
    chain = ns(hop["node"]).run(f"nft list chain ip kube-proxy '{hop['chain']}'")
    assert chain.rc == 0 and "dnat" in chain.stdout, (
        f"{hop['chain']} no longer exists on {hop['node']} (the lab changed since the trace): trace and answer again")


def test_predict_services_rules(lab, ns):
    """Your count of the rules in chain `services`, with the `api` Service added, is what node-1 has.

    Hint: the chain does not hold a rule per Service: count what `nft list chain ip kube-proxy
    services` shows, then answer("05-nftables/predict-services-rules", n).
    """
    value = answer_of(lab, "05-nftables/predict-services-rules")["value"]
    assert lab.mode == "nftables", f"the lab runs {lab.mode}: this question is about nftables (kplab reset 05)"
    assert any(s.metadata.name == "api" for s in lab.services()), "add the api Service first (labs/manifests/api.yaml)"
    out = ns("node-1").run("nft list chain ip kube-proxy services").stdout
    rules = [ln for ln in out.splitlines() if ln.strip() and not ln.strip().startswith(("chain", "table", "}", "type"))]
    try:
        predicted = int(str(value).strip())
    except ValueError:
        raise AssertionError(f"{value!r} is not a number of rules") from None
    assert predicted == len(rules), f"you predicted {predicted}; node-1's `services` chain has {len(rules)} rules"
