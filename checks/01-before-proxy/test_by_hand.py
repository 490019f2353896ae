"""01 · A Service before any proxy: the learner plays kube-proxy with their own DNAT rules."""

import re

from kplab.grading.probes import answers, first_answers, ready_endpoints


def test_dnat_by_hand(lab):
    """Requests from `client` to the ClusterIP of `web` (port 80) are answered, with no kube-proxy running.

    Hint: on node-1, add one nat PREROUTING rule that DNATs the ClusterIP, TCP port 80, to one web
    pod's IP on port 8080: `iptables -t nat -A PREROUTING -d <ClusterIP> -p tcp --dport 80 -j DNAT
    --to-destination <podIP>:8080`, run in node-1's namespace.
    """
    assert lab.mode == "none", f"the lab runs kube-proxy in {lab.mode} mode: this exercise wants no proxy (kplab reset 01)"
    first_answers(lab, "client", "web:80", n=3, timeout=0.5)


def cascade_shares(ns, lab, endpoints: dict[str, str]) -> dict[str, float] | None:
    """Each endpoint's share of new connections when node-1's DNATs to web's endpoints are a chain of
    `-m statistic --mode random` rules (exactly what they give); None when they are something else."""
    rules = ns("node-1").run("iptables-save -t nat").stdout.splitlines()
    by_chain: dict[str, list[tuple[str, float | None]]] = {}
    ips = set(endpoints.values())
    for rule in rules:
        m = re.search(r"^-A (\S+) .*-j DNAT --to-destination ([\d.]+)", rule)
        if not m or m.group(2) not in ips:
            continue
        if "--mode nth" in rule:
            return None
        p = re.search(r"--probability ([0-9.]+)", rule)
        by_chain.setdefault(m.group(1), []).append((m.group(2), float(p.group(1)) if p else None))
    if len(by_chain) != 1:
        return None
    left, shares = 1.0, dict.fromkeys(ips, 0.0)
    for ip, p in next(iter(by_chain.values())):
        take = left * (1.0 if p is None else p)
        shares[ip] += take
        left -= take
    return shares


def test_spread_by_hand(lab, ns):
    """Requests from `client` to web:80 are spread evenly over every ready endpoint of `web`, still with no kube-proxy.

    Hint: one DNAT rule per endpoint; all but the last match only some packets, with `-m statistic
    --mode random --probability p` where p = 1/(number of endpoints not yet tried), so each gets an
    equal share.  Flush your first rule before writing the new ones.
    """
    assert lab.mode == "none", f"the lab runs kube-proxy in {lab.mode} mode: this exercise wants no proxy"
    endpoints = ready_endpoints(lab, "web")
    first_answers(lab, "client", "web:80", n=3, timeout=0.5)
    shares = cascade_shares(ns, lab, endpoints)
    if shares is not None:
        fair = 1 / len(endpoints)
        said = ", ".join(f"{pod} {shares[ip]:.0%}" for pod, ip in sorted(endpoints.items()))
        assert all(abs(s - fair) < 0.01 for s in shares.values()), (
            f"node-1's rules give the endpoints {said} of new connections, not {fair:.0%} each")
    n = 40 * len(endpoints)
    res = answers(lab, "client", "web:80", n=n, timeout=0.5)
    assert res.ok == n, f"{res.failed} of {n} requests got no answer"
    missing = set(endpoints) - set(res.backends)
    assert not missing, f"{n} requests never reached {', '.join(sorted(missing))}"
    uneven = {pod: c for pod, c in res.backends.items() if not 0.4 * n / len(endpoints) <= c <= 1.6 * n / len(endpoints)}
    assert not uneven, f"{n} requests were spread {dict(sorted(res.backends.items()))}: not evenly"
