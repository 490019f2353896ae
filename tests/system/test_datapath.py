"""The datapath matrix: the same real-packet checks for every kube-proxy mode.

One lab per mode (default app + tests/system/manifests_matrix.yaml), real connections from real
namespaces.  Where a mode differs on purpose (userspace re-originates connections and has no
traffic policies; IPVS with no endpoints has no explicit reject), TRAITS says so - one place,
not a copy of the suite.  IPVS runs where the kernel has it (in a throwaway VM here).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kplab import Lab
from kplab.lab import default_manifest
from kplab.proxy.base import MODES
from kplab.testing.labs import lab_in_mode, mode_params

pytestmark = [pytest.mark.root]

MATRIX = Path(__file__).with_name("manifests_matrix.yaml")
OUTSIDE_IP = "172.18.0.100"
# per mode: exact round-robin spread? keeps the client's source IP? has traffic policies and
# source ranges? rejects (ECONNREFUSED at once) when a Service has no endpoints?
TRAITS = {
    "iptables": dict(round_robin=False, keeps_source=True, policies=True, rejects=True),
    "nftables": dict(round_robin=False, keeps_source=True, policies=True, rejects=True),
    "ipvs": dict(round_robin=True, keeps_source=True, policies=True, rejects=False),
    "userspace": dict(round_robin=True, keeps_source=False, policies=False, rejects=False),
    # the kube-proxy replacement: socket LB connects a pod reaching itself straight to itself (Cilium too)
    "ebpf": dict(round_robin=False, keeps_source=True, policies=True, rejects=True, hairpin_local=True),
}
CHI2_DF2_P001 = 13.82  # chi-square critical value, 2 degrees of freedom, p = 0.001


@pytest.fixture(scope="module", params=mode_params(MODES))
def lab(request):
    mode = request.param
    with lab_in_mode(mode, "dp" + mode[:4], [default_manifest(), MATRIX]) as lab:
        lab.traits = TRAITS[mode]
        yield lab


def pods_of(lab: Lab, app: str) -> list[str]:
    return [p.metadata.name for p in lab.pods() if (p.metadata.labels or {}).get("app") == app]


def test_clusterip_from_same_and_other_node(lab):
    (solo,) = pods_of(lab, "solo")  # on node-2
    other = lab.curl("client", "solo", n=5)  # client is on node-1
    same = lab.curl("client2", "solo", n=5)  # client2 is on node-2
    assert other.backends == {solo: 5}, other.errors
    assert same.backends == {solo: 5}, same.errors
    seen = {a["client_ip"] for a in other.answers}
    if lab.traits["keeps_source"]:
        assert seen == {lab.pod_ip("client")}, "pod-to-ClusterIP traffic inside the cluster is not masqueraded"
    else:
        assert lab.pod_ip("client") not in seen, "the userspace proxy re-originates: the client IP is lost"


def test_clusterip_reaches_every_backend(lab):
    res = lab.curl("client", "web", n=60)
    assert res.failed == 0, res.errors
    assert set(res.backends) == set(pods_of(lab, "web"))


@pytest.mark.parametrize("node", ["node-1", "node-2"])
def test_nodeport_from_outside(lab, node):
    res = lab.curl("outside", f"{node}:web:http", n=30)
    assert res.failed == 0, res.errors
    assert set(res.backends) == set(pods_of(lab, "web"))


def test_udp_through_the_service(lab):
    res = lab.curl("client", "web:dns", n=6)
    assert res.ok == 6, res.errors
    assert set(res.backends) <= set(pods_of(lab, "web"))


def test_hairpin_pod_reaches_itself_through_its_service(lab):
    (solo,) = pods_of(lab, "solo")
    res = lab.curl(solo, "solo", n=3)
    assert res.backends == {solo: 3}, res.errors
    if lab.traits.get("hairpin_local"):  # no packet ever left the pod: nothing to masquerade
        assert {a["client_ip"] for a in res.answers} == {lab.pod_ip(solo)}
        return
    # hairpin traffic must be masqueraded, or the reply would go pod->pod and be dropped
    assert {a["client_ip"] for a in res.answers} != {lab.pod_ip(solo)}


def test_client_ip_affinity_keeps_one_backend(lab):
    res = lab.curl("client", "sticky", n=20)
    assert res.failed == 0, res.errors
    assert len(res.backends) == 1, f"affinity broke: {res.backends}"


def test_no_endpoints_fails_fast(lab):
    start = time.monotonic()
    res = lab.curl("client", "empty", n=3, timeout=1.0)
    assert res.ok == 0
    if lab.traits["rejects"]:
        assert time.monotonic() - start < 1.0, "expected REJECT (refused at once), not a timeout"
        assert any("refused" in e.lower() for e in res.errors), res.errors


def test_external_traffic_policy_local(lab):
    if not lab.traits["policies"]:
        pytest.skip("the userspace proxy never had traffic policies")
    (solo,) = pods_of(lab, "solo")
    good = lab.curl("outside", "node-2:solo-local", n=5)
    assert good.backends == {solo: 5}, good.errors
    assert {a["client_ip"] for a in good.answers} == {OUTSIDE_IP}, "Local policy keeps the client's source IP"
    bad = lab.curl("outside", "node-1:solo-local", n=2, timeout=0.5)
    assert bad.ok == 0, "a node without local endpoints must not forward Local-policy traffic"


def test_internal_traffic_policy_local(lab):
    if not lab.traits["policies"]:
        pytest.skip("the userspace proxy never had traffic policies")
    (solo,) = pods_of(lab, "solo")
    assert lab.curl("client2", "solo-internal", n=3).backends == {solo: 3}
    assert lab.curl("client", "solo-internal", n=2, timeout=0.5).ok == 0


def test_load_balancer_source_ranges(lab):
    if not lab.traits["policies"]:
        pytest.skip("the userspace proxy never had loadBalancerSourceRanges")
    allowed = lab.curl("outside", "lb:web-lb", n=5)
    assert allowed.ok == 5, allowed.errors
    denied = lab.curl("client", "lb:web-lb", n=2, timeout=0.5)
    assert denied.ok == 0, "a source outside loadBalancerSourceRanges got through"


def test_spread_over_three_backends(lab):
    n = 300
    res = lab.curl("client", "web", n=n)
    assert res.failed == 0, res.errors
    counts = [res.backends.get(p, 0) for p in pods_of(lab, "web")]
    if lab.traits["round_robin"]:
        assert counts == [n // 3] * 3, counts
    else:
        chi2 = sum((c - n / 3) ** 2 / (n / 3) for c in counts)
        assert chi2 < CHI2_DF2_P001, f"spread {counts} is not uniform (chi2={chi2:.1f})"


def test_scaling_shows_in_rules_and_spread(lab):
    lab.scale("grow", 5)
    grown = pods_of(lab, "grow")
    assert len(grown) == 5
    res = lab.curl("client", "grow", n=150)
    assert set(res.backends) == set(grown), res.backends
    text = "\n".join(lab.rules(n)["text"] for n in lab.nodes)
    assert all(lab.pod_ip(p) in text for p in grown), "every new endpoint must appear in the node's rules"
