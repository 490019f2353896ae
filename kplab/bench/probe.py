"""The connect-time sampler, run as its own process inside a client's network namespace.

    nsenter --net=/run/netns/<client> python -m kplab.bench.probe '<json spec>'

It times TCP connect() (the SYN leaves, the SYN-ACK comes back: the first packet is the one
that walks the proxy's rules) to each target in turn, round after round, so a slow moment of
the machine hits every target alike.  Each connection is closed with a RST (SO_LINGER 0) so
it leaves neither a TIME_WAIT socket nor a long-lived conntrack entry.  Beside the wall time it
reads the kernel's own first RTT sample (TCP_INFO tcpi_rtt, microseconds).  Connections are
paced (`interval`, 1 ms by default): the echo workload is one Python process, and if it falls
behind in accept()ing, the pod's listen queue overflows and a SYN waits 1 s for its retransmit,
which would measure the workload, not the path.  It is a separate
process with nothing else running in it: no other Python thread competes for the GIL between
connect() returning and the clock being read.  Only the standard library is imported.

Spec: {"targets": [[label, ip, port], ...], "samples": S, "warmup": W, "timeout": s, "deadline": s,
"interval": s}
Output (stdout, JSON): {label: {"connect_us": [...], "rtt_us": [...], "failed": n, "errors": {...}}}
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from typing import Any

TCPI_RTT_OFFSET = 68  # struct tcp_info: 8 one-byte fields, then u32s; tcpi_rtt is the 16th
LINGER_RST = struct.pack("ii", 1, 0)


def connect_once(ip: str, port: int, timeout: float) -> tuple[float, int]:
    """Seconds connect() took, and the kernel's RTT sample of that handshake in microseconds."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
    targets = [(str(label), str(ip), int(port)) for label, ip, port in spec["targets"]]
    out: dict[str, Any] = {label: {"connect_us": [], "rtt_us": [], "failed": 0, "errors": {}}
                           for label, _, _ in targets}
    end = time.monotonic() + float(spec.get("deadline", 60))
    warmup, samples = int(spec.get("warmup", 10)), int(spec["samples"])
    timeout = float(spec.get("timeout", 2.0))
    interval = float(spec.get("interval", 0.001))
    for i in range(warmup + samples):
        if time.monotonic() > end:
            break
        for label, ip, port in targets:
            time.sleep(interval)
            try:
                seconds, rtt = connect_once(ip, port, timeout)
            except OSError as e:
                if i >= warmup:
                    out[label]["failed"] += 1
                    err = e.strerror or type(e).__name__
                    out[label]["errors"][err] = out[label]["errors"].get(err, 0) + 1
                continue
            if i >= warmup:
                out[label]["connect_us"].append(round(seconds * 1e6, 2))
                out[label]["rtt_us"].append(rtt)
    return out


if __name__ == "__main__":
    print(json.dumps(sample(json.loads(sys.argv[1]))))
