"""09 · capstone: an unfamiliar node diagnosed, repaired and migrated, graded on the kernel."""

import re

from kplab.course.answers import answer_of, traced_endpoint
from kplab.grading.probes import answers, ready_endpoints
from kplab.inspect.counters import counting
from kplab.inspect.explain import explain

APPS = ("frontend", "catalog", "orders", "payments")


def test_broken_service(lab, ns):
    """You named the one app Service whose rules on node-1 have no endpoint.

    Hint: `explain(iptables-save of node-1)` lists each Service port with its endpoints; one of
    the shop's Services has none. answer("09-capstone/broken-service", "<name>").
    """
    value = str(answer_of(lab, "09-capstone/broken-service")["value"]).strip()
    assert lab.mode == "iptables", f"the lab runs {lab.mode}: this step reads iptables rules (kplab reset 09)"
    assert value in APPS, f"{value!r} is not one of the shop's Services ({', '.join(APPS)})"
    ex = explain(ns("node-1").run("iptables-save").stdout)
    without = sorted({s.name.split("/")[1].split(":")[0] for s in ex.services if not s.endpoints} & set(APPS))
    assert without, "no app Service on node-1 is without endpoints (was it fixed already? kplab reset 09)"
    assert value in without, f"{value!r} has endpoints in node-1's rules; look again at what explain says"


def test_all_answer(lab):
    """Every app answers from client, and every ready pod of each app gets new connections.

    Hint: a Service without endpoints selects no pod: compare its selector with the pods' labels.
    """
    for app in APPS:
        want = set(ready_endpoints(lab, app))
        assert want, f"{app} has no ready endpoints: its Service selects no pod"
        res = answers(lab, "client", f"{app}:80", n=1 if app == "orders" else 30, timeout=0.5)
        assert res.failed == 0, f"{res.failed} requests from client to {app}:80 failed"
        if app != "orders":  # ClientIP affinity keeps one client on one pod
            missing = want - set(res.backends)
            assert not missing, f"30 requests to {app} never reached {sorted(missing)}"


def test_migrated(lab, ns):
    """Every node runs nftables with nothing of iptables mode left, and every app behaves as before.

    Hint: switch the lab's mode (`lab.set_mode("nftables")`), then compare the counters per app
    with the ones you measured before.
    """
    assert lab.mode == "nftables", f"the lab runs {lab.mode}: migrate it to nftables"
    for node in lab.nodes:
        left = [r for r in ns(node).run("iptables-save -t nat").stdout.splitlines() if re.search(r"KUBE-(SVC|SEP)-", r)]
        assert not left, f"{node} still has iptables mode's chains ({len(left)} lines)"
    for app in APPS:
        want = set(ready_endpoints(lab, app))
        assert want, f"{app} has no ready endpoints"
        if app == "orders":
            res = answers(lab, "client", "orders:80", n=8, timeout=0.5)
            assert res.ok == 8 and len(res.backends) == 1, f"orders' affinity is lost: {res.backends}"
            continue
        with counting(lab, app, "http") as kernel:
            res = answers(lab, "client", f"{app}:80", n=30, timeout=0.5)
        assert res.ok == 30, f"{res.failed} of 30 requests to {app} failed"
        chosen = {p for p, n in kernel.per_pod.items() if n > 0}
        assert want <= chosen or want <= set(res.backends), f"{app}: the kernel chose only {sorted(chosen)}"


def test_traced_after_migration(lab, ns):
    """You named the endpoint chain that took your traced client -> catalog connection, in nftables mode.

    Hint: `t = lab.trace("client", "catalog")` after the migration, then the `endpoint-...` chain in
    its path: answer("09-capstone/traced-after-migration", ...).
    """
    assert lab.mode == "nftables", (f"the lab runs {lab.mode}: this question reads nftables' endpoint chains "
                                    "(lab.set_mode('nftables'), then trace and answer)")
    _, hop, trace = traced_endpoint(lab, "09-capstone/traced-after-migration", "nftables", "client")
    assert trace["target"].split(":")[0] == "catalog", f"that trace went to {trace['target']}, not catalog"
    out = ns(hop["node"]).run(f"nft list chain ip kube-proxy '{hop['chain']}'")
    assert out.rc == 0 and "dnat" in out.stdout, f"{hop['chain']} is gone from {hop['node']}: trace and answer again"
