"""nftables as upstream 1.34+ lays it out, with real packets: what kubernetes#132456 fixed.

A host process on a node with no endpoint of an `externalTrafficPolicy: Local` LoadBalancer
Service reaches its LB IP: nat-output short-circuits host traffic to a cluster endpoint, and
1.34's filter-output runs after that DNAT.  1.33's ran before it and dropped the packet as
"no local endpoint".  iptables mode always forwarded it.  One lab switches between the three.
"""

from __future__ import annotations

import pytest

from kplab import clean
from kplab.lab import default_manifest
from kplab.proxy.nftables.proxier import NftablesProxier

pytestmark = [pytest.mark.root]

SOLO = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: solo}
spec:
  replicas: 1
  selector: {matchLabels: {app: solo}}
  template:
    metadata: {labels: {app: solo}}
    spec:
      nodeName: node-2
      containers: [{name: echo, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: solo}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: solo}
  ports: [{name: http, port: 80, targetPort: http}]
"""


def base_chains(lab, node: str) -> dict[str, int]:
    import json

    res = lab.exec(node, ["nft", "-j", "list", "table", "ip", "kube-proxy"])
    assert res.ok, res.stderr
    chains = [o["chain"] for o in json.loads(res.stdout)["nftables"] if "chain" in o]
    return {c["name"]: c["prio"] for c in chains if "hook" in c}


def test_host_to_lb_ip_of_etp_local_service_without_local_endpoint(lab_factory):
    if not NftablesProxier.doctor().available:
        pytest.skip("nft cannot run here")
    clean(lab="nft134")
    lab = lab_factory("nft134", mode="nftables", manifests=[default_manifest(), SOLO])
    pods = {p.metadata.name: p.spec.node_name for p in lab.pods() if p.metadata.name.startswith("solo-")}
    assert set(pods.values()) == {"node-2"}
    assert base_chains(lab, "node-1")["filter-output"] == 0, "the 1.34 layout is the default"

    got = lab.curl("node-1", "lb:solo", n=3)
    assert got.ok == 3 and set(got.backends) <= set(pods), "1.34: forwarded to the endpoint on node-2"

    lab.set_mode("nftables", nftables_version="1.33")
    chains = base_chains(lab, "node-1")
    assert chains["filter-output"] == -110 and "filter-output-post-dnat" in chains
    assert "filter-output-pre-dnat" not in chains, "the other layout's base chains are gone"
    assert lab.curl("node-1", "lb:solo", n=2, timeout=1.0).ok == 0, "1.33: dropped before the DNAT"

    lab.set_mode("nftables", nftables_version="1.34")
    chains = base_chains(lab, "node-1")
    assert "filter-output-post-dnat" not in chains and chains["filter-output-pre-dnat"] == -110
    assert lab.curl("node-1", "lb:solo", n=2).ok == 2

    lab.set_mode("iptables")
    assert lab.curl("node-1", "lb:solo", n=2).ok == 2, "as iptables mode always did"


def test_a_restarted_proxier_keeps_what_the_kernel_already_has(lab_factory):
    """TestSyncProxyRulesStartup on a real table: with its memory gone (a restart), the first
    sync reads the table back (`nft -j`) and writes no map element and no endpoint chain that is
    already right; a Service without endpoints keeps its no-endpoint element too."""
    import re
    from pathlib import Path

    from kplab.proxy.nftables.proxier import _existing, plan

    if not NftablesProxier.doctor().available:
        pytest.skip("nft cannot run here")
    lab = lab_factory("nftrestart", mode="nftables")
    lab.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "none"},
               "spec": {"selector": {"app": "nothing"}, "ports": [{"name": "d", "port": 53, "protocol": "UDP"}]}})
    node = "node-1"
    found = _existing(lab.netns(node))
    assert any(k.startswith("no-endpoint-services\t") and v == ("goto reject-chain", "default/none:d")
               for k, v in found.elements.items())
    text = plan(lab.state(node), None, now=0.0, counters=True, existing=found).tx.text()
    assert not [line for line in text.splitlines() if " element " in line and "nodeport-ips" not in line]
    assert not [line for line in text.splitlines() if line.startswith("add chain ip kube-proxy endpoint-")]

    (Path(lab.proxier(node).ctx.state_dir) / "nftables.sqlite").unlink()  # the restart
    listing = lambda: sorted(re.sub(r"counter packets \d+ bytes \d+", "", lab.exec(
        node, ["nft", "list", "table", "ip", "kube-proxy"]).stdout).splitlines())
    before = listing()
    lab.sync()
    assert listing() == before
    assert lab.curl("client", "web", n=3).ok == 3
