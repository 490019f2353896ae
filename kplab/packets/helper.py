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
import socket
import socketserver
import sys
import threading
import time
from typing import Any

from scapy.all import (  # type: ignore[attr-defined]
    ARP,
    ETH_P_ALL,
    ETH_P_IP,
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
)

from kplab.cluster.run import NETNS_DIR

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


class StampedL3(L3RawSocket):  # type: ignore[misc]
    """scapy's L3 raw socket, keeping the kernel's timestamp of each frame we send.

    Its receiving half is a packet socket with SO_TIMESTAMPNS: the kernel stamps the answer
    when it arrives and, for an ETH_P_ALL socket, hands it a stamped copy of every outgoing
    frame (which scapy drops).  Keeping those copies gives the send time from the same clock, taken when the
    frame left for the device, not when Python called sendto.
    """

    def __init__(self) -> None:
        super().__init__(type=ETH_P_ALL)  # only ETH_P_ALL taps see frames going out (ptype_all)
        self.outgoing: list[tuple[bytes, Any, float | None]] = []
        self.incoming: list[tuple[bytes, Any, float | None]] = []

    def _recv_raw(self, sock: Any, x: int) -> tuple[bytes, Any, float | None]:
        data, sa_ll, ts = super()._recv_raw(sock, x)
        if data and sa_ll[1] == ETH_P_IP:
            seen = self.outgoing if sa_ll[2] == socket.PACKET_OUTGOING else self.incoming
            if len(seen) < 64:
                seen.append((data, sa_ll, ts))
        return data, sa_ll, ts

    @staticmethod
    def _ip(data: bytes, sa_ll: Any) -> Any:
        return (Ether(data) if sa_ll[3] == 1 else IP(data)).getlayer(IP)  # ARPHRD_ETHER, else a bare IP device

    def own_frame(self, pkt: Packet) -> tuple[Any, float | None]:
        """Our packet as it left (a node's own rules may have DNATed and masqueraded it on the way):
        found by what NAT keeps, the TCP sequence number, the UDP payload, the ICMP id."""
        mine = pkt[IP].payload
        for data, sa_ll, ts in self.outgoing:
            ip = self._ip(data, sa_ll)
            if ip is None or ip.proto != pkt[IP].proto:
                continue
            theirs = ip.payload
            if ((isinstance(mine, TCP) and isinstance(theirs, TCP) and theirs.seq == mine.seq and theirs.flags.S)
                    or (isinstance(mine, UDP) and isinstance(theirs, UDP)
                        and bytes(theirs.payload) == bytes(mine.payload))
                    or (isinstance(mine, ICMP) and isinstance(theirs, ICMP) and theirs.id == mine.id
                        and theirs.type == 8)):
                return ip, ts
        return None, None

    def sent_time(self, pkt: Packet) -> float | None:
        """The kernel's timestamp of `pkt`'s frame on its way out (None if it was not seen)."""
        return self.own_frame(pkt)[1]

    def untranslated_answer(self, pkt: Packet) -> Packet | None:
        """On a node that NATs its own connections, the pod's reply as it arrives, before conntrack
        turns it back: the reverse of our frame as it left (scapy, matching the ClusterIP, misses it)."""
        out, _ = self.own_frame(pkt)
        if out is None or not isinstance(out.payload, (TCP, UDP)) or out.dst == pkt[IP].dst:
            return None
        for data, sa_ll, ts in self.incoming:
            ip = self._ip(data, sa_ll)
            if (ip is not None and ip.proto == out.proto and (ip.src, ip.dst) == (out.dst, out.src)
                    and (ip.payload.sport, ip.payload.dport) == (out.payload.dport, out.payload.sport)):
                ip.time = ts if ts is not None else ip.time
                return ip
        return None


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
    sock = StampedL3()
    try:
        answer = sock.sr1(pkt, timeout=timeout)
        kernel_sent = sock.sent_time(pkt)
        natted = sock.untranslated_answer(pkt) if answer is None else None
    finally:
        sock.close()
    sent = describe(pkt)
    sent["time"] = kernel_sent if kernel_sent is not None else float(pkt.sent_time)
    sent["time_source"] = "kernel" if kernel_sent is not None else "scapy, before sendto"
    out = describe(answer if answer is not None else natted) if answer is not None or natted is not None else None
    if natted is not None and out is not None:
        out["note"] = (f"seen before conntrack undid this namespace's NAT: {natted.src} answered for {dst} "
                       f"(a program here sees the answer come from {dst}:{pkt[IP].payload.dport})")
    rtt = None
    if out is not None:
        out["time_source"] = "kernel"  # SO_TIMESTAMPNS on scapy's packet socket
        rtt = round((out["time"] - sent["time"]) * 1000, 3)
    return {"ok": True, "sent": sent, "answer": out, "rtt_ms": rtt}


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
        self.netns_path = f"{NETNS_DIR}/{netns}"
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
