"""The connect-time sampler: its own process, making each connection from a client pod's namespace.

    python kplab/bench/probe.py '<json spec>'

It times TCP connect() (the SYN leaves, the SYN-ACK comes back: the first packet is the one
that walks the proxy's rules) to each target in turn, round after round, so a slow moment of
the machine hits every target alike.  Each target names the namespace its client is in; the
socket is made there (setns, socket(), setns back: a socket keeps its namespace), so targets
from different pods can be interleaved in one loop.  Each connection is closed with a RST
(SO_LINGER 0): it leaves neither a TIME_WAIT socket nor a long-lived conntrack entry.  Beside
the wall time it reads the kernel's own first RTT sample (TCP_INFO tcpi_rtt, microseconds).

Connections are paced (`interval`, 1 ms by default): the echo workload is one Python process,
and if it falls behind in accept()ing, the pod's listen queue overflows and a SYN waits 1 s
for its retransmit, which would measure the workload, not the path.  Being a separate process
with one thread, nothing competes for the GIL between connect() returning and the clock being
read.  Only the standard library is imported.

Spec: {"targets": [[label, netns, ip, port], ...], "samples": S, "warmup": W, "timeout": s,
"deadline": s, "interval": s, "cgroup": path (a cgroup v2 directory to run in first)}
Output (stdout, JSON): {label: {"connect_us": [...], "rtt_us": [...], "failed": n, "errors": {...}}}
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import sys
import time
from typing import Any

CLONE_NEWNET = 0x40000000
TCPI_RTT_OFFSET = 68  # struct tcp_info: 8 one-byte fields, then u32s; tcpi_rtt is the 16th
LINGER_RST = struct.pack("ii", 1, 0)
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def socket_in(ns_fd: int, own_fd: int) -> socket.socket:
    _setns(ns_fd)
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        _setns(own_fd)


def connect_once(s: socket.socket, ip: str, port: int, timeout: float) -> tuple[float, int]:
    """Seconds connect() took, and the kernel's RTT sample of that handshake in microseconds."""
    try:
        s.settimeout(timeout)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        t0 = time.perf_counter_ns()
        s.connect((ip, port))
        t1 = time.perf_counter_ns()
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        rtt = struct.unpack_from("I", info, TCPI_RTT_OFFSET)[0]
        return (t1 - t0) / 1e9, rtt
    finally:
        s.close()


def sample(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("cgroup"):  # the eBPF mode's socket hooks see the processes of the node's cgroup only
        with open(os.path.join(spec["cgroup"], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    targets = [(str(label), str(ns), str(ip), int(port)) for label, ns, ip, port in spec["targets"]]
    out: dict[str, Any] = {t[0]: {"connect_us": [], "rtt_us": [], "failed": 0, "errors": {}} for t in targets}
    end = time.monotonic() + float(spec.get("deadline", 60))
    warmup, samples = int(spec.get("warmup", 10)), int(spec["samples"])
    timeout = float(spec.get("timeout", 2.0))
    interval = float(spec.get("interval", 0.001))
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    fds = {ns: os.open(f"/run/netns/{ns}", os.O_RDONLY) for _, ns, _, _ in targets}
    try:
        for i in range(warmup + samples):
            if time.monotonic() > end:
                break
            for label, ns, ip, port in targets:
                time.sleep(interval)
                try:
                    seconds, rtt = connect_once(socket_in(fds[ns], own), ip, port, timeout)
                except OSError as e:
                    if i >= warmup:
                        out[label]["failed"] += 1
                        err = e.strerror or type(e).__name__
                        out[label]["errors"][err] = out[label]["errors"].get(err, 0) + 1
                    continue
                if i >= warmup:
                    out[label]["connect_us"].append(round(seconds * 1e6, 2))
                    out[label]["rtt_us"].append(rtt)
    finally:
        for fd in (own, *fds.values()):
            os.close(fd)
    return out


if __name__ == "__main__":
    print(json.dumps(sample(json.loads(sys.argv[1]))))
