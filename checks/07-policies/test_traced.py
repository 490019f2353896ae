"""07 · traffic policies, graded against the kernel's trace of one NodePort connection."""

from kplab.course.answers import traced_endpoint
from kplab.grading.probes import node_of


def test_which_endpoint(lab, ns):
    """You named the KUBE-SEP chain (or endpoint) that took outside's traced NodePort connection, a pod on node-1.

    Hint: with `externalTrafficPolicy: Local` applied, `t = lab.trace("outside", "node-1:web:http")`;
    the path goes through KUBE-EXT-... and KUBE-SVL-...; answer("07-policies/which-endpoint", the KUBE-SEP-...).
    """
    _value, hop, trace = traced_endpoint(lab, "07-policies/which-endpoint", "iptables", "outside")
    assert trace["destination"].startswith(lab.node_ip("node-1") + ":"), (
        f"that trace went to {trace['destination']}, not to node-1's NodePort")
    went = [h.get("target", "") for h in trace["hops"]]
    assert any(t.startswith("KUBE-SVL-") for t in went), (
        "that connection went through KUBE-SVC-... (Cluster policy): apply externalTrafficPolicy: Local, trace again")
    pod = str((trace.get("answer") or {}).get("pod", ""))
    assert pod and node_of(lab, pod) == "node-1", f"{pod or 'no pod'} answered, not a pod on node-1"
    assert any("DNAT" in r for r in ns(hop["node"]).iptables.rules("nat", hop["chain"])), (
        f"{hop['chain']} no longer DNATs on {hop['node']}: trace and answer again")
