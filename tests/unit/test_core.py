"""The pure core: upstream's hashes, endpoint categorisation, admission, controllers (no root)."""

from __future__ import annotations

import pytest

import kplab
from kplab.cluster import controller, deployments, manifests
from kplab.errors import ManifestError
from kplab.formats import naming
from kplab.proxy.core import Endpoint, ServicePort, ServicePortName, build_state, categorize_endpoints


def test_public_api_is_explicit():
    import types

    public = {n for n in dir(kplab) if not n.startswith("_") and not isinstance(getattr(kplab, n), types.ModuleType)}
    assert public == set(kplab.__all__) - {"__version__"}


@pytest.mark.parametrize("spn,proto,expected", [
    ("ns4/svc4:p80", "tcp", "4SW47YFZTEDKD3PK"),  # KEP-3866's example
    ("default/kubernetes:https", "tcp", "NPX46M4PTMTKRN6Y"),  # the well-known KUBE-SVC-NPX46M4PTMTKRN6Y
    ("ns1/svc1:p80", "tcp", "XPGD46QRK7WJZT7O"),
])
def test_iptables_hash_vectors(spn, proto, expected):
    assert naming.port_proto_hash(spn, proto) == expected
    assert naming.iptables_chain("KUBE-SVC-", spn, proto) == "KUBE-SVC-" + expected


def test_sep_and_nft_name_vectors():
    assert naming.iptables_sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    base = naming.nft_service_base("ns1", "svc1", "TCP", "p80")
    assert "service-" + naming.hash_and_truncate(base) == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    ep = naming.nft_endpoint_base(base, "10.180.0.1", 80)
    assert "endpoint-" + naming.hash_and_truncate(ep) == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    assert len(naming.hash_and_truncate("x" * 500)) == naming.NFT_NAME_MAX


def svc(**kw) -> ServicePort:
    return ServicePort(name=ServicePortName("ns", "s", "p"), cluster_ip="10.96.0.5", port=80, **kw)


def ep(ip: str, local=False, ready=True, serving=True, terminating=False) -> Endpoint:
    return Endpoint(ip, 8080, is_local=local, ready=ready, serving=serving, terminating=terminating)


def test_categorize_cluster_policy_prefers_ready_then_terminating():
    eps = [ep("10.0.0.1"), ep("10.0.0.2", ready=False, terminating=True)]
    c = categorize_endpoints(eps, svc())
    assert [e.ip for e in c.cluster] == ["10.0.0.1"] and c.has_any
    c = categorize_endpoints([ep("10.0.0.2", ready=False, terminating=True)], svc())
    assert [e.ip for e in c.all_reachable] == ["10.0.0.2"], "terminating fallback (KEP-1669)"
    c = categorize_endpoints([ep("10.0.0.3", ready=False, serving=False)], svc())
    assert c.all_reachable == [] and not c.has_any


def test_categorize_local_policies():
    eps = [ep("10.0.0.1", local=True), ep("10.0.0.2")]
    internal = categorize_endpoints(eps, svc(internal_policy_local=True))
    assert [e.ip for e in internal.local] == ["10.0.0.1"] and internal.cluster == []
    external = categorize_endpoints(eps, svc(node_port=30000, external_policy_local=True))
    assert [e.ip for e in external.local] == ["10.0.0.1"]
    assert len(external.cluster) == 2, "Cluster endpoints still needed for short-circuiting"
    none_local = categorize_endpoints([ep("10.0.0.2")], svc(internal_policy_local=True))
    assert none_local.local == [] and none_local.has_any, "DROP, not REJECT: endpoints exist elsewhere"


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80,
                                                                                 "targetPort": "http"}]}}


def test_admission_allocates_stably_and_validates():
    adm = manifests.Admission(manifests.Network())
    a = adm.admit(manifests.load([SERVICE])[0])
    ip, port = a.body["spec"]["clusterIP"], a.body["spec"]["ports"][0]["nodePort"]
    again = manifests.Admission(manifests.Network()).admit(manifests.load([SERVICE])[0])
    assert (again.body["spec"]["clusterIP"], again.body["spec"]["ports"][0]["nodePort"]) == (ip, port)
    assert ip.startswith("10.96.") and 30000 <= port <= 32767
    other = {**SERVICE, "metadata": {"name": "other"},
             "spec": {**SERVICE["spec"], "clusterIP": ip, "ports": [{"port": 81}]}}
    with pytest.raises(ManifestError, match=f"<inline>: Service default/other: spec.clusterIP: {ip} is already"):
        adm.admit(manifests.load([other])[0])


def test_load_balancer_gets_an_ip_and_health_check_port():
    lb = {**SERVICE, "spec": {**SERVICE["spec"], "type": "LoadBalancer", "externalTrafficPolicy": "Local"}}
    body = manifests.Admission(manifests.Network()).admit(manifests.load([lb])[0]).body
    assert body["status"]["loadBalancer"]["ingress"][0]["ip"].startswith("172.18.255.")
    assert 30000 <= body["spec"]["healthCheckNodePort"] <= 32767


def test_controllers_make_pods_and_slices_with_named_ports():
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {
               "metadata": {"labels": {"app": "web"}},
               "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}}}}
    objects = {"Deployment": {"default/web": dep}, "Service": {"default/web": SERVICE}}
    deployments.reconcile(objects, now=0.0)
    controller.place_and_address(objects["Pod"], ["node-1", "node-2"], {"node-1": "10.244.1.0/24",
                                                                        "node-2": "10.244.2.0/24"})
    pods = objects["Pod"]
    assert len(pods) == 3 and {p["spec"]["nodeName"] for p in pods.values()} == {"node-1", "node-2"}
    first = next(iter(pods.values()))
    first["metadata"]["annotations"] = {controller.READY_ANN: "false"}
    slices = controller.endpoint_slices(objects)
    (s,) = slices.values()
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert sorted(e["conditions"]["ready"] for e in s["endpoints"]) == [False, True, True]
    state = build_state([manifests.model(SERVICE | {"spec": {**SERVICE["spec"], "clusterIP": "10.96.0.9"}})],
                        [manifests.model(s)], node_name="node-1")
    (key,) = state.services
    assert len(state.endpoints[key]) == 3 and sum(e.is_local for e in state.endpoints[key]) >= 1


def test_unknown_kind_names_the_file(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    with pytest.raises(ManifestError, match=f"{f}: Secret default/s: unknown kind v1/Secret"):
        manifests.load([f])


@pytest.mark.parametrize("text, said", [
    ("kind: Service\nmetadata: {name: x}\n",
     "<inline>: Service default/x: apiVersion: not set: every object needs apiVersion and kind (here apiVersion: v1)"),
    ("apiVersion: v1\nmetadata: {name: x}\n", "<inline>: default/x: kind: not set"),
    ("apiVersion: v1\nkind: Servic\nmetadata: {name: x}\n", "unknown kind v1/Servic (did you mean Service?)"),
])
def test_a_manifest_without_apiversion_or_kind_says_so(text, said):
    """A Service without apiVersion was "unknown kind None/Service"."""
    with pytest.raises(ManifestError) as e:
        manifests.load([text])
    assert str(e.value).startswith(said) if said.startswith("<") else said in str(e.value), str(e.value)
