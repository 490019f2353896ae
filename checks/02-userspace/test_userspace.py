"""02 · userspace: a proxy process per node, round robin, retries that only TCP gets."""

from kplab.grading.probes import answers


def test_udp_all_answered(lab, ns):
    """Every UDP request from `client` to web:dns is answered, with the userspace proxy still in charge.

    Hint: one web pod's server is down but the pod still counts as ready, so the proxy keeps
    sending every third datagram to it.  UDP has no connection to fail, so nothing is retried.
    Take that pod out of the Service's endpoints (what a failing readiness probe does):
    `lab.set_ready(pod, False)`.
    """
    assert lab.mode == "userspace", f"the lab runs {lab.mode}: this exercise is about the userspace proxy"
    assert ns("node-1").socket("tcp://0.0.0.0:30080").is_listening, "node-1's proxy process is not listening"
    res = answers(lab, "client", "web:dns", n=12, timeout=0.5)
    assert res.failed == 0, f"{res.failed} of 12 UDP requests to web:dns were lost"


def test_sticky(lab):
    """Ten requests in a row from `client` to web:80 are all answered by the same pod.

    Hint: round robin moves every new connection to the next endpoint.  Give the Service
    `sessionAffinity: ClientIP` (labs/manifests/web-affinity.yaml has it) and apply it.
    """
    assert lab.mode == "userspace", f"the lab runs {lab.mode}: this exercise is about the userspace proxy"
    res = answers(lab, "client", "web:80", n=10)
    assert res.ok == 10, f"{res.failed} of 10 requests failed"
    assert len(res.backends) == 1, f"the requests were spread over {len(res.backends)} pods: {res.backends}"
