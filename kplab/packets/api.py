"""Craft, send and capture packets inside any lab namespace (pod, node, `outside`) with scapy.

    lab.packets("client").syn("web:80")          # a TCP SYN to the ClusterIP; the SYN-ACK that came back
    with lab.capture("web-xxxx", filter="tcp port 8080", count=1) as cap:
        lab.packets("client").syn("web:80")
    cap.packets[0]["dst"]                        # the pod IP: the ClusterIP was rewritten on the way

scapy's state is global per process, so each namespace gets a helper process
(`kplab.packets.helper`) started inside it on first use, reached over a unix socket in the
lab's state directory, recorded as a .pid file there (so `kplab down` stops it) and leaving by
itself when idle or when the lab is gone.  `stop_all(lab)` stops them at once.

A crafted SYN is not the kernel's own connection: when the SYN-ACK comes back, the client's
kernel has no socket for it and answers with a RST.  That is expected (the RST is visible in
a capture and closes the conntrack entry); use `lab.curl` for a real connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from kplab.cluster.run import NETNS_DIR
from kplab.cluster.store import spawn_detached, stop_pid
from kplab.errors import KplabError, LabError
from kplab.inspect.labview import LabView

MARKER = "kplab.packets.helper"
IDLE_SECONDS = 300.0
START_TIMEOUT = 20.0


def HELPER_VERSION() -> str:
    return str(os.path.getmtime(Path(__file__).with_name("helper.py")))


class PacketError(KplabError):
    """A packet could not be sent or captured (the helper failed or timed out)."""


@dataclass(repr=False)
class Reply:
    """What came back for one crafted packet (`answer` is None when nothing did)."""

    sent: dict[str, Any]
    answer: dict[str, Any] | None
    rtt_ms: float | None = None

    @property
    def answered(self) -> bool:
        return self.answer is not None

    @property
    def summary(self) -> str:
        return self.answer["summary"] if self.answer else "no answer"

    def __getattr__(self, name: str) -> Any:
        """reply.src, reply.flags ... read the answer's fields."""
        if name in ("sent", "answer", "rtt_ms"):
            raise AttributeError(name)
        return (self.answer or {}).get(name)

    def json(self) -> Any:
        """The echo workload's answer (UDP payload) as data."""
        return json.loads((self.answer or {}).get("payload") or "null")

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "answer": self.answer, "rtt_ms": self.rtt_ms}

    def __repr__(self) -> str:
        return self.text()

    def text(self) -> str:
        s = self.sent
        line = f"sent     {s.get('summary')}\nanswer   {self.summary}"
        if self.answer:
            a = self.answer
            ends = [
                f"{a.get(h)}:{a[p]}" if a.get(p) is not None else str(a.get(h))
                for h, p in (("src", "sport"), ("dst", "dport"))
            ]
            fields = [" -> ".join(ends)]
            fields += [f"flags {a['flags']}"] if a.get("flags") else []
            fields += [a["icmp"]] if a.get("icmp") else []
            fields += [f"{self.rtt_ms:.2f} ms"] if self.rtt_ms is not None else []
            line += "\n         " + ", ".join(fields)
            if a.get("payload"):
                line += f"\npayload  {a['payload'].strip()}"
            if a.get("note"):
                line += f"\nnote     {a['note']}"
        return line


def _paths(lab: LabView, name: str) -> tuple[Path, Path, Path]:
    d = lab.store.dir / "packets"
    d.mkdir(parents=True, exist_ok=True)
    stem = name if len(name) <= 40 else hashlib.sha256(name.encode()).hexdigest()[:16]
    return d / f"{stem}.sock", d / f"{stem}.pid", d / f"{stem}.lock"


def _request(sock_path: Path, req: dict[str, Any], timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(json.dumps(req).encode() + b"\n")
    except BaseException:
        s.close()
        raise
    return s


def _read_line(f: Any) -> dict[str, Any]:
    line = f.readline()
    if not line:
        raise PacketError("the packet helper closed the connection without an answer")
    return json.loads(line)  # type: ignore[no-any-return]


class Packets:
    """A namespace's scapy helper: `syn`, `udp`, `icmp`; started on first use."""

    def __init__(self, lab: LabView, name: str) -> None:
        self.lab = lab
        self.name = name
        self.netns = lab.netns(name)
        self.sock, self.pidfile, self.lockfile = _paths(lab, name)

    # ---------------------------------------------------------------- helper process
    def _alive(self) -> bool:
        try:
            with _request(self.sock, {"op": "ping"}, 2.0) as s:
                res = _read_line(s.makefile("rb"))
        except (OSError, ValueError, PacketError):
            return False
        if res.get("version") != HELPER_VERSION():
            self._stop_recorded()  # a helper from older code: start a fresh one
            return False
        return bool(res.get("ok"))

    def start(self) -> Packets:
        """Make sure the helper runs (one per namespace, even with concurrent callers)."""
        if self._alive():
            return self
        with open(self.lockfile, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._alive():
                return self
            self._stop_recorded()
            argv = [
                shutil.which("nsenter") or "nsenter",
                f"--net={NETNS_DIR}/{self.netns}",
                "--",
                sys.executable,
                "-m",
                MARKER,
                str(self.sock),
                self.netns,
                str(IDLE_SECONDS),
            ]
            pid = spawn_detached(argv, self.sock.with_suffix(".log"))
            self.pidfile.write_text(str(pid))
            end = time.monotonic() + START_TIMEOUT
            while time.monotonic() < end:
                if self._alive():
                    return self
                time.sleep(0.05)
        log = self.sock.with_suffix(".log")
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        self._stop_recorded()
        raise PacketError(f"the scapy helper for {self.name} did not start{': ' + tail[0] if tail else ''}")

    def _stop_recorded(self) -> None:
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        stop_pid(pid, MARKER)
        self.pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop this namespace's helper now (it would also leave by itself when idle)."""
        with (
            contextlib.suppress(OSError, ValueError, PacketError),
            _request(self.sock, {"op": "stop"}, 2.0) as s,
        ):
            _read_line(s.makefile("rb"))
        self._stop_recorded()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- sending
    def _send(self, kind: str, target: str, sport: int | None, payload: str, timeout: float) -> Reply:
        ip, port, _ = _target(self.lab, target, kind)
        self.start()
        req = {
            "op": "send",
            "kind": kind,
            "dst": ip,
            "dport": port,
            "sport": sport,
            "payload": payload,
            "timeout": timeout,
        }
        try:
            with _request(self.sock, req, timeout + 10) as s:
                res = _read_line(s.makefile("rb"))
        except (OSError, ValueError) as e:
            raise PacketError(f"sending from {self.name} failed: {e}") from None
        if not res.get("ok"):
            raise PacketError(f"sending from {self.name} failed: {res.get('error')}")
        return Reply(res["sent"], res.get("answer"), res.get("rtt_ms"))

    def syn(self, target: str, sport: int | None = None, timeout: float = 2.0) -> Reply:
        """One TCP SYN to `target` ("web:80", "10.96.0.10:53", "node-1:web"); the SYN-ACK (or RST, ICMP)."""
        return self._send("syn", target, sport, "", timeout)

    def udp(
        self, target: str, payload: str = "kplab\n", sport: int | None = None, timeout: float = 2.0
    ) -> Reply:
        """One UDP datagram; the echo workload answers with JSON (`reply.json()`)."""
        return self._send("udp", target, sport, payload, timeout)

    def icmp(self, target: str, timeout: float = 2.0) -> Reply:
        """One ICMP echo request to a pod, node, IP or Service IP (ClusterIPs do not answer pings in iptables mode)."""
        return self._send("icmp", target, None, "", timeout)


@dataclass
class Capture:
    """A capture running in a namespace's helper; `packets` waits for it to finish."""

    name: str
    filter: str
    count: int
    timeout: float
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _result: dict[str, Any] = field(default_factory=dict)

    def _collect(self, f: Any) -> None:
        try:
            self._result = _read_line(f)
        except (OSError, ValueError, PacketError) as e:
            self._result = {"ok": False, "error": str(e)}
        finally:
            if self._sock:
                self._sock.close()

    def wait(self) -> list[dict[str, Any]]:
        if self._thread:
            self._thread.join(self.timeout + 10)
        if not self._result.get("ok"):
            raise PacketError(f"capture in {self.name} failed: {self._result.get('error', 'no result')}")
        return list(self._result["packets"])

    @property
    def packets(self) -> list[dict[str, Any]]:
        return self.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.wait()

    def text(self) -> str:
        lines = [f"{p.get('iface', '?'):<14} {p['summary']}" for p in self.packets]
        return "\n".join(lines) or f"no packets matched {self.filter or 'anything'} in {self.timeout:g}s"


def capture(
    lab: LabView, name: str, filter: str = "", count: int = 10, timeout: float = 5.0, iface: str | None = None
) -> Capture:
    """Start capturing in `name`'s namespace (every interface unless `iface`); returns once it runs.

    Ends after `count` packets (0: no limit) or `timeout` seconds, whichever comes first.
    """
    if count < 0 or not 0 < timeout <= 600:
        raise LabError("capture: count must be >= 0 and timeout between 0 and 600 seconds")
    pk = Packets(lab, name).start()
    cap = Capture(name, filter, count, timeout)
    req = {"op": "capture", "filter": filter, "count": count, "timeout": timeout, "iface": iface}
    try:
        s = _request(pk.sock, req, timeout + 15)
        f = s.makefile("rb")
        first = _read_line(f)
    except (OSError, ValueError) as e:
        raise PacketError(f"capture in {name} failed to start: {e}") from None
    if first.get("event") != "started":
        s.close()
        raise PacketError(f"capture in {name} failed: {first.get('error', first)}")
    cap._sock = s
    cap._thread = threading.Thread(target=cap._collect, args=(f,), daemon=True)
    cap._thread.start()
    return cap


def packets(lab: LabView, name: str) -> Packets:
    """The packet tool of one namespace (a pod, a node or `outside`)."""
    return Packets(lab, name)


def stop_all(lab: LabView) -> None:
    """Stop every scapy helper of the lab."""
    d = lab.store.dir / "packets"
    for pidfile in sorted(d.glob("*.pid")) if d.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stop_pid(int(pidfile.read_text().split()[0]), MARKER)
        pidfile.unlink(missing_ok=True)


def _target(lab: LabView, target: str, kind: str) -> tuple[str, int, str]:
    """(ip, port, proto): Service targets via lab.resolve; for ICMP also pod, node or bare IP names."""
    if kind == "icmp":
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(target)), 0, "icmp"
        if target in lab.nodes:
            return lab.node_ip(target), 0, "icmp"
        with contextlib.suppress(LabError):
            return lab.pod_ip(target), 0, "icmp"
        with contextlib.suppress(LabError):
            return lab.service_ip(target.split(":")[0]), 0, "icmp"
        raise LabError(f"icmp target {target!r}: give a pod, node, Service or IP")
    return lab.resolve(target, "udp" if kind == "udp" else "tcp")  # type: ignore[no-any-return]


@contextlib.contextmanager
def session(lab: LabView, *names: str) -> Iterator[list[Packets]]:
    """Helpers for several namespaces, stopped on exit: `with session(lab, "client") as (c,): ...`."""
    tools = [Packets(lab, n).start() for n in names]
    try:
        yield tools
    finally:
        for t in tools:
            t.stop()
