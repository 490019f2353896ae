"""Reproduce kubernetes#74839 with real packets: a segment conntrack marks INVALID leaves the node un-NATed.

    p = reset_probe(lab)        # client holds a TCP connection to web:80; its backend sends one out-of-window segment
    p.survived, p.unnatted, p.client_rsts

What happens (an old kube-proxy, before 1.15; here the lab's option `drop_invalid: false`):
the client connects to the ClusterIP, the node DNATs to a pod.  A segment from that pod whose
sequence number lies far outside the window (a late retransmission, a middlebox's doing) is
INVALID to conntrack, which then does not translate it back: it reaches the client from the
*pod's* address.  The client's kernel has no socket for pod:8080, so it answers with a RST; the
RST carries the sequence number the pod expects, so the pod drops the real connection, and the
client's next write on its (ClusterIP) connection gets "connection reset by peer".

kube-proxy's fix is `-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`, and with
`nf_conntrack_tcp_be_liberal=1` on the node (kube-proxy's --conntrack-tcp-be-liberal) conntrack does
not mark such segments INVALID at all: they are translated, and the client answers a duplicate ACK.

The connection is the client kernel's own (a socket in its namespace); the out-of-window segment is
crafted with scapy in the backend pod's namespace.  Run as a script by `reset_probe` only:
`python -m kplab.course.invalid hold IP PORT` (in the client) and `... inject SRC DST SPORT DPORT SEQ ACK`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

OUT_OF_WINDOW = 1 << 30  # far beyond any receive window: conntrack's tcp_in_window() says INVALID


@dataclass
class ResetProbe:
    """What one probe saw, from the client's namespace."""

    pod: str  # the pod that got the connection
    pod_ip: str
    sport: int  # the client's port
    survived: bool  # the held connection still answered after the segment
    error: str  # what the client's second write got instead ("" when it survived)
    packets: list[dict[str, Any]] = field(default_factory=list)  # captured in the client, after the handshake

    @property
    def unnatted(self) -> list[dict[str, Any]]:
        """Packets that reached the client from the pod's own address: not translated back."""
        return [p for p in self.packets if p.get("src") == self.pod_ip]

    @property
    def client_rsts(self) -> list[dict[str, Any]]:
        """The RSTs the client sent to the pod's own address."""
        return [p for p in self.packets if p.get("dst") == self.pod_ip and "R" in str(p.get("flags", ""))]

    def text(self) -> str:
        head = (f"client:{self.sport} -> web, DNATed to {self.pod} ({self.pod_ip}:8080); "
                f"{self.pod} sent one segment {OUT_OF_WINDOW} bytes beyond the window")
        lines = [head]
        for p in self.packets:
            lines.append(f"  at client: {p['src']}:{p['sport']} -> {p['dst']}:{p['dport']} [{p['flags']}]")
        lines.append("the connection survived" if self.survived else f"the connection is gone: {self.error}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()


def reset_probe(lab: Any, client: str = "client", service: str = "web", port: int = 80) -> ResetProbe:
    """Hold one connection from `client` to `service`, send the out-of-window segment from its pod, report."""
    from kplab.errors import LabError

    vip = lab.service_ip(service)
    argv = ["ip", "netns", "exec", lab.netns(client), sys.executable, "-m", __name__, "hold", vip, str(port)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    hold = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    timer = threading.Timer(180, hold.kill)  # bounded: a wedged helper never outlives the probe
    timer.start()
    try:
        first = json.loads(hold.stdout.readline() or "{}")  # type: ignore[union-attr]
        if "error" in first or "pod" not in first:
            hold.kill()
            raise LabError(f"the probe's connection from {client} to {service}:{port} failed: "
                           f"{first.get('error') or hold.stderr.read().strip()[-300:]}")  # type: ignore[union-attr]
        inject = [sys.executable, "-m", __name__, "inject", first["pod_ip"], first["client_ip"],
                  str(first["pod_port"]), str(first["sport"]), str((first["rcv_nxt"] + OUT_OF_WINDOW) % (1 << 32)),
                  str(first["snd_nxt"])]
        sent = lab.exec(first["pod"], inject, timeout=120)
        if not sent.ok:
            hold.kill()
            raise LabError(f"could not send the segment from {first['pod']}: {sent.stderr.strip()[-300:]}")
        out, err = hold.communicate("go\n", timeout=120)
        last = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err.strip()[-300:]}
    finally:
        timer.cancel()
        if hold.poll() is None:
            hold.kill()
            hold.wait()
    return ResetProbe(first["pod"], first["pod_ip"], first["sport"], bool(last.get("survived")),
                      str(last.get("error", "")), list(last.get("packets", [])))


def _hold(vip: str, port: int) -> int:
    """In the client: connect, exchange a line, print the sequence numbers; on "go", write again and report."""
    import socket
    import time

    from scapy.all import TCP, AsyncSniffer

    from kplab.packets.helper import describe

    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    sport = sock.getsockname()[1]
    up = threading.Event()
    sniffer = AsyncSniffer(filter=f"tcp port {sport}", started_callback=up.set, store=True)
    sniffer.start()
    up.wait(20)
    time.sleep(0.2)
    try:
        sock.settimeout(10)
        sock.connect((vip, port))
        sock.sendall(b"hello\n")
        line = sock.makefile("rb").readline()
        hello = json.loads(line)
        time.sleep(0.3)
        shaken = sniffer.stop(join=True) or []
        syn = next((p[TCP] for p in shaken if TCP in p and p[TCP].flags == "S"), None)
        synack = next((p[TCP] for p in shaken if TCP in p and p[TCP].flags == "SA"), None)
        if syn is None or synack is None:
            print(json.dumps({"error": "the capture missed the handshake"}), flush=True)
            return 1
    except (OSError, ValueError) as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    client_ip = sock.getsockname()[0]
    print(json.dumps({"pod": hello.get("pod"), "pod_ip": hello.get("pod_ip"),
                      "pod_port": hello.get("port", 8080), "client_ip": client_ip, "sport": sport,
                      "snd_nxt": (syn.seq + 1 + len(b"hello\n")) % (1 << 32),
                      "rcv_nxt": (synack.seq + 1 + len(line)) % (1 << 32)}), flush=True)
    ready = threading.Event()
    after = AsyncSniffer(filter=f"tcp port {sport}", started_callback=ready.set, store=True)
    after.start()
    ready.wait(20)
    time.sleep(0.2)
    sys.stdin.readline()  # the segment was sent
    time.sleep(1.0)
    survived, error = False, ""
    try:
        sock.sendall(b"again\n")
        survived = bool(sock.makefile("rb").readline())
        error = "" if survived else "the connection was closed"
    except OSError as e:
        error = str(e)
    time.sleep(0.3)
    packets = [describe(p) for p in (after.stop(join=True) or [])]
    print(json.dumps({"survived": survived, "error": error, "packets": packets}), flush=True)
    return 0


def _inject(src: str, dst: str, sport: int, dport: int, seq: int, ack: int) -> int:
    """In the pod: one ACK segment of the connection, out of window."""
    from scapy.all import IP, TCP, conf, send

    conf.verb = 0
    send(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="A", seq=seq, ack=ack, window=502))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["hold"]:
        sys.exit(_hold(sys.argv[2], int(sys.argv[3])))
    if sys.argv[1:2] == ["inject"]:
        a = sys.argv[2:]
        sys.exit(_inject(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5])))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
