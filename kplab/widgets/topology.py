"""A picture of the lab: nodes with their pods, Services above, an edge per endpoint.

`topology_svg()` is pure (kubernetes model objects in, SVG text out) so it is unit-tested
without a lab; `topology(lab)` wraps it in a widget with a refresh button.  Edges come from the
EndpointSlices, not from label selectors: the picture shows what kube-proxy sees, so a Service
whose selector matches nothing has no edges, and a not-ready endpoint is drawn dashed.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

import ipywidgets as w

if TYPE_CHECKING:
    from kplab import Lab

POD_W, POD_H, GAP = 150, 40, 10
SVC_W, SVC_H = 170, 46
TOP, NODE_Y = 20, 120


def _endpoint_pods(slices: list[Any]) -> dict[str, list[tuple[str, bool]]]:
    """service name -> [(pod name, ready)] from EndpointSlices."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for sl in slices:
        svc = (sl.metadata.labels or {}).get("kubernetes.io/service-name", "")
        for ep in sl.endpoints or []:
            ref = ep.target_ref.name if ep.target_ref else ""
            ready = bool(ep.conditions is None or ep.conditions.ready is not False)
            if ref:
                out.setdefault(svc, []).append((ref, ready))
    return out


def _text(x: float, y: float, s: str, size: int = 12, weight: str = "normal", anchor: str = "middle") -> str:
    return (f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" font-weight="{weight}" '
            f'text-anchor="{anchor}" font-family="sans-serif">{escape(s)}</text>')


def topology_svg(nodes: dict[str, str], pods: list[Any], services: list[Any], slices: list[Any]) -> str:
    """SVG of nodes (name -> node IP), their pods, the Services and their endpoints."""
    by_node: dict[str, list[Any]] = {n: [] for n in nodes}
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        by_node.setdefault(pod.spec.node_name or "?", []).append(pod)
    col_w = POD_W + 2 * GAP
    node_h = 40 + max([len(v) for v in by_node.values()] + [1]) * (POD_H + GAP)
    width = max(len(by_node) * (col_w + GAP) + GAP, len(services) * (SVC_W + GAP) + GAP, 400)
    height = NODE_Y + node_h + GAP
    parts: list[str] = []
    pod_xy: dict[str, tuple[float, float]] = {}
    for i, (node, node_pods) in enumerate(by_node.items()):
        x = GAP + i * (col_w + GAP)
        parts.append(f'<rect x="{x}" y="{NODE_Y}" width="{col_w}" height="{node_h}" rx="8" '
                     'fill="#f1f3f4" stroke="#5f6368"/>')
        parts.append(_text(x + col_w / 2, NODE_Y + 18, f"{node}  {nodes.get(node, '')}", 12, "bold"))
        for j, pod in enumerate(node_pods):
            px, py = x + GAP, NODE_Y + 30 + j * (POD_H + GAP)
            ready = all(c.status == "True" for c in (pod.status.conditions or []) if c.type == "Ready")
            fill = "#e6f4ea" if ready else "#fce8e6"
            parts.append(f'<rect class="pod" x="{px}" y="{py}" width="{POD_W}" height="{POD_H}" rx="5" '
                         f'fill="{fill}" stroke="#1e8e3e"/>')
            parts.append(_text(px + POD_W / 2, py + 16, pod.metadata.name, 11, "bold"))
            parts.append(_text(px + POD_W / 2, py + 31, pod.status.pod_ip or "(no IP)", 11))
            pod_xy[pod.metadata.name] = (px + POD_W / 2, py)
    edges = _endpoint_pods(slices)
    for k, svc in enumerate(sorted(services, key=lambda s: s.metadata.name)):
        sx, sy = GAP + k * (SVC_W + GAP), TOP
        ports = ", ".join(f"{p.port}/{p.protocol}" + (f" :{p.node_port}" if p.node_port else "")
                          for p in svc.spec.ports or [])
        parts.append(f'<rect class="service" x="{sx}" y="{sy}" width="{SVC_W}" height="{SVC_H}" rx="5" '
                     'fill="#e8f0fe" stroke="#1a73e8"/>')
        parts.append(_text(sx + SVC_W / 2, sy + 16, f"svc/{svc.metadata.name} {svc.spec.cluster_ip or ''}", 11, "bold"))
        parts.append(_text(sx + SVC_W / 2, sy + 33, ports, 10))
        for pod_name, ready in edges.get(svc.metadata.name, []):
            if pod_name in pod_xy:
                px, py = pod_xy[pod_name]
                dash = "" if ready else ' stroke-dasharray="4 3"'
                parts.append(f'<line x1="{sx + SVC_W / 2:.0f}" y1="{sy + SVC_H}" x2="{px:.0f}" y2="{py:.0f}" '
                             f'stroke="#1a73e8" stroke-opacity="0.6"{dash}/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">' + "".join(parts) + "</svg>")


def lab_svg(lab: Lab) -> str:
    nodes = {n: lab.node_ip(n) for n in lab.nodes}
    return topology_svg(nodes, lab.pods(), lab.services(), lab.endpoint_slices())


def topology(lab: Lab) -> w.VBox:
    """The lab's picture with a refresh button (the picture is read when you click)."""
    picture = w.HTML(lab_svg(lab))
    button = w.Button(description="refresh", icon="refresh")

    def refresh(_: Any = None) -> None:
        picture.value = lab_svg(lab)

    button.on_click(refresh)
    box = w.VBox([button, picture])
    box.refresh = refresh  # type: ignore[attr-defined]
    return box
