"""07 · traffic policies and source IPs, observed from the pods' side."""

from kplab.grading.probes import answers, first_answers, node_of


def test_source_ip_kept(lab):
    """Requests from `outside` to node-1's NodePort reach pods that see outside's own address.

    Hint: with the default externalTrafficPolicy (Cluster) the node may forward to another node,
    so it must SNAT.  Set `externalTrafficPolicy: Local` on Service `web`
    (labs/manifests/web-external-local.yaml).
    """
    outside_ip = lab.exec("outside", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout.split()[3].split("/")[0]
    first_answers(lab, "outside", "node-1:web:http", n=2)
    res = answers(lab, "outside", "node-1:web:http", n=20)
    assert res.ok == 20, f"{res.failed} of 20 requests to node-1's NodePort failed"
    seen = {a["client_ip"] for a in res.answers}
    assert seen == {outside_ip}, f"the pods saw the client as {sorted(seen)}, not {outside_ip}"


def test_stay_on_node(lab):
    """Requests from `client` (on node-1) to web:80 are all answered by web pods on node-1.

    Hint: `internalTrafficPolicy: Local` keeps in-cluster traffic on the sender's node
    (labs/manifests/web-internal-local.yaml).
    """
    first_answers(lab, "client", "web:80", n=2)
    res = answers(lab, "client", "web:80", n=20)
    assert res.ok == 20, f"{res.failed} of 20 requests failed"
    nodes = {pod: node_of(lab, pod) for pod in res.backends}
    away = sorted(p for p, n in nodes.items() if n != "node-1")
    assert not away, f"pods on other nodes answered: {away}"
