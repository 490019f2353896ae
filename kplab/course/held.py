"""Connections a notebook keeps open, for what only long-lived connections show (IPVS `lc`, a drain).

    held = hold(lab, "client", "web:80", n=6)   # six connections, each asked once which pod it reached
    held.by_pod()                                # {"web-...-abc": 2, ...}
    held.close("web-...-abc")                    # reset those (IPVS forgets them at once, not after TIME_WAIT)
    held.ask()                                   # ask again on every open one: the pods that still answer

The sockets are the notebook kernel's own, made inside the pod's namespace; the lab's echo
answers one JSON line per line, naming the pod.  `lab.curl` opens and closes its connections,
so it cannot show these.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kplab.errors import LabError


def ask_pod(s: socket.socket) -> str:
    """Which pod answers on this open connection (the echo workload's `who`)."""
    s.sendall(b"who\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed by the far end")
        buf += chunk
    return str(json.loads(buf)["pod"])


def reset(s: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): IPVS keeps the entry 10 s (CLOSE) instead of 2 min (TIME_WAIT)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


@dataclass
class Held:
    """Open connections and the pod each one reached."""

    conns: list[tuple[socket.socket, str]] = field(default_factory=list)

    def by_pod(self) -> dict[str, int]:
        return dict(sorted(Counter(pod for _, pod in self.conns).items()))

    def ask(self) -> list[str]:
        """Ask on every open connection again: the pods that answer (an error's text where one fails)."""
        out = []
        for s, _ in self.conns:
            try:
                out.append(ask_pod(s))
            except OSError as e:
                out.append(f"error: {e}")
        return out

    def close(self, pod: str | None = None) -> int:
        """Reset the connections to `pod` (all with None); how many were closed."""
        keep, gone = [], 0
        for s, p in self.conns:
            if pod is None or p == pod:
                reset(s)
                gone += 1
            else:
                keep.append((s, p))
        self.conns = keep
        return gone

    def __repr__(self) -> str:
        return f"{len(self.conns)} open connection(s): {self.by_pod()}"


def hold(lab: Any, frm: str = "client", target: str = "web:80", n: int = 1, into: Held | None = None) -> Held:
    """Open `n` connections from `frm` to `target` and keep them (added to `into` when given)."""
    from kplab.cluster.netns import entered

    if not 1 <= n <= 200:
        raise LabError(f"hold: n={n}: hold 1 to 200 connections")
    ip, port, proto = lab.resolve(target)
    if proto != "tcp":
        raise LabError(f"hold: {target} is {proto}: only TCP connections can be held")
    held = into if into is not None else Held()
    for _ in range(n):
        with entered(lab.netns(frm)):
            s = socket.socket()
        try:
            s.settimeout(5)
            s.connect((ip, port))
            held.conns.append((s, ask_pod(s)))
        except OSError as e:
            s.close()
            raise LabError(f"hold: {frm} -> {target}: {e}") from None
    return held
