"""08 · troubleshooting, case 8: conntrack's INVALID segments no longer reset connections (kubernetes#74839).

The check reproduces the failure itself, with real packets: client holds a connection to web:80,
its pod sends one segment far outside the TCP window, and the check looks at what reached the
client and whether the connection still answers (kplab.course.invalid).
"""

from kplab.course.invalid import reset_probe


def test_invalid_survives(lab):
    """A connection from client to web:80 survives an out-of-window segment from its pod: nothing reaches client from the pod's own address.

    Hint: conntrack marks that segment INVALID and does not translate it back; the client answers
    the pod's address with a RST.  Either drop INVALID packets in the FORWARD path (what kube-proxy
    does since 1.15: `lab.set_mode("iptables", drop_invalid=True)`), or make conntrack liberal on
    every node (`sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1`, kube-proxy's
    --conntrack-tcp-be-liberal).
    """
    p = reset_probe(lab)
    assert not p.unnatted, (f"{len(p.unnatted)} packet(s) reached client from {p.pod}'s own address "
                            f"{p.pod_ip}:8080, not from web's ClusterIP: conntrack did not translate them back")
    assert p.survived, f"client's connection to web:80 did not survive the segment: {p.error}"
