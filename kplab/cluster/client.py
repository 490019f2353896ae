"""Requests from inside a namespace, as data: what `kplab curl` and `lab.curl()` do.

Each request is a fresh connection (a new source port, so a new conntrack entry and a new
load-balancing decision), made by a worker thread that entered the client's netns: no fork
per request.  Every answer is the echo workload's JSON, so the result says which pod answered
and which client address it saw.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
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


def _one(ip: str, port: int, proto: str, timeout: float, payload: bytes) -> dict[str, Any]:
    if proto == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(payload, (ip, port))
            data, _ = s.recvfrom(4096)
            return json.loads(data)  # type: ignore[no-any-return]
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(payload)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return json.loads(buf)  # type: ignore[no-any-return]


def curl(netns: str, ip: str, port: int, proto: str = "tcp", n: int = 1, timeout: float = 2.0,
         target: str = "", deadline: float = 120.0) -> CurlResult:
    """n requests from `netns` to ip:port; bounded by `timeout` each and `deadline` overall."""
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
