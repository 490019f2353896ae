"""`Lab`: a mini cluster in network namespaces, driven like kubectl, reprogrammed like kube-proxy.

    manifests --admit--> objects (lab.json) --controllers--> pods + EndpointSlices
        --build_state(node)--> ProxyState --mode.sync()--> the node's kernel

Every change ends by converging the kernel to the objects (kplab.cluster.converge: pods'
namespaces, the echo workload, outside's routes, every node's rules); kubectl's verbs live in
kplab.cluster.kubectl, the state and lookups by name in kplab.cluster.handle, the node network
in kplab.cluster.topology, the echo workload's side in kplab.cluster.workload; this module adds
lifecycle, the proxy modes and the doors to kplab.packets and kplab.inspect.  The Lab object is a handle: it reads the lab's state directory again
whenever another process saved it, so a notebook and the CLI can act on the same lab.  Methods
that change it hold the lab's lock; `up` is all-or-nothing and `down` removes exactly what the
lab created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kplab.cluster import apiserver, controller, manifests, netns, targets, topology
from kplab.cluster import options as lab_options
from kplab.cluster.client import CurlResult, curl
from kplab.cluster.converge import Converging
from kplab.cluster.handle import LabHandle
from kplab.cluster.kubectl import KubectlVerbs, warned
from kplab.cluster.manifests import admit_all
from kplab.cluster.offloop import off_loop
from kplab.cluster.run import NETNS_DIR, Result, run
from kplab.cluster.store import Store, stop_pid, stop_recorded_processes
from kplab.cluster.topology import remove_namespaces
from kplab.cluster.workload import EchoWorkload
from kplab.errors import KplabError, LabError
from kplab.proxy import stale_udp
from kplab.proxy.base import NodeContext, Proxier, proxier_class
from kplab.proxy.core import ProxyState, build_state
from kplab.proxy.drift import Diff
from kplab.proxy.ebpf.kernel import client_cgroup
from kplab.proxy.ebpf.kernel import remove_leftovers as remove_ebpf_leftovers
from kplab.proxy.localdetect import OPTIONS as LOCAL_DETECTOR_OPTIONS
from kplab.proxy.servers.feed import feeding as kube_proxy_servers
from kplab.proxy.servers.feed import status as kube_proxy_servers_status

NONE_MODE = "none"  # no kube-proxy at all: what a Service is before anything programs it
Source = str | Path | dict[str, Any]


def default_manifest() -> str:
    return (Path(__file__).parent / "manifests" / "default.yaml").read_text()


class Lab(LabHandle, KubectlVerbs, Converging, EchoWorkload):
    """A handle on one running lab; see the module docstring."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._holding = False  # inside `with lab.no_sync()`

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    @warned
    @off_loop
    def up(cls, name: str = "default", mode: str = "iptables", manifests: Iterable[Source] | None = None,
           nodes: int = 2, **options: Any) -> Lab:
        """Build a lab and program `mode` on every node; on any failure remove everything built."""
        lab_options.check(options)
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
                topology.build(lab)
                lab._converge(starting=True)
                lab._start_echo()
                lab._sync_all()
                lab.data["status"] = "up"
                lab._save()
            lab.notes = tuple(lab_options.ignored(options, mode))
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
                if os.path.exists(f"{NETNS_DIR}/{netns.ns_name(self.name, node)}"):
                    try:
                        self.proxier(node).cleanup()
                    except KplabError:
                        pass  # the namespace goes next, taking its rules with it
        remove_everything(self.store)

    # ------------------------------------------------------------------ proxy
    def state(self, node: str, models: tuple[list[Any], list[Any]] | None = None) -> ProxyState:
        """What `node`'s kube-proxy knows; pass `models` to share one deserialisation across nodes."""
        data = self._held()
        services, slices = models or self._models()
        net, options = data["network"], data.get("options") or {}
        local = {k: str(options[k]) for k in LOCAL_DETECTOR_OPTIONS if options.get(k)}  # kplab.proxy.localdetect
        return build_state(services, slices, node_name=node, node_ips=(self.node_ip(node),),
                           cluster_cidr=net["cluster_cidr"], service_cidr=net["service_cidr"],
                           zone=self.node_labels(node).get(controller.ZONE_LABEL, ""),
                           nodeport_addresses=tuple(options.get("nodeport_addresses") or ()),
                           masquerade_all=str(options.get("masquerade_all", False)).lower() in ("true", "1", "yes"),
                           node_cidr=self.pod_cidr(node), **local)

    def proxier(self, node: str, mode: str | None = None) -> Proxier:
        data = self._held()
        mode = mode or data["mode"]
        if mode == NONE_MODE:
            raise LabError(f"lab {self.name!r} runs no kube-proxy (mode none): `kplab mode iptables` starts one")
        ctx = NodeContext(lab=self.name, node=node, netns=netns.ns_name(self.name, node),
                          state_dir=self.store.node_dir(node, mode), options=dict(data.get("options") or {}))
        return proxier_class(mode)(ctx)

    def _sync_all(self, full: bool = False) -> dict[str, Any]:
        states = {}
        if self._holding:
            return {}  # `with lab.no_sync()`: the kernel waits for `lab.sync()`
        if self.data["mode"] != NONE_MODE:
            models = self._models()  # once per sync, not once per node
            states = {node: self.state(node, models) for node in self.data["nodes"]}
        with kube_proxy_servers(self, states) as feed:  # health, metrics: fed around every sync
            for node, state in states.items():
                proxier = self.proxier(node)
                result = proxier.sync(state, full)
                result.conntrack = stale_udp.after_sync(proxier, state)  # upstream's CleanStaleEntries, in the sync
                result.seconds += result.conntrack[0] if result.conntrack else 0.0
                feed.synced(node, result)
                if result.note:
                    self.notes += (f"{node}: {result.note}",)
        self.data["syncs"] = {n: {"at": time.time(), **vars(r)} for n, r in feed.results.items()}  # for describe
        return feed.results

    @off_loop
    def sync(self, full: bool = False) -> dict[str, Any]:
        """Reprogram every node from the current objects (what kube-proxy's sync loop does);
        `full`: rewrite everything, which also repairs drift a partial sync leaves alone."""
        with self._mutate():
            return self._sync_all(full)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Changes made inside reach the objects, pods and EndpointSlices but not the nodes' rules,
        as when kube-proxy has not synced yet: `lab.diff(node)` shows what the next sync writes."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    @off_loop
    def diff(self, node: str) -> Diff:
        """What `node`'s next sync writes, and how its kernel differs from what a sync programs."""
        if node not in self.nodes:
            raise LabError(f"no node named {node!r} in lab {self.name!r}: nodes are {', '.join(self.nodes)}")
        return self.proxier(node).diff(self.state(node))

    @off_loop
    def rules(self, node: str) -> dict[str, Any]:
        """The node's rules as its mode loaded them (read back from the kernel)."""
        nodes = self.nodes
        if node not in nodes:
            raise LabError(f"{node!r} is not a node of lab {self.name!r}: kube-proxy's rules live on the nodes "
                           f"({', '.join(nodes)}); for any namespace's own tables: `kplab exec {node} -- iptables-save`")
        return self.proxier(node).rules()

    @warned
    @off_loop
    def set_mode(self, mode: str, **options: Any) -> None:
        """Switch every node to `mode`: the old mode's state is removed completely first."""
        lab_options.check(options)
        self.notes = tuple(lab_options.ignored(options, mode))
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
                        with contextlib.suppress(KplabError):  # a mode that could not start may not clean either
                            self.proxier(node, mode).cleanup()
                shutil.rmtree(self.store.dir / "nodes", ignore_errors=True)
                self.data["mode"], self.data["options"] = old, old_options
                self._sync_all()
                self._save()
                raise

    # ------------------------------------------------------------------ objects
    # apply, delete, scale, label, run, expose, rollout, set_ready: kplab.cluster.kubectl (KubectlVerbs);
    # what every change ends with, the kernel converged to the objects: kplab.cluster.converge;
    # the echo workload serving the pods: kplab.cluster.workload

    # ------------------------------------------------------------------ using the lab
    def exec(self, name: str, argv: list[str], timeout: float = 60.0) -> Result:
        return run(argv, self.netns(name), check=False, timeout=timeout)

    def resolve(self, target: str, proto: str | None = None) -> tuple[str, int, str]:
        """'web', 'web:http', 'web.team-a', 'node-1:web[:port]', 'lb:web[:port]', 'ip:port' -> (ip, port, proto);
        with `proto` ("udp"), the Service port of that protocol (kplab.cluster.targets)."""
        return targets.resolve(self, target, proto)

    def curl(self, frm: str, target: str, n: int = 1, proto: str | None = None, timeout: float = 2.0) -> CurlResult:
        """n fresh connections from `frm` to `target`; which pods answered and what they saw."""
        if n < 1 or not 0 < timeout <= 600:
            raise LabError(f"curl: -n {n} and --timeout {timeout:g}: give at least 1 request and a timeout "
                           "above 0 (up to 600 seconds)")
        ip, port, proto = self.resolve(target, proto)
        closer = "the proxy" if self._held()["mode"] == "userspace" else "the server"
        return curl(self.netns(frm), ip, port, proto, n=n, timeout=timeout, target=target, closer=closer,
                    cgroup=self.client_cgroup(frm))

    def client_cgroup(self, name: str) -> str | None:
        """The cgroup a client in `name` runs in: its node's, where the eBPF mode's socket hooks are."""
        data = self._held()
        if data["mode"] != "ebpf":
            return None
        node = name if name in data["nodes"] else next(
            (p["spec"].get("nodeName") for p in data["objects"].get("Pod", {}).values()
             if p["metadata"]["name"] == name), None)
        return client_cgroup(self.proxier(node)) if node else None

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
        data = self._held()
        out = list(self.notes)
        for key, svc in sorted(data["objects"].get("Service", {}).items()):
            sel = (svc.get("spec") or {}).get("selector") or {}
            ns, name = key.split("/", 1)
            if sel and not any(controller.matches(sel, (p["metadata"].get("labels") or {}))
                               and p["metadata"]["namespace"] == ns for p in data["objects"].get("Pod", {}).values()):
                labels = ",".join(f"{k}={v}" for k, v in sel.items())
                out.append(f"service/{name}: selector {labels} matches no pod, so the Service has no endpoints")
        return out + self._unreachable_external_ips()

    def status(self) -> dict[str, Any]:
        data = self._load()
        return {"name": self.name, "mode": data["mode"], "nodes": {n: self.node_ip(n) for n in data["nodes"]},
                "pods": len(data["objects"].get("Pod", {})), "services": len(data["objects"].get("Service", {})),
                "namespaces": netns.lab_namespaces(self.name), "state_dir": str(self.store.dir),
                "servers": kube_proxy_servers_status(self)}


def manifests_network(options: dict[str, Any]) -> manifests.Network:
    keys = ("service_cidr", "cluster_cidr", "node_cidr", "lb_pool")
    return manifests.Network(**{k: options[k] for k in keys if options.get(k)})


def remove_everything(store: Store) -> None:
    """All a lab leaves behind, in this order: its processes, namespaces, eBPF pins, state directory."""
    stop_recorded_processes(store.dir)
    remove_namespaces(store.lab, store.journaled())
    remove_ebpf_leftovers(store.lab)
    shutil.rmtree(store.dir, ignore_errors=True)


def clean(lab: str | None = None, everything: bool = False, crashed_only: bool = False,
          skipped: list[str] | None = None) -> list[str]:
    """Remove leftovers: of one lab (`lab`), of crashed labs (default) or of every lab (`everything`).

    A lab is crashed when its state says "building" (or is unreadable) and nobody holds its
    lock, or when namespaces with its prefix exist without a state directory.  `crashed_only`
    (what `kplab clean` passes unless --all) spares a named `lab` that is up or locked, and
    lists it in `skipped`.  Only names with the kplab- prefix are ever touched.
    """
    from kplab.cluster.store import STATE_ROOT

    removed = []
    labs = {p.name for p in STATE_ROOT.iterdir()} if STATE_ROOT.is_dir() else set()
    orphans = {n[len(netns.PREFIX):].split("-", 1)[0] for n in netns.lab_namespaces()}
    for name in sorted(labs | orphans):
        if lab and name != lab:
            continue
        store = Store(name)
        if not everything and (crashed_only or not lab):
            try:
                healthy = store.load().get("status") == "up"
            except (LabError, ValueError):
                healthy = False
            if (healthy or not store.lock_is_free()) and store.dir.is_dir():
                if skipped is not None:
                    skipped.append(name)
                continue
        remove_everything(store)
        removed.append(name)
    return removed


__all__ = ["CurlResult", "Lab", "clean", "off_loop", "stop_pid"]
