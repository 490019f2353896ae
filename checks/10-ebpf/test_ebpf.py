"""10 · no kube-proxy: where the eBPF programs decide, and what the maps hold."""

from kplab.grading.probes import answers, ready_endpoints


def test_tc_decides(lab):
    """The lab runs the eBPF mode without socket LB: a trace of client -> web is decided by the tc program.

    Hint: `lab.set_mode("ebpf", socket_lb=False)` (or `kplab mode ebpf --no-socket-lb`); then
    `lab.trace("client", "web")` names `from_pod`, the program on the pod's veth.
    """
    assert lab.mode == "ebpf", f"the lab runs {lab.mode}, not the eBPF mode"
    for node in lab.nodes:
        assert lab.rules(node).get("cgroup") is None, f"socket LB is still attached on {node}"
    t = lab.trace("client", "web")
    assert t.answer, f"client -> web got no answer: {t.error}"
    assert t.path and "from_pod" in t.path[0], f"the decision was made by {t.path[:1] or 'nothing'}"


def test_two_slots(lab):
    """One web pod is not ready: web's ClusterIP on node-1 has two backend slots and it gets no requests.

    Hint: `lab.set_ready(pod, False)` for one of the `web` pods, then `print(lab.rules("node-1")["text"])`.
    """
    assert lab.mode == "ebpf", f"the lab runs {lab.mode}: this exercise reads the eBPF maps (lab.set_mode('ebpf'))"
    ready = ready_endpoints(lab, "web")
    assert len(ready) == 2, f"web has {len(ready)} ready endpoints, not 2"
    vip = f"{lab.service_ip('web')}:80/TCP"
    slots = [r for r in lab.rules("node-1")["services"] if r["frontend"] == vip and r["slot"] > 0]
    assert len(slots) == 2, f"web's frontend {vip} has {len(slots)} backend slots on node-1"
    res = answers(lab, "client", "web:80", n=20)
    assert res.ok == 20 and set(res.backends) <= set(ready), f"answers from {res.backends}"
