"""`Lab`: a mini cluster in network namespaces, driven like kubectl, reprogrammed like kube-proxy.

    manifests --admit--> objects (lab.json) --controllers--> pods + EndpointSlices
        --build_state(node)--> ProxyState --mode.sync()--> the node's kernel

Every change ends by converging the kernel to the objects (kplab.cluster.converge: pods'
namespaces, the echo workload, outside's routes, every node's rules); kubectl's verbs live in
kplab.cluster.kubectl.  The Lab object is a handle: it reads the lab's state directory again
whenever another process saved it, so a notebook and the CLI can act on the same lab.  Methods
that change it hold the lab's lock; `up` is all-or-nothing and `down` removes exactly what the
lab created.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kplab.cluster import apiserver, controller, manifests, netns
from kplab.cluster.client import CurlResult, curl
from kplab.cluster.converge import Converging
from kplab.cluster.kubectl import KubectlVerbs
from kplab.cluster.manifests import admit_all
from kplab.cluster.offloop import off_loop
from kplab.cluster.run import Result, run
from kplab.cluster.store import Store, check_lab_name, spawn_detached, stop_pid, stop_recorded_processes
from kplab.errors import KplabError, LabError
from kplab.proxy.base import NodeContext, Proxier, proxier_class
from kplab.proxy.core import ProxyState, build_state
from kplab.proxy.servers.feed import feeding as kube_proxy_servers
from kplab.proxy.servers.feed import status as kube_proxy_servers_status

NONE_MODE = "none"  # no kube-proxy at all: what a Service is before anything programs it
ECHO_MARKER = "kplab.cluster.echo"
Source = str | Path | dict[str, Any]


def default_manifest() -> str:
    return (Path(__file__).parent / "manifests" / "default.yaml").read_text()


class Lab(KubectlVerbs, Converging):
    """A handle on one running lab; see the module docstring."""

    def __init__(self, name: str) -> None:
        check_lab_name(name)
        self.name = name
        self.store = Store(name)
        self._data: dict[str, Any] = {}
        self._stamp: tuple[int, int] | None = None

    @property
    def data(self) -> dict[str, Any]:
        """The lab's state as last read; read again when another process (the CLI beside a notebook,
        the terminator) has saved it since, so a handle never shows what is no longer so."""
        stamp = self._file_stamp()
        if self._data and stamp is not None and stamp != self._stamp:
            self._data, self._stamp = self.store.load(), stamp
        return self._data

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        self._data, self._stamp = value, self._file_stamp()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.store.dir / "lab.json")
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    @off_loop
    def up(cls, name: str = "default", mode: str = "iptables", manifests: Iterable[Source] | None = None,
           nodes: int = 2, **options: Any) -> Lab:
        """Build a lab and program `mode` on every node; on any failure remove everything built."""
        netns.check_environment()
        lab = cls(name)
        if lab.store.exists:
            lab.store.create()  # raises the one-line "exists already" error
        if mode != NONE_MODE:
            proxier_class(mode)  # unknown or missing mode: fail before building anything
        if not 1 <= nodes <= 20:
            raise LabError(f"--nodes {nodes}: a lab has 1 to 20 nodes")
        network = manifests_network(options)
        network.check()
        docs = admit_all(network, {}, list(manifests) if manifests is not None else [default_manifest()])
        lab.store.create()
        try:
            with lab.store.locked():
                lab.data = {"name": name, "mode": mode, "status": "building", "nodes": [f"node-{i}" for i in
                            range(1, nodes + 1)], "options": options, "network": vars(network),
                            "objects": {}, "pids": {}, "generation": 0, "created": time.time()}
                lab._check_pins(docs)
                for d in docs:
                    apiserver.store(lab.data["objects"], d.kind, d.key, d.body, lab.data["created"])
                lab._build_topology()
                lab._converge(starting=True)
                lab._start_echo()
                lab._sync_all()
                lab.data["status"] = "up"
                lab.store.save(lab.data)
        except BaseException:
            lab._teardown()
            raise
        return lab

    @classmethod
    def attach(cls, name: str = "default") -> Lab:
        lab = cls(name)
        lab._load()
        return lab

    @off_loop
    def down(self) -> None:
        """Stop the proxies and workload, remove every namespace and the state directory."""
        if not self.store.exists:
            raise LabError(f"no lab named {self.name!r}")
        with self.store.locked():
            self.data = self.store.load() if (self.store.dir / "lab.json").exists() else {}
            self._teardown()

    def _teardown(self) -> None:
        mode = self.data.get("mode")
        if mode and mode != NONE_MODE:
            for node in self.data.get("nodes", []):
                if os.path.exists(f"/run/netns/{netns.ns_name(self.name, node)}"):
                    try:
                        self.proxier(node).cleanup()
                    except KplabError:
                        pass  # the namespace goes next, taking its rules with it
        stop_recorded_processes(self.store.dir)
        remove_namespaces(self.name, self.store.journaled())
        shutil.rmtree(self.store.dir, ignore_errors=True)

    # ------------------------------------------------------------------ state helpers
    def _load(self) -> dict[str, Any]:
        stamp = self._file_stamp()  # before reading: a save in between is seen as a change next time
        self._data, self._stamp = self.store.load(), stamp
        if self.data.get("status") != "up":
            raise LabError(f"lab {self.name!r} is not up (status {self.data.get('status')}): "
                           f"`kplab clean --lab {self.name}` removes what a crashed lab left")
        return self.data

    def _mutate(self) -> _Mutation:
        return _Mutation(self)

    @property
    def mode(self) -> str:
        return str(self._load()["mode"])

    @property
    def nodes(self) -> list[str]:
        return list(self._load()["nodes"])

    def netns(self, name: str) -> str:
        """The named netns of a node, pod or `outside` (`net` is the node network)."""
        data = self.data or self._load()
        known = set(data["nodes"]) | {"outside", "net"} | {k.split("/", 1)[1] for k in data["objects"].get("Pod", {})}
        if name not in known:
            raise LabError(f"no node, pod or 'outside' named {name!r} in lab {self.name!r}: see `kplab get pods`")
        return netns.ns_name(self.name, name)

    def node_ip(self, node: str) -> str:
        data = self.data or self._load()
        i = data["nodes"].index(node) + 1
        net = ipaddress.ip_network(data["network"]["node_cidr"])
        return str(net.network_address + 10 + i)

    def pod_cidr(self, node: str) -> str:
        data = self.data or self._load()
        i = data["nodes"].index(node) + 1
        return str(list(ipaddress.ip_network(data["network"]["cluster_cidr"]).subnets(new_prefix=24))[i])

    def _pod(self, name: str) -> dict[str, Any]:
        for key, pod in (self.data or self._load())["objects"].get("Pod", {}).items():
            if key.split("/", 1)[1] == name:
                return pod  # type: ignore[no-any-return]
        raise LabError(f"no pod named {name!r} in lab {self.name!r}: see `kplab get pods`")

    def pod_ip(self, pod: str) -> str:
        return str(self._pod(pod)["status"]["podIP"])

    def _service(self, name: str) -> dict[str, Any]:
        ns, _, svc = name.rpartition("/")
        key = f"{ns or 'default'}/{svc}"
        found = (self.data or self._load())["objects"].get("Service", {}).get(key)
        if not found:
            raise LabError(f"no Service named {name!r} in lab {self.name!r}: see `kplab get services`")
        return found  # type: ignore[no-any-return]

    def service_ip(self, name: str) -> str:
        return str(self._service(name)["spec"]["clusterIP"])

    def _service_port(self, name: str, port: str | int | None) -> dict[str, Any]:
        ports = self._service(name)["spec"].get("ports") or []
        for p in ports:
            if port is None or str(port) in (str(p["port"]), p.get("name")):
                return p  # type: ignore[no-any-return]
        raise LabError(f"Service {name!r} has no port {port!r} (ports: "
                       f"{', '.join(str(p.get('name') or p['port']) for p in ports)})")

    def node_port(self, name: str, port: str | int | None = None) -> int:
        return int(self._service_port(name, port).get("nodePort") or 0)

    def load_balancer_ip(self, name: str) -> str:
        ingress = ((self._service(name).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if not ingress:
            raise LabError(f"Service {name!r} has no load-balancer IP (is it type LoadBalancer?)")
        return str(ingress[0]["ip"])

    def objects(self, kind: str) -> list[dict[str, Any]]:
        data = self.data or self._load()
        return [data["objects"].get(kind, {})[k] for k in sorted(data["objects"].get(kind, {}))]

    def pods(self) -> list[Any]:
        return [manifests.model(p) for p in self.objects("Pod")]

    def services(self) -> list[Any]:
        return [manifests.model(s) for s in self.objects("Service")]

    def endpoint_slices(self) -> list[Any]:
        return [manifests.model(s) for s in self.objects("EndpointSlice")]

    # ------------------------------------------------------------------ proxy
    def _models(self) -> tuple[list[Any], list[Any]]:
        """Services and EndpointSlices as kubernetes models, as every node's kube-proxy receives them."""
        data = self.data or self._load()
        return ([manifests.model(s) for s in data["objects"].get("Service", {}).values()],
                [manifests.model(s) for s in data["objects"].get("EndpointSlice", {}).values()])

    def state(self, node: str, models: tuple[list[Any], list[Any]] | None = None) -> ProxyState:
        """What `node`'s kube-proxy knows; pass `models` to share one deserialisation across nodes."""
        data = self.data or self._load()
        services, slices = models or self._models()
        net = data["network"]
        return build_state(services, slices, node_name=node, node_ips=(self.node_ip(node),),
                           cluster_cidr=net["cluster_cidr"], service_cidr=net["service_cidr"],
                           zone=self.node_labels(node).get(controller.ZONE_LABEL, ""),
                           nodeport_addresses=tuple((data.get("options") or {}).get("nodeport_addresses") or ()))

    def node_labels(self, node: str) -> dict[str, str]:
        """A node's labels: hostname, and topology.kubernetes.io/zone from the lab's `zones` option
        (zones=["a", "b"] puts node-1 in a, node-2 in b, node-3 in a, ...)."""
        data = self.data or self._load()
        return controller.node_labels(node, data["nodes"], (data.get("options") or {}).get("zones") or [])

    def proxier(self, node: str, mode: str | None = None) -> Proxier:
        data = self.data or self._load()
        mode = mode or data["mode"]
        if mode == NONE_MODE:
            raise LabError(f"lab {self.name!r} runs no kube-proxy (mode none): `kplab mode iptables` starts one")
        ctx = NodeContext(lab=self.name, node=node, netns=netns.ns_name(self.name, node),
                          state_dir=self.store.node_dir(node, mode), options=dict(data.get("options") or {}))
        return proxier_class(mode)(ctx)

    def _sync_all(self) -> dict[str, Any]:
        states = {}
        if self.data["mode"] != NONE_MODE:
            models = self._models()  # once per sync, not once per node
            states = {node: self.state(node, models) for node in self.data["nodes"]}
        with kube_proxy_servers(self, states) as feed:  # health, metrics: fed around every sync
            for node, state in states.items():
                feed.synced(node, self.proxier(node).sync(state))
        self.data["syncs"] = {n: {"at": time.time(), **vars(r)} for n, r in feed.results.items()}  # for describe
        return feed.results

    @off_loop
    def sync(self) -> dict[str, Any]:
        """Reprogram every node from the current objects (what kube-proxy's sync loop does)."""
        with self._mutate():
            return self._sync_all()

    @off_loop
    def rules(self, node: str) -> dict[str, Any]:
        return self.proxier(node).rules()

    @off_loop
    def set_mode(self, mode: str, **options: Any) -> None:
        """Switch every node to `mode`: the old mode's state is removed completely first."""
        if mode != NONE_MODE:
            proxier_class(mode)
        with self._mutate():
            old, old_options = self.data["mode"], dict(self.data.get("options") or {})
            if old != NONE_MODE:
                for node in self.data["nodes"]:
                    self.proxier(node, old).cleanup()
                shutil.rmtree(self.store.dir / "nodes", ignore_errors=True)
            self.data["mode"] = mode
            self.data.setdefault("options", {}).update(options)
            try:
                self._sync_all()
            except KplabError:
                # the new mode refused (a bad scheduler, a missing kernel feature): put the old one back
                if mode != NONE_MODE:
                    for node in self.data["nodes"]:
                        self.proxier(node, mode).cleanup()
                shutil.rmtree(self.store.dir / "nodes", ignore_errors=True)
                self.data["mode"], self.data["options"] = old, old_options
                self._sync_all()
                self.store.save(self.data)
                raise

    # ------------------------------------------------------------------ objects
    # apply, delete, scale, label, run, expose, rollout: kplab.cluster.kubectl (KubectlVerbs);
    # what every change ends with, the kernel converged to the objects: kplab.cluster.converge
    @off_loop
    def set_ready(self, pod: str, ready: bool = True, terminating: bool = False) -> None:
        """Flip a pod's readiness (and terminating state): its EndpointSlice follows."""
        with self._mutate():
            ann = self._pod(pod)["metadata"].setdefault("annotations", {})
            ann[controller.READY_ANN] = "true" if ready or terminating else "false"
            ann[controller.TERMINATING_ANN] = "true" if terminating else "false"
            self._converge()

    @off_loop
    def echo_stop(self, pod: str) -> None:
        """Stop the pod's echo server (its ports refuse connections); the pod stays Ready."""
        with self._mutate():
            self._pod(pod)["metadata"].setdefault("annotations", {})["kplab.io/echo"] = "stopped"
            self._update_echo()

    @off_loop
    def echo_start(self, pod: str) -> None:
        with self._mutate():
            self._pod(pod)["metadata"].setdefault("annotations", {}).pop("kplab.io/echo", None)
            self._update_echo()

    # ------------------------------------------------------------------ topology
    def _build_topology(self) -> None:
        data = self.data
        net = ipaddress.ip_network(data["network"]["node_cidr"])
        gw = str(net.network_address + 1)
        b = netns.Builder(on_create=self.store.journal)
        try:
            net_ns = netns.ns_name(self.name, "net")
            b.create_netns(net_ns)
            br = b.bridge(net_ns, "br0", f"{gw}/{net.prefixlen}")
            for node in data["nodes"]:
                ns = netns.ns_name(self.name, node)
                b.create_netns(ns)
                b.attach(net_ns, br, node, ns, f"{self.node_ip(node)}/{net.prefixlen}", gw)
                cidr = ipaddress.ip_network(self.pod_cidr(node))
                b.bridge(ns, "cni0", f"{cidr.network_address + 1}/{cidr.prefixlen}")
                for other in data["nodes"]:
                    if other != node:
                        b.route(ns, self.pod_cidr(other), self.node_ip(other))
                netns.write_sysctls(ns, {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"})
            outside = netns.ns_name(self.name, "outside")
            b.create_netns(outside)
            b.attach(net_ns, br, "outside", outside, f"{net.network_address + 100}/{net.prefixlen}", gw)
        finally:
            b.close()

    # ------------------------------------------------------------------ workload
    def _echo_spec(self) -> dict[str, Any]:
        pods, built = [], self.data.get("podnet", {})
        for pod in self.data["objects"].get("Pod", {}).values():
            ports = sorted({(int(p["containerPort"]), p.get("protocol", "TCP"))
                            for c in pod["spec"].get("containers") or [] for p in c.get("ports") or []})
            ns = netns.ns_name(self.name, pod["metadata"]["name"])
            pods.append({"name": pod["metadata"]["name"], "netns": ns, "ino": built.get(ns, {}).get("ino"),
                         "ip": pod["status"]["podIP"], "node": pod["spec"]["nodeName"], "ports": ports,
                         "stopped": (pod["metadata"].get("annotations") or {}).get("kplab.io/echo") == "stopped"})
        self.data["generation"] = self.data.get("generation", 0) + 1
        return {"generation": self.data["generation"], "pods": pods}

    def _write_echo_spec(self) -> int:
        spec = self._echo_spec()
        tmp = self.store.dir / "echo.json.tmp"
        tmp.write_text(json.dumps(spec))
        os.replace(tmp, self.store.dir / "echo.json")
        return int(spec["generation"])

    def _wait_echo(self, generation: int, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        ready = self.store.dir / "echo.ready"
        while time.monotonic() < end:
            try:
                if int(ready.read_text() or 0) >= generation:
                    return
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.01)
        raise LabError("the echo workload did not start: see /run/kplab/<lab>/echo.log")

    def _start_echo(self) -> None:
        gen = self._write_echo_spec()
        pid = spawn_detached([sys.executable, "-m", ECHO_MARKER, str(self.store.dir)], self.store.dir / "echo.log")
        (self.store.dir / "echo.pid").write_text(str(pid))
        self.data["pids"]["echo"] = pid
        self._wait_echo(gen)

    def _update_echo(self) -> None:
        gen = self._write_echo_spec()
        pid = self.data["pids"].get("echo")
        try:
            os.kill(int(pid), 1)  # SIGHUP: reconcile
        except (ProcessLookupError, TypeError):
            raise LabError("the lab's echo workload is not running: `kplab down` and `kplab up` again") from None
        self._wait_echo(gen)

    # ------------------------------------------------------------------ using the lab
    def exec(self, name: str, argv: list[str], timeout: float = 60.0) -> Result:
        return run(argv, self.netns(name), check=False, timeout=timeout)

    def resolve(self, target: str) -> tuple[str, int, str]:
        """'web', 'web:80', 'web:http', 'node-1:web[:port]', 'lb:web[:port]', 'ip:port' -> (ip, port, proto)."""
        data = self.data or self._load()
        parts = target.split(":")
        try:
            ipaddress.ip_address(parts[0])
            if len(parts) != 2:
                raise LabError(f"target {target!r}: an IP needs a port, e.g. {parts[0]}:80")
            port = int(parts[1])
            return parts[0], port, "tcp"
        except ValueError:
            pass
        if parts[0] in data["nodes"] or parts[0] == "lb":
            if len(parts) < 2:
                raise LabError(f"target {target!r}: say which Service, e.g. {parts[0]}:web")
            p = self._service_port(parts[1], parts[2] if len(parts) > 2 else None)
            if parts[0] == "lb":
                return self.load_balancer_ip(parts[1]), int(p["port"]), p.get("protocol", "TCP").lower()
            if not p.get("nodePort"):
                raise LabError(f"Service {parts[1]!r} has no NodePort (type {self._service(parts[1])['spec']['type']})")
            return self.node_ip(parts[0]), int(p["nodePort"]), p.get("protocol", "TCP").lower()
        p = self._service_port(parts[0], parts[1] if len(parts) > 1 else None)
        return self.service_ip(parts[0]), int(p["port"]), p.get("protocol", "TCP").lower()

    def curl(self, frm: str, target: str, n: int = 1, proto: str | None = None, timeout: float = 2.0) -> CurlResult:
        """n fresh connections from `frm` to `target`; which pods answered and what they saw."""
        ip, port, default_proto = self.resolve(target)
        return curl(self.netns(frm), ip, port, proto or default_proto, n=n, timeout=timeout, target=target)

    # seeing the packet: thin doors to kplab.packets.api and kplab.inspect (imported late: scapy is slow)
    def packets(self, name: str) -> Any:
        """scapy inside `name`'s netns: lab.packets("client").syn("web:80") -> what came back."""
        from kplab.packets.api import packets
        return packets(self, name)

    def capture(self, name: str, **options: Any) -> Any:
        """Capture in `name`'s netns while sending: with lab.capture("web-x", filter="tcp port 8080") as cap: ..."""
        from kplab.packets.api import capture
        return capture(self, name, **options)

    @off_loop
    def trace(self, frm: str, target: str, **options: Any) -> Any:
        """One connection and its path through the nodes, rule by rule (kplab.inspect.trace)."""
        from kplab.inspect.trace import trace
        return trace(self, frm, target, **options)

    @off_loop
    def conntrack(self, node: str, service: str | None = None) -> Any:
        """The node's conntrack entries (of `service` only, when given), both tuples each."""
        from kplab.inspect.conntrack import list_entries
        return list_entries(self, node, service)

    def warnings(self) -> list[str]:
        """Services whose selector matches no pod (allowed, but without endpoints), and the last apply's notes."""
        data = self.data or self._load()
        out = list(self.notes)
        for key, svc in sorted(data["objects"].get("Service", {}).items()):
            sel = (svc.get("spec") or {}).get("selector") or {}
            ns, name = key.split("/", 1)
            if sel and not any(controller.matches(sel, (p["metadata"].get("labels") or {}))
                               and p["metadata"]["namespace"] == ns for p in data["objects"].get("Pod", {}).values()):
                labels = ",".join(f"{k}={v}" for k, v in sel.items())
                out.append(f"service/{name}: selector {labels} matches no pod, so the Service has no endpoints")
        return out

    def status(self) -> dict[str, Any]:
        data = self._load()
        return {"name": self.name, "mode": data["mode"], "nodes": {n: self.node_ip(n) for n in data["nodes"]},
                "pods": len(data["objects"].get("Pod", {})), "services": len(data["objects"].get("Service", {})),
                "namespaces": netns.lab_namespaces(self.name), "state_dir": str(self.store.dir),
                "servers": kube_proxy_servers_status(self)}


class _Mutation:
    """Lock, reload, let the caller change `lab.data`, save (only if the body succeeded)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._cm = lab.store.locked()

    def __enter__(self) -> None:
        if not self.lab.store.exists:
            raise LabError(f"no lab named {self.lab.name!r}: start one with `kplab up --lab {self.lab.name}`")
        self._cm.__enter__()
        try:
            self.lab._load()
        except BaseException:
            self._cm.__exit__(None, None, None)
            raise

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        try:
            if et is None:
                self.lab.store.save(self.lab.data)
                self.lab._stamp = self.lab._file_stamp()  # our own save: nothing to read again
        finally:
            self._cm.__exit__(et, ev, tb)


def manifests_network(options: dict[str, Any]) -> manifests.Network:
    keys = ("service_cidr", "cluster_cidr", "node_cidr", "lb_pool")
    return manifests.Network(**{k: options[k] for k in keys if options.get(k)})


def remove_namespaces(lab: str, journaled: list[str]) -> None:
    """Remove a lab's namespaces: the journal's (reverse order) and any left with its prefix."""
    prefix = netns.ns_name(lab, "")
    for name in reversed(journaled):
        if name.startswith(prefix):
            netns.remove_netns(name)
    for name in netns.lab_namespaces(lab):
        netns.remove_netns(name)


def clean(lab: str | None = None, everything: bool = False) -> list[str]:
    """Remove leftovers: of one lab (`lab`), of crashed labs (default) or of every lab (`everything`).

    A lab is crashed when its state says "building" (or is unreadable) and nobody holds its
    lock, or when namespaces with its prefix exist without a state directory.  Only names with
    the kplab- prefix are ever touched.
    """
    from kplab.cluster.store import STATE_ROOT

    removed = []
    labs = {p.name for p in STATE_ROOT.iterdir()} if STATE_ROOT.is_dir() else set()
    orphans = {n[len(netns.PREFIX):].split("-", 1)[0] for n in netns.lab_namespaces()}
    for name in sorted(labs | orphans):
        if lab and name != lab:
            continue
        store = Store(name)
        if not (lab or everything):
            try:
                healthy = store.load().get("status") == "up"
            except (LabError, ValueError):
                healthy = False
            if (healthy or not store.lock_is_free()) and store.dir.is_dir():
                continue
        stop_recorded_processes(store.dir)
        remove_namespaces(name, store.journaled())
        shutil.rmtree(store.dir, ignore_errors=True)
        removed.append(name)
    return removed


__all__ = ["CurlResult", "Lab", "clean", "off_loop", "stop_pid"]
