"""The scapy helper process: one per lab namespace, serving requests on a unix socket.

scapy keeps global state per process (its routing table, interface list, `conf`), read from
the network namespace it starts in, so each namespace gets its own process, started inside
it (`nsenter --net=... python -m kplab.packets.helper SOCKET NETNS IDLE`).  `kplab.packets.api`
starts it, talks to it and stops it; this module only serves.

Protocol: one JSON object per line, one request per connection.
    {"op": "send", "kind": "syn"|"udp"|"icmp", "dst": ip, "dport": n, "sport": n|null,
     "payload": str, "timeout": s}                      -> {"ok": true, "sent": {...}, "answer": {...}|null}
    {"op": "capture", "filter": bpf, "count": n, "timeout": s, "iface": name|null}
                                                        -> {"event": "started"}, then {"ok": true, "packets": [...]}
    {"op": "ping"} -> {"ok": true, "pid": n};   {"op": "stop"} -> {"ok": true}, then the process exits.

It exits by itself after IDLE seconds without a request, or as soon as its namespace is
gone (the lab was brought down): it never outlives the lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socketserver
import sys
import threading
import time
from typing import Any

from scapy.all import (  # type: ignore[attr-defined]
    ARP,
    ICMP,
    IP,
    TCP,
    UDP,
    AsyncSniffer,
    CookedLinux,
    Ether,
    ICMPerror,
    IPerror,
    L3RawSocket,
    Packet,
    Padding,
    Raw,
    TCPerror,
    UDPerror,
    conf,
    get_if_list,
    sr1,
)

VERSION = str(os.path.getmtime(__file__))  # the client restarts a helper running older code
conf.verb = 0
conf.L3socket = L3RawSocket  # the kernel routes and resolves neighbours, as for any program in the netns
# Dissect only what a Service speaks here: payloads stay Raw whatever the port (scapy would read a
# reply from port 53 as DNS and then not match it to our datagram).
conf.layers.filter(
    [Ether, CookedLinux, ARP, IP, TCP, UDP, ICMP, IPerror, TCPerror, UDPerror, ICMPerror, Raw, Padding]
)

ICMP_TYPES = {0: "echo-reply", 3: "dest-unreach", 8: "echo-request", 11: "time-exceeded"}
ICMP_UNREACH = {
    0: "net-unreachable",
    1: "host-unreachable",
    3: "port-unreachable",
    9: "net-prohibited",
    10: "host-prohibited",
    13: "admin-prohibited",
}


def describe(p: Packet) -> dict[str, Any]:
    """The fields a learner looks at, as plain data."""
    ip = p.getlayer(IP)
    out: dict[str, Any] = {"summary": p.summary(), "time": float(p.time), "len": len(p)}
    if getattr(p, "sniffed_on", None):
        out["iface"] = str(p.sniffed_on)
    if ip is None:
        return out
    out.update(src=ip.src, dst=ip.dst, ttl=ip.ttl)
    if p.haslayer(TCP):
        t = p[TCP]
        out.update(proto="tcp", sport=t.sport, dport=t.dport, flags=str(t.flags), seq=t.seq, ack=t.ack)
    elif p.haslayer(UDP):
        u = p[UDP]
        out.update(proto="udp", sport=u.sport, dport=u.dport)
    elif p.haslayer(ICMP):
        i = p[ICMP]
        out.update(proto="icmp", icmp=ICMP_TYPES.get(i.type, str(i.type)))
        if i.type == 3:
            out["icmp"] += " " + ICMP_UNREACH.get(i.code, str(i.code))
    if p.haslayer(Raw) and not (p.haslayer(ICMP) and p[ICMP].type == 3):
        out["payload"] = bytes(p[Raw].load)[:1500].decode(errors="replace")
    return out


def send(req: dict[str, Any]) -> dict[str, Any]:
    kind, dst = req["kind"], req["dst"]
    sport = int(req.get("sport") or random.randint(40000, 59999))
    timeout = float(req.get("timeout") or 2.0)
    if kind == "syn":
        pkt = IP(dst=dst) / TCP(sport=sport, dport=int(req["dport"]), flags="S", seq=random.randint(0, 2**31))
    elif kind == "udp":
        pkt = (
            IP(dst=dst)
            / UDP(sport=sport, dport=int(req["dport"]))
            / Raw((req.get("payload") or "kplab\n").encode())
        )
    elif kind == "icmp":
        pkt = IP(dst=dst) / ICMP(id=sport & 0xFFFF, seq=1)
    else:
        return {"ok": False, "error": f"unknown packet kind {kind!r}: syn, udp or icmp"}
    start = time.monotonic()
    answer = sr1(pkt, timeout=timeout)
    rtt = (time.monotonic() - start) * 1000
    sent = describe(pkt)
    sent["time"] = time.time()
    return {
        "ok": True,
        "sent": sent,
        "answer": describe(answer) if answer is not None else None,
        "rtt_ms": round(rtt, 3) if answer is not None else None,
    }


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def reply(self, obj: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(obj).encode() + b"\n")
        self.wfile.flush()

    def handle(self) -> None:
        self.server.touch(+1)
        try:
            req = json.loads(self.rfile.readline() or b"{}")
            op = req.get("op")
            if op == "ping":
                self.reply({"ok": True, "pid": os.getpid(), "version": VERSION})
            elif op == "stop":
                self.reply({"ok": True})
                threading.Thread(target=self.server.shutdown, daemon=True).start()
            elif op == "send":
                self.reply(send(req))
            elif op == "capture":
                self.capture(req)
            else:
                self.reply({"ok": False, "error": f"unknown request {op!r}"})
        except Exception as e:  # noqa: BLE001 - the one boundary: any failure becomes an error answer
            try:
                self.reply({"ok": False, "error": f"{type(e).__name__}: {e}"})
            except OSError:
                pass
        finally:
            self.server.touch(-1)

    def capture(self, req: dict[str, Any]) -> None:
        started = threading.Event()
        iface = (
            req.get("iface") or [i for i in get_if_list() if i != "lo"] or None
        )  # scapy's default: one iface
        sniffer = AsyncSniffer(
            filter=req.get("filter") or None,
            count=int(req.get("count") or 0),
            iface=iface,
            store=True,
            started_callback=started.set,
        )
        sniffer.start()
        started.wait(5)
        self.reply({"event": "started"})
        sniffer.join(timeout=float(req.get("timeout") or 5.0))
        if sniffer.running:
            with contextlib.suppress(Exception):
                sniffer.stop()
        self.reply({"ok": True, "packets": [describe(p) for p in sniffer.results or []]})


class Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, netns: str, idle: float) -> None:
        super().__init__(path, Handler)
        self.netns_path = f"/run/netns/{netns}"
        self.idle = idle
        self.busy = 0
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def touch(self, delta: int) -> None:
        with self.lock:
            self.busy += delta
            self.last = time.monotonic()

    def watchdog(self) -> None:
        """Leave when idle too long or when the lab's namespace is gone."""
        while True:
            time.sleep(0.5)
            with self.lock:
                idle = self.busy == 0 and time.monotonic() - self.last > self.idle
            if idle or not os.path.exists(self.netns_path):
                self.shutdown()
                return


def main(argv: list[str]) -> int:
    path, netns, idle = argv[0], argv[1], float(argv[2]) if len(argv) > 2 else 300.0
    if os.path.exists(path):
        os.unlink(path)
    server = Server(path, netns, idle)
    os.chmod(path, 0o600)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    threading.Thread(target=server.watchdog, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if os.path.exists(path):
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
