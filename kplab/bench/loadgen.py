"""The request load generator, run as its own process inside the client's network namespace.

    nsenter --net=/run/netns/<client> python kplab/bench/loadgen.py '<json spec>'

Loads (by the userspace mode's author, moved here from bench/datapath.py; since then new
connections are closed with a RST, see LINGER_RST):

    connect     a new TCP connection per request (send a line, read the echo's JSON line),
                `concurrency` of them in flight: latency at 1, throughput above
    keepalive   one connection, request after request: the cost once a connection exists

Bounded by the request count and by DEADLINE seconds, whichever comes first.  Only the
standard library is imported.  Spec: {"targets": [[ip, port], ...], "load": "connect" |
"keepalive", "n": N, "concurrency": C, "timeout": s, "cgroup": dir to run in}; prints {"seconds", "latencies", "failed"}.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
import time
from typing import Any

DEADLINE = 30.0  # seconds per measurement, whatever the request count
# Close new-connection requests with a RST, after the answer is in (and the time taken): a
# normal close leaves the client a TIME_WAIT socket for 60 s, and some 14,000 of them towards
# one ClusterIP:port exhaust the even ephemeral ports, after which every connect() searches the
# range and a Service target slows down tenfold while the 3 pod IPs (3x the ports) do not.
LINGER_RST = struct.pack("ii", 1, 0)


async def _request(loop: asyncio.AbstractEventLoop, addr: tuple[str, int], timeout: float) -> float:
    start = time.perf_counter()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    try:
        await asyncio.wait_for(loop.sock_connect(s, addr), timeout)
        await loop.sock_sendall(s, b"bench\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = await asyncio.wait_for(loop.sock_recv(s, 4096), timeout)
            if not chunk:
                raise ConnectionError("closed before the answer")
            buf += chunk
    finally:
        s.close()
    return time.perf_counter() - start


async def connect_load(targets: list[tuple[str, int]], n: int, conc: int, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    failed = 0
    issued = 0
    deadline = time.monotonic() + DEADLINE

    async def worker() -> None:
        nonlocal issued, failed
        while issued < n and time.monotonic() < deadline:
            addr = targets[issued % len(targets)]
            issued += 1
            try:
                lat.append(await _request(loop, addr, timeout))
            except (TimeoutError, OSError):
                failed += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return {"seconds": time.perf_counter() - start, "latencies": lat, "failed": failed}


async def keepalive_load(targets: list[tuple[str, int]], n: int, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    s = socket.create_connection(targets[0], timeout=timeout)
    s.setblocking(False)
    deadline = time.monotonic() + DEADLINE
    start = time.perf_counter()
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            await loop.sock_sendall(s, b"bench\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = await asyncio.wait_for(loop.sock_recv(s, 4096), timeout)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            lat.append(time.perf_counter() - t)
    finally:
        s.close()
    return {"seconds": time.perf_counter() - start, "latencies": lat, "failed": 0}


def main(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("cgroup"):  # the eBPF mode's socket hooks see the processes of the node's cgroup only
        with open(spec["cgroup"] + "/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
    targets = [(ip, int(port)) for ip, port in spec["targets"]]
    if spec["load"] == "keepalive":
        return asyncio.run(keepalive_load(targets, spec["n"], spec["timeout"]))
    return asyncio.run(connect_load(targets, spec["n"], spec["concurrency"], spec["timeout"]))


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
