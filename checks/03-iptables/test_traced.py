"""03 · iptables, graded against the kernel's evidence: a traced connection, a measured share.

The answers come from `answer(...)` in the notebook; the expected values come from the kernel:
the tracer's record of the very connection the learner traced, and counters measured now.
"""

import re
from fractions import Fraction

from kplab.course.answers import answer_of, traced_endpoint
from kplab.inspect.counters import counting


def test_which_endpoint(lab, ns):
    """You named the KUBE-SEP chain (or its endpoint) that took the connection you traced.

    Hint: `t = lab.trace("client", "web")`, then read `t.path`: the chain after KUBE-SVC-... is the
    endpoint's; answer("03-iptables/which-endpoint", "KUBE-SEP-...") with it.
    """
    _value, hop, _trace = traced_endpoint(lab, "03-iptables/which-endpoint", "iptables", "client")
    node = ns(hop["node"])
    rules = node.iptables.rules("nat", hop["chain"])
    assert any("DNAT" in r for r in rules), (
        f"{hop['chain']} no longer DNATs on {hop['node']} (the lab changed since the trace): trace and answer again")


def _share(value) -> float:
    try:
        return float(Fraction(str(value).strip().rstrip("%"))) / (100 if str(value).strip().endswith("%") else 1)
    except (ValueError, ZeroDivisionError):
        raise AssertionError(f"{value!r} is not a share: answer a fraction such as 0.2 or 1/5") from None


def test_predict_share(lab, ns):
    """Your share for the rule written `--probability 0.5` matches what node-1 measures over 300 connections.

    Hint: the rules are tried in order; a rule only sees the connections the rules above it left.
    answer("03-iptables/predict-share", <fraction of ALL new connections>).
    """
    predicted = _share(answer_of(lab, "03-iptables/predict-share")["value"])
    assert lab.mode == "iptables", f"the lab runs {lab.mode}: this question is about iptables (kplab reset 03)"
    node = ns("node-1")
    svc = next((m.group(1) for r in node.iptables.rules("nat", "KUBE-SERVICES")
                if "default/web:http cluster IP" in r and (m := re.search(r"-j (KUBE-SVC-\w+)", r))), "")
    assert svc, "node-1 has no KUBE-SVC chain for default/web:http"
    rules = node.iptables.rules("nat", svc)
    assert not any("--rcheck" in r for r in rules), "session affinity is on: the question is about the random cascade"
    half = next((r for r in rules if re.search(r"--probability 0\.50*\d*\b", r)), "")
    assert half, f"{svc} has no rule with probability 0.5 (fewer than 2 endpoints?)"
    sep = re.search(r"-j (KUBE-SEP-\w+)", half).group(1)
    dnat = next(r for r in node.iptables.rules("nat", sep) if "DNAT" in r)
    endpoint = dnat.split("--to-destination")[-1].split()[0]
    n = 300
    with counting(lab, "web", "http") as kernel:
        res = lab.curl("client", "web:80", n=n, timeout=1.0)
    assert res.ok >= n * 0.95, f"only {res.ok} of {n} requests were answered"
    total = kernel.per_node.get("node-1", kernel.per_endpoint)
    measured = total.get(endpoint, 0) / max(sum(total.values()), 1)
    p = min(max(predicted, 0.01), 0.99)
    tolerance = 4 * (p * (1 - p) / n) ** 0.5
    assert abs(predicted - measured) <= tolerance, (
        f"you predicted {predicted:.3f}; node-1 sent {measured:.3f} of {n} new connections through that rule")
