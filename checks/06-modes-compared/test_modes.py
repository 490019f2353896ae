"""06 · the modes compared: which mode the nodes really run, and what a dead backend costs."""

from kplab.grading.probes import answers, first_answers, ready_endpoints


def test_nftables_live(lab, ns):
    """Every node runs nftables mode: a `kube-proxy` nft table, no iptables KUBE-SERVICES left, web reachable.

    Hint: switch the lab's mode (`lab.set_mode("nftables")`, the mode switcher, or
    `kplab mode nftables`); the old mode's rules are removed on every node.
    """
    for node in lab.nodes:
        host = ns(node)
        assert host.run("nft list table ip kube-proxy").rc == 0, f"{node} has no nftables kube-proxy table"
        assert host.run("iptables -t nat -S KUBE-SERVICES").rc != 0, f"{node} still has iptables KUBE-SERVICES"
    first_answers(lab, "client", "web:80", n=3)


def test_retries_hide_a_dead_backend(lab):
    """With a ready web pod whose server is down, 30 TCP requests from `client` to web:80 all succeed.

    Hint: no kernel-based mode retries a connection that a backend refuses; only the historical
    userspace proxy did.  Switch to it (and keep the broken pod as it is).
    """
    dead = [pod for pod, ip in ready_endpoints(lab, "web").items()
            if answers(lab, "client", f"{ip}:8080", n=1, timeout=0.3).failed]
    assert dead, "every ready web pod answers: the exercise keeps one pod's server stopped and the pod ready"
    assert lab.mode == "userspace", (f"the lab runs {lab.mode}: no kernel mode retries a refused connection, "
                                     "whatever hides the dead pod from one client")
    first_answers(lab, "client", "web:80", n=3, timeout=1.0)
    res = answers(lab, "client", "web:80", n=30)
    assert res.failed == 0, f"{res.failed} of 30 requests failed (they went to {dead[0]})"
