"""08 · troubleshooting: each broken Service works again (behaviour, read from the live lab)."""

import re

from kplab.grading.probes import answers, pods_of, ready_endpoints


def serves(lab, service: str, n: int = 20) -> None:
    assert service in [s.metadata.name for s in lab.services()], f"there is no Service named {service}"
    want = set(pods_of(lab, service))
    res = answers(lab, "client", f"{service}:80", n=n, timeout=0.5)
    assert res.ok == n, f"{res.failed} of {n} requests to {service}:80 failed ({', '.join(res.errors)})"
    assert want and want <= set(res.backends), f"{service} answered from {sorted(res.backends)}, not all of {sorted(want)}"


def test_shop_answers(lab):
    """`shop:80` answers from `client`, from every shop pod.

    Hint: "connection refused" at once, from a ClusterIP, means kube-proxy REJECTs it: the Service
    has no endpoints.  Look at the Deployment behind it.
    """
    serves(lab, "shop")


def test_cart_answers(lab):
    """`cart:80` answers from `client`, from every cart pod.

    Hint: the cart pods run and are ready, yet the Service has no endpoints.  Compare the
    Service's selector with the pods' labels (`lab.warnings()` helps).
    """
    serves(lab, "cart")


def test_pay_answers(lab):
    """`pay:80` answers from `client`, from every pay pod.

    Hint: here the Service has endpoints, and the pod itself refuses the connection.  Which port
    does the DNAT send to, and which port does the pod listen on?
    """
    serves(lab, "pay")


def test_web_chain_restored(ns, lab):
    """node-1 has web:http's KUBE-SVC chain with one jump per ready endpoint, and `client` reaches them all.

    Hint: someone emptied a chain by hand.  kube-proxy rewrites only the Services that change,
    so waiting does not help; a full resync does (restarting kube-proxy, here: switch the lab to
    iptables mode again).
    """
    node = ns("node-1")
    rule = [r for r in node.iptables.rules("nat", "KUBE-SERVICES") if "default/web:http cluster IP" in r]
    assert rule, "KUBE-SERVICES on node-1 has no rule for default/web:http"
    chain = re.search(r"-j (KUBE-SVC-\w+)", rule[0]).group(1)
    jumps = [r for r in node.iptables.rules("nat", chain) if "-j KUBE-SEP-" in r]
    n = len(ready_endpoints(lab, "web"))
    assert len(jumps) == n, f"{chain} has {len(jumps)} endpoint rules for {n} ready endpoints"
    serves(lab, "web", n=30)


def test_udp_flow_moved(lab):
    """The long-lived UDP flow from `client` port 5353 to web:dns is answered by a ready web pod.

    Hint: the pod was taken out of the endpoints, but conntrack still holds the flow's old DNAT:
    UDP has no end, so the entry lives as long as packets keep coming.  Delete that flow's entry
    on node-1 (`conntrack -D -p udp --orig-port-src 5353`).
    """
    reply = lab.packets("client").udp("web:dns", sport=5353, timeout=1.0)
    assert reply.answered, "the flow from client:5353 to web:dns got no answer"
    pod = reply.json()["pod"]
    assert pod in ready_endpoints(lab, "web"), f"the flow is still answered by {pod}, which is not ready"
