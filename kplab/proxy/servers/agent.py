"""The process that serves every node's kube-proxy servers (see the package docstring).

The lab writes `<state>/servers.json` (per node: netns, IP, mode, bind addresses, the
healthCheckNodePorts and their local endpoint counts), appends what each sync did to
`<state>/servers.events` (JSON lines), and sends SIGHUP; the agent opens and closes listeners,
applies the new events to each node's health state and Prometheus registry, and writes the
generation it reached to `<state>/servers.ready`.  A node whose mode changes gets a fresh
registry, as a restarted kube-proxy would.  It exits on SIGTERM, or by itself when its lab's
state directory disappears.

Run as: python -m kplab.proxy.servers.agent <state-dir>
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import socket
import sys
import time
from typing import Any

from prometheus_client import exposition, generate_latest

from kplab.cluster.echo import reconcile_loop
from kplab.cluster.netns import entered
from kplab.proxy.servers.metrics import NodeMetrics

HEALTHZ_PORT, METRICS_PORT = 10256, 10249
HEALTH_TIMEOUT = 60.0  # upstream: 2 * syncPeriod (30 s)
# the text format kube-proxy's Go client serves (prometheus_client's latest is 1.0.0)
METRICS_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
Response = tuple[int, str, bytes]
REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
NOT_FOUND: Response = (404, "text/plain; charset=utf-8", b"404 page not found\n")


def listen_in(netns: str, ip: str, port: int) -> socket.socket:
    with entered(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(128)
    s.setblocking(False)
    return s


async def serve(route: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One HTTP/1.1 request per connection, as curl, a load balancer or Prometheus sends it."""
    try:
        line = await asyncio.wait_for(reader.readline(), timeout=5)
        while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
            pass
        method, target = (line.decode(errors="replace").split() + ["", ""])[:2]
        status, ctype, body = route(target.split("?", 1)[0])
        head = (f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"X-Content-Type-Options: nosniff\r\nDate: {email.utils.formatdate(usegmt=True)}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode() + (b"" if method == "HEAD" else body))
        await writer.drain()
    except (TimeoutError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


def go_time(wall: float, mono: float) -> str:
    """A time as Go's time.Time.String() prints it (what upstream's %q of a time shows)."""
    secs, frac = divmod(wall, 1)
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
    ns = f"{int(frac * 1e9):09d}".rstrip("0")
    return f"{text}{'.' + ns if ns else ''} +0000 UTC m={mono:+.9f}"


class Node:
    """One node's kube-proxy as its servers see it: health, Service health checks, metrics."""

    def __init__(self, agent: Agent, name: str, spec: dict[str, Any]) -> None:
        self.agent, self.name, self.mode, self.epoch = agent, name, spec["mode"], spec["epoch"]
        self.metrics = NodeMetrics(self.mode)
        self.last_updated: float | None = time.time()  # Runner.Run(): healthy while starting up
        self.oldest_queued: float | None = None
        self.health_checks: dict[str, dict[str, Any]] = {}  # nsn -> {"port", "count"}
        self.servers: dict[str, asyncio.Server] = {}  # "ip:port" -> listener

    def healthy(self) -> tuple[bool, float | None]:
        """Upstream's isHealthy: a queued update not synced within the timeout makes it unhealthy."""
        late = self.oldest_queued is not None and time.time() - self.oldest_queued >= HEALTH_TIMEOUT
        return not late, self.last_updated

    def _health(self, with_node: bool) -> Response:
        ok, last = self.healthy()
        now = time.time()
        self.metrics.probed("healthz" if with_node else "livez", 200 if ok else 503)
        last_text = self.agent.go_time(now if ok or last is None else last)
        body = f'{{"lastUpdated": "{last_text}","currentTime": "{self.agent.go_time(now)}"'
        body += ', "nodeEligible": true}' if with_node else "}"
        return (200 if ok else 503), "application/json", body.encode()

    def health_route(self, path: str) -> Response:
        return {"/healthz": lambda: self._health(True), "/livez": lambda: self._health(False)}.get(
            path, lambda: NOT_FOUND)()

    def metrics_route(self, path: str) -> Response:
        if path == "/metrics":
            return 200, METRICS_TYPE, generate_latest(self.metrics.registry)
        if path == "/proxyMode":
            return 200, "text/plain; charset=utf-8", self.mode.encode()
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok"
        return NOT_FOUND

    def service_route(self, nsn: str) -> Response:
        """service_health.go's handler: any path, the Service's local endpoint count."""
        count = self.health_checks.get(nsn, {}).get("count", 0)
        proxy_ok, _ = self.healthy()
        ns, _, name = nsn.partition("/")
        body = (f'{{\n\t"service": {{\n\t\t"namespace": {json.dumps(ns)},\n\t\t"name": {json.dumps(name)}\n\t}},\n'
                f'\t"localEndpoints": {count},\n\t"serviceProxyHealthy": {"true" if proxy_ok else "false"}\n}}')
        return (200 if count and proxy_ok else 503), "application/json", body.encode()

    async def reconcile(self, spec: dict[str, Any]) -> None:
        self.health_checks = {nsn: dict(hc) for nsn, hc in spec.get("health_checks", {}).items()}
        wanted: dict[str, Any] = {}
        for ip in spec.get("healthz_bind", []):
            wanted[f"{ip}:{HEALTHZ_PORT}"] = self.health_route
        for ip in spec.get("metrics_bind", []):
            wanted[f"{ip}:{METRICS_PORT}"] = self.metrics_route
        for nsn, hc in self.health_checks.items():
            for ip in spec.get("health_check_bind", []):
                wanted[f"{ip}:{hc['port']}/{nsn}"] = lambda path, nsn=nsn: self.service_route(nsn)
        for key in [k for k in self.servers if k not in wanted]:
            self.servers.pop(key).close()
        for key, route in wanted.items():
            if key in self.servers:
                continue
            ip, _, port = key.split("/")[0].partition(":")
            try:
                sock = listen_in(spec["netns"], ip, int(port))
            except OSError as e:  # upstream logs FailedToStartServiceHealthcheck and goes on
                print(f"servers: {self.name} {key}: {e}", file=sys.stderr, flush=True)
                continue
            self.servers[key] = await asyncio.start_server(
                lambda r, w, route=route: serve(route, r, w), sock=sock)

    def close(self) -> None:
        for s in self.servers.values():
            s.close()
        self.servers.clear()

    def apply(self, event: dict[str, Any]) -> None:
        if event["kind"] == "queued":
            if self.oldest_queued is None:
                self.oldest_queued = event["t"]
        elif event["kind"] == "synced" and event.get("ok"):
            self.oldest_queued, self.last_updated = None, event["t"]
        self.metrics.apply(event)


class Agent:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.nodes: dict[str, Node] = {}
        self.offset = 0
        self.started_wall, self.started_mono = time.time(), time.monotonic()

    def go_time(self, wall: float) -> str:
        return go_time(wall, (time.monotonic() - self.started_mono) - (time.time() - wall))

    def _path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    async def reconcile(self) -> None:
        try:
            with open(self._path("servers.json")) as f:  # noqa: ASYNC230 - a small local file
                spec = json.load(f)
        except FileNotFoundError:
            return
        for name in [n for n in self.nodes if spec["nodes"].get(n, {}).get("epoch") != self.nodes[n].epoch]:
            self.nodes.pop(name).close()  # no kube-proxy there any more, or a new one: fresh state
        for name, node_spec in spec["nodes"].items():
            if node_spec.get("mode", "none") != "none":
                node = self.nodes.setdefault(name, Node(self, name, node_spec))
                await node.reconcile(node_spec)
        self._read_events()
        tmp = self._path("servers.ready.tmp")
        with open(tmp, "w") as f:  # noqa: ASYNC230
            f.write(str(spec.get("generation", 0)))
        os.replace(tmp, self._path("servers.ready"))

    def _read_events(self) -> None:
        try:
            with open(self._path("servers.events"), "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next signal
        self.offset += end
        for line in data[:end].splitlines():
            event = json.loads(line)
            node = self.nodes.get(event["node"])
            if node is not None and node.epoch == event.get("epoch"):
                node.apply(event)

    async def main(self) -> None:
        await reconcile_loop(self.state_dir, self.reconcile)
        for node in self.nodes.values():
            node.close()


if __name__ == "__main__":
    asyncio.run(Agent(sys.argv[1]).main())
