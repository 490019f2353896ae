"""`kplab explain` on the dumps the lab itself makes, in every mode, with and without counters.

One lab (`exd`): the default app plus `web-local` (LoadBalancer, externalIPs,
externalTrafficPolicy Local).  Each mode's dump of node-1, as a learner takes it (`kplab exec
node-1 -- iptables-save -c`, `nft list ruleset`, `ipvsadm -Ln`), must say what the Services
are: every port, its policy, its endpoints, no anomalies (issue 20 item 1: the lab's `counter`
before `goto service-` made every Service read as externalTrafficPolicy=Local).
"""

from __future__ import annotations

import pytest

from kplab import Lab, clean
from kplab.errors import KplabError
from kplab.inspect.explain import catalog_of, explain

pytestmark = [pytest.mark.root]
NAME = "exd"
EXTRA = """
apiVersion: v1
kind: Service
metadata: {name: web-local}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  externalIPs: [172.18.255.9]
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: http}]
"""


@pytest.fixture(scope="module")
def lab():
    from kplab.lab import default_manifest

    clean(lab=NAME)
    lab = Lab.up(NAME, mode="iptables", manifests=[default_manifest(), EXTRA])
    yield lab
    clean(lab=NAME)


def expected(lab: Lab) -> dict[tuple[str, str], tuple[str, set[str]]]:
    """(ns/name:port, protocol) -> (externalTrafficPolicy, ready endpoint addresses), from the objects."""
    out = {}
    slices = lab.endpoint_slices()
    for svc in lab.services():
        for p in svc.spec.ports:
            eps = {
                f"{a}:{sp.port}"
                for s in slices
                if s.metadata.labels.get("kubernetes.io/service-name") == svc.metadata.name
                for sp in s.ports or []
                if sp.name == p.name
                for e in s.endpoints or []
                if e.conditions.ready
                for a in e.addresses
            }
            policy = svc.spec.external_traffic_policy or "Cluster"
            out[(f"{svc.metadata.namespace}/{svc.metadata.name}:{p.name}", p.protocol)] = (policy, eps)
    return out


def check(text: str, lab: Lab, fmt: str) -> None:
    """IPVS names no Services: its dump is read with the lab's objects, as `explain --services`."""
    ex = explain(text, catalog_of(lab.services(), lab.endpoint_slices()) if fmt == "ipvs" else None)
    why = f"\n--- explained:\n{ex.text()}\n--- dump:\n{text}"
    assert ex.format == fmt
    want = expected(lab)
    got = {(s.name, s.protocol): s for s in ex.services}
    assert set(got) == set(want), f"{sorted(got)} != {sorted(want)}{why}"
    for key, (policy, eps) in want.items():
        s = got[key]
        assert s.external_policy == policy, f"{key}: {s.external_policy}{why}"
        assert {e.address for e in s.endpoints} == eps, f"{key}: {eps}{why}"
        assert "hash checked" in s.name_from or fmt == "ipvs", key
    assert ex.all_anomalies() == [], f"{ex.all_anomalies()}{why}"


MODES = [
    pytest.param("iptables", {}, [["iptables-save"], ["iptables-save", "-c"]], "iptables", id="iptables"),
    pytest.param("nftables", {"counters": True}, [["nft", "list", "ruleset"]], "nftables", id="nftables-counters"),
    pytest.param("nftables", {"counters": False}, [["nft", "list", "ruleset"]], "nftables", id="nftables-plain"),
    pytest.param("ipvs", {}, [["ipvsadm", "-Ln"]], "ipvs", id="ipvs", marks=pytest.mark.ipvs),
]


@pytest.mark.parametrize(("mode", "options", "dumps", "fmt"), MODES)
def test_explain_reads_the_labs_own_dump(lab, mode, options, dumps, fmt):
    try:
        lab.set_mode(mode, **options)
    except KplabError as e:
        if mode == "ipvs":
            pytest.skip(f"no IPVS here: {str(e)[:80]}")
        raise
    lab.curl("client", "web", n=3)  # counters that are not 0
    for argv in dumps:
        res = lab.exec("node-1", argv)
        assert res.returncode == 0, res.stderr
        check(res.stdout, lab, fmt)


def test_userspace_dump_says_the_proxy_picks(lab):
    lab.set_mode("userspace")
    ex = explain(lab.exec("node-1", ["iptables-save", "-c"]).stdout)
    assert ex.services == []
    assert any("userspace mode" in n and "default/web-local:http" in n for n in ex.notes), ex.notes
