"""The kubectl-shaped core without a kernel: Deployments roll out, the API server's answers, edits."""

from __future__ import annotations

import copy

import pytest

from kplab.cluster import apiserver, controller, deployments, edits, manifests
from kplab.errors import LabError, ManifestError

NODES = ["node-1", "node-2"]
CIDRS = {"node-1": "10.244.1.0/24", "node-2": "10.244.2.0/24"}


def deployment(replicas: int = 3, **spec_extra) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            **spec_extra,
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    }


def pods_of(objects: dict, terminating: bool | None = None) -> list[dict]:
    return [
        p
        for p in objects.get("Pod", {}).values()
        if terminating is None or deployments.terminating(p) == terminating
    ]


def reconcile(objects: dict, now: float = 1000.0) -> None:
    deployments.reconcile(objects, now)
    controller.place_and_address(objects["Pod"], NODES, CIDRS)


def test_any_template_change_is_a_new_replicaset():
    """The hash covered the template's labels and the name only: a new port kept the old pods (issue 19)."""
    a = deployment()["spec"]["template"]
    b = copy.deepcopy(a)
    b["spec"]["containers"][0]["ports"].append({"name": "admin", "containerPort": 9090})
    assert deployments.template_hash(a) != deployments.template_hash(b)
    assert deployments.template_hash(a) == deployments.template_hash(copy.deepcopy(a))


def test_changed_template_rolls_out_new_pods_and_terminates_the_old():
    objects = {"Deployment": {"default/web": deployment()}}
    reconcile(objects)
    old = {p["metadata"]["name"] for p in pods_of(objects)}
    objects["Deployment"]["default/web"]["spec"]["template"]["spec"]["containers"][0]["ports"].append(
        {"name": "admin", "containerPort": 9090}
    )
    reconcile(objects, now=2000.0)
    assert {p["metadata"]["name"] for p in pods_of(objects, terminating=True)} == old
    new = pods_of(objects, terminating=False)
    assert len(new) == 3 and all(len(p["spec"]["containers"][0]["ports"]) == 2 for p in new)
    gone = pods_of(objects, terminating=True)[0]
    assert controller.pod_condition(gone) == (False, True, True), "terminating: not ready, still serving"
    assert gone["metadata"]["deletionTimestamp"] == deployments.rfc3339(2030)
    assert deployments.rollout_status(objects, "default/web")[0]
    assert deployments.expire(objects, 2029.0) == []
    assert len(deployments.expire(objects, 2030.0)) == 3 and len(pods_of(objects)) == 3


def test_a_rollout_stalls_while_new_pods_are_not_ready():
    objects = {"Deployment": {"default/web": deployment()}}
    reconcile(objects)
    tmpl = objects["Deployment"]["default/web"]["spec"]["template"]
    tmpl["metadata"]["annotations"] = {controller.READY_ANN: "false"}
    reconcile(objects)
    assert len(pods_of(objects, terminating=False)) == 4, "maxSurge 25% of 3: one new pod"
    assert not pods_of(objects, terminating=True), "maxUnavailable 0: no old pod goes"
    done, line = deployments.rollout_status(objects, "default/web")
    assert not done and line.endswith("1 out of 3 new replicas have been updated...")


def test_recreate_terminates_first_and_creates_when_they_are_gone():
    objects = {"Deployment": {"default/web": deployment(strategy={"type": "Recreate"})}}
    reconcile(objects)
    deployments.restart(objects["Deployment"]["default/web"], 1500.0)
    reconcile(objects, now=1500.0)
    assert len(pods_of(objects, terminating=True)) == 3 and not pods_of(objects, terminating=False)
    deployments.expire(objects, 1530.0)
    reconcile(objects, now=1530.0)
    assert len(pods_of(objects, terminating=False)) == 3


def test_a_pod_that_leaves_the_selector_is_released_and_replaced():
    objects = {"Deployment": {"default/web": deployment()}}
    reconcile(objects)
    pod = pods_of(objects)[0]
    pod["metadata"]["labels"].pop("app")
    reconcile(objects)
    assert deployments.owner(pod) is None and len(pods_of(objects)) == 4
    pod["metadata"]["labels"]["app"] = "web"  # back: adopted again, and one too many goes
    reconcile(objects)
    assert deployments.owner(pod) == "default/web" and len(pods_of(objects)) == 3


def test_deleting_the_deployment_takes_its_pods_at_once():
    objects = {"Deployment": {"default/web": deployment()}}
    reconcile(objects)
    del objects["Deployment"]["default/web"]
    reconcile(objects)
    assert objects["Pod"] == {}


def test_addresses_held_by_a_namespace_are_not_handed_out():
    """A deleted pod's address went to the next pod while its namespace still held it (issue 19)."""
    pods = {"default/a": {"metadata": {"name": "a", "namespace": "default"}, "spec": {"nodeName": "node-1"}}}
    controller.place_and_address(pods, NODES, CIDRS, held={"node-1": {"10.244.1.2", "10.244.1.3"}})
    assert pods["default/a"]["status"]["podIP"] == "10.244.1.4"
    last = {"node-1": "10.244.1.7"}
    pods["default/b"] = {"metadata": {"name": "b", "namespace": "default"}, "spec": {"nodeName": "node-1"}}
    controller.place_and_address(pods, NODES, CIDRS, last=last)
    assert pods["default/b"]["status"]["podIP"] == "10.244.1.8" == last["node-1"], "host-local: the next one"


def test_a_service_without_endpoints_has_a_slice_with_ports_unset():
    """kubectl shows `<unset>` ports for a Service scaled to 0 (issue 20, item 12)."""
    svc = {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    (s,) = controller.endpoint_slices({"Service": {"default/web": svc}, "Pod": {}}).values()
    assert "ports" not in s and s["endpoints"] == []


def test_the_api_server_keeps_what_it_owns_and_says_what_changed():
    objects: dict = {}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c"}]},
    }
    assert apiserver.store(objects, "Pod", "default/p", pod, 0.0) == ("created", "")
    controller.place_and_address(objects["Pod"], NODES, CIDRS)
    ip = objects["Pod"]["default/p"]["status"]["podIP"]
    assert apiserver.store(objects, "Pod", "default/p", pod, 1.0) == ("unchanged", "")
    relabeled = copy.deepcopy(pod)
    relabeled["metadata"]["labels"] = {"a": "c"}
    assert apiserver.store(objects, "Pod", "default/p", relabeled, 2.0)[0] == "configured"
    assert objects["Pod"]["default/p"]["status"]["podIP"] == ip, "status survives a re-apply"
    moved = copy.deepcopy(relabeled)
    moved["spec"]["nodeName"] = (
        "node-2" if objects["Pod"]["default/p"]["spec"]["nodeName"] == "node-1" else "node-1"
    )
    verb, note = apiserver.store(objects, "Pod", "default/p", moved, 3.0)
    assert verb == "configured" and "rebuilt on" in note and objects["Pod"]["default/p"]["status"] == {}
    assert apiserver.resource("Deployment") == "deployment.apps"
    assert apiserver.not_found("Deployment", "x") == 'deployments.apps "x" not found'


def test_label_arguments_are_checked_as_kubectl_does():
    assert edits.parse_changes(["app=web", "tier-"]) == {"app": "web", "tier": None}
    for bad, says in (
        ("app", "neither KEY=VALUE nor KEY-"),
        ("app=we b", "invalid label value"),
        ("-x=1", "invalid key"),
        ("Bad_Prefix/x=1", "prefix must be a DNS subdomain"),
    ):
        with pytest.raises(LabError, match=says):
            edits.parse_changes([bad])
    obj = {"metadata": {"name": "p", "labels": {"app": "web"}}}
    with pytest.raises(LabError, match=r"'app' already has a value \(web\), and --overwrite is false"):
        edits.change_metadata(obj, "labels", {"app": "api"}, overwrite=False)
    assert edits.change_metadata(obj, "labels", {"app": "api"}, overwrite=True)
    assert not edits.change_metadata(obj, "labels", {"gone": None}, overwrite=False)


def test_run_and_expose_make_kubectls_objects():
    pod = edits.run_pod("shell", 8080, None)
    assert pod["metadata"]["labels"] == {"run": "shell"}
    assert pod["spec"]["containers"][0]["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    svc = edits.expose("Deployment", deployment(), None, None, "NodePort", "front")
    assert svc["metadata"]["name"] == "front" and svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["selector"] == {"app": "web"} and svc["spec"]["ports"][0]["port"] == 8080
    with pytest.raises(LabError, match="--type 'nodeport': choose ClusterIP, NodePort, LoadBalancer"):
        edits.expose("Deployment", deployment(), 80, None, "nodeport", None)
    with pytest.raises(LabError, match="has no labels to select its pods"):
        edits.expose("Pod", {"metadata": {"name": "p"}, "spec": {}}, 80, None, None, None)


@pytest.mark.parametrize(
    "name,says",
    [
        ("outside", "names one of the lab's own network namespaces"),
        ("node-3", "names one of the lab's own network namespaces"),
        ("web", "a Pod named 'web' exists in namespace 'default'"),
    ],
)
def test_pod_names_are_unique_across_a_labs_namespaces(name, says):
    """`up` failed with 'namespace ... exists already: run kplab down' (issue 20, item 7)."""
    existing = {"default/web": {"metadata": {"name": "web", "namespace": "default"}}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {"containers": []},
    }
    with pytest.raises(ManifestError, match=f"Pod team-a/{name}: metadata.name: .*{says}"):
        manifests.admit_all(manifests.Network(), {"Pod": existing}, [pod])
    twice = [pod | {"metadata": {"name": "p", "namespace": ns}} for ns in ("a", "b")]
    with pytest.raises(ManifestError, match="a Pod named 'p' exists in namespace 'a'"):
        manifests.admit_all(manifests.Network(), {}, twice)


def test_label_selectors_read_as_kubectl_reads_them():
    from kplab.cluster.selectors import parse as parse_selector
    from kplab.cluster.selectors import selects

    reqs = parse_selector("app in (web, api),tier!=db,!canary,env")
    assert selects(reqs, {"app": "web", "env": "prod"})
    assert not selects(reqs, {"app": "web", "env": "prod", "canary": "1"})
    assert not selects(reqs, {"app": "shop", "env": "prod"})
    assert selects(parse_selector("app=web"), {"app": "web"}) and not selects(parse_selector("app==web"), {})
    with pytest.raises(LabError, match=r"label selector 'app in \(web': cannot read"):
        parse_selector("app in (web")


def test_v1_endpoints_are_built_from_the_slices():
    from kplab.cluster.kubeviews import endpoints

    def ep(ip: str, ready: bool, terminating: bool = False) -> dict:
        return {
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": True, "terminating": terminating},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "name": ip, "namespace": "default"},
        }

    svc = {"metadata": {"name": "web", "namespace": "default"}, "spec": {}}
    eps = {
        "metadata": {
            "name": "web-x",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [ep("10.0.0.1", True), ep("10.0.0.2", False), ep("10.0.0.3", False, terminating=True)],
    }
    (e,) = endpoints({"Service": {"default/web": svc}, "EndpointSlice": {"default/web-x": eps}})
    (sub,) = e["subsets"]
    assert [a["ip"] for a in sub["addresses"]] == ["10.0.0.1"]
    assert [a["ip"] for a in sub["notReadyAddresses"]] == ["10.0.0.2"], "terminating pods are left out"
    assert sub["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]


def test_kubectls_ages():
    from kplab.cluster.kubeviews import age

    t = deployments.rfc3339(0)
    assert [age(t, s) for s in (45, 130, 600, 7260, 11000, 100000, 400000, 1000000)] == [
        "45s",
        "2m10s",
        "10m",
        "121m",
        "3h3m",
        "27h",
        "4d15h",
        "11d",
    ]


IPTABLES = """*nat
Chain KUBE-SERVICES
    0   0  -d 10.96.0.5/32 -p tcp -m comment --comment "default/web:http cluster IP" -j KUBE-SVC-AAA
    0   0  -d 10.96.0.50/32 -p tcp -m comment --comment "default/web2:http cluster IP" -j KUBE-SVC-BBB
Chain KUBE-SVC-AAA   # default/web:http
         0          0  -m comment --comment "default/web:http -> 10.244.1.2:8080" -j KUBE-SEP-CCC
Chain KUBE-SVC-BBB   # default/web2:http
         0          0  -m comment --comment "default/web2:http -> 10.244.1.3:8080" -j KUBE-SEP-DDD
"""
NFT = """chain service-SUSTUHLJ-default/web/tcp/http   # default/web:http, Cluster traffic policy
    <- @service-ips 10.96.0.5 . tcp . 80
        0 pkts  numgen random mod 1 vmap { 0 : goto endpoint-X-default/web/tcp/http__10.244.1.2/8080 }

chain service-ABCDEFG2-team-default/web/tcp/http   # team-default/web:http
        0 pkts  numgen random mod 1 vmap { 0 : goto endpoint-Y }

map service-ips   (2 elements)
    10.96.0.5 . tcp . 80 : goto service-SUSTUHLJ-default/web/tcp/http
    10.96.0.9 . tcp . 80 : goto service-ABCDEFG2-team-default/web/tcp/http
"""
IPVS = """TCP  10.96.0.5:80 rr                         0       0       0  # default/web:http (ClusterIP)
  -> 10.244.1.2:8080        Masq    1      0          0                0       0       0
TCP  10.96.0.50:80 rr                        0       0       0  # default/web2:http (ClusterIP)
  -> 10.244.1.3:8080        Masq    1      0          0                0       0       0
"""


@pytest.mark.parametrize(
    "text,want,not_want",
    [
        (IPTABLES, ["KUBE-SVC-AAA", "Chain KUBE-SERVICES", "10.244.1.2:8080"], ["web2", "KUBE-SVC-BBB"]),
        (
            NFT,
            ["<- @service-ips 10.96.0.5", "map service-ips", "10.96.0.5 . tcp . 80"],
            ["team-default", "10.96.0.9"],
        ),
        (IPVS, ["TCP  10.96.0.5:80", "-> 10.244.1.2:8080"], ["web2", "10.244.1.3"]),
    ],
)
def test_describe_picks_a_services_lines_from_every_modes_read_back(text, want, not_want):
    from kplab.cluster.describe import rules_for

    got = "\n".join(rules_for(text, "default", "web", {"10.96.0.5"}))
    assert all(w in got for w in want) and not any(n in got for n in not_want), got


def test_the_hint_after_up_names_what_the_lab_has():
    from kplab.cli.kubectl import up_hint

    class FakeLab:
        nodes = ("node-1", "node-2", "node-3")

        def __init__(self, objects: dict) -> None:
            self._objects = objects

        def objects(self, kind: str) -> list[dict]:
            return self._objects.get(kind, [])

    shop = {
        "metadata": {"name": "shop"},
        "spec": {"type": "NodePort", "selector": {"app": "shop"}, "ports": [{"port": 80}]},
    }
    tester = {"metadata": {"name": "tester"}, "spec": {}}
    hint = up_hint(FakeLab({"Service": [shop], "Pod": [tester]}))
    assert "kplab curl tester shop" in hint and "kplab curl outside node-3:shop" in hint and "web" not in hint
    assert "curl" not in up_hint(FakeLab({})), "nothing to curl: no hint to"


@pytest.mark.parametrize(
    "argv,says",
    [(["get", "pods", "-w"], "kplab get: No such option: -w"), (["label"], "kplab label: Missing argument")],
)
def test_a_usage_error_is_one_line(capsys, argv, says):
    """click printed usage, a hint and the error over four lines."""
    from kplab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(says) and len(err.strip().splitlines()) == 1, err
