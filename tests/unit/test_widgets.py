"""Widget logic without a lab: the topology picture, the moved-counter highlighter, the histogram.

A stand-in lab object answers the few calls the widgets make; nothing here claims a datapath
works (the browser and notebook tests do that against a real lab).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import (
    V1Endpoint,
    V1EndpointConditions,
    V1EndpointSlice,
    V1ObjectMeta,
    V1ObjectReference,
    V1Pod,
    V1PodCondition,
    V1PodSpec,
    V1PodStatus,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
)

from kplab.widgets import Traffic, highlight_moved, topology_svg


def pod(name: str, node: str, ip: str, ready: bool = True) -> V1Pod:
    cond = V1PodCondition(type="Ready", status="True" if ready else "False")
    return V1Pod(metadata=V1ObjectMeta(name=name, labels={"app": "web"}), spec=V1PodSpec(containers=[], node_name=node),
                 status=V1PodStatus(pod_ip=ip, conditions=[cond]))


def test_topology_draws_nodes_pods_services_and_endpoint_edges() -> None:
    pods = [pod("web-a", "node-1", "10.244.1.2"), pod("web-b", "node-2", "10.244.2.2", ready=False),
            pod("client", "node-1", "10.244.1.3")]
    svc = V1Service(metadata=V1ObjectMeta(name="web"), spec=V1ServiceSpec(
        cluster_ip="10.96.0.10", ports=[V1ServicePort(port=80, protocol="TCP", node_port=30080)]))
    eps = [V1Endpoint(addresses=["10.244.1.2"], conditions=V1EndpointConditions(ready=True),
                           target_ref=V1ObjectReference(name="web-a")),
           V1Endpoint(addresses=["10.244.2.2"], conditions=V1EndpointConditions(ready=False),
                           target_ref=V1ObjectReference(name="web-b"))]
    sl = V1EndpointSlice(address_type="IPv4", endpoints=eps,
                         metadata=V1ObjectMeta(name="web-x", labels={"kubernetes.io/service-name": "web"}))
    svg = topology_svg({"node-1": "172.18.0.11", "node-2": "172.18.0.12"}, pods, [svc], [sl])
    root = ET.fromstring(svg)  # well-formed
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "node-1  172.18.0.11" in texts and "web-b" in texts and "80/TCP :30080" in texts
    assert len(root.findall(f"{ns}rect[@class='pod']")) == 3
    lines = root.findall(f"{ns}line")
    assert len(lines) == 2 and sum("stroke-dasharray" in ln.attrib for ln in lines) == 1


def test_highlight_marks_lines_whose_counters_moved() -> None:
    old = "[3:180] -A KUBE-SERVICES -d 10.96.0.10/32 -j KUBE-SVC-X\n[0:0] -A KUBE-SVC-X -j KUBE-SEP-A\n"
    new = "[5:300] -A KUBE-SERVICES -d 10.96.0.10/32 -j KUBE-SVC-X\n[0:0] -A KUBE-SVC-X -j KUBE-SEP-A\n" \
          "[0:0] -A KUBE-SVC-X -j KUBE-SEP-B\n"
    html, moved = highlight_moved(old, new)
    assert moved == 1
    first = html.splitlines()[0]
    assert first.startswith("<mark") and "<b>5</b>" in first and "<b>300</b>" in first and "10.96.0.10" in first
    assert "<mark" not in html.splitlines()[1]
    assert highlight_moved(old, new, grep="SEP-B")[0].count("\n") == 0
    padded = highlight_moved("         0        0  -j KUBE-SEP-A", "        12      720  -j KUBE-SEP-A")
    assert padded[1] == 1 and "<b>12</b>" in padded[0]


@dataclass
class FakeCurl:
    ok: int
    failed: int = 0
    backends: dict[str, int] = field(default_factory=dict)


class FakeLab:
    def __init__(self) -> None:
        self.nodes = ["node-1", "node-2"]
        self.calls: list[tuple[str, str, int]] = []

    def curl(self, frm: str, target: str, n: int = 30, **_: Any) -> FakeCurl:
        self.calls.append((frm, target, n))
        return FakeCurl(ok=n, backends={"web-a": n - n // 2, "web-b": n // 2})


def test_traffic_sends_in_batches_and_draws_a_bar_per_backend() -> None:
    lab = FakeLab()
    t = Traffic(lab, "client", "web:80", n=25)  # type: ignore[arg-type]
    t.send(wait=True).join(10)
    assert sum(n for _, _, n in lab.calls) == 25 and len(lab.calls) == 10
    assert t.counts == {"web-a": 15, "web-b": 10}
    labels = [[c.value for c in row.children if hasattr(c, "value") and isinstance(c.value, str)]
              for row in t.bars.children]
    assert labels == [["web-a", "15"], ["web-b", "10"]]
    assert "25 answered" in t.status.value
