"""A lab's stored state behind a handle, and the typed lookups every other package reads it through.

`LabHandle` keeps `lab.json` as last read and reads it again when another process (the CLI
beside a notebook, the terminator) saved it since, so a handle never shows what is no longer so.
`with handle._mutate():` locks, reloads, lets the body change `data`, and saves only if the
body succeeded.  The raw `data` dict and the file stamp are this class's and the Lab's own
(kplab.lab, its mixins in kplab.cluster); every other package reads a lab through the public
lookups below (`mode`, `nodes`, `options`, `stored_objects()`, `pod(name)`, `refresh()`, ...),
which tests/unit/test_architecture.py holds them to.  Addresses follow from the lab's network
and the node's index:

    node-i          node_cidr + 10 + i         outside   node_cidr + 100
    node-i's pods   the i-th /24 of cluster_cidr
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator
from typing import Any

from kplab.cluster import controller, manifests, netns, targets
from kplab.cluster.store import Store, check_lab_name
from kplab.errors import LabError


class LabHandle:
    """The state half of `kplab.lab.Lab`: loading, locking, saving, and lookups by name."""

    def __init__(self, name: str) -> None:
        check_lab_name(name)
        self.name = name
        self.store = Store(name)
        self._data: dict[str, Any] = {}
        self._stamp: tuple[int, int] | None = None

    @property
    def data(self) -> dict[str, Any]:
        """The lab's state as last read (read again when another process saved it since)."""
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

    def _load(self) -> dict[str, Any]:
        stamp = self._file_stamp()  # before reading: a save in between is seen as a change next time
        self._data, self._stamp = self.store.load(), stamp
        if self.data.get("status") != "up":
            raise self.store.not_up_error()
        return self.data

    def _held(self) -> dict[str, Any]:
        """The state as this handle holds it (read again when another process saved it since);
        read now when never read or when the lab was removed since (LabError: what to run)."""
        data = self.data
        if data and (self._stamp is None or self._file_stamp() is not None):
            return data  # (no stamp: being built by `up`, not saved yet)
        return self._load()

    def _save(self) -> None:
        """Save `data`; our own save is nothing to read again."""
        self.store.save(self._data)
        self._stamp = self._file_stamp()

    @contextlib.contextmanager
    def _mutate(self) -> Iterator[None]:
        """Lock, reload, let the body change `data`, save (only if the body succeeded)."""
        if not self.store.exists:
            raise LabError(f"no lab named {self.name!r}: start one with `kplab up --lab {self.name}`")
        with self.store.locked():
            self._load()
            yield
            self._save()

    def refresh(self) -> None:
        """Read the lab's state again now (LabError if it is not up any more)."""
        self._load()

    @property
    def mode(self) -> str:
        """The kube-proxy mode every node runs (iptables, nftables, ipvs, userspace, ebpf, none)."""
        return str(self._held()["mode"])

    @property
    def nodes(self) -> list[str]:
        """The node names, node-1 first."""
        return list(self._held()["nodes"])

    @property
    def options(self) -> dict[str, Any]:
        """The options the lab was started (or last switched mode) with, e.g. {"zones": ["a", "b"]}."""
        return dict(self._held().get("options") or {})

    @property
    def created(self) -> float | None:
        """When the lab was built (seconds since the epoch)."""
        return self._held().get("created")

    @property
    def last_syncs(self) -> dict[str, dict[str, Any]]:
        """Per node, its last sync as `sync()` reported it, with "at" (seconds since the epoch)."""
        return dict(self._held().get("syncs") or {})

    def record_pid(self, role: str, pid: int) -> None:
        """Note a process the lab started in its state (`down` and `clean` stop it by its pid file)."""
        self._held().setdefault("pids", {})[role] = pid

    # ------------------------------------------------------------------ addresses
    def netns(self, name: str) -> str:
        """The named netns of a node, pod or `outside` (`net` is the node network)."""
        data = self._held()
        known = set(data["nodes"]) | {"outside", "net"} | {k.split("/", 1)[1] for k in data["objects"].get("Pod", {})}
        if name not in known:
            raise LabError(f"no node, pod or 'outside' named {name!r} in lab {self.name!r}: see `kplab get pods`")
        return netns.ns_name(self.name, name)

    def node_ip(self, node: str) -> str:
        data = self._held()
        i = data["nodes"].index(node) + 1
        net = ipaddress.ip_network(data["network"]["node_cidr"])
        return str(net.network_address + 10 + i)

    def outside_ip(self) -> str:
        """The outside client's address on the node network."""
        data = self._held()
        return str(ipaddress.ip_network(data["network"]["node_cidr"]).network_address + 100)

    def pod_cidr(self, node: str) -> str:
        data = self._held()
        i = data["nodes"].index(node) + 1
        return str(list(ipaddress.ip_network(data["network"]["cluster_cidr"]).subnets(new_prefix=24))[i])

    def node_labels(self, node: str) -> dict[str, str]:
        """A node's labels: hostname, and topology.kubernetes.io/zone from the lab's `zones` option
        (zones=["a", "b"] puts node-1 in a, node-2 in b, node-3 in a, ...)."""
        data = self._held()
        return controller.node_labels(node, data["nodes"], (data.get("options") or {}).get("zones") or [])

    # ------------------------------------------------------------------ objects by name
    def pod(self, name: str) -> dict[str, Any]:
        """The stored Pod `name`, as a dict; LabError naming `kplab get pods` if absent."""
        for key, pod in self._held()["objects"].get("Pod", {}).items():
            if key.split("/", 1)[1] == name:
                return pod  # type: ignore[no-any-return]
        raise LabError(f"no pod named {name!r} in lab {self.name!r}: see `kplab get pods`")

    def pod_ip(self, pod: str) -> str:
        return str(self.pod(pod)["status"]["podIP"])

    def service(self, name: str) -> dict[str, Any]:
        """The stored Service `name` ("web", "ns/web", "web.ns"), as a dict; LabError naming `kplab get` if absent."""
        return targets.find_service(self._held()["objects"].get("Service", {}), name, self.name)

    def service_ip(self, name: str) -> str:
        return str(self.service(name)["spec"]["clusterIP"])

    def service_port(self, name: str, port: str | int | None, proto: str | None = None) -> dict[str, Any]:
        """One port of Service `name` by number or name (None: the first), of protocol `proto` if given."""
        return targets.service_port(self.service(name), None if port is None else str(port), proto, name)

    def node_port(self, name: str, port: str | int | None = None) -> int:
        return int(self.service_port(name, port).get("nodePort") or 0)

    def load_balancer_ip(self, name: str) -> str:
        ingress = ((self.service(name).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if not ingress:
            raise LabError(f"Service {name!r} has no load-balancer IP (is it type LoadBalancer?)")
        return str(ingress[0]["ip"])

    def stored_objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every stored object, kind -> "namespace/name" -> object, as the API server keeps them
        (to read: change objects through the kubectl verbs)."""
        return self._held()["objects"]  # type: ignore[no-any-return]

    def objects(self, kind: str) -> list[dict[str, Any]]:
        """The stored objects of `kind` ("Pod", "Service", ...), sorted by namespace/name."""
        data = self._held()
        return [data["objects"].get(kind, {})[k] for k in sorted(data["objects"].get(kind, {}))]

    def pods(self) -> list[Any]:
        return [manifests.model(p) for p in self.objects("Pod")]

    def services(self) -> list[Any]:
        return [manifests.model(s) for s in self.objects("Service")]

    def endpoint_slices(self) -> list[Any]:
        return [manifests.model(s) for s in self.objects("EndpointSlice")]

    def _models(self) -> tuple[list[Any], list[Any]]:
        """Services and EndpointSlices as kubernetes models, as every node's kube-proxy receives them."""
        data = self._held()
        return ([manifests.model(s) for s in data["objects"].get("Service", {}).values()],
                [manifests.model(s) for s in data["objects"].get("EndpointSlice", {}).values()])

