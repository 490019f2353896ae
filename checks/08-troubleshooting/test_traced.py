"""08 · troubleshooting, cases 6 and 7: the diagnosis held against the kernel's trace, the repair against the node."""

from kplab.course.answers import traced_drop
from kplab.errors import LabError
from kplab.grading.probes import answers, node_of


def solo_applied(lab) -> None:
    """Case 7's Service must exist before anything about it can be judged (a failure, not an error)."""
    try:
        lab.service("solo")
    except LabError:
        raise AssertionError("there is no Service solo in the lab yet: run case 7's first cell, which applies it") from None


def test_nft_where(lab):
    """You named the chain where the kernel's trace of client -> web:80 ended while node-1 refused it (nftables).

    Hint: trace one connection while it is refused (`t = lab.trace("client", "web")`), read the last
    rule it met, answer("08-troubleshooting/nft-where", "<that chain>").
    """
    _, trace = traced_drop(lab, "08-troubleshooting/nft-where", "client", f"{lab.service_ip('web')}:80")
    assert trace["mode"] == "nftables", f"that trace was taken in {trace['mode']} mode: this case is about nftables"


def test_nft_element_restored(lab, ns):
    """node-1's `service-ips` map has web's ClusterIP element again, and client reaches web:80 (nftables).

    Hint: a sync sends only what changed in the objects; restart kube-proxy (switch the lab to
    nftables again) for a full sync.
    """
    assert lab.mode == "nftables", f"the lab runs {lab.mode}: this case is about nftables"
    elements = ns("node-1").run("nft list map ip kube-proxy service-ips").stdout
    assert f"{lab.service_ip('web')} . tcp . 80" in elements, "node-1's service-ips still lacks web's tcp/80 element"
    res = answers(lab, "client", "web:80", n=4, timeout=0.5)
    assert res.ok == 4, f"{res.failed} of 4 requests from client to web:80 failed"


def test_blackhole_where(lab):
    """You named the chain where the kernel dropped outside's connection to the NodePort of a node without a solo pod.

    Hint: trace the failing node (`t = lab.trace("outside", "node-2:solo")`), read the last rule it
    met, answer("08-troubleshooting/blackhole-where", "<that chain>").
    """
    solo_applied(lab)
    traced_drop(lab, "08-troubleshooting/blackhole-where", "outside", f":{lab.node_port('solo')}")


def test_blackhole_fixed(lab):
    """Every node's NodePort of `solo` answers outside, from a pod on that node, which sees outside's own address.

    Hint: keep `externalTrafficPolicy: Local`; give every node a solo pod (the Deployment pins its
    pods to one node: remove that and scale).
    """
    solo_applied(lab)
    outside_ip = lab.exec("outside", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout.split()[3].split("/")[0]
    for node in lab.nodes:
        res = answers(lab, "outside", f"{node}:solo", n=3, timeout=0.5)
        assert res.ok == 3, f"{res.failed} of 3 requests from outside to {node}'s NodePort of solo failed"
        seen = {a["client_ip"] for a in res.answers}
        assert seen == {outside_ip}, f"solo's pods saw the client as {sorted(seen)} via {node}: the source was not kept"
        away = sorted(p for p in res.backends if node_of(lab, p) != node)
        assert not away, f"via {node} the answer came from {away} on another node"
