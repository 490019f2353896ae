"""05 · nftables: verdict maps and numgen, read from node-1's kube-proxy table."""

import re

from kplab.grading.probes import answers, first_answers, ready_endpoints, service_of


def chain(node, suffix: str) -> str:
    """The text of the kube-proxy chain whose name ends with `suffix` (empty when there is none)."""
    table = node.run("nft list table ip kube-proxy").stdout
    for block in re.split(r"\n\s*(?=chain )", table):
        first = block.strip().splitlines()[0] if block.strip() else ""
        if first.startswith("chain ") and first.split()[1].strip('"').endswith(suffix):
            return block
    return ""


def test_five_way_numgen(lab, ns):
    """node-1 picks web's endpoints with one `numgen random mod 5` lookup, and all five pods answer.

    Hint: scale the Deployment `web` to 5 replicas (`lab.scale("web", 5)` or the slider), then look
    at the service chain for default/web/tcp/http again.
    """
    assert lab.mode == "nftables", f"the lab runs {lab.mode}: this exercise is about nftables (kplab reset 05)"
    text = chain(ns("node-1"), "default/web/tcp/http")
    assert text, "node-1 has no service chain for default/web/tcp/http"
    assert "numgen random mod 5" in text, "web's service chain does not choose among 5 endpoints"
    want = set(ready_endpoints(lab, "web"))
    assert len(want) == 5, f"web has {len(want)} ready endpoints, not 5"
    first_answers(lab, "client", "web:80", n=2)
    res = answers(lab, "client", "web:80", n=60)
    assert res.ok == 60, f"{res.failed} of 60 requests to web:80 failed"
    if service_of(lab, "web").spec.session_affinity != "ClientIP":  # with affinity one client sees one pod
        assert want <= set(res.backends), f"60 requests reached only {sorted(res.backends)}"


def test_one_more_element(lab, ns):
    """A Service `api` is reachable from `client` through one more element of the service-ips map.

    Hint: apply labs/manifests/api.yaml.  Then compare the `services` chain (still two rules)
    with the `service-ips` map (one element more per Service port).
    """
    assert lab.mode == "nftables", f"the lab runs {lab.mode}: this exercise is about nftables"
    assert "api" in [s.metadata.name for s in lab.services()], "there is no Service named api"
    node = ns("node-1")
    elements = node.run("nft list map ip kube-proxy service-ips").stdout
    assert f"{lab.service_ip('api')} . tcp . 80" in elements, "service-ips on node-1 has no element for api"
    rules = [ln for ln in chain(node, "services").splitlines() if "vmap" in ln]
    assert len(rules) == 2, f"the services chain should still dispatch with 2 map lookups, it has {len(rules)}"
    first_answers(lab, "client", "api:80", n=2)
    res = answers(lab, "client", "api:80", n=20)
    assert res.ok == 20 and len(res.backends) == 2, f"api answered {res.ok} of 20, from {sorted(res.backends)}"
