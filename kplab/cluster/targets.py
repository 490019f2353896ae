"""Targets as a learner types them, for `kplab curl`, `send` and `trace`: where the packets go.

    web  web:80  web:http  team-a/web  web.team-a:http     a Service's ClusterIP and port
    node-1:web  node-1:web:http                            a NodePort on that node's IP
    lb:web  lb:web:80                                      the Service's LoadBalancer IP
    10.96.0.10:53  10.96.0.10:dns                          an IP and a port (named: the Service's
                                                           whose ClusterIP, external or LB IP it is)

Service names are DNS labels (no dots), so `web.team-a` can only mean Service web in
namespace team-a.  A Service may be named like a node or `lb`: the Service form wins when
the part after it is not a Service.  With a protocol (`--udp`), the Service port of that
protocol is picked, or the error says there is none.  Every wrong target is one line that
names what is wrong.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from kplab.errors import LabError

PORT_HELP = "a number 1-65535 or a port name"


def service_key(name: str) -> str:
    """ "web" -> "default/web"; "team-a/web", "web.team-a", "web.team-a.svc[.cluster.local]" -> "team-a/web"."""
    if "/" in name:
        ns, _, svc = name.partition("/")
        return f"{ns or 'default'}/{svc}"
    svc, _, rest = name.partition(".")
    ns = rest.split(".", 1)[0] if rest else "default"
    return f"{ns}/{svc}"


def find_service(services: dict[str, Any], name: str, lab: str) -> dict[str, Any]:
    """The stored Service `name` names; else one line saying which Services there are."""
    key = service_key(name)
    if key in services:
        return services[key]  # type: ignore[no-any-return]
    elsewhere = sorted(k for k in services if k.split("/", 1)[1] == key.split("/", 1)[1])
    hint = (f" (in namespace {elsewhere[0].split('/')[0]}: "
            f"{key.split('/', 1)[1]}.{elsewhere[0].split('/')[0]})") if elsewhere else ""
    raise LabError(f"no Service named {name!r} in lab {lab!r}{hint}: see `kplab get services`")


def _ports_text(ports: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p.get('name') + ' ' if p.get('name') else ''}{p['port']}/{p.get('protocol', 'TCP')}"
                     for p in ports) or "none"


def service_port(svc: dict[str, Any], port: str | None, proto: str | None, shown: str) -> dict[str, Any]:
    """The port of `svc` named or numbered `port` (any when None) with protocol `proto` (any when None)."""
    ports = svc["spec"].get("ports") or []
    named = [p for p in ports if port is None or port in (str(p["port"]), p.get("name"))]
    fits = [p for p in named if proto is None or p.get("protocol", "TCP") == proto.upper()]
    if fits:
        return fits[0]  # type: ignore[no-any-return]
    if port is not None and port.isdigit() and not 1 <= int(port) <= 65535:
        raise LabError(f"Service {shown!r}: port {port} is out of range: give {PORT_HELP}")
    if named:  # the port exists, in another protocol
        msg = (f"port {port} of Service {shown!r} is {named[0].get('protocol', 'TCP')}, not {proto}" if port
               else f"Service {shown!r} has no {proto} port")
        raise LabError(f"{msg} (ports: {_ports_text(ports)})")
    raise LabError(f"Service {shown!r} has no {proto + ' ' if proto else ''}port"
                   f"{' ' + repr(port) if port else ''} (ports: {_ports_text(ports)})")


def _number(port: str, target: str) -> int:
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise LabError(f"target {target!r}: port {port!r} must be {PORT_HELP}")
    return int(port)


def _service_of_ip(services: dict[str, Any], ip: str) -> dict[str, Any] | None:
    for svc in services.values():
        spec, status = svc["spec"], svc.get("status") or {}
        ips = {spec.get("clusterIP"), *(spec.get("externalIPs") or []),
               *(i.get("ip") for i in (status.get("loadBalancer") or {}).get("ingress") or [])}
        if ip in ips:
            return svc  # type: ignore[no-any-return]
    return None


def resolve(lab: Any, target: str, proto: str | None = None) -> tuple[str, int, str]:
    """(ip, port, protocol) for a target (see the module docstring); `proto` "tcp"/"udp" or None."""
    services: dict[str, Any] = lab.stored_objects().get("Service", {})
    nodes: list[str] = lab.nodes
    want = proto.upper() if proto else None
    parts = target.split(":")
    if not target or any(not p for p in parts):
        raise LabError(f"target {target!r}: give a Service (web, web:80), node-1:web, lb:web or IP:PORT")
    try:
        ipaddress.ip_address(parts[0])
        is_ip = True
    except ValueError:
        is_ip = False
    if is_ip:
        if len(parts) != 2:
            raise LabError(f"target {target!r}: an IP needs one port, e.g. {parts[0]}:80")
        if parts[1].isdigit():
            return parts[0], _number(parts[1], target), (proto or "tcp")
        svc = _service_of_ip(services, parts[0])
        if svc is None:
            raise LabError(f"target {target!r}: {parts[0]} is no Service's IP, so give the port as a number")
        p = service_port(svc, parts[1], want, svc["metadata"]["name"])
        return parts[0], int(p["port"]), p.get("protocol", "TCP").lower()
    prefixed = (parts[0] in nodes or parts[0] == "lb") and len(parts) >= 2 and (
        service_key(parts[1]) in services or service_key(parts[0]) not in services)
    if prefixed:
        if len(parts) > 3:
            raise LabError(f"target {target!r}: too many ':' (give {parts[0]}:SERVICE[:PORT])")
        svc = find_service(services, parts[1], lab.name)
        p = service_port(svc, parts[2] if len(parts) > 2 else None, want, parts[1])
        protocol = p.get("protocol", "TCP").lower()
        if parts[0] == "lb":
            return lab.load_balancer_ip(parts[1]), int(p["port"]), protocol
        if not p.get("nodePort"):
            raise LabError(f"Service {parts[1]!r} has no NodePort (type {svc['spec'].get('type', 'ClusterIP')})")
        return lab.node_ip(parts[0]), int(p["nodePort"]), protocol
    if len(parts) > 2:
        raise LabError(f"target {target!r}: too many ':' (give SERVICE[:PORT], NODE:SERVICE[:PORT] or IP:PORT)")
    if service_key(parts[0]) not in services and len(parts) == 2 and service_key(parts[1]) in services:
        raise LabError(f"target {target!r}: no node named {parts[0]!r} (nodes: {', '.join(nodes)}; "
                       f"or lb:{parts[1]} for its LoadBalancer IP)")
    svc = find_service(services, parts[0], lab.name)
    p = service_port(svc, parts[1] if len(parts) > 1 else None, want, parts[0])
    ip = svc["spec"].get("clusterIP")
    if not ip or ip == "None":
        raise LabError(f"Service {parts[0]!r} has no ClusterIP (headless): target a pod's IP:PORT instead")
    return str(ip), int(p["port"]), p.get("protocol", "TCP").lower()
