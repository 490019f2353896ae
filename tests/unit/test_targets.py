"""Targets as a learner types them (kplab.cluster.targets): every defect of issue 20 item 10.

The lab here is its stored state only (the objects `kplab get` shows); no kernel is involved
in reading a target.
"""

from __future__ import annotations

import pytest

from kplab.cluster.targets import resolve
from kplab.errors import LabError


def svc(name, ip, ports, ns="default", status=None, **spec):
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip, "ports": ports, **spec},
            "status": status or {}}


class StoredLab:
    name = "t"

    def __init__(self):
        web = svc("web", "10.96.216.130", [
            {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
            {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}], type="NodePort")
        lb = svc("lb", "10.96.0.50", [{"port": 81, "protocol": "TCP"}])
        tcp_only = svc("api", "10.96.0.60", [{"name": "http", "port": 80, "protocol": "TCP"}])
        team = svc("web", "10.96.0.70", [{"name": "http", "port": 8080, "protocol": "TCP"}], ns="team-a")
        shop = svc("shop", "10.96.0.80", [{"port": 443, "protocol": "TCP", "nodePort": 31443}], type="LoadBalancer",
                   status={"loadBalancer": {"ingress": [{"ip": "172.18.255.200"}]}})
        self.nodes = ["node-1", "node-2"]
        self.objects = {"Service": {
            "default/web": web, "default/lb": lb, "default/api": tcp_only, "team-a/web": team, "default/shop": shop}}

    def stored_objects(self):
        return self.objects

    def node_ip(self, node):
        return {"node-1": "172.18.0.11", "node-2": "172.18.0.12"}[node]

    def load_balancer_ip(self, name):
        return self.objects["Service"][f"default/{name}"]["status"]["loadBalancer"]["ingress"][0]["ip"]


@pytest.fixture
def lab():
    return StoredLab()


@pytest.mark.parametrize(("target", "proto", "want"), [
    ("web", None, ("10.96.216.130", 80, "tcp")),
    ("web:http", None, ("10.96.216.130", 80, "tcp")),
    ("web", "udp", ("10.96.216.130", 53, "udp")),  # --udp picks the Service's UDP port
    ("web:dns", None, ("10.96.216.130", 53, "udp")),
    ("10.96.216.130:http", None, ("10.96.216.130", 80, "tcp")),  # a named port of the Service at that IP
    ("10.96.216.130:53", "udp", ("10.96.216.130", 53, "udp")),
    ("node-2:web", None, ("172.18.0.12", 30080, "tcp")),
    ("node-1:web", "udp", ("172.18.0.11", 30053, "udp")),
    ("web.team-a", None, ("10.96.0.70", 8080, "tcp")),
    ("web.team-a.svc.cluster.local:http", None, ("10.96.0.70", 8080, "tcp")),
    ("team-a/web", None, ("10.96.0.70", 8080, "tcp")),
    ("lb", None, ("10.96.0.50", 81, "tcp")),  # a Service named lb
    ("lb:81", None, ("10.96.0.50", 81, "tcp")),
    ("lb:shop", None, ("172.18.255.200", 443, "tcp")),
    ("shop:443", None, ("10.96.0.80", 443, "tcp")),
])
def test_targets_resolve(lab, target, proto, want):
    assert resolve(lab, target, proto) == want


@pytest.mark.parametrize(("target", "proto", "says"), [
    ("node-9:web", None, "no node named 'node-9' (nodes: node-1, node-2; or lb:web"),
    ("web:80:90", None, "too many ':'"),
    ("node-1:web:http:x", None, "too many ':'"),
    ("10.96.0.1:99999", None, "port '99999' must be a number 1-65535"),
    ("10.96.0.1:0", None, "port '0' must be a number 1-65535"),
    ("10.1.2.3:http", None, "10.1.2.3 is no Service's IP"),
    ("web:99999", None, "Service 'web': port 99999 is out of range: give a number 1-65535"),
    ("web:8080", None, "Service 'web' has no port '8080' (ports: http 80/TCP, dns 53/UDP)"),
    ("api", "udp", "Service 'api' has no UDP port (ports: http 80/TCP)"),
    ("web:http", "udp", "port http of Service 'web' is TCP, not UDP"),
    ("nothere", None, "no Service named 'nothere'"),
    ("web.team-b", None, "no Service named 'web.team-b'"),
    ("web:", None, "give a Service"),
    ("", None, "give a Service"),
])
def test_bad_targets_are_one_line_naming_the_defect(lab, target, proto, says):
    with pytest.raises(LabError) as e:
        resolve(lab, target, proto)
    assert says in str(e.value)
    assert "\n" not in str(e.value)
