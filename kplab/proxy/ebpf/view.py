"""The maps read back as text, the way `cilium-dbg bpf lb list` prints Cilium's, and the decision log.

    SERVICE ADDRESS          BACKEND ADDRESS (REVNAT_ID) (SLOT)
    10.96.0.10:80/TCP (0)    0.0.0.0:0 (3) (0) [ClusterIP, non-routable]      default/web:http
    10.96.0.10:80/TCP (1)    10.244.1.2:8080/TCP (3) (1)                      web-6b9f-x2k4p

One row per slot; slot 0 is the frontend with its flags, slots 1..N its backends.  A `/i`
after the protocol marks the in-cluster scope (written only when it differs from what outside
clients get).  The last column is kplab's: which Service, which pod.  `parse_lb_list` reads
such a listing back (ours, or a real Cilium's) for `kplab explain`.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Any

from kplab.proxy.ebpf import model as M

HOOKS = {1: "cgroup/connect4 (sock4_connect)", 2: "cgroup/sendmsg4 (sock4_sendmsg)",
         3: "cgroup/recvmsg4 (sock4_recvmsg)", 4: "tc ingress of the pod's veth (from_pod)",
         5: "tc ingress of the node's eth0 (from_netdev)"}


def flags_text(flags: int, flags2: int) -> str:
    """Cilium's ServiceFlags.String(): the type first, then its qualifiers."""
    if flags & M.EXTERNAL_IP:
        parts = ["ExternalIPs"]
    elif flags & M.NODEPORT:
        parts = ["NodePort"]
    elif flags & M.LOADBALANCER:
        parts = ["LoadBalancer"]
    else:
        parts = ["ClusterIP"]
    if flags & M.EXT_LOCAL:
        parts.append("Local")
    if flags2 & M.INT_LOCAL:
        parts.append("InternalLocal")
    if flags & M.AFFINITY:
        parts.append("sessionAffinity")
    if not flags & M.ROUTABLE:
        parts.append("non-routable")
    if flags & M.SOURCE_RANGE:
        parts.append("check source-range")
    if flags2 & M.TWO_SCOPES:
        parts.append("two-scopes")
    return ", ".join(parts)


@dataclass
class Row:
    frontend: str  # "10.96.0.10:80/TCP" (+ "/i")
    slot: int
    rev_nat: int
    backend: str  # "10.244.1.2:8080/TCP", or "0.0.0.0:0" on slot 0
    flags: str = ""  # slot 0 only
    count: int = 0  # slot 0 only
    note: str = ""  # kplab's: the Service (slot 0) or the pod (slots)


@dataclass
class LbList:
    rows: list[Row] = field(default_factory=list)

    def text(self) -> str:
        lines = [("SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)", "")]
        for r in self.rows:
            right = (f"0.0.0.0:0 ({r.rev_nat}) (0) [{r.flags}]" if r.slot == 0
                     else f"{r.backend} ({r.rev_nat}) ({r.slot})")
            lines.append((f"{r.frontend} ({r.slot})", right, r.note))
        w0 = max(len(a) for a, _, _ in lines) + 3
        w1 = max(len(b) for _, b, _ in lines) + 3
        return "\n".join(f"{a:<{w0}}{b:<{w1}}{c}".rstrip() for a, b, c in lines) + "\n"


def _ip(b: bytes) -> str:
    return socket.inet_ntoa(b)


def lb_list(services: dict[bytes, bytes], backends: dict[bytes, bytes], names: dict[int, str] | None = None,
            pods: dict[str, str] | None = None) -> LbList:
    """Rows from the raw entries of lb4_services and lb4_backends (as dumped, or as rendered)."""
    names, pods = names or {}, pods or {}
    out = LbList()
    for k in sorted(services, key=lambda k: (k[:4], k[4:6], k[8], k[9], int.from_bytes(k[6:8], "little"))):
        v = services[k]
        proto = M.PROTO_NAMES.get(k[8], str(k[8]))
        fe = f"{_ip(k[:4])}:{int.from_bytes(k[4:6], 'big')}/{proto}" + ("/i" if k[9] == M.SCOPE_INT else "")
        slot = int.from_bytes(k[6:8], "little")
        bid = int.from_bytes(v[:4], "little")
        rev = int.from_bytes(v[6:8], "little")
        if slot == 0:
            out.rows.append(Row(fe, 0, rev, "0.0.0.0:0", flags_text(v[8], v[9]), int.from_bytes(v[4:6], "little"),
                                names.get(rev, "")))
            continue
        b = backends.get(bid.to_bytes(4, "little"))
        if b is None:
            out.rows.append(Row(fe, slot, rev, f"backend {bid} not found"))
            continue
        addr = f"{_ip(b[:4])}:{int.from_bytes(b[4:6], 'big')}"
        note = pods.get(addr, "") + (" (local)" if b[7] & M.BE_LOCAL else "")
        out.rows.append(Row(fe, slot, rev, f"{addr}/{M.PROTO_NAMES.get(b[6], b[6])}", note=note.strip()))
    return out


ROW = re.compile(r"^(?P<fe>\S+?)(?:\s+\((?P<fslot>\d+)\))?\s{2,}(?P<be>\S+|backend \d+ not found)\s+"
                 r"\((?P<rev>\d+)\)\s+\((?P<slot>\d+)\)(?:\s+\[(?P<flags>[^\]]*)\])?(?:\s+(?P<note>\S.*))?$")
HEADER = re.compile(r"^\s*SERVICE ADDRESS\s+BACKEND ADDRESS", re.MULTILINE)


def looks_like(text: str) -> bool:
    """A `cilium-dbg bpf lb list` listing (or kplab's own, in eBPF mode)."""
    return bool(HEADER.search(text))


def parse_lb_list(text: str) -> list[dict[str, Any]]:
    """Services from a `cilium-dbg bpf lb list` listing (or `kplab rules` in eBPF mode):
    [{frontend, flags, rev_nat, backends: [...]}] with slot 0 giving the frontend's flags."""
    services: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        m = ROW.match(line.strip())
        if not m:
            continue
        svc = services.setdefault(m["fe"], {"frontend": m["fe"], "flags": [], "rev_nat": int(m["rev"]),
                                            "backends": []})
        if int(m["slot"]) == 0:
            svc["flags"] = [f.strip() for f in (m["flags"] or "").split(",") if f.strip()]
            if m["note"]:
                svc["name"] = m["note"].strip()
        else:
            svc["backends"].append(m["be"])
            if m["note"]:
                svc.setdefault("pods", {})[m["be"]] = m["note"].replace("(local)", "").strip()
    return list(services.values())


@dataclass
class Decision:
    hook: str
    client: str  # "ip:port" (tc) or "(socket)" before the socket has an address
    frontend: str
    backend: str
    slot: int  # 0: affinity kept the backend
    rev_nat: int
    verdict: str
    ktime: int


def decisions(log: dict[bytes, bytes]) -> list[Decision]:
    """kplab_log's ring, oldest first (entries never written are skipped)."""
    out = []
    for v in log.values():
        ktime = int.from_bytes(v[:8], "little")
        if not ktime:
            continue
        hook = int.from_bytes(v[8:12], "little")
        saddr, fe, be = _ip(v[12:16]), _ip(v[16:20]), _ip(v[20:24])
        sport, fport, bport = (int.from_bytes(v[i:i + 2], "big") for i in (24, 26, 28))
        proto = M.PROTO_NAMES.get(v[30], str(v[30]))
        slot = int.from_bytes(v[32:34], "little")
        rev = int.from_bytes(v[34:36], "little")
        verdict = int.from_bytes(v[40:44], "little", signed=True)
        text = {0: "translated", -111: "no backend: refused/dropped", -1: "denied by loadBalancerSourceRanges"}
        out.append(Decision(HOOKS.get(hook, str(hook)), f"{saddr}:{sport}" if sport else "(socket)",
                            f"{fe}:{fport}/{proto}" + ("/i" if v[31] == M.SCOPE_INT else ""),
                            f"{be}:{bport}" if bport else "-", slot, rev, text.get(verdict, str(verdict)), ktime))
    return sorted(out, key=lambda d: d.ktime)


SOCKET_NOTE = ("connect() itself was rewritten: every packet of this connection carried the backend's "
               "address, so no node did NAT and no conntrack entry mentions the Service")
TC_NOTE = ("per-packet NAT in BPF: kplab_ct4 holds the connection both ways; netfilter and conntrack "
           "never saw the translation")


def explain_decision(lab: Any, flow: Any, since_ns: int) -> tuple[list[str], str, str, list[str]]:
    """(path, "DNAT ip:port", node, notes) for `flow` from the nodes' decision logs (kplab trace)."""
    want_fe = f"{flow.dst}:{flow.dport}/"
    for node in lab.nodes:
        proxier = lab.proxier(node)
        for d in proxier.decisions():
            if d.ktime < since_ns or not d.frontend.startswith(want_fe):
                continue
            if d.client != "(socket)" and not d.client.endswith(f":{flow.sport}"):
                continue
            name = proxier.service_name(d.rev_nat)
            path = [d.hook, f"lb4_services {d.frontend} slot 0 (rev-NAT {d.rev_nat}{', ' + name if name else ''})"]
            if d.verdict != "translated":
                return path + [d.verdict], "", node, []
            path.append(f"slot {d.slot} -> {d.backend}" if d.slot else f"lb4_affinity kept {d.backend}")
            return path, f"DNAT {d.backend}", node, [SOCKET_NOTE if d.client == "(socket)" else TC_NOTE]
    return [], "", "", ["no eBPF program logged a decision for this flow (not a Service address?)"]
