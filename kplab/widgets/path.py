"""A picture of one node's packet path, read from the live kernel, with a traced packet's hops lit.

    from kplab.widgets import path_picture
    path_picture(lab)                                   # the hooks and what each mode hooked in
    path_picture(lab, lab.trace("client", "web"))       # ... and the hops this connection took

The five netfilter hooks are drawn as boxes; in each, what runs there in priority order (lowest
first), as the kernel has it: every base chain of `nft -j list ruleset` (iptables-nft's tables
and kube-proxy's own nftables table alike, with their real priorities), conntrack at -200 and
its confirm at the end, IPVS's hooks at LOCAL_IN/LOCAL_OUT/FORWARD (IPVS is not nftables, so the
priorities are ip_vs_core.c's), the routing decision (and, in IPVS mode, the kube-ipvs0 device
that makes every ClusterIP local), and the userspace proxy as the process it was.

`layout_from_ruleset()` and `path_svg()` are pure (JSON in, SVG out) so the unit tests render
recorded traces without a lab; `read_layout()` and `path_picture()` read the live node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kplab import Lab

HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
BUILTIN = {h.upper() for h in HOOKS}
CONFIRM = 2**31 - 1  # NF_IP_PRI_CONNTRACK_CONFIRM
# IPVS registers plain netfilter hooks (net/netfilter/ipvs/ip_vs_core.c, ip_vs_ops4)
IPVS_HOOKS = [
    ("input", 98, "IPVS: un-NAT replies"),
    ("input", 99, "IPVS: schedule, DNAT to a real server"),
    ("output", -99, "IPVS: un-NAT replies (host)"),
    ("output", -98, "IPVS: schedule the host's own requests"),
    ("forward", 100, "IPVS: un-NAT replies"),
]
# priorities of iptables' tables, for a traced table the ruleset no longer shows (kplab's own raw)
XT_PRIO = {"raw": -300, "mangle": -150, "filter": 0, "security": 50}
XT_NAT = {"prerouting": -100, "output": -100, "input": 100, "postrouting": 100}

W, BOX_W, ROW, HEAD = 980, 300, 19, 26
IDLE = " (idle: no rule here needs it)"  # shown as "(idle)", whole on hover
HIT, HIT_EDGE = "#fde293", "#e37400"
RETURNED = " (returned)"


@dataclass
class Entry:
    hook: str
    prio: int
    label: str  # "nat PREROUTING", "ip kube-proxy dstnat", "conntrack", "IPVS: ..."
    detail: str = ""  # "-> KUBE-SERVICES", the mode's jumps out of a base chain
    key: tuple[str, str] = ("", "")  # (table, chain) as the tracer names them
    kind: str = "chain"  # chain | conntrack | ipvs
    idle: bool = False


@dataclass
class Hit:
    """A base chain (or IPVS) this packet went through at the drawn node, and what matched there."""

    key: tuple[str, str]
    steps: list[str] = field(default_factory=list)


XT_TABLES = ("raw", "mangle", "nat", "filter", "security")


def _table_name(family: str, table: str) -> str:
    """iptables-nft's tables by their iptables name ("nat"), other tables as nft names them ("ip kube-proxy")."""
    return table if family == "ip" and table in XT_TABLES else f"{family} {table}"


def _norm(table: str) -> str:
    """A tracer's table name in the same form: nft monitor says "ip nat", xtables-monitor "nat"."""
    family, _, name = table.rpartition(" ")
    return _table_name(family or "ip", name)


def layout_from_ruleset(ruleset_json: str, mode: str, node: str = "", ipvs: bool | None = None) -> dict[str, Any]:
    """The base chains of `nft -j list ruleset` (ip and inet families), with the chains each jumps to."""
    items = json.loads(ruleset_json or '{"nftables": []}').get("nftables", [])
    chains: dict[tuple[str, str], dict[str, Any]] = {}
    for it in items:
        c = it.get("chain")
        if c and c.get("hook") in HOOKS and c.get("family") in ("ip", "inet") and not c["table"].startswith(
                "kplab-trace"):
            chains[(_table_name(c["family"], c["table"]), c["name"])] = {
                "table": _table_name(c["family"], c["table"]), "chain": c["name"], "hook": c["hook"],
                "prio": int(c.get("prio", 0)), "type": c.get("type", "filter"), "jumps": []}
    for it in items:
        r = it.get("rule")
        if not r:
            continue
        key = (_table_name(r["family"], r["table"]), r["chain"])
        if key not in chains:
            continue
        for e in r.get("expr", []):
            for verb in ("jump", "goto"):
                if isinstance(e, dict) and verb in e and e[verb]["target"] not in chains[key]["jumps"]:
                    chains[key]["jumps"].append(e[verb]["target"])
            if isinstance(e, dict) and "vmap" in e:
                chains[key]["jumps"].append("vmap")
    return {"mode": mode, "node": node, "chains": list(chains.values()),
            "ipvs": mode == "ipvs" if ipvs is None else ipvs}


def entries(layout: dict[str, Any], extra: list[tuple[str, str, str]] = (),
            seen: dict[tuple[str, str], int] | None = None) -> dict[str, list[Entry]]:
    """hook -> what runs there, by priority.  `extra`: (table, chain, hook) a trace saw but the ruleset
    lacks; `seen`: the order a trace met chains in, which breaks ties of equal priority."""
    seen = seen or {}
    out: dict[str, list[Entry]] = {h: [] for h in HOOKS}
    nat_here = any(c["type"] == "nat" for c in layout["chains"]) or layout.get("ipvs")
    for c in layout["chains"]:
        jumps = [j for j in c["jumps"] if j != "vmap"][:3]
        detail = "-> " + ", ".join(jumps) if jumps else ""
        label = f"{c['table']} {c['chain']}" if c["table"] in XT_PRIO or c["table"] == "nat" else \
            f"{c['table']} {c['chain']} ({c['type']})"
        out[c["hook"]].append(Entry(c["hook"], c["prio"], label, detail, (c["table"], c["chain"])))
    for table, chain, hook in extra:
        prio = XT_NAT.get(hook, 0) if table == "nat" else XT_PRIO.get(table, 0)
        out[hook].append(Entry(hook, prio, f"{table} {chain}", "(the trace's rule)", (table, chain)))
    idle = "" if nat_here else IDLE
    for hook in ("prerouting", "output"):
        out[hook].append(Entry(hook, -200, "conntrack" + idle, "", ("conntrack", hook), "conntrack", not nat_here))
    for hook in ("input", "postrouting"):
        out[hook].append(Entry(hook, CONFIRM, "conntrack confirm" + idle, "", ("conntrack", "confirm"),
                               "conntrack", not nat_here))
    if layout.get("ipvs"):
        for hook, prio, label in IPVS_HOOKS:
            out[hook].append(Entry(hook, prio, label, "", ("ipvs", f"{hook}:{prio}"), "ipvs"))
    for hook in HOOKS:
        out[hook].sort(key=lambda e: (e.prio, seen.get(e.key, 1 << 20)))
    return out


def _get(obj: Any, name: str, default: Any = "") -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def bpf_path(trace: Any) -> list[str]:
    """The eBPF mode's decision (program, map, slot): it happens outside netfilter, so no hook lights."""
    return list(_get(trace, "path", []) or []) if trace is not None and _get(trace, "mode") == "ebpf" else []


def hits(trace: Any, layout: dict[str, Any]) -> tuple[str, list[Hit], list[tuple[str, str, str]]]:
    """(node drawn, base chains the traced packet went through there with their steps, extra chains).

    Hops are grouped by the base chain they started from: a hop in a base chain of the layout
    (or a built-in iptables chain) opens it for its table; jumps in the same table belong to it.
    """
    hops = list(_get(trace, "hops", []) or [])
    node = _get(trace, "decided_on") or (_get(hops[0], "node") if hops else "") or layout.get("node") or ""
    bases = {(c["table"], c["chain"]): c["hook"] for c in layout["chains"]}
    notes = {_get(h, "chain"): _get(h, "note") for h in hops if _get(h, "note")}
    out: dict[tuple[str, str, int], Hit] = {}
    extra: list[tuple[str, str, str]] = []
    current: dict[tuple[str, int], tuple[str, str, int]] = {}
    for h in hops:
        if _get(h, "node") != node:
            continue
        table, chain, visit = _norm(_get(h, "table")), _get(h, "chain"), int(_get(h, "visit", 0))
        if (table, chain) in bases or chain in BUILTIN:
            if (table, chain) not in bases and (table, chain, chain.lower()) not in extra:
                extra.append((table, chain, chain.lower()))
            current[(table, visit)] = (table, chain, visit)
        base = current.get((table, visit))
        if base is None:
            continue
        hit = out.setdefault(base, Hit((base[0], base[1])))
        verdict, target = _get(h, "verdict"), _get(h, "target")
        nat = _nat_of(_get(h, "rule"))
        if chain == base[1] and hit.steps and not hit.steps[-1].endswith(RETURNED):
            hit.steps[-1] += RETURNED  # back in the base chain: the chain jumped to matched nothing final
        if verdict in ("JUMP", "GOTO") and target and not target.startswith("kplab"):
            note = notes.get(target, "")
            hit.steps.append(f"{target} ({note})" if note else target)
        if nat:
            hit.steps.append(nat)
        elif (verdict in ("DROP", "REJECT", "ACCEPT") or verdict.startswith("policy")) and not (
                verdict == "ACCEPT" and hit.steps and "NAT " in hit.steps[-1]):
            hit.steps.append(verdict if chain == base[1] else f"{verdict} in {chain}")
    merged: dict[tuple[str, str], Hit] = {}
    for (table, chain, _), hit in out.items():
        m = merged.setdefault((table, chain), Hit((table, chain)))
        m.steps += [s for s in hit.steps if s not in m.steps]
    result = list(merged.values())
    mode = _get(trace, "mode")
    path = list(_get(trace, "path", []) or [])
    if mode == "ipvs" and path:
        result.append(Hit(("ipvs", "input:99"), path))
    if mode == "userspace" or str(_get(trace, "nat")).startswith("REDIRECT"):
        result.append(Hit(("process", "userspace"), [p for p in path if p.startswith("proxy hop")]))
    return node, result, extra


def _nat_of(rule: str) -> str:
    from kplab.inspect.trace_parse import Hop

    return Hop("", 0, "", "", "", rule=rule or "").nat


def _text(x: float, y: float, s: str, size: int = 12, weight: str = "normal", anchor: str = "start",
          fill: str = "#202124") -> str:
    return (f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" font-weight="{weight}" fill="{fill}" '
            f'text-anchor="{anchor}" font-family="sans-serif">{escape(s)}</text>')


def _arrow(x1: float, y1: float, x2: float, y2: float, lit: bool = False) -> str:
    color, width = (HIT_EDGE, 3) if lit else ("#5f6368", 1.5)
    marker = "hit" if lit else "arrow"
    return (f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{color}" '
            f'stroke-width="{width}" marker-end="url(#{marker})"/>')


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def path_svg(layout: dict[str, Any], trace: Any = None) -> str:
    """SVG of the node's hooks (see the module docstring); a trace's hops highlighted and numbered."""
    node, hit_list, extra = hits(trace, layout) if trace is not None else (layout.get("node", ""), [], [])
    bpf = bpf_path(trace)
    lit = {h.key: i + 1 for i, h in enumerate(hit_list)}
    by_hook = entries(layout, extra, lit)
    mode = layout.get("mode", "")
    ipvs = bool(layout.get("ipvs"))
    userspace = mode == "userspace"

    def box_h(hook: str) -> int:
        return HEAD + ROW * max(1, len(by_hook[hook])) + 8

    top_h = max(box_h(h) for h in ("prerouting", "forward", "postrouting"))
    bot_h = max(box_h(h) for h in ("input", "output"))
    y0, y1 = 56, 56 + top_h + 70
    pos = {"prerouting": (10, y0), "forward": (345, y0), "postrouting": (W - BOX_W - 10, y0),
           "input": (120, y1), "output": (W - BOX_W - 10, y1)}
    parts: list[str] = [
        ('<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="3" orient="auto">'
         '<path d="M0,0 L7,3 L0,6 z" fill="#5f6368"/></marker>'
         '<marker id="hit" markerWidth="8" markerHeight="8" refX="7" refY="3" orient="auto">'
         f'<path d="M0,0 L7,3 L0,6 z" fill="{HIT_EDGE}"/></marker></defs>'),
        _text(10, 20, f"{node or 'node'} · mode {mode} · netfilter hooks, lowest priority first", 14, "bold"),
        _text(10, 38, "highlighted: where this traced packet went, numbered as listed below" if hit_list
              else f"no netfilter rule decided this connection: {' -> '.join(bpf)}" if bpf
              else "lab.trace(...) then path_picture(lab, trace) highlights one connection's hops", 11,
              fill="#5f6368"),
    ]
    used = {h for h in HOOKS if any(e.key in lit for e in by_hook[h])}
    for hook, (x, y) in pos.items():
        on = hook in used
        parts.append(f'<rect class="hook{" hit" if on else ""}" data-hook="{hook}" x="{x}" y="{y}" '
                     f'width="{BOX_W}" height="{box_h(hook)}" rx="6" fill="#f8f9fa" '
                     f'stroke="{HIT_EDGE if on else "#5f6368"}" stroke-width="{2.5 if on else 1}"/>')
        parts.append(_text(x + 8, y + 17, hook.upper(), 13, "bold"))
        for i, e in enumerate(by_hook[hook]):
            ey = y + HEAD + i * ROW
            n = lit.get(e.key)
            fill = HIT if n else {"conntrack": "#e8f0fe", "ipvs": "#fce8e6"}.get(e.kind, "#ffffff")
            dash = ' stroke-dasharray="3 2"' if e.idle else ""
            cls = "entry hit" if n else "entry"
            full = e.label + ("  " + e.detail if e.detail else "")
            parts.append(f'<rect class="{cls}" data-key="{escape(e.key[0])}|{escape(e.key[1])}" x="{x + 6}" '
                         f'y="{ey}" width="{BOX_W - 12}" height="{ROW - 3}" rx="3" fill="{fill}" '
                         f'stroke="{HIT_EDGE if n else "#dadce0"}"{dash}><title>{escape(full)}</title></rect>')
            prio = "max" if e.prio == CONFIRM else str(e.prio)
            parts.append(_text(x + 10, ey + 12, prio, 10, fill="#5f6368"))
            label = _short(full.replace(IDLE, " (idle)"), 35 if n else 40)  # the whole of it on hover
            parts.append(_text(x + 44, ey + 12, label, 11, "bold" if n else "normal"))
            if n:
                parts.append(f'<circle cx="{x + BOX_W - 16}" cy="{ey + 8}" r="8" fill="{HIT_EDGE}"/>')
                parts.append(_text(x + BOX_W - 16, ey + 12, str(n), 10, "bold", "middle", "#ffffff"))
    # routing decisions and arrows
    rx, ry = pos["prerouting"][0] + BOX_W + 2, y0 + 24
    route_lit_in = any(k[0] == "ipvs" or k[0] == "process" for k in lit) or "input" in used
    route_lit_fwd = "forward" in used or (bool(lit) and not route_lit_in)
    parts.append(_arrow(0, y0 + 40, 10, y0 + 40, bool(lit)))
    parts.append(_text(pos["forward"][0] - 14, y0 - 6, "routing", 11, "bold", "middle"))
    parts.append(_arrow(rx, ry, pos["forward"][0], ry, route_lit_fwd))
    parts.append(_arrow(pos["forward"][0] + BOX_W, ry, pos["postrouting"][0], ry, route_lit_fwd))
    parts.append(_arrow(pos["postrouting"][0] + BOX_W, ry + 16, W, ry + 16, bool(lit)))
    down_x = pos["forward"][0] - 14
    parts.append(_arrow(down_x, y0 + 10, down_x, y1 - 6, route_lit_in))
    parts.append(f'<line x1="{down_x}" y1="{y1 - 6}" x2="{pos["input"][0] + BOX_W / 2}" y2="{y1 - 6}" '
                 f'stroke="{HIT_EDGE if route_lit_in else "#5f6368"}" stroke-width="{3 if route_lit_in else 1.5}"/>')
    if ipvs:
        parts.append(_text(down_x + 6, y0 + top_h + 30, "local: kube-ipvs0 holds every ClusterIP", 11,
                           "bold", fill="#b31412"))
    else:
        parts.append(_text(down_x + 6, y0 + top_h + 30, "local address", 11, fill="#5f6368"))
    parts.append(_text(pos["prerouting"][0], y0 + top_h + 16, "in: cni0 (pods) / eth0 (other nodes, outside)", 10,
                       fill="#5f6368"))
    # local process box: the userspace proxy, or whatever listens on the node
    px, pw = pos["input"][0] + BOX_W + 20, pos["output"][0] - pos["input"][0] - BOX_W - 40
    p_on = ("process", "userspace") in lit
    label = "kube-proxy (userspace)" if userspace else "local processes"
    parts.append(f'<rect class="process{" hit" if p_on else ""}" x="{px}" y="{y1 + 10}" width="{pw}" height="58" '
                 f'rx="6" fill="{HIT if p_on else "#e6f4ea"}" stroke="{HIT_EDGE if p_on else "#1e8e3e"}"/>')
    parts.append(_text(px + 6, y1 + 26, label, 11, "bold"))
    if userspace:
        parts.append(_text(px + 6, y1 + 41, "accepts on its proxy port,", 11))
        parts.append(_text(px + 6, y1 + 55, "dials a pod: a new connection", 11))
    else:
        parts.append(_text(px + 6, y1 + 44, "(the kubelet, sshd, ...)", 11))
    if p_on:
        parts.append(f'<circle cx="{px + pw - 12}" cy="{y1 + 22}" r="8" fill="{HIT_EDGE}"/>')
        parts.append(_text(px + pw - 12, y1 + 26, str(lit[("process", "userspace")]), 10, "bold", "middle", "#fff"))
    parts.append(_arrow(pos["input"][0] + BOX_W, y1 + 40, px, y1 + 40, p_on))
    parts.append(_arrow(px + pw, y1 + 40, pos["output"][0], y1 + 40, p_on or ("ipvs", "input:99") in lit))
    ox = pos["output"][0] + BOX_W / 2
    parts.append(_arrow(ox, y1, ox, y0 + box_h("postrouting") + 2, p_on or ("ipvs", "input:99") in lit))
    parts.append(_text(ox + 6, y1 - 20, "routing", 11, "bold"))
    # legend: the steps of each hit
    ly = y1 + bot_h + 24
    for i, h in enumerate(hit_list):
        where = {"ipvs": "IPVS at LOCAL_IN", "process": "the userspace proxy"}.get(h.key[0], f"{h.key[0]} {h.key[1]}")
        parts.append(f'<circle cx="18" cy="{ly - 4}" r="8" fill="{HIT_EDGE}"/>')
        parts.append(_text(18, ly, str(i + 1), 10, "bold", "middle", "#fff"))
        for line in _wrap(f"{where}: ", h.steps or ["(passed, nothing matched)"], 140):
            parts.append(_text(32, ly, line, 11, "bold" if "NAT" in line else "normal"))
            ly += 16
        ly += 2
    for note in _notes(trace):
        parts.append(_text(10, ly, _short(note, 160), 11, fill="#5f6368"))
        ly += 18
    height = ly + 6
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="kplab-path" width="{W}" height="{height}" '
            f'viewBox="0 0 {W} {height}"><rect width="{W}" height="{height}" fill="#ffffff"/>'
            + "".join(parts) + "</svg>")


def _wrap(head: str, steps: list[str], width: int) -> list[str]:
    """`head` and the steps joined by arrows, broken at arrows into lines of about `width`."""
    lines, line = [], head
    for i, step in enumerate(steps):
        piece = ("" if i == 0 else " -> ") + step
        if len(line) + len(piece) > width and line.strip():
            lines.append(line)
            line = "    -> " + step
        else:
            line += piece
    return lines + [line]


def _notes(trace: Any) -> list[str]:
    if trace is None:
        return []
    out = []
    answer = _get(trace, "answer") or {}
    if answer:
        out.append(f"answered by {answer.get('pod')} ({answer.get('pod_ip')}:{answer.get('port')}), "
                   f"which saw the client as {answer.get('client_ip')}")
    elif _get(trace, "error"):
        out.append(f"no answer: {_get(trace, 'error')}")
    return out


def read_layout(lab: Lab, node: str = "node-1") -> dict[str, Any]:
    """The node's base chains as the kernel lists them (`nft -j list ruleset` in its netns)."""
    from kplab.cluster.run import run

    text = run(["nft", "-j", "list", "ruleset"], lab.netns(node), check=False).stdout
    mode = lab.mode
    ipvs = mode == "ipvs" or run(["ip", "link", "show", "kube-ipvs0"], lab.netns(node), check=False).ok
    return layout_from_ruleset(text, mode, node, ipvs)


class PathPicture:
    """What `path_picture()` returns: renders as SVG in JupyterLab and in a saved notebook."""

    def __init__(self, layout: dict[str, Any], trace: Any = None) -> None:
        self.layout, self.trace = layout, trace
        self.node, hit_list, _ = hits(trace, layout) if trace is not None else (layout.get("node", ""), [], [])
        self.highlighted = [h.key for h in hit_list]
        self.steps = {h.key: h.steps for h in hit_list}
        self.svg = path_svg(layout, trace)

    def _repr_html_(self) -> str:
        return f"<div class='kplab-path'>{self.svg}</div>"

    def _repr_svg_(self) -> str:
        return self.svg

    def __repr__(self) -> str:
        lines = [f"path on {self.node} (mode {self.layout.get('mode')}):"]
        lines += [f"  {k[0]} {k[1]}: {' -> '.join(self.steps[k])}" for k in self.highlighted]
        if bpf_path(self.trace):
            lines.append(f"  no netfilter rule; BPF decided: {' -> '.join(bpf_path(self.trace))}")
        return "\n".join(lines)


def path_picture(lab: Lab, trace: Any = None, node: str | None = None) -> PathPicture:
    """The picture of `node` (default: where the trace's NAT decision was made, else node-1)."""
    drawn = node or (_get(trace, "decided_on") if trace is not None else "") or lab.nodes[0]
    return PathPicture(read_layout(lab, drawn), trace)
