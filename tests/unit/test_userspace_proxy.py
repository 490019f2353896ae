"""The userspace proxy process on loopback (no root): relaying, retries, UDP, reloads, lifecycle.

The proxy listens on 127.0.0.1 here (the lab's nodes use 0.0.0.0 in their own netns), and the
"endpoints" are small servers of this test on 127.0.0.1.  Datapath tests through real lab
namespaces and iptables portals are in tests/system/test_userspace.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kplab.proxy.userspace.proxier import control
from kplab.proxy.userspace.proxy import (
    PID_FILE,
    TABLE_FILE,
    launch_argv,
    proxy_pid,
    stop_proxies_under,
    stop_proxy,
)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backends:
    """TCP+UDP servers on loopback: a line gets its server's port back; "cat" echoes bytes until EOF."""

    def __init__(self, n: int) -> None:
        self.stop = threading.Event()
        self.tcp = []
        self.udp = []
        for _ in range(n):
            t = socket.create_server(("127.0.0.1", 0))
            t.settimeout(0.2)
            port = t.getsockname()[1]
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("127.0.0.1", port))
            u.settimeout(0.2)
            self.tcp.append(t)
            self.udp.append(u)
            threading.Thread(target=self._tcp, args=(t,), daemon=True).start()
            threading.Thread(target=self._udp, args=(u,), daemon=True).start()
        self.ports = [t.getsockname()[1] for t in self.tcp]

    def _tcp(self, srv: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=self._conn, args=(conn, srv.getsockname()[1]), daemon=True).start()

    def _conn(self, conn: socket.socket, port: int) -> None:
        conn.settimeout(10)
        with conn:
            first = conn.recv(1 << 16)
            if first.startswith(b"cat "):
                data = first[4:]
                while data:
                    conn.sendall(data)
                    data = conn.recv(1 << 16)
                return
            conn.sendall(json.dumps({"port": port}).encode() + b"\n")

    def _udp(self, srv: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                _, addr = srv.recvfrom(2048)
            except OSError:
                continue
            srv.sendto(json.dumps({"port": srv.getsockname()[1]}).encode(), addr)

    def close(self) -> None:
        self.stop.set()
        for s in self.tcp + self.udp:
            s.close()


@pytest.fixture
def backends() -> Iterator[Backends]:
    b = Backends(3)
    yield b
    b.close()


def write_table(d: Path, services: list[dict[str, Any]]) -> None:
    (d / TABLE_FILE).write_text(json.dumps({"listen_ip": "127.0.0.1", "services": services, "hold": []}))


@pytest.fixture
def proxy_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "n1"
    d.mkdir()
    yield d
    stop_proxy(d)


def start(d: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(launch_argv(d),
                          capture_output=True, text=True, timeout=20, check=False)


def ask(port: int, payload: bytes = b"hi\n") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(payload)
        return int(json.loads(s.makefile().readline())["port"])


def ask_udp(port: int, sock: socket.socket | None = None) -> int:
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(3)
        s.sendto(b"hi", ("127.0.0.1", port))
        return int(json.loads(s.recv(2048))["port"])
    finally:
        if sock is None:
            s.close()


def test_round_robin_retry_and_stats(proxy_dir: Path, backends: Backends) -> None:
    port = free_port()
    dead = free_port()  # nothing listens there: connects are refused, the proxy moves on
    endpoints = [f"127.0.0.1:{p}" for p in backends.ports] + [f"127.0.0.1:{dead}"]
    write_table(proxy_dir, [{"name": "default/web:http", "protocol": "TCP", "proxy_port": port,
                             "endpoints": endpoints}])
    res = start(proxy_dir)
    assert res.returncode == 0, res.stderr
    assert proxy_pid(proxy_dir) is not None
    seen = Counter(ask(port) for _ in range(30))
    assert sorted(seen.values()) == [10, 10, 10]
    stats = control(proxy_dir, {"op": "stats"})["services"][0]
    # 30 successes are 10 rounds of the 3 live endpoints; the dead one (shuffled in among them)
    # was tried in each round it came before the 30th success: 10 times, or 9 if it is last
    dead_stats = stats["endpoints"][f"127.0.0.1:{dead}"]
    assert dead_stats["connections"] == dead_stats["active"] == 0
    assert dead_stats["failed"] in (9, 10), dead_stats
    assert sum(e["connections"] for e in stats["endpoints"].values()) == 30


def test_splice_relays_large_payloads_both_ways_with_half_close(proxy_dir: Path, backends: Backends) -> None:
    port = free_port()
    write_table(proxy_dir, [{"name": "default/cat", "protocol": "TCP", "proxy_port": port,
                             "endpoints": [f"127.0.0.1:{backends.ports[0]}"]}])
    assert start(proxy_dir).returncode == 0
    blob = os.urandom(4 << 20)
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        def send() -> None:
            s.sendall(b"cat " + blob)
            s.shutdown(socket.SHUT_WR)  # the half-close reaches the backend, which then closes

        sender = threading.Thread(target=send)
        sender.start()
        while data := s.recv(1 << 16):
            got += data
        sender.join(10)
    assert bytes(got) == blob


def test_no_endpoints_accepts_then_closes(proxy_dir: Path) -> None:
    port = free_port()
    write_table(proxy_dir, [{"name": "default/empty", "protocol": "TCP", "proxy_port": port, "endpoints": []}])
    assert start(proxy_dir).returncode == 0
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        assert s.recv(100) == b""  # (with unread data the close would be a reset)


def test_udp_clients_round_robin_and_expire(proxy_dir: Path, backends: Backends) -> None:
    port = free_port(socket.SOCK_DGRAM)
    write_table(proxy_dir, [{"name": "default/web:dns", "protocol": "UDP", "proxy_port": port, "udp_timeout": 0.3,
                             "endpoints": [f"127.0.0.1:{p}" for p in backends.ports]}])
    assert start(proxy_dir).returncode == 0
    assert sorted(Counter(ask_udp(port) for _ in range(9)).values()) == [3, 3, 3]  # a new client each time
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        first = {ask_udp(port, s) for _ in range(5)}
        assert len(first) == 1  # one client address keeps its endpoint while active
        time.sleep(0.8)  # idle past the timeout: the client entry is dropped
        assert control(proxy_dir, {"op": "stats"})["services"][0]["udp_clients"] == 0
        assert ask_udp(port, s) != first.pop()  # a new entry: the next endpoint in the rotation


def test_reload_updates_endpoints_and_closes_removed_ports(proxy_dir: Path, backends: Backends) -> None:
    a, b = free_port(), free_port()
    svc_a = {"name": "default/a", "protocol": "TCP", "proxy_port": a, "endpoints": [f"127.0.0.1:{backends.ports[0]}"]}
    svc_b = {"name": "default/b", "protocol": "TCP", "proxy_port": b, "endpoints": [f"127.0.0.1:{backends.ports[1]}"]}
    write_table(proxy_dir, [svc_a, svc_b])
    assert start(proxy_dir).returncode == 0
    assert ask(a) == backends.ports[0] and ask(b) == backends.ports[1]
    write_table(proxy_dir, [{**svc_a, "endpoints": [f"127.0.0.1:{backends.ports[2]}"]}])
    assert control(proxy_dir, {"op": "load"}) == {"ok": True, "errors": []}
    assert ask(a) == backends.ports[2]
    with pytest.raises(ConnectionRefusedError):
        ask(b)


def test_port_conflict_is_reported_not_fatal(proxy_dir: Path, backends: Backends) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        ok = free_port()
        write_table(proxy_dir, [
            {"name": "default/busy", "protocol": "TCP", "proxy_port": busy, "endpoints": []},
            {"name": "default/ok", "protocol": "TCP", "proxy_port": ok, "endpoints": [f"127.0.0.1:{backends.ports[0]}"]},
        ])
        res = start(proxy_dir)
        assert res.returncode == 0
        assert f"default/busy TCP: cannot listen on proxy port {busy}" in res.stderr
        assert ask(ok) == backends.ports[0]


def test_stop_checks_the_cmdline_and_the_proxy_exits_without_its_state_dir(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / PID_FILE).write_text(f"{os.getpid()}\n")  # a live pid that is not a proxy
    assert proxy_pid(foreign) is None and not stop_proxy(foreign)

    lab = tmp_path / "lab"
    nodes = [lab / "nodes" / n / "userspace" for n in ("node-1", "node-2")]
    for d in nodes:
        d.mkdir(parents=True)
        write_table(d, [])
        assert start(d).returncode == 0
    pids = [proxy_pid(d) for d in nodes]
    assert all(pids)
    shutil.rmtree(nodes[1])  # the lab went away without cleanup(): that proxy exits by itself
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and Path(f"/proc/{pids[1]}/cmdline").exists() and \
            Path(f"/proc/{pids[1]}/cmdline").read_bytes():
        time.sleep(0.1)
    assert not Path(f"/proc/{pids[1]}/cmdline").exists() or not Path(f"/proc/{pids[1]}/cmdline").read_bytes()
    assert stop_proxies_under(lab) == 1  # what `kplab clean` calls for a crashed lab
    assert proxy_pid(nodes[0]) is None
    assert not Path(f"/proc/{pids[0]}/cmdline").exists() or not Path(f"/proc/{pids[0]}/cmdline").read_bytes()


def test_hundreds_of_open_connections_at_once(proxy_dir: Path, backends: Backends) -> None:
    port = free_port()
    write_table(proxy_dir, [{"name": "default/cat", "protocol": "TCP", "proxy_port": port,
                             "endpoints": [f"127.0.0.1:{p}" for p in backends.ports]}])
    assert start(proxy_dir).returncode == 0
    limit = Path(f"/proc/{proxy_pid(proxy_dir)}/limits").read_text()
    assert int(next(line for line in limit.splitlines() if "open files" in line).split()[3]) >= 6 * 300
    conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)]
    try:
        for i, c in enumerate(conns):
            c.sendall(b"cat %d\n" % i)
        assert [c.makefile("rb").readline() for c in conns] == [b"%d\n" % i for i in range(300)]
        active = control(proxy_dir, {"op": "stats"})["services"][0]["endpoints"]
        assert sorted(e["active"] for e in active.values()) == [100, 100, 100]
    finally:
        for c in conns:
            c.close()
