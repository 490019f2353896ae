"""The nftables mode on real namespaces: what the kernel holds after each sync, with real packets.

The shared datapath matrix (test_datapath.py) checks Services end to end for every mode; here
are the nftables-only promises: upstream's table shape loaded by the kernel, partial syncs that
leave unchanged services' rules alone, stale chains flushed and then deleted a second later,
counters that count connections per endpoint, switching modes without leftovers, and recovery
when the table is removed behind kplab's back.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from kplab import Lab
from kplab.errors import KplabError
from kplab.proxy.base import proxier_class
from kplab.proxy.nftables.proxier import NftablesProxier
from kplab.proxy.nftables.rules import BASE_CHAINS
from kplab.testing.labs import lab_in_mode

pytestmark = [pytest.mark.root]

LAB = "nftsys"
OTHER = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: other}
spec:
  replicas: 1
  selector: {matchLabels: {app: other}}
  template:
    metadata: {labels: {app: other}}
    spec: {containers: [{name: echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: other}
spec:
  selector: {app: other}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""


@pytest.fixture(scope="module")
def lab():
    from kplab.lab import default_manifest

    with lab_in_mode("nftables", LAB, [default_manifest(), OTHER]) as lab:
        yield lab


def nft_json(lab: Lab, node: str) -> list[dict]:
    res = lab.exec(node, ["nft", "-j", "list", "table", "ip", "kube-proxy"])
    assert res.ok, res.stderr
    return json.loads(res.stdout)["nftables"]


def handles(lab: Lab, node: str) -> dict[str, list[int]]:
    """chain -> the handles of its rules: a rewritten chain gets new handles."""
    out: dict[str, list[int]] = {}
    for obj in nft_json(lab, node):
        if "chain" in obj:
            out.setdefault(obj["chain"]["name"], [])
        elif "rule" in obj:
            out[obj["rule"]["chain"]].append(obj["rule"]["handle"])
    return out


def of(service: str, chains: dict[str, list[int]]) -> dict[str, list[int]]:
    return {c: h for c, h in chains.items() if f"-default/{service}/" in c}


def test_the_kernel_holds_upstreams_table(lab):
    objs = nft_json(lab, "node-1")
    listing = lab.exec("node-1", ["nft", "list", "table", "ip", "kube-proxy"]).stdout
    assert 'comment "rules for kube-proxy"' in listing  # (nft 1.0.6's JSON leaves table comments out)
    base = {o["chain"]["name"]: o["chain"] for o in objs if "chain" in o and "hook" in o["chain"]}
    assert {n: (b["type"], b["hook"], b["prio"]) for n, b in base.items()} == {
        n: (t, h, p) for n, t, h, p in BASE_CHAINS
    }
    maps = {o["map"]["name"] for o in objs if "map" in o}
    assert maps == {
        "service-ips",
        "service-nodeports",
        "no-endpoint-services",
        "no-endpoint-nodeports",
        "firewall-ips",
    }
    sets = {o["set"]["name"]: o["set"].get("elem", []) for o in objs if "set" in o}
    assert sets["nodeport-ips"] == [lab.node_ip("node-1")], "nftables' NodePort default: the primary node IP"
    assert lab.service_ip("web") in sets["cluster-ips"]


def test_partial_sync_rewrites_only_the_changed_service(lab):
    before = handles(lab, "node-1")
    lab.scale("web", 4)
    after = handles(lab, "node-1")
    assert of("other", after) == of("other", before), "an unchanged Service's chains must not be rewritten"
    web_before, web_after = of("web", before), of("web", after)
    assert len(web_after) > len(web_before)
    rewritten = [c for c in web_before if c in web_after and web_after[c] and web_after[c] != web_before[c]]
    assert rewritten, "the changed Service's chains are written anew"
    again = lab.sync()  # nothing changed since: a partial sync with nothing to send
    assert all(not r.full and r.changed_services == 0 and r.size == 0 for r in again.values()), again
    assert handles(lab, "node-1") == after
    assert lab.curl("client", "web", n=40).failed == 0


def test_stale_chains_are_flushed_then_deleted_a_second_later(lab):
    lab.scale("web", 4)
    before = of("web", handles(lab, "node-1"))
    lab.scale("web", 3)
    flushed = of("web", handles(lab, "node-1"))
    gone = [c for c in before if c.startswith("endpoint-") and flushed.get(c) == []]
    assert len(gone) >= 2, f"the removed pod's endpoint chains (tcp and udp) stay, empty: {flushed}"
    time.sleep(1.2)
    result = lab.sync()
    assert all(not r.full for r in result.values())
    now = handles(lab, "node-1")
    assert not [c for c in gone if c in now], "stale chains are deleted in a sync more than 1 s later"
    assert lab.curl("client", "web", n=30).failed == 0


def dnat_counts(lab: Lab, node: str, service: str) -> dict[str, int]:
    """pod -> packets counted on its endpoint chain's DNAT rule (one per new connection)."""
    out = {}
    for c in lab.rules(node)["chains"]:
        if c.get("kind") == "endpoint" and c.get("service") == service:
            dnat = [r for r in c["rules"] if "dnat to" in r["text"]]
            out[c["pod"]] = dnat[0]["packets"]
    return out


def test_counters_count_connections_per_endpoint(lab):
    before = dnat_counts(lab, "node-1", "default/web:http")
    res = lab.curl("client", "web", n=40)  # client runs on node-1: node-1 does the DNAT
    assert res.failed == 0, res.errors
    after = dnat_counts(lab, "node-1", "default/web:http")
    delta = {pod: after[pod] - before.get(pod, 0) for pod in after if after[pod] - before.get(pod, 0)}
    assert delta == res.backends
    text = lab.rules("node-1")["text"]
    assert "DNAT to one endpoint" in text and "pkts" in text and lab.service_ip("web") in text


def test_table_removed_behind_our_back_comes_back(lab):
    assert lab.exec("node-1", ["nft", "delete", "table", "ip", "kube-proxy"]).ok
    result = lab.sync()
    assert result["node-1"].full, "the failed partial sync falls back to a full one"
    assert lab.curl("client", "web", n=10).failed == 0


def test_a_map_element_deleted_by_hand_comes_back_with_the_hourly_full_sync(lab):
    """Upstream's partial syncs diff map elements against their own memory, so they do not see
    an element deleted by hand; its full sync, at least every FullSyncPeriod (an hour), does.
    kplab's nftables memory kept no time of its last full sync: it never came (sync after an
    hour stayed partial and `kplab diff` kept the element missing)."""
    lab.sync(full=True)
    ip = lab.service_ip("web")
    argv = ["nft", "delete", "element", "ip", "kube-proxy", "service-ips", f"{{ {ip} . tcp . 80 }}"]
    assert lab.exec("node-1", argv).ok
    d = lab.diff("node-1")
    assert len(d.missing) == 1 and d.missing[0].startswith(f"service-ips element {ip} . tcp . 80 : goto service-")
    assert "kplab sync --full" in d.text(), d.text()
    assert not lab.sync()["node-1"].full  # a partial sync, as upstream's: the element stays missing
    assert lab.diff("node-1").missing == d.missing
    memory = lab.proxier("node-1")._memory()
    memory.db.execute("UPDATE meta SET value = ? WHERE name = 'last_full'", (repr(time.time() - 3601),))
    memory.close()
    result = lab.sync()
    assert result["node-1"].full and not result["node-2"].full, result
    assert lab.diff("node-1").clean, lab.diff("node-1").text()
    assert lab.curl("client", "web", n=6).failed == 0


def test_lost_memory_means_a_full_sync_over_the_live_table(lab):
    """Like a kube-proxy restart: no memory, the table still there. The first sync recreates
    the base chains (upstream does it once per start) and rewrites everything in one go."""
    p = lab.proxier("node-1")
    p._forget()
    result = p.sync(lab.state("node-1"))
    assert result.full and result.changed_services == len(lab.state("node-1").services)
    assert lab.curl("client", "web", n=10).failed == 0
    assert not p.sync(lab.state("node-1")).full


def kube_iptables(lab: Lab, node: str) -> str:
    out = []
    for tool in ("iptables-save", "iptables-legacy-save"):
        res = lab.exec(node, [tool])
        out += [line for line in res.stdout.splitlines() if "KUBE-" in line]
    return "\n".join(out)


def test_switching_modes_leaves_nothing_behind(lab):
    try:
        proxier_class("iptables")
    except KplabError as e:
        pytest.skip(str(e))
    lab.set_mode("iptables")
    try:
        for node in lab.nodes:
            assert lab.exec(node, ["nft", "list", "table", "ip", "kube-proxy"]).returncode != 0, node
            assert kube_iptables(lab, node), "iptables mode programs KUBE-* chains"
        assert lab.curl("client", "web", n=10).failed == 0
    finally:
        lab.set_mode("nftables")
    for node in lab.nodes:
        assert kube_iptables(lab, node) == "", f"{node}: iptables mode left KUBE-* rules"
        assert lab.exec(node, ["nft", "list", "table", "ip", "kube-proxy"]).ok
    assert lab.curl("client", "web", n=10).failed == 0


def test_upstream_goldens_load_in_the_kernel():
    """The rendered TestOverallNFTablesRules transaction, with and without counters, is accepted
    by nft in a scratch network namespace and holds the chains the golden dump has."""
    from nftables_upstream import DATA, Ruleset, load_state  # tests/unit is on pytest's pythonpath

    state = load_state(DATA / "overall" / "manifests.yaml")
    for counters in (False, True):
        text = NftablesProxier.preview(state, counters=counters) + "list table ip kube-proxy\n"
        cp = subprocess.run(
            ["unshare", "--net", "--", "nft", "-f", "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        assert cp.returncode == 0, cp.stderr
        kernel = {line.split()[1] for line in cp.stdout.splitlines() if line.strip().startswith("chain ")}
        fake = Ruleset()
        fake.apply(NftablesProxier.preview(state))
        assert kernel == set(fake.chains)
