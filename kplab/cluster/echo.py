"""The lab's workload: one process answers for every pod, on each pod's own IP and ports.

No container image runs in a lab pod: every pod runs this echo workload instead, on the
containerPorts its manifest declares (TCP and UDP).  Each answer names the pod, its IP and
node, and the client address *the pod saw*, which is what makes DNAT and SNAT visible:

    TCP   every line received -> one JSON line back; an HTTP request -> HTTP/1.0 200, JSON body
    UDP   every datagram -> one JSON datagram back

A socket created after entering a pod's network namespace stays in that namespace, so one
asyncio loop serves them all.  The lab writes the wanted sockets to `<state>/echo.json` and
sends SIGHUP; the agent reconciles and writes the generation it reached to `<state>/echo.ready`.
It exits on SIGTERM, or by itself when its lab's state directory disappears.

Run as: python -m kplab.cluster.echo <state-dir>
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from kplab.cluster.run import NETNS_DIR

CLONE_NEWNET = 0x40000000
HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ")
_libc = ctypes.CDLL(None, use_errno=True)


def _open_in(netns: str, ip: str, port: int, proto: str) -> socket.socket:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"{NETNS_DIR}/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        if proto == "TCP":
            s.listen(512)
        s.setblocking(False)
        return s
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(target)
        os.close(own)


class Agent:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.servers: dict[str, Any] = {}  # "netns|inode|ip|port|proto" -> asyncio Server or transport

    def identity(self, pod: dict[str, Any], port: int, proto: str, peer: tuple[str, int]) -> bytes:
        return json.dumps({"pod": pod["name"], "pod_ip": pod["ip"], "node": pod["node"], "client_ip": peer[0],
                           "client_port": peer[1], "proto": proto.lower(), "port": port}).encode()

    async def serve_tcp(self, pod: dict[str, Any], port: int, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                line = await asyncio.wait_for(reader.readline(), timeout=300)
                if not line:
                    break
                body = self.identity(pod, port, "TCP", peer)
                if line.startswith(HTTP_METHODS):
                    while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                        pass
                    writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s\n" % (len(body) + 1, body))
                    await writer.drain()
                    break
                writer.write(body + b"\n")
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def reconcile(self) -> None:
        try:
            with open(os.path.join(self.state_dir, "echo.json")) as f:
                spec = json.load(f)
        except FileNotFoundError:
            return
        wanted: dict[str, tuple[dict[str, Any], int, str]] = {}
        for pod in spec["pods"]:
            if pod.get("stopped"):
                continue
            for port, proto in pod["ports"]:
                # the netns inode: a namespace rebuilt under the same name gets new sockets
                wanted[f"{pod['netns']}|{pod.get('ino')}|{pod['ip']}|{port}|{proto}"] = (pod, port, proto)
        for key in list(self.servers):
            if key not in wanted:
                self.servers.pop(key).close()
        for key, (pod, port, proto) in wanted.items():
            if key in self.servers:
                continue
            try:
                sock = _open_in(pod["netns"], pod["ip"], port, proto)
            except OSError as e:
                print(f"echo: {pod['name']} {proto}/{port}: {e}", file=sys.stderr, flush=True)
                continue
            if proto == "TCP":
                self.servers[key] = await asyncio.start_server(
                    lambda r, w, pod=pod, port=port: self.serve_tcp(pod, port, r, w), sock=sock)
            else:
                agent = self

                class Udp(asyncio.DatagramProtocol):
                    def connection_made(self, transport: Any) -> None:
                        self.transport = transport

                    def datagram_received(self, data: bytes, addr: Any, pod: dict = pod, port: int = port) -> None:
                        self.transport.sendto(agent.identity(pod, port, "UDP", addr) + b"\n", addr)

                transport, _ = await self.loop.create_datagram_endpoint(Udp, sock=sock)
                self.servers[key] = transport
        tmp = os.path.join(self.state_dir, "echo.ready.tmp")
        with open(tmp, "w") as f:
            f.write(str(spec.get("generation", 0)))
        os.replace(tmp, os.path.join(self.state_dir, "echo.ready"))

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await reconcile_loop(self.state_dir, self.reconcile)
        for s in self.servers.values():
            s.close()


async def reconcile_loop(state_dir: str, reconcile: Callable[[], Awaitable[None]]) -> None:
    """A lab agent's life: reconcile now and on every SIGHUP, until SIGTERM or SIGINT, or until the
    lab's state directory disappears (an agent never outlives its lab)."""
    loop = asyncio.get_running_loop()
    stop, wake = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, wake.set)
    await reconcile()
    while not stop.is_set():
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
        _, pending = await asyncio.wait(waiters, timeout=2.0, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
        if stop.is_set() or not os.path.isdir(state_dir):
            break
        if wake.is_set():
            wake.clear()
            await reconcile()


if __name__ == "__main__":
    asyncio.run(Agent(sys.argv[1]).main())
