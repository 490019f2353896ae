"""The lab's side of kube-proxy's servers: start the agent, feed it around every sync, ask it.

    with feeding(lab, states) as feed:          # Lab._sync_all: states = {node: ProxyState}
        for node, state in states.items():
            feed.synced(node, proxier.sync(state))

On entry every node's kube-proxy "queues" the change (Service and EndpointSlice events since
its last sync, counted per node); on exit each synced node reports its sync (duration, full or
partial, network programming latencies from the EndpointSlices' trigger-time annotations,
Local-policy Services without local endpoints) and the new desired listeners: healthz,
metrics, and one healthCheckNodePort per Service with its local ready endpoint count.  A node
that failed reports a failed sync; the ones after it stay queued, so /healthz turns 503 once
the change has waited 60 s, as upstream's.  Mode "none" (states == {}) stops every server.

Per node the feed remembers (servers-memory.json) what its kube-proxy has seen; a new mode is a
new kube-proxy: a new `epoch`, fresh metrics.  The agent is started on the first sync and
recorded as servers.pid, so `down` and `clean` stop it like every lab process.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kplab.cluster.netns import entered
from kplab.cluster.store import START_TIMEOUT, pid_alive_and_ours, spawn_detached
from kplab.errors import LabError
from kplab.proxy.core import ProxyState
from kplab.proxy.servers import report
from kplab.proxy.servers.agent import HEALTHZ_PORT, METRICS_PORT

AGENT = "kplab.proxy.servers.agent"
NO_HEALTH_CHECKS = ("userspace",)  # the userspace proxier never had a service health server


class Feed:
    def __init__(self, lab: Any, states: dict[str, ProxyState]) -> None:
        self.lab, self.states, self.dir = lab, states, Path(lab.store.dir)
        self.mode = lab.mode
        self.results: dict[str, Any] = {}
        self.ended: dict[str, float] = {}
        self.begun = time.time()
        try:
            self.memory: dict[str, Any] = json.loads((self.dir / "servers-memory.json").read_text())
        except (FileNotFoundError, ValueError):
            self.memory = {}

    def synced(self, node: str, result: Any) -> Any:
        self.ended[node] = time.time()
        self.results[node] = result
        return result

    # -- around the syncs ------------------------------------------------------------------
    def begin(self) -> None:
        ensure_agent(self.lab)
        objs = self.lab.stored_objects()
        services = report.digests(list(objs.get("Service", {}).values()))
        slices = report.digests(list(objs.get("EndpointSlice", {}).values()))
        events = []
        for node in self.states:
            m = self.memory.get(node)
            if m is None or m["mode"] != self.mode:  # a new kube-proxy on this node
                epoch = (m or {}).get("epoch", 0) + 1
                m = self.memory[node] = {"mode": self.mode, "epoch": epoch, "services": {}, "slices": {},
                                         "triggers": {}, "since": self.begun}
            events.append({"node": node, "epoch": m["epoch"], "kind": "queued", "t": self.begun,
                           "service_changes": report.object_changes(m["services"], services),
                           "endpoint_changes": report.object_changes(m["slices"], slices)})
            m["services"], m["slices"] = services, slices
        self._append(events)

    def finish(self) -> None:
        slices = list(self.lab.stored_objects().get("EndpointSlice", {}).values())
        alive = {report.object_key(s) for s in slices}  # once: per trigger it made 10,000 Services take minutes
        events, failed = [], next((n for n in self.states if n not in self.results), None)
        for node, state in self.states.items():
            m = self.memory[node]
            if node == failed:
                events.append({"node": node, "epoch": m["epoch"], "kind": "synced", "ok": False,
                               "t": time.time(), "seconds": time.time() - self.begun})
            if node not in self.results:
                continue
            res, end = self.results[node], self.ended[node]
            triggers = report.trigger_times(slices, m["triggers"], m["since"])
            m["triggers"] = {k: v for k, v in {**m["triggers"], **triggers}.items() if k in alive}
            events.append({"node": node, "epoch": m["epoch"], "kind": "synced", "ok": True, "t": end,
                           "seconds": float(res.seconds), "full": bool(res.full),
                           "programming": [max(0.0, end - t) for t in triggers.values()],
                           "no_local": report.no_local_endpoints(state),
                           "iptables_rules": dict(getattr(res, "iptables_rules", {}) or {}),
                           "conntrack": getattr(res, "conntrack", None)})
        self._append(events)
        for node in [n for n in self.memory if n not in self.states]:
            self.memory[node]["mode"] = "none"  # no kube-proxy there now: the next one is a new one
        tmp = self.dir / "servers-memory.json.tmp"
        tmp.write_text(json.dumps(self.memory))
        os.replace(tmp, self.dir / "servers-memory.json")
        notify(self.lab, self.spec())

    def spec(self) -> dict[str, Any]:
        nodes = {}
        for node, state in self.states.items():
            ip = self.lab.node_ip(node)
            hcs = {} if self.mode in NO_HEALTH_CHECKS else report.health_check_ports(state)
            counts = report.local_ready_endpoints(state)
            nodes[node] = {
                "mode": self.mode, "epoch": self.memory[node]["epoch"], "netns": self.lab.netns(node), "ip": ip,
                "healthz_bind": ["0.0.0.0"], "metrics_bind": [ip, "127.0.0.1"],
                "health_check_bind": health_check_addresses(self.mode, state),
                "health_checks": {nsn: {"port": port, "count": counts.get(nsn, 0)} for nsn, port in hcs.items()},
            }
        return {"nodes": nodes}

    def _append(self, events: list[dict[str, Any]]) -> None:
        with open(self.dir / "servers.events", "a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in events))


@contextlib.contextmanager
def feeding(lab: Any, states: dict[str, ProxyState]) -> Iterator[Feed]:
    feed = Feed(lab, states)
    feed.begin()
    try:
        yield feed
    finally:
        if sys.exc_info()[0] is None:
            feed.finish()
        else:
            with contextlib.suppress(Exception):  # never hide the sync's own error
                feed.finish()


def health_check_addresses(mode: str, state: ProxyState) -> list[str]:
    """Where healthCheckNodePorts listen: every address unless --nodeport-addresses narrows it
    (nftables mode defaults to the primary node IP)."""
    import ipaddress

    cidrs = state.nodeport_addresses or ((f"{state.node_ips[0]}/32",) if mode == "nftables" else ())
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    if not nets or any(n.prefixlen == 0 for n in nets):
        return ["0.0.0.0"]
    return [ip for ip in state.node_ips if any(ipaddress.ip_address(ip) in n for n in nets)]


# --- the agent process ----------------------------------------------------------------------------

def _pid(lab: Any) -> int | None:
    try:
        return int((Path(lab.store.dir) / "servers.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def ensure_agent(lab: Any) -> None:
    """Start the agent unless it runs (a crashed one is restarted: a kube-proxy restart)."""
    pid = _pid(lab)
    if pid and pid_alive_and_ours(pid, AGENT):
        return
    d = Path(lab.store.dir)
    generation = _write_spec(d, {"nodes": {}})
    pid = spawn_detached([sys.executable, "-m", AGENT, str(d)], d / "servers.log")
    (d / "servers.pid").write_text(str(pid))
    lab.record_pid("servers", pid)
    _wait(d, generation)


def notify(lab: Any, spec: dict[str, Any]) -> None:
    d = Path(lab.store.dir)
    generation = _write_spec(d, spec)
    pid = _pid(lab)
    if not pid or not pid_alive_and_ours(pid, AGENT):
        raise LabError(f"kube-proxy's servers of lab {lab.name!r} are not running: see {d}/servers.log")
    os.kill(pid, signal.SIGHUP)
    _wait(d, generation)


def _write_spec(d: Path, spec: dict[str, Any]) -> int:
    try:
        generation = int(json.loads((d / "servers.json").read_text()).get("generation", 0)) + 1
    except (FileNotFoundError, ValueError):
        generation = 1
    tmp = d / "servers.json.tmp"
    tmp.write_text(json.dumps({**spec, "generation": generation}))
    os.replace(tmp, d / "servers.json")
    return generation


def _wait(d: Path, generation: int, timeout: float | None = None) -> None:
    timeout = START_TIMEOUT if timeout is None else timeout
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if int((d / "servers.ready").read_text() or 0) >= generation:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.005)
    raise LabError(f"kube-proxy's servers did not answer within {timeout:.0f} s: see {d}/servers.log")


# --- asking them ------------------------------------------------------------------------------

def http_get(netns: str, ip: str, port: int, path: str = "/",
             timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP GET from inside `netns` (a socket made there, no fork): status, headers, body."""
    with entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((ip, port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n".encode())
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        sock.close()


def status(lab: Any, frm: str = "outside") -> dict[str, Any]:
    """Per node: where the servers listen and what /healthz answers from `frm` right now."""
    try:
        spec = json.loads((Path(lab.store.dir) / "servers.json").read_text())
    except (FileNotFoundError, ValueError):
        spec = {"nodes": {}}
    pid = _pid(lab)
    out: dict[str, Any] = {"agent": pid if pid and pid_alive_and_ours(pid, AGENT) else None, "nodes": {}}
    for node, n in spec["nodes"].items():
        entry: dict[str, Any] = {
            "healthz": f"http://{n['ip']}:{HEALTHZ_PORT}/healthz",
            "metrics": f"http://{n['ip']}:{METRICS_PORT}/metrics",
            "health_check_node_ports": {nsn: hc["port"] for nsn, hc in n["health_checks"].items()}}
        try:
            entry["healthz_status"] = http_get(lab.netns(frm), n["ip"], HEALTHZ_PORT, "/healthz", timeout=1.0)[0]
        except OSError as e:
            entry["healthz_status"] = f"no answer ({e.strerror or e})"
        out["nodes"][node] = entry
    return out



def doctor(lab: Any | None) -> tuple[dict[str, Any], list[str]]:
    """`kplab doctor`'s part: can the servers run here, and do the servers of `lab` (if up) answer?"""
    try:
        from importlib.metadata import version

        detail, ok = f"prometheus_client {version('prometheus_client')}", True
    except Exception as e:  # noqa: BLE001 - a broken install is exactly what doctor reports
        detail, ok = f"prometheus_client missing ({e}): pip install prometheus_client", False
    entry: dict[str, Any] = {"available": ok, "detail": detail, "lab": None}
    lines = [(f"{'ok ' if ok else 'no '} servers    healthz :{HEALTHZ_PORT}, metrics :{METRICS_PORT}, "
              f"healthCheckNodePorts ({detail})")]
    if lab is not None:
        entry["lab"] = status(lab)
        for node, n in entry["lab"]["nodes"].items():
            lines.append(f"    lab {lab.name}, {node}: {n['healthz']} answers {n['healthz_status']}")
        if entry["lab"]["agent"] is None:
            lines.append(f"    lab {lab.name}: the servers' process is not running (see {lab.store.dir}/servers.log)")
    return entry, lines
