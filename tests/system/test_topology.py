"""Topology on real nodes: trafficDistribution shrinks each node's endpoint list as upstream's
CategorizeEndpoints does, proven by where pods on different nodes' requests land.

Three nodes in zones a, b, a (`zones` option); one web pod per node; clients on node-1 and node-2.
"""

from __future__ import annotations

import pytest

from kplab.cluster.controller import ZONE_LABEL

pytestmark = [pytest.mark.root]


def service(name: str, distribution: str | None) -> dict:
    spec = {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    if distribution:
        spec["trafficDistribution"] = distribution
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def client(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "client"}},
            "spec": {"nodeName": node, "containers": [{"name": "shell", "image": "kplab/client"}]}}


WEB = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
       "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {
           "metadata": {"labels": {"app": "web"}},
           "spec": {"containers": [{"name": "echo", "ports": [{"name": "http", "containerPort": 8080}]}]}}}}


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_traffic_distribution_keeps_traffic_near(lab_factory, mode):
    lab = lab_factory(f"topo{mode[:3]}", mode=mode, nodes=3, zones=["a", "b"], manifests=[
        client("client-a", "node-1"), client("client-b", "node-2"), WEB, service("plain", None),
        service("near", "PreferSameNode"), service("close", "PreferClose")])
    assert [lab.node_labels(n)[ZONE_LABEL] for n in lab.nodes] == ["a", "b", "a"]
    node_of = {p.metadata.name: p.spec.node_name for p in lab.pods() if p.metadata.name.startswith("web-")}
    assert sorted(node_of.values()) == ["node-1", "node-2", "node-3"], "one web pod per node"

    def landed(frm: str, svc: str) -> set[str]:
        res = lab.curl(frm, svc, n=30)
        assert res.ok == 30, res.errors
        return {node_of[p] for p in res.backends}

    assert landed("client-a", "plain") == {"node-1", "node-2", "node-3"}
    assert landed("client-a", "near") == {"node-1"}
    assert landed("client-b", "near") == {"node-2"}
    assert landed("client-a", "close") == {"node-1", "node-3"}, "zone a: node-1 and node-3"
    assert landed("client-b", "close") == {"node-2"}
    # the pod on node-2 stops being ready: no ready endpoint hinted for node-2 or zone b is left, so
    # node-2 falls back to every ready endpoint (upstream: hints only count when one is for us)
    web2 = next(p for p, n in node_of.items() if n == "node-2")
    lab.set_ready(web2, False)
    assert landed("client-b", "near") == {"node-1", "node-3"}
    assert landed("client-b", "close") == {"node-1", "node-3"}
    assert landed("client-a", "near") == {"node-1"}, "node-1 keeps its own"
