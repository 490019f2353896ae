"""02 · userspace: a proxy process per node, round robin, retries that only TCP gets."""

from kplab.grading.probes import answers, first_answers, pods_of, ready_endpoints


def test_udp_all_answered(lab, ns):
    """With one web pod's server still stopped, every UDP request from `client` to web:dns is answered by the userspace proxy.

    Hint: one web pod's server is down but the pod still counts as ready, so the proxy keeps
    sending every third datagram to it.  UDP has no connection to fail, so nothing is retried.
    Take that pod out of the Service's endpoints (what a failing readiness probe does):
    `lab.set_ready(pod, False)`.  Restarting its server is not the exercise.
    """
    assert lab.mode == "userspace", f"the lab runs {lab.mode}: this exercise is about the userspace proxy"
    assert ns("node-1").socket("tcp://0.0.0.0:30080").is_listening, "node-1's proxy process is not listening"
    down = [p for p in pods_of(lab, "web") if answers(lab, "client", f"{lab.pod_ip(p)}:8080", n=1, timeout=0.3).failed]
    assert down, "every web pod's server answers: the exercise keeps the stopped server stopped (the cell before it)"
    ready = ready_endpoints(lab, "web")
    still = sorted(p for p in down if p in ready)
    assert not still, f"{', '.join(still)} does not answer and is still a ready endpoint of web"
    res = answers(lab, "client", "web:dns", n=12, timeout=0.3)
    assert res.failed == 0, f"{res.failed} of 12 UDP requests to web:dns were lost"


def test_sticky(lab):
    """With two or more ready endpoints, ten requests in a row from `client` to web:80 are all answered by the same pod.

    Hint: round robin moves every new connection to the next endpoint.  Give the Service
    `sessionAffinity: ClientIP` (labs/manifests/web-affinity.yaml has it) and apply it.
    """
    assert lab.mode == "userspace", f"the lab runs {lab.mode}: this exercise is about the userspace proxy"
    ready = ready_endpoints(lab, "web")
    assert len(ready) >= 2, f"web has {len(ready)} ready endpoint(s): with one, every Service sticks; keep two or more"
    first_answers(lab, "client", "web:80", n=2, timeout=0.5)
    res = answers(lab, "client", "web:80", n=10)
    assert res.ok == 10, f"{res.failed} of 10 requests failed"
    assert len(res.backends) == 1, f"the requests were spread over {len(res.backends)} pods: {res.backends}"
