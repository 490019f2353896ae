"""Requests from inside a namespace, as data: what `kplab curl` and `lab.curl()` do.

Each request is a fresh connection (a new source port, so a new conntrack entry and a new
load-balancing decision), made by a worker thread that entered the client's netns: no fork
per request.  Every answer is the echo workload's JSON, so the result says which pod answered
and which client address it saw.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kplab.cluster.netns import entered


@dataclass
class CurlResult:
    target: str
    requests: int = 0
    ok: int = 0
    failed: int = 0
    backends: dict[str, int] = field(default_factory=dict)  # pod name -> answers
    answers: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # error text -> count
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NoAnswer(ConnectionError):
    """The connection was accepted and closed without a byte of answer."""


def _one(ip: str, port: int, proto: str, timeout: float, payload: bytes) -> dict[str, Any]:
    if proto == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((ip, port))  # connected: an ICMP port unreachable comes back as ECONNREFUSED
            s.send(payload)
            return json.loads(s.recv(4096))  # type: ignore[no-any-return]
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(payload)
        buf = b""
        try:
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except ConnectionResetError:
            if buf:
                raise
        if not buf:  # closed (FIN, or RST because our request was unread) before a byte of answer
            raise NoAnswer
        return json.loads(buf)  # type: ignore[no-any-return]


def curl(netns: str, ip: str, port: int, proto: str = "tcp", n: int = 1, timeout: float = 2.0,
         target: str = "", deadline: float = 120.0, closer: str = "the server",
         cgroup: str | None = None) -> CurlResult:
    """n requests from `netns` to ip:port; bounded by `timeout` each and `deadline` overall.

    Errors are counted by their text; a connection closed without an answer is said to be
    closed by `closer` ("the proxy" in userspace mode, where the proxy accepts before it has
    an endpoint).  With `cgroup` (a cgroup v2 directory) the requests come from a child process
    that joined it first, as a pod's processes would: socket-level hooks attached there see them."""
    if cgroup:
        return CurlResult(**in_cgroup(
            cgroup, lambda: curl(netns, ip, port, proto, n, timeout, target, deadline, closer).to_dict()))
    res = CurlResult(target=target or f"{ip}:{port}/{proto}")
    backends: Counter[str] = Counter()
    errors: Counter[str] = Counter()

    def work() -> None:
        start = time.monotonic()
        with entered(netns):
            for _ in range(n):
                if time.monotonic() - start > deadline:
                    break
                res.requests += 1
                try:
                    answer = _one(ip, port, proto, timeout, b"kplab\n")
                except NoAnswer:
                    res.failed += 1
                    errors[f"{closer} closed the connection without an answer"] += 1
                    continue
                except ConnectionRefusedError:
                    res.failed += 1
                    errors["refused"] += 1
                    continue
                except (OSError, ValueError) as e:
                    res.failed += 1
                    errors[type(e).__name__ if not str(e) else str(e)] += 1
                    continue
                res.ok += 1
                backends[answer.get("pod", "?")] += 1
                res.answers.append(answer)
        res.seconds = time.monotonic() - start

    t = threading.Thread(target=work, name=f"curl-{netns}", daemon=True)
    t.start()
    t.join(deadline + timeout + 5)
    res.backends = dict(sorted(backends.items()))
    res.errors = dict(errors)
    return res


def in_cgroup(cgroup: str, fn: Callable[[], Any]) -> Any:
    """fn() in a forked child that moved itself into `cgroup`; its (JSON-able) result comes back."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: join the cgroup before any socket exists, run, report, leave
        code = 0
        try:
            os.close(r)
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            out = json.dumps({"result": fn()}).encode()
        except BaseException as e:  # noqa: BLE001 - the parent reports it
            out, code = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode(), 1
        with os.fdopen(w, "wb") as f:
            f.write(out)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = json.loads(f.read() or b'{"error": "the client process died"}')
    os.waitpid(pid, 0)
    if "error" in data:
        raise OSError(f"client in cgroup {cgroup}: {data['error']}")
    return data["result"]
