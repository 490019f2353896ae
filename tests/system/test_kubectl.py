"""kubectl habits on a running lab, with real packets: pods applied, moved, relabeled, rolled out
and deleted converge the kernel at once (issue 19), and the verbs answer as kubectl does.

One lab for the module (iptables mode); each test leaves it as it found it.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from kplab import Lab, ManifestError, clean
from kplab.cluster.netns import lab_namespaces
from kplab.cluster.store import STATE_ROOT
from kplab.testing.host import assert_same, host_snapshot
from kplab.testing.labs import run_cli

pytestmark = [pytest.mark.root]
NAME = "kctl"
API = Path(__file__).resolve().parents[2] / "labs" / "manifests" / "api.yaml"

SOLO = """apiVersion: v1
kind: Pod
metadata: {name: solo, labels: {app: solo}}
spec:
  nodeName: node-1
  containers: [{name: echo, image: kplab/echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: solo}
spec:
  type: NodePort
  selector: {app: solo}
  ports: [{port: 80, targetPort: 8080}]
"""

ROLL = """apiVersion: apps/v1
kind: Deployment
metadata: {name: roll}
spec:
  replicas: 3
  selector: {matchLabels: {app: roll}}
  template:
    metadata: {labels: {app: roll}}
    spec:
      terminationGracePeriodSeconds: 2
      containers: [{name: echo, image: kplab/echo, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: roll}
spec:
  selector: {app: roll}
  ports: [{name: admin, port: 90, targetPort: admin}, {name: http, port: 80, targetPort: http}]
"""


@pytest.fixture(scope="module")
def lab():
    clean(lab=NAME)
    before = host_snapshot()
    lab = Lab.up(NAME, mode="iptables")
    lab.before = before
    yield lab
    clean(lab=NAME)


def pod_names(lab: Lab, app: str, terminating: bool | None = None) -> set[str]:
    return {
        p.metadata.name
        for p in lab.pods()
        if (p.metadata.labels or {}).get("app") == app
        and (terminating is None or bool(p.metadata.deletion_timestamp) == terminating)
    }


def slice_pods(lab: Lab, service: str) -> dict[str, tuple[bool, bool]]:
    """pod -> (ready, terminating) in the Service's EndpointSlices."""
    return {
        e.target_ref.name: (e.conditions.ready, e.conditions.terminating)
        for s in lab.endpoint_slices()
        if s.metadata.labels["kubernetes.io/service-name"] == service
        for e in s.endpoints or []
    }


def wait_for(check, what: str, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout:g}s for {what}")


def test_a_bare_pod_applied_to_a_running_lab_answers_and_goes_at_once(lab):
    """It printed `configured`, showed 1/1 with an IP, and had no namespace (issue 19)."""
    assert lab.apply(SOLO) == ["pod/solo created", "service/solo created"]
    assert lab.curl("client", "solo", n=5).backends == {"solo": 5}
    assert lab.curl("outside", "node-2:solo", n=5).backends == {"solo": 5}, "through a NodePort from outside"
    assert lab.apply(SOLO) == ["pod/solo unchanged", "service/solo unchanged"]
    ip = lab.pod_ip("solo")
    assert lab.delete(SOLO) == ['pod "solo" deleted', 'service "solo" deleted']
    assert f"kplab-{NAME}-solo" not in lab_namespaces(NAME), "its namespace goes at once"
    lab.apply(SOLO)
    assert lab.pod_ip("solo") != ip, "host-local: a new pod does not take the address just freed"
    assert lab.curl("client", "solo", n=3).backends == {"solo": 3}, "and applying it again works"
    lab.delete(SOLO)


def test_deleting_a_deployment_removes_its_namespaces_and_applying_it_again_works(lab):
    """Its namespaces stayed: applying it again failed with 'namespace ... exists already' (issue 19)."""
    lab.apply(API)
    first = pod_names(lab, "api")
    lab.delete(API)
    assert not {f"kplab-{NAME}-{p}" for p in first} & set(lab_namespaces(NAME))
    assert lab.apply(API) == ["deployment.apps/api created", "service/api created"]
    res = lab.curl("client", "api", n=30)
    assert res.ok == 30 and set(res.backends) == pod_names(lab, "api"), res.errors
    lab.delete(API)
    other = yaml.safe_load_all(API.read_text())
    docs = [d for d in other]
    for d in docs:  # a different Deployment next: its pods answer, no leftover refuses
        d["metadata"]["name"] = "api2"
    docs[0]["spec"]["selector"]["matchLabels"] = docs[0]["spec"]["template"]["metadata"]["labels"] = {
        "app": "api2"
    }
    docs[1]["spec"]["selector"] = {"app": "api2"}
    lab.apply(*docs)
    assert lab.curl("client", "api2", n=12).ok == 12
    lab.delete(*docs)


def test_a_notebook_deletes_by_kind_and_name_as_kubectl_does(lab):
    """`lab.delete("svc", "t1")`, as a learner types `kubectl delete svc t1`, said "no such file: svc"."""
    from kplab.cluster.apiserver import NotFound
    from kplab.errors import LabError

    lab.apply("apiVersion: v1\nkind: Service\nmetadata: {name: t1}\n"
              "spec: {selector: {app: web}, ports: [{port: 81, targetPort: 8080}]}")
    assert lab.delete("svc", "t1") == ['service "t1" deleted']
    assert "t1" not in [s.metadata.name for s in lab.services()]
    with pytest.raises(NotFound, match='services "t1" not found'):
        lab.delete("svc", "t1")
    assert lab.delete("svc", "t1", ignore_not_found=True) == []
    with pytest.raises(LabError, match="ReplicaSet objects are the lab's own views"):
        lab.delete("rs", "web")


def test_a_changed_template_is_rolled_out_and_old_pods_go_after_their_grace(lab):
    """A new container port was never rolled out: the pod-template-hash ignored it (issue 19)."""
    lab.apply(ROLL)
    old = pod_names(lab, "roll")
    assert lab.curl("client", "roll:admin", n=1, timeout=0.5).ok == 0, "no pod has the named port yet"
    docs = list(yaml.safe_load_all(ROLL))
    docs[0]["spec"]["template"]["spec"]["containers"][0]["ports"].append(
        {"name": "admin", "containerPort": 9090}
    )
    assert lab.apply(*docs) == ["deployment.apps/roll configured", "service/roll unchanged"]
    new = pod_names(lab, "roll", terminating=False)
    assert len(new) == 3 and not new & old and pod_names(lab, "roll", terminating=True) == old
    res = lab.curl("client", "roll:admin", n=9)
    assert res.ok == 9 and set(res.backends) <= new and {a["port"] for a in res.answers} == {9090}
    assert lab.rollout_status("roll") == (True, 'deployment "roll" successfully rolled out')
    # the terminator (another process) removes them: this handle sees it without being told
    wait_for(lambda: not pod_names(lab, "roll", terminating=True), "the terminator to remove the old pods")
    assert not {f"kplab-{NAME}-{p}" for p in old} & set(lab_namespaces(NAME))
    lab.delete(ROLL)


def test_a_pod_reapplied_on_another_node_answers_from_there(lab):
    pod = yaml.safe_load(SOLO.split("---")[0])
    lab.apply(pod)
    assert lab.curl("client", f"{lab.pod_ip('solo')}:8080").answers[0]["node"] == "node-1"
    ino = os.stat(f"/run/netns/kplab-{NAME}-solo").st_ino
    moved = copy.deepcopy(pod)
    moved["spec"]["nodeName"] = "node-2"
    assert lab.apply(moved) == ["pod/solo configured"]
    assert any("rebuilt on node-2" in w for w in lab.warnings()), "said: a real API server refuses this"
    ip = lab.pod_ip("solo")
    assert ip.startswith("10.244.2.") and os.stat(f"/run/netns/kplab-{NAME}-solo").st_ino != ino
    res = lab.curl("client", f"{ip}:8080", n=3)
    assert res.ok == 3 and {a["node"] for a in res.answers} == {"node-2"}, res.errors
    lab.delete(pod)


def test_removing_a_label_takes_the_pod_out_of_the_service_and_every_nodes_rules(lab):
    victim = min(pod_names(lab, "web"))
    ip = lab.pod_ip(victim)
    assert lab.label("Pod", victim, {"app": None}) == f"pod/{victim} unlabeled"
    assert victim not in slice_pods(lab, "web")
    for node in lab.nodes:
        assert ip not in lab.rules(node)["text"], f"{node} still has rules for {victim}"
    assert len(slice_pods(lab, "web")) == 3, "the ReplicaSet made a replacement"
    res = lab.curl("client", "web", n=20)
    assert res.ok == 20 and victim not in res.backends
    lab.delete_objects("Pod", [victim])  # released: a bare pod now
    assert len(pod_names(lab, "web")) == 3


def test_rollout_restart_marks_old_endpoints_terminating_and_drops_no_request(lab):
    lab.apply(ROLL)
    old = pod_names(lab, "roll")
    stop, results = threading.Event(), []

    def loop() -> None:
        client = Lab.attach(NAME)  # its own handle: the rollout changes the lab meanwhile
        for _ in range(2000):  # bounded
            if stop.is_set():
                return
            results.append(client.curl("client", "roll:http", n=1, timeout=1.0))

    t = threading.Thread(target=loop)
    t.start()
    try:
        time.sleep(0.3)
        assert lab.rollout_restart("roll") == "deployment.apps/roll restarted"
        seen = slice_pods(lab, "roll")
        assert {p for p, (ready, term) in seen.items() if term and not ready} == old, (
            "old endpoints: terminating"
        )
        assert {p for p, (ready, term) in seen.items() if ready} == pod_names(lab, "roll", terminating=False)
        wait_for(lambda: not pod_names(lab, "roll", terminating=True), "old pods to go")
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(30)
    failed = sum(r.failed for r in results)
    assert len(results) > 10 and failed == 0, [r.errors for r in results if r.failed]
    assert {p for r in results for p in r.backends} >= old, "the old pods answered before the restart"
    lab.delete(ROLL)


def test_a_port_coming_and_going_leaves_the_node_bridges_mac_alone(lab):
    """cni0 took the lowest MAC of its ports: a pod leaving could change it, and the node's other
    pods kept the old MAC for their gateway, cut off for up to half a minute (found moving a pod)."""

    def mac() -> str:
        out = lab.exec("node-1", ["ip", "-o", "link", "show", "cni0"]).stdout
        return out.split("link/ether ")[1].split()[0]

    before = mac()
    add = [
        "ip",
        "link",
        "add",
        "lowmac",
        "address",
        "02:00:00:00:00:01",
        "type",
        "veth",
        "peer",
        "name",
        "lowpeer",
    ]
    assert lab.exec("node-1", add).ok
    try:
        lab.exec("node-1", ["ip", "link", "set", "lowmac", "master", "cni0", "up"])
        assert mac() == before
    finally:
        lab.exec("node-1", ["ip", "link", "del", "lowmac"])


def test_outside_loses_the_route_when_a_load_balancer_goes(lab):
    """The routes `outside` got for LB IPs stayed after the Services went (issue 20, item 5)."""
    lb = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "front"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "externalIPs": ["203.0.113.7"],
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    }
    lab.apply(lb)
    ip = lab.load_balancer_ip("front")
    assert lab.curl("outside", "lb:front", n=3).ok == 3
    assert lab.curl("outside", "203.0.113.7:80", n=3).ok == 3
    routes = lab.exec("outside", ["ip", "route"]).stdout
    assert f"{ip} via" in routes and "203.0.113.7 via" in routes, routes
    lab.delete(lb)
    routes = lab.exec("outside", ["ip", "route"]).stdout
    assert ip not in routes and "203.0.113.7" not in routes, "the externalIP's route goes too"


def test_pod_names_clash_is_refused_with_the_reason(lab):
    """`up` failed with 'namespace ... exists already: run kplab down' (issue 20, item 7)."""
    with pytest.raises(ManifestError, match="a Pod named 'client' exists in namespace 'default'"):
        lab.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "client", "namespace": "team-a"},
                "spec": {"containers": []},
            }
        )
    with pytest.raises(ManifestError, match="names one of the lab's own network namespaces"):
        lab.apply(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "outside"}, "spec": {"containers": []}}
        )


def test_a_leftover_namespace_is_removed_and_a_lost_one_rebuilt(lab):
    """The kernel, not the last picture of the objects, is what the lab compares with."""
    from kplab.cluster.netns import Builder, remove_netns

    b = Builder()
    b.create_netns(f"kplab-{NAME}-stray")
    b.close()
    web = next(
        p.metadata.name
        for p in lab.pods()
        if p.metadata.name.startswith("web-") and p.spec.node_name == "node-1"
    )  # beside client: client knows its MAC
    assert lab.curl("client", f"{lab.pod_ip(web)}:8080").ok == 1
    time.sleep(1.1)  # older than the kernel's ARP locktime (1 s): an announcement may replace it
    remove_netns(f"kplab-{NAME}-{web}")
    lab.scale("web", 3)  # a change that changes nothing: the lab converges all the same
    assert f"kplab-{NAME}-stray" not in lab_namespaces(NAME)
    res = lab.curl("client", f"{lab.pod_ip(web)}:8080")
    assert res.backends == {web: 1}, res.errors


def test_the_verbs_answer_as_kubectl(lab, capsys, monkeypatch):
    rc, out, _ = run_cli(capsys, monkeypatch, NAME, "get", "svc")
    assert rc == 0 and out.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    lab.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "team-a"},
            "spec": {"ports": [{"port": 80}]},
        }
    )
    rc, out, _ = run_cli(capsys, monkeypatch, NAME, "get", "services")
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["default", "web"], ["team-a", "web"]]
    rc, out, _ = run_cli(capsys, monkeypatch, NAME, "get", "services", "-n", "team-a", "-o", "name")
    assert out.split() == ["service/web"]
    rc, out, _ = run_cli(capsys, monkeypatch, NAME, "get", "ep", "web", "-o", "yaml")
    ep = yaml.safe_load(out)
    assert ep["kind"] == "Endpoints" and len(ep["subsets"][0]["addresses"]) == 3
    rc, out, _ = run_cli(capsys, monkeypatch, NAME, "get", "all")
    assert "deployment.apps/web" in out and "replicaset.apps/web-" in out and "service/web" in out
    rc, out, _ = run_cli(capsys, monkeypatch, NAME, "get", "po", "-l", "app in (web,client)", "-o", "name")
    assert len(out.split()) == 4
    rc, out, err = run_cli(capsys, monkeypatch, NAME, "delete", "-f", str(API))
    assert rc == 1 and err.splitlines() == [
        f'Error from server (NotFound): error when deleting "{API}": deployments.apps "api" not found',
        f'Error from server (NotFound): error when deleting "{API}": services "api" not found',
    ]
    rc, out, _ = run_cli(capsys, monkeypatch, NAME, "delete", "service", "web", "-n", "team-a")
    assert (rc, out) == (0, 'service "web" deleted\n')
    rc, out, _ = run_cli(capsys, monkeypatch, NAME, "run", "shell", "--port", "9000", "--labels", "app=shell")
    assert (rc, out) == (0, "pod/shell created\n")
    rc, out, _ = run_cli(capsys, monkeypatch, NAME, "expose", "pod", "shell", "--port", "80", "--target-port", "9000")
    assert (rc, out) == (0, "service/shell exposed\n")
    assert lab.curl("client", "shell", n=2).backends == {"shell": 2}, "a handle sees what the CLI made"
    assert "shell" in lab.get("pods", "shell") and lab.get("svc", "shell", output="json")["kind"] == "Service"
    assert lab.describe("pod", "shell").startswith("Name:")
    rc, out, _ = run_cli(capsys, monkeypatch, NAME, "describe", "service", "shell")
    assert "Endpoints:" in out and "node-2: last sync" in out
    assert "KUBE-SVC" in out and "default/shell" in out and "default/web" not in out, "its own rules only"
    run_cli(capsys, monkeypatch, NAME, "delete", "pod", "shell")
    rc, out, err = run_cli(capsys, monkeypatch, NAME, "delete", "svc", "shell", "nothere")
    assert rc == 1 and out == 'service "shell" deleted\n', "what was deleted is said, then NotFound"
    assert err == 'Error from server (NotFound): services "nothere" not found\n'


BAD_VERBS = {
    "output": (["get", "pods", "-o", "xml"], 'output format "xml"'),
    "kind": (["get", "foos"], 'doesn\'t have a resource type "foos"'),
    "selector": (["get", "pods", "-l", "app in (web"], "label selector 'app in (web'"),
    "get missing": (["get", "pod", "nope"], 'Error from server (NotFound): pods "nope" not found'),
    "describe kind": (["describe", "replicaset", "x"], "describe shows pod, service, node"),
    "describe missing": (["describe", "svc", "nope"], 'services "nope" not found'),
    "label syntax": (["label", "pod", "client", "app"], "'app' is neither KEY=VALUE nor KEY-"),
    "label value": (["label", "pod", "client", "app=a b"], "invalid label value"),
    "label overwrite": (
        ["label", "pod", "client", "app=other"],
        "already has a value (client), and --overwrite is false",
    ),
    "label missing": (["label", "pod", "nope", "a=b"], 'pods "nope" not found'),
    "annotate node": (["annotate", "node", "node-1", "a=b"], "the lab's own views"),
    "delete nothing": (["delete"], "say what to delete"),
    "delete missing": (["delete", "pod", "nope"], 'pods "nope" not found'),
    "run port": (["run", "x", "--port", "70000"], "--port 70000: a port is 1-65535"),
    "run exists": (["run", "client"], 'pods "client" already exists'),
    "expose type": (["expose", "deployment", "web", "--type", "Nodeport"], "--type 'Nodeport': choose"),
    "expose kind": (["expose", "node", "node-1"], "expose takes deployment NAME"),
    "rollout missing": (["rollout", "restart", "deployment", "nope"], 'deployments.apps "nope" not found'),
    "rollout kind": (["rollout", "status", "pod", "client"], "works on one deployment"),
    "scale missing": (
        ["scale", "deployment", "nope", "--replicas", "2"],
        'deployments.apps "nope" not found',
    ),
    "scale range": (["scale", "web", "--replicas", "500"], "500 replicas: a lab allows 0 to 200"),
}


@pytest.mark.parametrize("case", list(BAD_VERBS))
def test_bad_input_to_a_verb_is_one_line_naming_it(lab, capsys, monkeypatch, case):
    argv, says = BAD_VERBS[case]
    rc, out, err = run_cli(capsys, monkeypatch, NAME, *argv)
    assert rc == 1 and says in err and len(err.strip().splitlines()) == 1, (out, err)


def test_down_leaves_the_host_as_found(lab):
    """Last: pods applied, moved and rolled out, a terminator started, then down: nothing stays."""
    lab.apply(ROLL)
    lab.rollout_restart("roll")
    pid = int((STATE_ROOT / NAME / "terminator.pid").read_text())
    lab.down()
    assert not Path(f"/proc/{pid}").exists() or b"terminator" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert_same(lab.before, host_snapshot())
