"""Reading `iptables-save [-c]` output, and the restore inputs built from what is already there.

The iptables mode needs the kernel's current tables in three places, all parsed here:

* a full sync ensures upstream's jump rules (PREROUTING -> KUBE-SERVICES, ...) and the
  KUBE-PROXY-CANARY chains exist (`ensure_lines`), and finds stale service chains;
* `cleanup` removes every KUBE-* chain and every jump to one (`cleanup_input`);
* `rules()` shows the chains with their packet counters (`parse`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CANARY = "KUBE-PROXY-CANARY"

# Upstream's iptablesJumpChains then iptablesKubeletJumpChains: (table, from, to, extra matches, comment).
# Each is prepended when missing, in this order, so the last one ends up first in its chain.
JUMPS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "filter",
        "INPUT",
        "KUBE-EXTERNAL-SERVICES",
        "-m conntrack --ctstate NEW",
        "kubernetes externally-visible service portals",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-EXTERNAL-SERVICES",
        "-m conntrack --ctstate NEW",
        "kubernetes externally-visible service portals",
    ),
    ("filter", "INPUT", "KUBE-NODEPORTS", "", "kubernetes health check service ports"),
    ("filter", "FORWARD", "KUBE-SERVICES", "-m conntrack --ctstate NEW", "kubernetes service portals"),
    ("filter", "OUTPUT", "KUBE-SERVICES", "-m conntrack --ctstate NEW", "kubernetes service portals"),
    ("filter", "FORWARD", "KUBE-FORWARD", "", "kubernetes forwarding rules"),
    (
        "filter",
        "INPUT",
        "KUBE-PROXY-FIREWALL",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
    ),
    (
        "filter",
        "OUTPUT",
        "KUBE-PROXY-FIREWALL",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-PROXY-FIREWALL",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
    ),
    ("nat", "OUTPUT", "KUBE-SERVICES", "", "kubernetes service portals"),
    ("nat", "PREROUTING", "KUBE-SERVICES", "", "kubernetes service portals"),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "", "kubernetes postrouting rules"),
    ("filter", "INPUT", "KUBE-FIREWALL", "", ""),
    ("filter", "OUTPUT", "KUBE-FIREWALL", "", ""),
)
BUILTIN = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}
_COUNTED = re.compile(r"^\[(\d+):(\d+)\] (.*)$")
_CHAIN = re.compile(r"^:(\S+) (\S+)(?: \[(\d+):(\d+)\])?")


@dataclass
class Rule:
    spec: str  # "-A CHAIN ..." as iptables-save prints it
    packets: int = 0
    bytes: int = 0

    @property
    def target(self) -> str:
        m = re.search(r"(?:^| )-[jg] (\S+)", self.spec)
        return m.group(1) if m else ""

    @property
    def comment(self) -> str:
        m = re.search(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))', self.spec)
        return "" if m is None else (m.group(1) if m.group(1) is not None else m.group(2))


@dataclass
class Chain:
    name: str
    policy: str = "-"
    packets: int = 0
    bytes: int = 0
    rules: list[Rule] = field(default_factory=list)


Tables = dict[str, dict[str, Chain]]


def parse(text: str) -> Tables:
    """iptables-save output (with or without -c) as table -> chain -> Chain."""
    tables: Tables = {}
    chains: dict[str, Chain] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            chains = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            m = _CHAIN.match(line)
            if m:
                chains[m.group(1)] = Chain(m.group(1), m.group(2), int(m.group(3) or 0), int(m.group(4) or 0))
        elif line.startswith(("[", "-A ")):
            m = _COUNTED.match(line)
            packets, nbytes, spec = (int(m.group(1)), int(m.group(2)), m.group(3)) if m else (0, 0, line)
            name = spec.split(" ", 2)[1]
            chains.setdefault(name, Chain(name)).rules.append(Rule(spec, packets, nbytes))
    return tables


def jump_matches(dst: str, extra: str, comment: str) -> str:
    """The rule upstream ensures, without the chain: "-m comment --comment ... -j DST"."""
    parts = [extra, f'-m comment --comment "{comment}"' if comment else "", "-j", dst]
    return " ".join(p for p in parts if p)


def _has_jump(tables: Tables, table: str, src: str, dst: str, comment: str) -> bool:
    chain = tables.get(table, {}).get(src)
    return chain is not None and any(r.target == dst and comment in r.spec for r in chain.rules)


def ensure_lines(tables: Tables, declared: dict[str, set[str]]) -> dict[str, list[str]]:
    """Per table, the restore lines that create what upstream's EnsureChain/EnsureRule and the
    canary monitor would create, for what is missing (`declared`: chains the restore declares)."""
    out: dict[str, list[str]] = {"filter": [], "nat": [], "mangle": []}
    for table, lines in out.items():
        if CANARY not in tables.get(table, {}):
            lines.append(f":{CANARY} - [0:0]")
    for table, src, dst, extra, comment in JUMPS:
        if dst not in tables.get(table, {}) and dst not in declared.get(table, set()):
            line = f":{dst} - [0:0]"
            if line not in out[table]:
                out[table].append(line)
        if not _has_jump(tables, table, src, dst, comment):
            out[table].append(f"-I {src} 1 " + jump_matches(dst, extra, comment))
    return out


def merge(restore: str, extra: dict[str, list[str]]) -> str:
    """`restore` with each table's extra lines added: declarations at the top, rules before COMMIT."""
    out: list[str] = []
    table = ""
    seen: set[str] = set()
    for line in restore.splitlines():
        if line.startswith("*"):
            table = line[1:]
            seen.add(table)
            out.append(line)
            out += [x for x in extra.get(table, []) if x.startswith(":")]
            continue
        if line == "COMMIT":
            out += [x for x in extra.get(table, []) if not x.startswith(":")]
        out.append(line)
    for table, lines in extra.items():
        if table not in seen and lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(out) + "\n"


def cleanup_input(tables: Tables) -> str:
    """Restore input that deletes every jump to a KUBE-* chain and every KUBE-* chain."""
    out: list[str] = []
    for table, chains in tables.items():
        ours = sorted(c for c in chains if c.startswith("KUBE-"))
        jumps = [
            r.spec
            for c in chains.values()
            for r in c.rules
            if r.target.startswith("KUBE-") and c.name in BUILTIN
        ]
        if not ours and not jumps:
            continue
        out.append(f"*{table}")
        out += [f":{c} - [0:0]" for c in ours]
        out += ["-D" + spec[2:] for spec in jumps]
        out += [f"-X {c}" for c in ours]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def failing_lines(text: str, stderr: str, context: int = 2) -> list[str]:
    """The input lines around the one iptables-restore names in its error ("line 12 failed")."""
    m = re.search(r"line:? (\d+)", stderr)
    if not m:
        return []
    n = int(m.group(1))
    lines = text.splitlines()
    lo, hi = max(0, n - 1 - context), min(len(lines), n + context)
    return [f"{i + 1}: {lines[i]}" for i in range(lo, hi)]
