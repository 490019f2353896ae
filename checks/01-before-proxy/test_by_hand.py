"""01 · A Service before any proxy: the learner plays kube-proxy with their own DNAT rules."""

from kplab.grading.probes import answers, ready_endpoints


def test_dnat_by_hand(lab):
    """Requests from `client` to the ClusterIP of `web` (port 80) are answered, with no kube-proxy running.

    Hint: on node-1, add one nat PREROUTING rule that DNATs the ClusterIP, TCP port 80, to one web
    pod's IP on port 8080: `iptables -t nat -A PREROUTING -d <ClusterIP> -p tcp --dport 80 -j DNAT
    --to-destination <podIP>:8080`, run in node-1's namespace.
    """
    assert lab.mode == "none", f"the lab runs kube-proxy in {lab.mode} mode: this exercise wants no proxy (kplab reset 01)"
    res = answers(lab, "client", "web:80", n=3, timeout=0.5)
    assert res.ok == 3, f"{res.failed} of 3 requests to web:80 from client got no answer"


def test_spread_by_hand(lab):
    """Requests from `client` to web:80 reach every ready endpoint of `web`, still with no kube-proxy.

    Hint: one DNAT rule per endpoint; all but the last match only some packets, with `-m statistic
    --mode random --probability p` where p = 1/(number of endpoints not yet tried).  Flush your
    first rule before writing the new ones.
    """
    assert lab.mode == "none", f"the lab runs kube-proxy in {lab.mode} mode: this exercise wants no proxy"
    want = set(ready_endpoints(lab, "web"))
    res = answers(lab, "client", "web:80", n=30, timeout=0.5)
    assert res.ok == 30, f"{res.failed} of 30 requests got no answer"
    missing = want - set(res.backends)
    assert not missing, f"30 requests never reached {', '.join(sorted(missing))}"
