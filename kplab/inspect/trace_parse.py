"""The kernel's own trace output turned into hops and a path.  Pure: unit-tested on samples.

Two tracers print one line per rule a traced packet matched:

* `xtables-monitor --trace` (iptables-nft, for a `-j TRACE` rule):
      PACKET: 2 c186ad70 IN=cni0 ... SRC=10.244.1.3 DST=10.96.0.20 ... SPORT=45555 DPORT=80 SYN
       TRACE: 2 c186ad70 nat:KUBE-SERVICES:rule:0x23:JUMP:KUBE-SVC-X  -4 -t nat -A KUBE-SERVICES ... -j KUBE-SVC-X
* `nft monitor trace` (for `meta nftrace set 1`):
      trace id 0e4059ac ip kube-proxy services rule ... vmap @service-ips (verdict goto service-...)

A "visit" is one base chain's evaluation of one packet (a `PACKET:` / `packet:` line starts
it).  The path is the chain of jumps in the visit that made the NAT decision:

    KUBE-SERVICES -> KUBE-SVC-... (default/web:http) -> KUBE-SEP-... (10.244.2.3:8080) -> DNAT 10.244.2.3:8080
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NFT_VERDICTS = {
    "0xffffffff": "CONTINUE",
    "0xfffffffe": "BREAK",
    "0xfffffffd": "JUMP",
    "0xfffffffc": "GOTO",
    "0xfffffffb": "RETURN",
}
_XT_TRACE = re.compile(r"^\s*TRACE:\s+\d+\s+(\S+)\s+([^:\s]+):(\S+?):(rule|return|policy):?(\S*)\s*(.*)$")
_NFT_LINE = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (packet|rule|verdict|policy)\b:?\s*(.*)$")
_COMMENT = re.compile(r'(--comment|comment) "[^"]*"')
_REJECTS = re.compile(r"(-j REJECT\b|(^|\s)reject(\s|$))")


def _verdict(verdict: str, rule: str) -> str:
    """The kernel traces a REJECT rule's verdict as DROP (it sends the RST or ICMP error, then
    drops the packet); the learner's client saw "refused", so the trace says REJECT."""
    return "REJECT" if verdict == "DROP" and _REJECTS.search(_COMMENT.sub("", rule)) else verdict
_NAT = re.compile(
    r"(?:-j DNAT --to-destination|\bdnat (?:ip )?to)\s+(\S+)|-j (REDIRECT) --to-ports (\S+)|\bredirect to :?(\S+)"
)


@dataclass
class Hop:
    """One rule (or policy) a traced packet met."""

    node: str
    visit: int  # which base-chain evaluation this belongs to (0, 1, ...)
    table: str  # "nat" / "filter" (iptables), "ip kube-proxy" (nft)
    chain: str
    verdict: str  # JUMP, GOTO, ACCEPT, CONTINUE, RETURN, DROP, REJECT, policy ACCEPT, ...
    target: str = ""  # the chain jumped to
    rule: str = ""  # the rule as the tracer printed it
    note: str = ""  # what kplab knows of the chain: the Service or endpoint
    packet: str = ""  # the packet as it entered this visit (addresses after earlier NAT)

    @property
    def nat(self) -> str:
        """ "DNAT 10.244.2.3:8080" / "REDIRECT :30001" when this rule rewrote the destination."""
        m = _NAT.search(self.rule)
        if not m:
            return ""
        if m.group(1):
            return f"DNAT {m.group(1)}"
        return f"REDIRECT :{m.group(3) or m.group(4)}"


@dataclass
class Visit:
    node: str
    index: int
    packet: str
    hops: list[Hop] = field(default_factory=list)


def _comment_name(rule: str) -> str:
    """The Service a rule's comment names (upstream's comments start with ns/name:port)."""
    m = re.search(r'(?:--comment|comment) "?([a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*(?::[-a-z0-9]*)?)', rule)
    return m.group(1) if m else ""


def packet_summary(packet: str) -> str:
    """The addresses of a traced packet, short: "cni0->eth0 10.244.1.3:4711 > 10.96.0.20:80 SYN"."""
    xt = dict(re.findall(r"\b(IN|OUT|SRC|DST|SPORT|DPORT|PROTO)=(\S*)", packet))
    if xt:
        flags = " ".join(f for f in ("SYN", "ACK", "FIN", "RST", "PSH") if re.search(rf"\b{f}\b", packet))
        ifs = "->".join(i for i in (xt.get("IN"), xt.get("OUT")) if i)
        src = xt.get("SRC", "?") + (f":{xt['SPORT']}" if xt.get("SPORT") else "")
        dst = xt.get("DST", "?") + (f":{xt['DPORT']}" if xt.get("DPORT") else "")
        return f"{ifs} {src} > {dst} {flags}".strip()
    nf = dict(
        re.findall(
            r"\b(iif|oif|ip saddr|ip daddr|tcp sport|tcp dport|udp sport|udp dport|tcp flags ==) \"?([^\s\"]+)",
            packet,
        )
    )
    ifs = "->".join(i for i in (nf.get("iif"), nf.get("oif")) if i)
    sport = nf.get("tcp sport") or nf.get("udp sport")
    dport = nf.get("tcp dport") or nf.get("udp dport")
    src = nf.get("ip saddr", "?") + (f":{sport}" if sport else "")
    dst = nf.get("ip daddr", "?") + (f":{dport}" if dport else "")
    return f"{ifs} {src} > {dst} {nf.get('tcp flags ==', '')}".strip()


def parse_xtables(lines: list[str], node: str = "") -> list[Hop]:
    hops: list[Hop] = []
    visit, packet = -1, ""
    for line in lines:
        if line.startswith("PACKET:"):
            visit += 1
            packet = line.split(None, 3)[-1].strip()
            continue
        m = _XT_TRACE.match(line)
        if not m:
            continue
        _, table, chain, kind, rest, text = m.groups()
        parts = rest.split(":") if rest else []
        if kind == "rule":
            # rule:<handle>:<verdict>[:<target>]
            verdict = parts[1] if len(parts) > 1 else ""
            verdict = _verdict(NFT_VERDICTS.get(verdict, verdict), text)
            target = parts[2] if len(parts) > 2 else ""
        elif kind == "policy":
            verdict, target = f"policy {parts[0] if parts else ''}".strip(), ""
        else:
            verdict, target = "RETURN", ""
        hops.append(Hop(node, max(visit, 0), table, chain, verdict, target, text.strip(), packet=packet))
    return hops


def parse_nft(lines: list[str], node: str = "", skip_table: str = "") -> list[Hop]:
    """`nft monitor trace` lines; rules of `skip_table` (the tracer's own table) are left out."""
    hops: list[Hop] = []
    visits: dict[tuple[str, str, str], int] = {}
    count = -1
    packet = ""
    for line in lines:
        m = _NFT_LINE.match(line.strip())
        if not m:
            continue
        tid, family, table, chain, kind, rest = m.groups()
        tname = f"{family} {table}"
        if table == skip_table:
            continue
        if kind == "packet":
            count += 1
            visits[(tid, tname, chain)] = count
            packet = rest.strip()
            continue
        visit = visits.get((tid, tname, chain), max(count, 0))
        vm = re.search(r"\(verdict (\w+)(?: (\S+))?\)\s*$", rest)
        if kind == "rule":
            verdict = vm.group(1).upper() if vm else ""
            target = vm.group(2) if vm and vm.group(2) else ""
            text = rest[: vm.start()].strip() if vm else rest.strip()
            verdict = _verdict(verdict, text)
        elif kind == "policy":
            verdict, target, text = f"policy {rest.strip().upper()}", "", ""
        else:
            continue  # "verdict continue" lines repeat what the rule line said
        hops.append(
            Hop(
                node,
                visit,
                tname,
                chain,
                verdict,
                target,
                re.sub(r"counter packets \d+ bytes \d+ ?", "", text),
                packet=packet,
            )
        )
    return hops


def visits(hops: list[Hop]) -> list[Visit]:
    out: dict[tuple[str, int], Visit] = {}
    for h in hops:
        v = out.setdefault((h.node, h.visit), Visit(h.node, h.visit, h.packet))
        v.hops.append(h)
    return list(out.values())


def decision(hops: list[Hop], labels: dict[str, str] | None = None) -> tuple[list[str], str, str]:
    """(path, nat, node) of the first visit that rewrote the destination or ended the packet.

    The path lists the chains jumped through (with `labels[chain]`, the Service or endpoint it
    is), then the NAT ("DNAT ip:port") or the verdict that ended the packet.
    """
    labels = labels or {}
    for v in visits(hops):
        last = next((h for h in v.hops if h.nat), None) or next(
            (h for h in v.hops if h.verdict in ("DROP", "REJECT") or h.rule.endswith(("reject", "drop"))),
            None,
        )
        if last is None:
            continue
        stack: list[str] = []  # the chains the packet is in at `last`: a chain it returned from is off the path
        for h in v.hops:
            if h.chain in stack:
                del stack[len(stack) - stack[::-1].index(h.chain):]
            else:
                stack.append(h.chain)
            if h is last:
                break
            if h.verdict in ("JUMP", "GOTO") and h.target:
                stack.append(h.target)
        path = [f"{c} ({labels[c]})" if labels.get(c) else c for c in stack[1:]]
        final = last.nat or f"{last.verdict or 'end'} in {last.chain}"
        who = _comment_name(last.rule)
        if who and not (last.note or labels.get(last.chain)):
            final += f" ({who})"
        return path + [final], last.nat, v.node
    return [], "", ""
