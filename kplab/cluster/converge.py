"""The kernel converged to the stored objects: pod namespaces and `outside`'s routes.

Whatever changed the objects (apply, delete, label, a rollout, a crash half-way), the lab ends
each change by comparing the pods that should exist with the namespaces that do:

    record (lab.json "podnet")   netns -> {pod, node, ip, ino}: what kplab built
    kernel (/run/netns)          which kplab-<lab>-* namespaces exist, and their inode

A namespace counts as built only when record and kernel agree (the same nsfs inode); one left
by a crashed command or made by hand is unknown and removed; a recorded one that is gone is
built again, and so is a pod whose node or IP changed.  Removing a pod's namespace deletes its
eth0 first: the veth pair goes, and the address with it, even while the echo agent still holds
a socket in the namespace (which keeps the namespace alive until the agent lets go).  The
nodes' neighbour entries for the address go too, so a pod that gets it later is reached.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.exceptions import NetlinkError

from kplab.cluster import netns
from kplab.cluster.run import NETNS_DIR
from kplab.errors import LabError


@dataclass(frozen=True)
class Want:
    pod: str  # "ns/name"
    node: str
    ip: str


@dataclass
class Plan:
    remove: list[str] = field(default_factory=list)  # netns names, recorded or unknown
    build: list[str] = field(default_factory=list)  # netns names of pods to build

    def pending(self, want: dict[str, Want]) -> set[str]:
        """Pods that are not (or not yet, or no longer correctly) in the kernel."""
        return {want[n].pod for n in self.build}


def inode(name: str) -> int | None:
    try:
        return os.stat(f"{NETNS_DIR}/{name}").st_ino
    except FileNotFoundError:
        return None


def wanted(lab: str, pods: list[dict[str, Any]]) -> dict[str, Want]:
    return {
        netns.ns_name(lab, p["metadata"]["name"]): Want(
            f"{p['metadata']['namespace']}/{p['metadata']['name']}",
            p["spec"]["nodeName"],
            p["status"]["podIP"],
        )
        for p in pods
    }


def existing(
    lab: str, record: dict[str, dict[str, Any]], infrastructure: set[str]
) -> tuple[dict[str, Any], list[str]]:
    """(built: record entries the kernel confirms, unknown: pod-like namespaces nobody recorded)."""
    present = {n: inode(n) for n in netns.lab_namespaces(lab) if n not in infrastructure}
    built = {n: e for n, e in record.items() if n in present and present[n] == e.get("ino")}
    return built, sorted(n for n in present if n not in built)


def held_ips(built: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in built.values():
        out.setdefault(e["node"], set()).add(e["ip"])
    return out


def plan(want: dict[str, Want], built: dict[str, dict[str, Any]], unknown: list[str]) -> Plan:
    p = Plan(remove=list(unknown))
    for name, e in sorted(built.items()):
        w = want.get(name)
        if w is None or (w.node, w.ip) != (e["node"], e["ip"]):
            p.remove.append(name)
    p.build = sorted(n for n in want if n not in built or n in p.remove)
    return p


DOOMED = 0x6B70  # the link group of veths about to go: one delete per node, one RCU grace period


def remove(b: netns.Builder, names: list[str], record: dict[str, Any], node_namespaces: list[str]) -> None:
    """Take pods' namespaces away: their veths (so their addresses) first, then the names.

    The node-side veth is named after the namespace; deleting it takes eth0 along, even while
    the echo agent still holds a socket in the namespace.  One request per node deletes them all
    (deleting them one by one cost a grace period each: seconds when scaling down).
    """
    ips = {ip for n in names for ip in ([record[n]["ip"]] if n in record else _addresses(n))}
    for node_ns in node_namespaces:
        ipr = b.ipr(node_ns)
        doomed = [i for n in names for i in ipr.link_lookup(ifname=netns.veth_name(n))]
        for idx in doomed:
            ipr.link("set", index=idx, group=DOOMED)
        if doomed:
            ipr.link("del", group=DOOMED)
        for bridge in ipr.link_lookup(ifname="cni0"):
            for ip in ips:
                with contextlib.suppress(NetlinkError):
                    ipr.neigh("del", dst=ip, ifindex=bridge)
    for name in names:
        netns.remove_netns(name)


def _addresses(name: str) -> list[str]:
    """eth0's IPv4 addresses in a namespace nobody recorded (left by a crash, or made by hand)."""
    with contextlib.suppress(NetlinkError, OSError, LabError):
        ipr = netns.open_ipr(name)
        try:
            return [
                a.get_attr("IFA_ADDRESS")
                for i in ipr.link_lookup(ifname="eth0")
                for a in ipr.get_addr(index=i, family=2)
            ]
        finally:
            ipr.close()
    return []


def build(
    b: netns.Builder, name: str, want: Want, node_ns: str, pod_cidr: str, mac: str | None = None
) -> dict[str, Any]:
    """A pod's namespace with eth0 on its node's cni0; its record: the inode (the namespace's identity)
    and eth0's MAC.  `mac`: the one the pod had, when it is rebuilt with its old address, so that
    neighbours' ARP entries stay right (a gratuitous ARP follows in any case, as a best effort)."""
    cidr = ipaddress.ip_network(pod_cidr)
    bridge = b.ipr(node_ns).link_lookup(ifname="cni0")[0]
    b.detach(node_ns, netns.veth_name(name))  # left by a namespace unmounted by hand, still alive
    with contextlib.suppress(NetlinkError):
        b.ipr(node_ns).neigh("del", dst=want.ip, ifindex=bridge)
    b.create_netns(name)
    mac = b.attach(
        node_ns,
        bridge,
        netns.veth_name(name),
        name,
        f"{want.ip}/{cidr.prefixlen}",
        str(cidr.network_address + 1),
        hairpin=True,
        mac=mac,
    )
    netns.announce(name, want.ip)
    return {"pod": want.pod, "node": want.node, "ip": want.ip, "ino": int(inode(name) or 0), "mac": mac}


def outside_routes(ipr: Any, wanted_ips: set[str], gateway: str) -> None:
    """`outside` routes exactly the wanted /32s (externalIPs, LB IPs) via `gateway`, no more."""
    have = {
        r.get_attr("RTA_DST")
        for r in ipr.get_routes(family=2, table=254)
        if r["dst_len"] == 32 and r.get_attr("RTA_GATEWAY")
    }
    for ip in sorted(have - wanted_ips):
        with contextlib.suppress(NetlinkError):
            ipr.route("del", dst=f"{ip}/32")
    for ip in sorted(wanted_ips - have):
        ipr.route("add", dst=f"{ip}/32", gateway=gateway)


TERMINATOR = """# kplab terminator: removes a lab's terminating pods when their grace period ends
import os, sys
pid = os.fork()
if pid:
    with open(sys.argv[2], "w") as f:
        f.write(str(pid))
    os._exit(0)
from kplab.lab import Lab
Lab(sys.argv[1])._terminator()
"""
TERMINATOR_MARKER = "kplab terminator"


class Converging:
    """Lab's half that makes the kernel follow the objects (mixed into kplab.lab.Lab).

    Uses Lab's `data`, `store`, `name`, `pod_cidr`, `node_ip`, `_sync_all`, `_update_echo`.
    """

    data: dict[str, Any]
    store: Any
    name: str
    if TYPE_CHECKING:  # provided by Lab

        def pod_cidr(self, node: str) -> str: ...
        def node_ip(self, node: str) -> str: ...
        def _sync_all(self) -> dict[str, Any]: ...
        def _update_echo(self) -> None: ...
        def _mutate(self) -> Any: ...
        def _held(self) -> dict[str, Any]: ...

    def _converge(self, starting: bool = False) -> None:
        """Controllers, then namespaces, echo and every node's rules, in the order that drops no request.

        A pod going away leaves the rules first (a sync without it), then its namespace; a new
        pod gets its namespace and echo sockets first, then the rules.  `starting`: `up` starts
        the echo agent and syncs itself.
        """
        from kplab.cluster import controller, deployments

        data, objs = self.data, self.data["objects"]
        now = time.time()
        deployments.expire(objs, now)
        infra = {netns.ns_name(self.name, n) for n in [*data["nodes"], "net", "outside"]}
        record = data.setdefault("podnet", {})
        built, unknown = existing(self.name, record, infra)
        deployments.reconcile(objs, now)
        pods = objs.setdefault("Pod", {})
        controller.place_and_address(
            pods,
            data["nodes"],
            {n: self.pod_cidr(n) for n in data["nodes"]},
            held=held_ips(built),
            last=data.setdefault("ipam", {}),
        )
        for p in pods.values():
            p["status"]["hostIP"] = self.node_ip(p["spec"]["nodeName"])
        want = wanted(self.name, list(pods.values()))
        todo = plan(want, built, unknown)
        early = bool(todo.remove) and not starting
        if early:  # rules first: nothing may send to a pod whose namespace is about to go
            self._set_slices(exclude=todo.pending(want))
            self._sync_all()
        node_namespaces = [netns.ns_name(self.name, n) for n in data["nodes"]]
        b = netns.Builder(on_create=self.store.journal)
        try:
            before = {n: dict(e) for n, e in record.items()}
            remove(b, todo.remove, before, node_namespaces)
            for name in todo.remove:
                record.pop(name, None)
            for name in todo.build:
                w = want[name]
                mac = before.get(name, {}).get("mac") if before.get(name, {}).get("ip") == w.ip else None
                record[name] = build(b, name, w, netns.ns_name(self.name, w.node), self.pod_cidr(w.node), mac)
            outside_routes(
                b.ipr(netns.ns_name(self.name, "outside")),
                self._external_ips(),
                self.node_ip(data["nodes"][0]),
            )
        finally:
            b.close()
        self._set_slices()
        if not starting:
            self._update_echo()
            if not early or todo.build:  # else the early sync had these very slices
                self._sync_all()
            self._ensure_terminator()

    def _set_slices(self, exclude: set[str] | frozenset[str] = frozenset()) -> None:
        """The endpointslice controller's output (pods in `exclude` left out); user-made slices stay."""
        from kplab.cluster import controller, deployments

        objs = self.data["objects"]
        given = {
            k: s
            for k, s in objs.get("EndpointSlice", {}).items()
            if (s["metadata"].get("labels") or {}).get("endpointslice.kubernetes.io/managed-by")
            != controller.MANAGED_BY
        }
        pods = {k: p for k, p in objs.get("Pod", {}).items() if k not in exclude}
        zones = {n: self.node_labels(n).get(controller.ZONE_LABEL, "") for n in self.data["nodes"]}
        made = controller.endpoint_slices({**objs, "Pod": pods}, zones)
        controller.stamp_trigger_times(objs.get("EndpointSlice", {}), made, time.time())
        for key, s in made.items():  # a slice keeps the time it was first made
            old = objs.get("EndpointSlice", {}).get(key, {}).get("metadata", {}).get("creationTimestamp")
            s["metadata"]["creationTimestamp"] = old or deployments.rfc3339(time.time())
        objs["EndpointSlice"] = {**given, **made}

    def _external_ips(self) -> set[str]:
        """externalIPs and LB IPs off the node network: `outside` routes them via node-1, as a router does."""
        node_net = ipaddress.ip_network(self.data["network"]["node_cidr"])
        out = set()
        for svc in self.data["objects"].get("Service", {}).values():
            ips = list((svc.get("spec") or {}).get("externalIPs") or [])
            ips += [
                i["ip"]
                for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
                if i.get("ip")
            ]
            out |= {ip for ip in ips if ipaddress.ip_address(ip) not in node_net}
        return out

    def _unreachable_external_ips(self) -> list[str]:
        """externalIPs on the node network that no node holds: nothing answers ARP for them there."""
        data = self._held()
        node_net = ipaddress.ip_network(data["network"]["node_cidr"])
        held = {self.node_ip(n) for n in data["nodes"]}
        out = []
        for key, svc in sorted(data["objects"].get("Service", {}).items()):
            for ip in (svc.get("spec") or {}).get("externalIPs") or []:
                if ipaddress.ip_address(ip) in node_net and ip not in held:
                    out.append(f"service/{key.split('/', 1)[1]}: externalIP {ip} is inside the node network {node_net} "
                               f"and no node has it: nothing answers for it there, so it is unreachable; choose an "
                               f"address off {node_net} (the LoadBalancer pool {data['network']['lb_pool']} is)")
        return out

    def _ensure_terminator(self) -> None:
        """Terminating pods must go when their grace period ends, whoever is around: start the timer."""
        from kplab.cluster import deployments
        from kplab.cluster.store import pid_alive_and_ours

        if deployments.next_deadline(self.data["objects"]) is None:
            return
        pidfile = self.store.dir / "terminator.pid"
        with contextlib.suppress(FileNotFoundError, ValueError):
            if pid_alive_and_ours(int(pidfile.read_text()), TERMINATOR_MARKER):
                return
        daemon([sys.executable, "-c", TERMINATOR, self.name, str(pidfile)], self.store.dir / "terminator.log")

    def _terminator(self) -> None:
        """The terminator process: converge when a grace period ends; exit when no pod is terminating."""
        from kplab.cluster import deployments

        end = time.monotonic() + 86400  # bounded, like every loop
        while time.monotonic() < end and (self.store.dir / "lab.json").exists():
            deadline = deployments.next_deadline(self.store.load()["objects"])
            if deadline is not None and deadline > time.time():
                time.sleep(min(1.0, deadline - time.time()))
                continue
            with self._mutate():
                self._converge()
                if deployments.next_deadline(self.data["objects"]) is None:
                    (self.store.dir / "terminator.pid").unlink(missing_ok=True)
                    return


def daemon(argv: list[str], log: Any, timeout: float = 10.0) -> None:
    """Start `argv` (which forks once, records its child's pid and exits): no zombie is left with us."""
    from kplab.cluster.store import _reap, spawn_detached

    _reap(spawn_detached(argv, log), wait=timeout)
