"""`lab.trace(frm, target)`: one real connection, and its path through the nodes, rule by rule.

The kernel traces the packet itself; kplab only asks it to, for this one flow, and reads back:

* iptables and userspace modes, and no mode at all (a learner's own rules; iptables-nft): a temporary `-j TRACE` rule in the raw table
  of every node, matching only this flow (protocol, client address and a source port kplab
  picked), read with `xtables-monitor --trace`;
* nftables mode: a temporary table of kplab's own whose chain (hooked before raw) sets
  `meta nftrace set 1` for this flow, read with `nft monitor trace`;
* IPVS mode (its virtual servers are not netfilter rules): the conntrack entry of the flow,
  original tuple = virtual server, reply tuple = real server;
* eBPF (the kube-proxy replacement): the programs log every decision in their kplab_log map;
  the entry of this flow names the hook (connect() or a tc program) and the map slots used.

Every temporary rule, table and monitor process is removed afterwards, also on error.  For
TCP only the SYN is traced: it alone goes through the NAT chains.  The result names each
chain's Service or endpoint (through `kplab explain` of the node's rules) and the backend
that answered (the echo workload says who it is), and checks the two agree:

    KUBE-SERVICES -> KUBE-SVC-... (default/web:http) -> KUBE-SEP-... (10.244.2.3:8080) -> DNAT 10.244.2.3:8080
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from kplab.cluster.netns import entered
from kplab.cluster.run import netns_argv, run
from kplab.errors import EnvironmentProblem, LabError
from kplab.inspect import conntrack
from kplab.inspect.labview import LabView
from kplab.inspect.trace_parse import Hop, decision, packet_summary, parse_nft, parse_xtables, visits

XT_TRACER = ("iptables", "userspace", "none")  # none: the rules a learner wrote by hand (01)
NFT_TRACER = ("nftables",)
HELPERS = {
    "KUBE-MARK-MASQ": "mark for SNAT",
    "mark-for-masquerade": "mark for SNAT",
    "KUBE-NODEPORTS": "NodePorts",
}
SETTLE = 0.3  # seconds a monitor needs to subscribe, and output needs to stop moving


@dataclass(repr=False)
class Trace:
    mode: str
    frm: str
    target: str
    proto: str
    client: str  # "10.244.1.3:23456"
    destination: str  # "10.96.0.20:80"
    hops: list[Hop] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    nat: str = ""  # "DNAT 10.244.2.3:8080"
    decided_on: str = ""  # the node that made the NAT decision
    answer: dict[str, Any] | None = None  # the echo workload's JSON: pod, pod_ip, client_ip, ...
    error: str = ""  # why the connection failed, if it did
    conntrack: list[conntrack.Entry] = field(default_factory=list)
    consistent: bool | None = None  # the backend in the NAT decision is the one that answered
    notes: list[str] = field(default_factory=list)
    id: str = ""  # kept in the lab under this id: answers to questions refer to it (kplab.course)
    at: float = 0.0

    @property
    def backend(self) -> str:
        return str((self.answer or {}).get("pod", ""))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conntrack"] = [e.to_dict() for e in self.conntrack]
        d["backend"] = self.backend
        return d

    def __repr__(self) -> str:
        return self.text()

    def text(self) -> str:
        out = [
            f"{self.proto} {self.client} -> {self.destination}   ({self.frm} -> {self.target}, mode {self.mode})"
        ]
        if self.path:
            out += ["", f"path on {self.decided_on}:" if self.decided_on else "path:", "  " + " -> ".join(self.path)]
        if self.answer:
            a = self.answer
            out.append(
                f"answered by {a.get('pod')} ({a.get('pod_ip')}:{a.get('port')} on {a.get('node')}), "
                f"which saw the client as {a.get('client_ip')}:{a.get('client_port')}"
            )
        if self.error:
            out.append(f"no answer: {self.error}")
        if self.consistent is not None:
            what = "the proxy's own connection" if self.nat.startswith("REDIRECT") else "the NAT decision"
            agree = "agree" if self.consistent else "DISAGREE"
            out.append(f"{'' if self.consistent else '! '}{what} and the answering backend {agree}")
        out += [f"note: {n}" for n in self.notes]
        if self.hops:
            out += ["", "every rule the packet met:"]
        blocks = [
            [f"  [{v.node}] {packet_summary(v.packet)}"]
            + [f"    {h.table}:{h.chain}  {f'{h.verdict} {h.target}'.strip()}{f'  ({h.note})' if h.note else ''}"
               for h in v.hops]
            for v in visits(self.hops)
        ]
        period, times = _repeats(blocks)
        for block in blocks[:period]:
            out += block
        if times > 1:
            again = "once more" if times == 2 else f"{times - 1} more times"
            out.append(f"  (then the same again, {again}: the client sent this packet {times} times, unanswered)")
        if self.conntrack:
            out += ["", "conntrack:"] + [f"  {e.text()}" for e in self.conntrack]
        return "\n".join(out)


def _repeats(blocks: list[list[str]]) -> tuple[int, int]:
    """(p, n): the blocks are their first p repeated n times (a retransmitted SYN meets the same
    rules each time); (len, 1) when they are not."""
    for p in range(1, len(blocks) // 2 + 1):
        if len(blocks) % p == 0 and all(blocks[i] == blocks[i - p] for i in range(p, len(blocks))):
            return p, len(blocks) // p
    return len(blocks), 1


# ------------------------------------------------------------------------------------ monitors


class Monitor:
    """A tracer process we started in one node's netns; its output collected by a thread."""

    def __init__(self, netns: str, argv: list[str]) -> None:
        self.lines: list[str] = []
        try:
            self.proc = subprocess.Popen(
                netns_argv(netns, ["stdbuf", "-oL", *argv]),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        except FileNotFoundError as e:
            raise EnvironmentProblem(f"{argv[0]} is not installed: run `make setup`") from e
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2)
        self.reader.join(2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _settle(monitors: list[Monitor], limit: float = 2.0) -> None:
    """Wait until no monitor has printed anything new for SETTLE seconds (at most `limit`)."""
    end = time.monotonic() + limit
    seen = -1
    while time.monotonic() < end:
        now = sum(len(m.lines) for m in monitors)
        if now == seen and now > 0:
            return
        seen = now
        time.sleep(SETTLE)


@dataclass
class Flow:
    proto: str  # tcp | udp
    src: str  # client IP ("" when unknown: the node picks it)
    sport: int
    dst: str
    dport: int


def _xt_spec(flow: Flow, hook: str, first_node: bool) -> list[str]:
    spec = ["-p", flow.proto]
    if flow.src:
        spec += ["-s", flow.src]
    if first_node and hook == "OUTPUT":
        spec += ["-d", flow.dst, "--dport", str(flow.dport)]
    spec += ["--sport", str(flow.sport)]
    if flow.proto == "tcp":
        spec.append("--syn")
    return spec


@contextlib.contextmanager
def xtables_tracing(netns: str, flow: Flow, hooks: list[str], token: str) -> Iterator[Monitor]:
    """`-j TRACE` in raw PREROUTING/OUTPUT for this flow, `xtables-monitor --trace` reading."""
    had_raw = run(["nft", "list", "table", "ip", "raw"], netns, check=False).ok
    mon = Monitor(netns, ["xtables-monitor", "--trace"])
    added: list[list[str]] = []
    try:
        time.sleep(SETTLE)
        for hook in hooks:
            rule = [
                hook,
                *_xt_spec(flow, hook, True),
                "-m",
                "comment",
                "--comment",
                f"kplab-trace {token}",
                "-j",
                "TRACE",
            ]
            run(["iptables", "-w", "5", "-t", "raw", "-I", *rule[:1], "1", *rule[1:]], netns)
            added.append(rule)
        yield mon
    finally:
        for rule in added:
            run(["iptables", "-w", "5", "-t", "raw", "-D", *rule], netns, check=False)
        if not had_raw and "-A " not in run(["iptables-save", "-t", "raw"], netns, check=False).stdout:
            run(["nft", "delete", "table", "ip", "raw"], netns, check=False)  # leave raw as it was: absent
        mon.stop()


def _nft_match(flow: Flow) -> str:
    m = f"ip saddr {flow.src} " if flow.src else ""
    m += f"{flow.proto} sport {flow.sport}"
    if flow.proto == "tcp":
        m += " tcp flags & (fin | syn | rst | ack) == syn"
    return m


@contextlib.contextmanager
def nft_tracing(netns: str, flow: Flow, hooks: list[str], token: str) -> Iterator[Monitor]:
    """A table of our own whose chains set nftrace for this flow; `nft monitor trace` reading."""
    table = f"kplab-trace-{token}"
    mon = Monitor(netns, ["nft", "monitor", "trace"])
    created = False
    try:
        time.sleep(SETTLE)
        chains = "".join(
            f"  chain {h.lower()} {{\n    type filter hook {h.lower()} priority raw - 10; policy accept;\n"
            f"    {_nft_match(flow)} meta nftrace set 1\n  }}\n"
            for h in hooks
        )
        run(["nft", "-f", "-"], netns, input=f"table ip {table} {{\n{chains}}}\n")
        created = True
        yield mon
    finally:
        if created:
            run(["nft", "delete", "table", "ip", table], netns, check=False)
        mon.stop()


# ------------------------------------------------------------------------------------ the connection


def _connect(netns: str, flow: Flow, timeout: float) -> tuple[dict[str, Any] | None, str]:
    """One connection from `netns` with our source port; the echo answer, or the error."""
    out: dict[str, Any] = {}

    def work() -> None:
        with entered(netns):
            kind = socket.SOCK_STREAM if flow.proto == "tcp" else socket.SOCK_DGRAM
            with socket.socket(socket.AF_INET, kind) as s:
                s.settimeout(timeout)
                try:
                    s.bind(("0.0.0.0", flow.sport))
                    if flow.proto == "tcp":
                        s.connect((flow.dst, flow.dport))
                        s.sendall(b"kplab\n")
                        data = s.makefile("rb").readline()
                    else:
                        s.sendto(b"kplab\n", (flow.dst, flow.dport))
                        data, _ = s.recvfrom(4096)
                    out["answer"] = json.loads(data)
                except (OSError, ValueError) as e:
                    out["error"] = str(e) or type(e).__name__

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout + 5)
    return out.get("answer"), out.get("error", "" if "answer" in out else "timed out")


def _client(lab: LabView, frm: str) -> tuple[str, list[str]]:
    """(client IP or "" for a node, hooks where its packets enter a node)."""
    if frm in lab.nodes:
        return "", ["OUTPUT", "PREROUTING"]
    if frm == "outside":
        return lab.outside_ip(), ["PREROUTING"]
    return lab.pod_ip(frm), ["PREROUTING"]


def _free_port(netns: str, proto: str) -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with entered(netns):
        for _ in range(50):
            port = random.randint(20000, 29999)
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind(("0.0.0.0", port))
                except OSError:
                    continue
                return port
    raise LabError(f"no free source port in {netns}")


def _labels(lab: LabView, node: str, mode: str) -> dict[str, str]:
    """Chain -> "ns/name:port" or "ip:port (pod)" from the node's own rules, through explain."""
    from kplab.inspect.explain import explain

    if mode in XT_TRACER:
        text = run(["iptables-save"], lab.netns(node), check=False).stdout
    elif mode in NFT_TRACER:
        text = run(["nft", "list", "table", "ip", "kube-proxy"], lab.netns(node), check=False).stdout
    else:
        return {}
    if not text.strip():
        return {}
    pods = {p.status.pod_ip: p.metadata.name for p in lab.pods()}
    out: dict[str, str] = dict(HELPERS)
    for s in explain(text).services:
        for chain in s.chains.values():
            out[chain] = s.name
        for e in s.endpoints + s.local_endpoints:
            pod = pods.get(e.address.rsplit(":", 1)[0])
            out[e.chain] = f"{e.address} {pod}" if pod else e.address
    return out


def _is_cluster_ip(lab: LabView, target: str, ip: str) -> bool:
    try:
        return lab.service_ip(target.split(":")[0]) == ip
    except LabError:
        return False


def trace(lab: LabView, frm: str, target: str, timeout: float = 3.0) -> Trace:
    """Send one connection from `frm` to `target` and return its path (see the module docstring)."""
    mode = lab.mode
    ip, port, proto = lab.resolve(target)
    if proto not in ("tcp", "udp"):
        raise LabError(f"trace follows TCP and UDP only, not {proto}")
    client_ns = lab.netns(frm)
    src, hooks = _client(lab, frm)
    flow = Flow(proto, src, _free_port(client_ns, proto), ip, port)
    res = Trace(mode, frm, target, proto, f"{src or frm}:{flow.sport}", f"{ip}:{port}")
    token = secrets.token_hex(3)
    tracer = xtables_tracing if mode in XT_TRACER else nft_tracing if mode in NFT_TRACER else None
    raw: dict[str, list[str]] = {}
    with contextlib.ExitStack() as stack:
        monitors = {}
        if tracer is not None:
            for node in lab.nodes:
                node_hooks = hooks if node == frm else ["PREROUTING"]
                monitors[node] = stack.enter_context(tracer(lab.netns(node), flow, node_hooks, token))
        started = time.monotonic_ns()  # CLOCK_MONOTONIC, as bpf_ktime_get_ns()
        cgroup = lab.client_cgroup(frm) if mode == "ebpf" else None
        if cgroup:  # the eBPF mode's socket hooks see only processes in the node's cgroup
            from kplab.cluster.client import in_cgroup

            res.answer, res.error = in_cgroup(cgroup, lambda: _connect(client_ns, flow, timeout))
        else:
            res.answer, res.error = _connect(client_ns, flow, timeout)
        if monitors:
            _settle(list(monitors.values()))
        raw = {n: list(m.lines) for n, m in monitors.items()}
    for node, lines in raw.items():
        parse = (
            parse_xtables
            if tracer is xtables_tracing
            else lambda ls, n: parse_nft(ls, n, f"kplab-trace-{token}")
        )
        res.hops += parse(lines, node)
    _conntrack(lab, res, flow)
    labels: dict[str, str] = {}
    for node in {h.node for h in res.hops}:
        labels.update(_labels(lab, node, mode))
    for h in res.hops:
        h.note = labels.get(h.chain, "")
    seen_dnat_on = res.decided_on  # the node whose conntrack holds the flow's DNAT (IPVS: no DNAT rule)
    res.path, res.nat, res.decided_on = decision(res.hops, labels)
    res.decided_on = res.decided_on or seen_dnat_on
    if mode == "ebpf":
        from kplab.proxy.ebpf.view import explain_decision

        res.path, res.nat, res.decided_on, notes = explain_decision(lab, flow, started)
        if not res.path and frm == "outside" and _is_cluster_ip(lab, target, ip):
            notes = [f"no node saw this packet: nothing routes {ip} (a ClusterIP) from {frm} to a node"]
        res.notes += notes
    elif tracer is None:
        _path_from_conntrack(res)
    elif not res.hops:
        res.notes.append(f"no node saw this packet: nothing routes {ip} from {frm} to a node")
    _judge(res, mode)
    res.id, res.at = token, time.time()
    from kplab.inspect.kept import keep_trace

    keep_trace(lab, res.to_dict())
    return res


def _conntrack(lab: LabView, res: Trace, flow: Flow) -> None:
    """The flow's entries on every node, and the proxy's own connection in userspace mode.

    The backend's answer names the source it saw, which identifies the proxy's connection.
    """
    a = res.answer or {}
    seen_as = (str(a.get("client_ip", "")), int(a.get("client_port") or 0))
    for node in lab.nodes:
        with contextlib.suppress(EnvironmentProblem):
            for e in conntrack.entries(lab.netns(node)):
                if e.proto != flow.proto:
                    continue
                ours = e.original.sport == flow.sport and (not flow.src or e.original.src == flow.src)
                proxy = (e.original.src, e.original.sport) == seen_as and (
                    e.original.src != flow.src or not ours
                )
                if ours or (proxy and lab.mode == "userspace"):
                    res.conntrack.append(e)
                    if ours and not res.decided_on and e.dnat:
                        res.decided_on = node


def _path_from_conntrack(res: Trace) -> None:
    """IPVS (or a mode kplab cannot trace): the NAT decision as conntrack recorded it."""
    e = next((e for e in res.conntrack if e.dnat), None)
    if e is None:
        res.notes.append("no tracer for this mode and no NAT in conntrack for this flow")
        return
    kind = "IPVS virtual server" if res.mode == "ipvs" else "destination"
    res.path = [f"{kind} {e.original.dst}:{e.original.dport}", f"real server {e.reply.src}:{e.reply.sport}"]
    res.nat = f"DNAT {e.reply.src}:{e.reply.sport}"
    res.notes.append("IPVS is not netfilter: the virtual/real server pair is read from conntrack")


def _judge(res: Trace, mode: str) -> None:
    a = res.answer
    if not a:
        return
    if res.nat.startswith("DNAT "):
        res.consistent = res.nat.split()[1] == f"{a.get('pod_ip')}:{a.get('port')}"
    elif res.nat.startswith("REDIRECT") or mode == "userspace":
        hop = next((e for e in res.conntrack if e.original.dst == a.get("pod_ip")), None)
        res.path.append(f"proxy hop: {hop.original} (the proxy's own connection)" if hop else "proxy hop")
        res.notes.append(
            f"the proxy re-originated the connection: {a.get('pod')} saw {a.get('client_ip')}, not the client"
        )
        res.consistent = hop is not None
