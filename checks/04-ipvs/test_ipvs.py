"""04 · IPVS: virtual and real servers read back with ipvsadm; skipped where the kernel has no IPVS."""

import pytest

from kplab.proxy.base import proxier_class


@pytest.fixture(autouse=True)
def needs_ipvs():
    found = proxier_class("ipvs").doctor()
    if not found.available:
        pytest.skip(f"no IPVS here ({found.detail}); notebook 04 explains how to get it")


def web_virtual_server(lab, ns) -> list[str]:
    """The `ipvsadm -Ln` lines of web's ClusterIP:80 virtual server and its real servers."""
    text = ns("node-1").run("ipvsadm -Ln").stdout.splitlines()
    head = f"TCP  {lab.service_ip('web')}:80"
    for i, line in enumerate(text):
        if line.startswith(head):
            out = [line]
            for ln in text[i + 1:]:
                if not ln.strip().startswith("->"):
                    break
                out.append(ln)
            return out
    return []


def test_virtual_servers(lab, ns):
    """node-1 has an IPVS virtual server for web's ClusterIP:80 with one real server per endpoint.

    Hint: switch the lab to IPVS mode (`lab.set_mode("ipvs")`), then `ipvsadm -Ln` on node-1.
    """
    assert lab.mode == "ipvs", f"the lab runs {lab.mode}, not ipvs"
    lines = web_virtual_server(lab, ns)
    assert lines, "no IPVS virtual server for web's ClusterIP:80 on node-1"
    assert len([ln for ln in lines[1:] if ":8080" in ln]) >= 3, f"too few real servers: {lines}"
    assert lab.curl("client", "web:80", n=10, timeout=1.0).ok == 10, "web:80 does not answer from client"


def test_scheduler_lc(lab, ns):
    """web's virtual server on node-1 uses the least-connection scheduler (lc).

    Hint: the scheduler is a kube-proxy option: `lab.set_mode("ipvs", scheduler="lc")`.
    """
    lines = web_virtual_server(lab, ns)
    assert lines and " lc" in lines[0], f"web's virtual server is {lines[0] if lines else 'missing'}"


def web_server(lab) -> dict:
    """web's ClusterIP:80 virtual server as the kernel holds it (real servers with weight and counts)."""
    assert lab.mode == "ipvs", f"the lab runs {lab.mode}, not ipvs"
    address = f"{lab.service_ip('web')}:80"
    found = [v for v in lab.rules("node-1")["virtual_servers"] if v["address"] == address]
    assert found, f"no IPVS virtual server for web's ClusterIP:80 ({address}) on node-1"
    return found[0]


def pod_at(lab, address: str) -> str:
    ip = address.rsplit(":", 1)[0]
    return next((p.metadata.name for p in lab.pods() if p.status.pod_ip == ip), ip)


def test_lc_next(lab):
    """You predicted the pod `lc` gives client's next connection to web:80, while connections stay open; the kernel agrees.

    Hint: hold connections (`held = hold(lab, "client", "web:80", n=6)`), close those to one pod
    (`held.close(POD)`), read ActiveConn/InActConn in `ipvsadm -Ln`, then
    answer("04-ipvs/lc-next", "<pod>").  Keep the other connections open for the check.
    """
    from kplab.course.answers import answer_of
    from kplab.course.held import hold

    got = answer_of(lab, "04-ipvs/lc-next")["value"]
    vs = web_server(lab)
    assert vs["scheduler"] == "lc", f"web's virtual server schedules with {vs['scheduler']}, not lc"
    reals = [r for r in vs["reals"] if r["weight"] > 0]
    active = sum(r["active"] for r in reals)
    assert active >= 2, f"the kernel counts {active} open connection(s) to web: hold a few (and keep them open)"
    overhead = {pod_at(lab, r["address"]): 256 * r["active"] + r["inactive"] for r in reals}
    least = min(overhead.values())
    assert list(overhead.values()).count(least) == 1, (
        f"several pods tie for the least connections ({overhead}): close the connections to one pod")
    quiet = min(overhead, key=overhead.__getitem__)
    assert got == quiet, f"you answered {got!r}; by the kernel's counts ({overhead}) lc picks {quiet}"
    probe = hold(lab, "client", "web:80")
    try:
        assert probe.conns[0][1] == quiet, f"the check's own new connection went to {probe.conns[0][1]}, not {quiet}"
    finally:
        probe.close()


def test_drain(lab):
    """A terminating web pod's real server has weight 0 and still an open connection; new connections go elsewhere.

    Hint: hold one connection (`one = hold(lab, "client", "web:80")`), then
    `lab.set_ready(POD, False, terminating=True)` for the pod it reached, and keep it open.
    """
    vs = web_server(lab)
    drained = [r for r in vs["reals"] if r["weight"] == 0]
    assert drained, f"no real server of web has weight 0: {[(r['address'], r['weight']) for r in vs['reals']]}"
    open_ = [r for r in drained if r["active"] >= 1]
    assert open_, "the weight-0 real server has no open connection left: hold one before the pod terminates"
    pod = pod_at(lab, open_[0]["address"])
    terminating = {ep.target_ref.name for sl in lab.endpoint_slices()
                   if (sl.metadata.labels or {}).get("kubernetes.io/service-name") == "web"
                   for ep in sl.endpoints or [] if ep.target_ref and ep.conditions and ep.conditions.terminating}
    assert pod in terminating, f"{pod} drains, but its endpoint is not terminating (terminating: {sorted(terminating)})"
    res = lab.curl("client", "web:80", n=8, timeout=1.0)
    assert res.ok == 8 and pod not in res.backends, f"new connections: {res.ok}/8 answered, from {sorted(res.backends)}"


def test_persistence(lab):
    """web's virtual server is persistent for its ClientIP affinity timeout, and client's new connections all reach one pod.

    Hint: apply `manifests/web-affinity.yaml` (sessionAffinity: ClientIP), then look for
    `persistent` in `ipvsadm -Ln`.
    """
    vs = web_server(lab)
    svc = next(s for s in lab.services() if s.metadata.name == "web")
    want = svc.spec.session_affinity_config.client_ip.timeout_seconds if svc.spec.session_affinity == "ClientIP" else None
    assert want, "web has no ClientIP session affinity"
    assert f"persistent {want}" in vs["flags"], (
        f"web's virtual server is not persistent for {want}s (flags: {vs['flags'] or 'none'})")
    res = lab.curl("client", "web:80", n=10, timeout=1.0)
    assert res.ok == 10 and len(set(res.backends)) == 1, f"client's connections reached {sorted(res.backends)}"
