"""The userspace proxy's data path: balancing, TCP relaying with splice(2), UDP relaying.

Used by kplab.proxy.userspace.proxy (the process); the shapes follow upstream's
pkg/proxy/userspace (before 1.26):

* `Balancer` is roundrobin.go's LoadBalancerRR for one service port: round robin over the
  endpoint list, reshuffled whenever the set of endpoints changes; ClientIP affinity keeps a
  client on its endpoint while it was used within the timeout.
* `Dial` is proxysocket.go's tryConnect: a connect that fails or times out moves on to the
  next endpoint, with the dial timeouts 250 ms, 500 ms, 1 s, 2 s; then the client is closed.
* `Relay`/`Pump` copy both ways (upstream: two io.Copy goroutines).  Here the bytes go
  socket -> pipe -> socket with splice(2) and never enter Python; a full destination pauses
  its source; half-closes are passed on; pipes are pooled between connections.
* `UdpClient` is the per-client UDP "connection" of udpProxySocket, dropped when idle for the
  service's UDP timeout (upstream's --udp-timeout, 250 ms by default).

Everything runs on one asyncio loop through raw fd callbacks (add_reader/add_writer): no
thread and no coroutine per connection.  Standard library only.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)  # upstream's EndpointDialTimeouts
DEFAULT_UDP_IDLE_TIMEOUT = 0.25  # upstream's --udp-timeout default
CHUNK = 1 << 16  # bytes per splice call: a default pipe's capacity
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
ACCEPT_BATCH = 64  # connections accepted per readiness event before yielding to the loop
UDP_BATCH = 64  # datagrams relayed per readiness event
ACCEPT_PAUSE = 0.1  # seconds without accepting after running out of file descriptors
PIPE_POOL_MAX = 256


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class Balancer:
    """Endpoints of one service port, chosen round robin (upstream's LoadBalancerRR state)."""

    def __init__(self, affinity_seconds: int = 0) -> None:
        self.endpoints: list[str] = []  # "ip:port", shuffled on every change
        self.index = 0
        self.affinity_seconds = affinity_seconds
        self.sticky: dict[str, tuple[str, float]] = {}  # client IP -> (endpoint, last used)

    def update(self, endpoints: list[str], affinity_seconds: int) -> bool:
        """Take a new endpoint list; reshuffle only when the set changed. True if it did."""
        if affinity_seconds != self.affinity_seconds:
            self.affinity_seconds = affinity_seconds
            self.sticky.clear()
        if sorted(endpoints) == sorted(self.endpoints):
            return False
        gone = set(self.endpoints) - set(endpoints)
        self.sticky = {ip: s for ip, s in self.sticky.items() if s[0] not in gone}
        self.endpoints = random.sample(endpoints, len(endpoints))
        self.index = 0
        return True

    def pick(self, client_ip: str, reset: bool = False, now: float | None = None) -> str | None:
        """The next endpoint for a client; `reset` skips its sticky entry (a dial failed)."""
        if not self.endpoints:
            return None
        now = time.monotonic() if now is None else now
        if self.affinity_seconds and not reset:
            hit = self.sticky.get(client_ip)
            if hit and now - hit[1] < self.affinity_seconds:
                self.sticky[client_ip] = (hit[0], now)
                return hit[0]
        endpoint = self.endpoints[self.index]
        self.index = (self.index + 1) % len(self.endpoints)
        if self.affinity_seconds:
            self.sticky[client_ip] = (endpoint, now)
        return endpoint

    def reap(self, now: float | None = None) -> None:
        """Forget sticky sessions past their timeout (upstream: CleanupStaleStickySessions)."""
        now = time.monotonic() if now is None else now
        self.sticky = {ip: s for ip, s in self.sticky.items() if now - s[1] < self.affinity_seconds}


class PipePool:
    """Pipes for splice(2), reused between connections (two per TCP connection)."""

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []

    def take(self) -> tuple[int, int]:
        return self.free.pop() if self.free else os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def give(self, pipe: tuple[int, int], empty: bool) -> None:
        if empty and len(self.free) < PIPE_POOL_MAX:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])


class EndpointStats:
    __slots__ = ("active", "connections", "failed")

    def __init__(self) -> None:
        self.connections = 0  # TCP connections relayed / UDP clients created
        self.active = 0
        self.failed = 0  # failed or timed-out connects

    def as_dict(self) -> dict[str, int]:
        return {"connections": self.connections, "active": self.active, "failed": self.failed}


class Service:
    """One service port: its listening socket, balancer and stats."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pipes: PipePool, listen_ip: str,
                 spec: dict[str, Any]) -> None:
        self.loop, self.pipes = loop, pipes
        self.name: str = spec["name"]
        self.protocol: str = spec["protocol"]
        self.port: int = spec["proxy_port"]
        self.balancer = Balancer(spec.get("affinity_seconds", 0))
        self.stats: dict[str, EndpointStats] = {}
        self.sock = bind_socket(self.protocol, listen_ip, self.port)
        self.udp_timeout = DEFAULT_UDP_IDLE_TIMEOUT
        self.clients: dict[tuple[str, int], UdpClient] = {}
        self.update(spec)
        handler = self.on_accept if self.protocol == "TCP" else self.on_datagram
        self.loop.add_reader(self.sock.fileno(), handler)

    def update(self, spec: dict[str, Any]) -> None:
        self.udp_timeout = float(spec.get("udp_timeout", DEFAULT_UDP_IDLE_TIMEOUT))
        endpoints = list(spec.get("endpoints", []))
        self.balancer.update(endpoints, int(spec.get("affinity_seconds", 0)))
        for ep in endpoints:
            self.stats.setdefault(ep, EndpointStats())
        for ep in [e for e, s in self.stats.items() if e not in endpoints and not s.active]:
            del self.stats[ep]

    def resume(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self.on_accept)

    def close(self) -> None:
        """Stop accepting; open TCP connections are left to finish (as upstream)."""
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for client in list(self.clients.values()):
            client.close()

    def stat(self, endpoint: str) -> EndpointStats:
        return self.stats.setdefault(endpoint, EndpointStats())

    # TCP -------------------------------------------------------------------------------
    def on_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                log(f"{self.name}: accept: {e}")
                if e.errno in (errno.EMFILE, errno.ENFILE):  # out of fds: pause, or the loop would spin
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(ACCEPT_PAUSE, self.resume)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            Dial(self, conn, peer[0]).attempt()

    # UDP -------------------------------------------------------------------------------
    def on_datagram(self) -> None:
        recvfrom, clients, now = self.sock.recvfrom, self.clients, time.monotonic()
        for _ in range(UDP_BATCH):
            try:
                data, addr = recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                continue
            client = clients.get(addr)
            if client is None:
                client = self.new_client(addr)
                if client is None:
                    continue
            client.last = now
            try:
                client.sock.send(data)
            except OSError:
                client.close()

    def new_client(self, addr: tuple[str, int]) -> UdpClient | None:
        endpoint = self.balancer.pick(addr[0])
        if endpoint is None:
            return None
        try:
            client = UdpClient(self, addr, endpoint)
        except OSError as e:
            self.stat(endpoint).failed += 1
            log(f"{self.name}: udp to {endpoint}: {e}")
            return None
        self.clients[addr] = client
        return client


class Dial:
    """Connecting one accepted client to an endpoint, retrying on the next one (tryConnect)."""

    __slots__ = ("backend", "client", "client_ip", "endpoint", "svc", "timer", "tries")

    def __init__(self, svc: Service, client: socket.socket, client_ip: str) -> None:
        self.svc, self.client, self.client_ip = svc, client, client_ip
        self.tries = 0
        self.backend: socket.socket | None = None
        self.endpoint = ""
        self.timer: asyncio.TimerHandle | None = None

    def attempt(self) -> None:
        svc = self.svc
        endpoint = None
        if self.tries < len(DIAL_TIMEOUTS):
            endpoint = svc.balancer.pick(self.client_ip, reset=self.tries > 0)
        if endpoint is None:  # no endpoints, or every try failed: the client sees a close
            self.client.close()
            return
        self.endpoint = endpoint
        backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.backend = backend
        err = backend.connect_ex(split_address(endpoint))
        if err == 0:
            self.connected()
        elif err == errno.EINPROGRESS:
            svc.loop.add_writer(backend.fileno(), self.on_connect)
            self.timer = svc.loop.call_later(DIAL_TIMEOUTS[self.tries], self.on_timeout)
        else:
            self.failed()

    def on_connect(self) -> None:
        assert self.backend is not None and self.timer is not None
        self.svc.loop.remove_writer(self.backend.fileno())
        self.timer.cancel()
        if self.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.failed()
        else:
            self.connected()

    def on_timeout(self) -> None:
        assert self.backend is not None
        self.svc.loop.remove_writer(self.backend.fileno())
        self.failed()

    def failed(self) -> None:
        assert self.backend is not None
        self.backend.close()
        self.svc.stat(self.endpoint).failed += 1
        self.tries += 1
        self.attempt()

    def connected(self) -> None:
        assert self.backend is not None
        stats = self.svc.stat(self.endpoint)
        stats.connections += 1
        stats.active += 1

        def done() -> None:
            stats.active -= 1

        Relay(self.svc.loop, self.svc.pipes, self.client, self.backend, done)


class Relay:
    """Bytes both ways between two connected TCP sockets, half-closes passed on."""

    __slots__ = ("closed", "loop", "on_close", "pipes", "pumps", "socks")

    def __init__(self, loop: asyncio.AbstractEventLoop, pipes: PipePool, a: socket.socket, b: socket.socket,
                 on_close: Callable[[], None]) -> None:
        self.loop, self.pipes, self.socks, self.on_close, self.closed = loop, pipes, (a, b), on_close, False
        self.pumps = (Pump(self, a, b), Pump(self, b, a))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in self.pumps:
            p.stop()
        for s in self.socks:
            s.close()
        self.on_close()


class Pump:
    """One direction of a relay: src -> pipe -> dst with splice(2), paused while dst is full."""

    __slots__ = ("done", "dst", "dst_sock", "loop", "pending", "pipe", "relay", "src", "waiting")

    def __init__(self, relay: Relay, src: socket.socket, dst: socket.socket) -> None:
        self.relay, self.loop = relay, relay.loop
        self.src, self.dst, self.dst_sock = src.fileno(), dst.fileno(), dst
        self.pipe = relay.pipes.take()
        self.pending = 0  # bytes sitting in the pipe
        self.waiting = False  # waiting for dst to become writable
        self.done = False
        self.loop.add_reader(self.src, self.on_readable)

    def on_readable(self) -> None:
        try:
            n = os.splice(self.src, self.pipe[1], CHUNK, flags=SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self.relay.close()
            return
        if n == 0:  # EOF from src: pass the half-close on
            self.loop.remove_reader(self.src)
            self.done = True
            if all(p.done for p in self.relay.pumps):
                self.relay.close()  # the last direction: close() sends the FIN, no shutdown needed
                return
            try:
                self.dst_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        self.pending = n
        self.flush()

    def flush(self) -> None:
        while self.pending:
            try:
                self.pending -= os.splice(self.pipe[0], self.dst, self.pending, flags=SPLICE_FLAGS)
            except BlockingIOError:
                if not self.waiting:
                    self.waiting = True
                    self.loop.remove_reader(self.src)
                    self.loop.add_writer(self.dst, self.flush)
                return
            except OSError:
                self.relay.close()
                return
        if self.waiting:
            self.waiting = False
            self.loop.remove_writer(self.dst)
            self.loop.add_reader(self.src, self.on_readable)

    def stop(self) -> None:
        if not self.done:
            self.loop.remove_reader(self.src)
        if self.waiting:
            self.loop.remove_writer(self.dst)
        self.relay.pipes.give(self.pipe, empty=self.pending == 0)
        self.done = True


class UdpClient:
    """One UDP client of a service: a socket connected to its endpoint, closed when idle."""

    __slots__ = ("addr", "endpoint", "last", "sock", "svc", "timer")

    def __init__(self, svc: Service, addr: tuple[str, int], endpoint: str) -> None:
        self.svc, self.addr, self.endpoint = svc, addr, endpoint
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            self.sock.connect(split_address(endpoint))
        except OSError:
            self.sock.close()
            raise
        self.last = time.monotonic()
        stats = svc.stat(endpoint)
        stats.connections += 1
        stats.active += 1
        svc.loop.add_reader(self.sock.fileno(), self.on_reply)
        self.timer = svc.loop.call_later(svc.udp_timeout, self.check_idle)

    def on_reply(self) -> None:
        recv, sendto = self.sock.recv, self.svc.sock.sendto
        for _ in range(UDP_BATCH):
            try:
                data = recv(65535)
            except BlockingIOError:
                break
            except OSError:  # e.g. ICMP port unreachable: as upstream, this client is done
                self.close()
                return
            try:
                sendto(data, self.addr)
            except OSError:
                pass
        self.last = time.monotonic()

    def check_idle(self) -> None:
        idle = time.monotonic() - self.last
        if idle >= self.svc.udp_timeout:
            self.close()
        else:
            self.timer = self.svc.loop.call_later(self.svc.udp_timeout - idle, self.check_idle)

    def close(self) -> None:
        if self.svc.clients.get(self.addr) is not self:
            return
        del self.svc.clients[self.addr]
        self.timer.cancel()
        self.svc.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.svc.stat(self.endpoint).active -= 1


def bind_socket(protocol: str, ip: str, port: int) -> socket.socket:
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        if protocol == "TCP":
            sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock
