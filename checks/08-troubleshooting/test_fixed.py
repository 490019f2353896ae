"""08 · troubleshooting: each broken Service works again (behaviour, read from the live lab).

Each case starts broken (labs/manifest.yaml applies labs/manifests/broken.yaml; cases 4 and 5 are
broken by a cell of the notebook), and each check wants both the repair and the trace of the
breakage where the end state alone would not tell (a full resync, a pod out of service).
"""

import json

from kplab.grading.probes import (
    answers,
    first_answers,
    nat_rules,
    pods_of,
    pods_of_deployment,
    ready_endpoints,
    service_of,
    svc_chain,
)


def serves(lab, service: str, n: int = 40) -> None:
    """The Service answers from every pod of the Deployment of the same name, whatever their labels."""
    service_of(lab, service)
    want = set(pods_of_deployment(lab, service))
    assert want, f"the Deployment {service} has no pods"
    first_answers(lab, "client", f"{service}:80", n=3, timeout=0.5)
    res = answers(lab, "client", f"{service}:80", n=n, timeout=0.5)
    assert res.ok == n, f"{res.failed} of {n} requests to {service}:80 failed ({', '.join(res.errors)})"
    assert want <= set(res.backends), f"{service} answered from {sorted(res.backends)}, not all of {sorted(want)}"


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


def resynced_since_start(lab) -> bool | None:
    """Did kube-proxy start over (a mode set, as a restart does) since the notebook's first cell?
    None when the lab was not started by a notebook (then only the end state can be checked)."""
    marker, nodes = lab.store.dir / "course.json", lab.store.dir / "nodes"
    try:
        json.loads(marker.read_text())
        return nodes.stat().st_mtime > marker.stat().st_mtime
    except (OSError, ValueError):
        return None


def test_web_chain_restored(ns, lab):
    """node-1 has web:http's KUBE-SVC chain back, with one jump per ready endpoint, after a full resync, and `client` reaches them all.

    Hint: someone emptied a chain by hand.  kube-proxy rewrites only the Services that change,
    so waiting does not help; a full resync does (restarting kube-proxy, here: switch the lab to
    iptables mode again).
    """
    assert lab.mode == "iptables", (f"the lab runs {lab.mode}: this case is about iptables' KUBE-SVC chain; "
                                    "`lab.set_mode(\"iptables\")` brings it back")
    node = ns("node-1")
    chain = svc_chain(node, lab, "web", 80)
    assert chain, "KUBE-SERVICES on node-1 has no rule for web's ClusterIP, TCP port 80"
    jumps = [r for r in nat_rules(node, chain) or [] if "-j KUBE-SEP-" in r]
    n = len(ready_endpoints(lab, "web"))
    assert len(jumps) == n, f"{chain} has {len(jumps)} endpoint rules for {n} ready endpoints"
    assert resynced_since_start(lab) is not False, (
        "kube-proxy has not started over since the notebook began: the chain was never emptied and "
        "restored (run the cell that empties it, then repair it)")
    serves(lab, "web", n=30)


def test_udp_flow_moved(lab):
    """With a web pod out of service, the long-lived UDP flow from `client` port 5353 to web:dns is answered by a ready one.

    Hint: the pod was taken out of the endpoints, but conntrack still holds the flow's old DNAT:
    UDP has no end, so the entry lives as long as packets keep coming.  Delete that flow's entry
    on node-1 (`conntrack -D -p udp --orig-port-src 5353`).  Putting the pod back is not the fix.
    """
    ready = ready_endpoints(lab, "web")
    out = sorted(set(pods_of(lab, "web")) - set(ready))
    assert out, "every web pod is ready: the case takes the flow's pod out of service first (the cell before it)"
    reply = lab.packets("client").udp("web:dns", sport=5353, timeout=1.0)
    assert reply.answered, "the flow from client:5353 to web:dns got no answer"
    pod = reply.json()["pod"]
    assert pod in ready, f"the flow is still answered by {pod}, which is not ready"
