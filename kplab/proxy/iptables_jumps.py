"""Upstream's jump rules and canary chains, as restore input built from the tables already there.

The kernel's tables are read with `kplab.inspect.iptables_save.parse`; from them:

* a full sync ensures upstream's jump rules (PREROUTING -> KUBE-SERVICES, ...) and the
  KUBE-PROXY-CANARY chains exist (`ensure_lines`, added to its restore by `merge`);
* `cleanup` removes every KUBE-* chain and every jump to one (`cleanup_input`);
* a failed restore is reported with the input lines it names (`failing_lines`).
"""

from __future__ import annotations

import re

from kplab.inspect.iptables_save import Dump

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


def jump_matches(dst: str, extra: str, comment: str) -> str:
    """The rule upstream ensures, without the chain: "-m comment --comment ... -j DST"."""
    parts = [extra, f'-m comment --comment "{comment}"' if comment else "", "-j", dst]
    return " ".join(p for p in parts if p)


def _has_jump(dump: Dump, table: str, src: str, dst: str, comment: str) -> bool:
    return any(r.target == dst and comment in r.text for r in dump.rules(table, src))


def ensure_lines(dump: Dump, declared: dict[str, set[str]]) -> dict[str, list[str]]:
    """Per table, the restore lines that create what upstream's EnsureChain/EnsureRule and the
    canary monitor would create, for what is missing (`declared`: chains the restore declares)."""
    out: dict[str, list[str]] = {"filter": [], "nat": [], "mangle": []}
    for table, lines in out.items():
        if CANARY not in dump.chains(table):
            lines.append(f":{CANARY} - [0:0]")
    for table, src, dst, extra, comment in JUMPS:
        if dst not in dump.chains(table) and dst not in declared.get(table, set()):
            line = f":{dst} - [0:0]"
            if line not in out[table]:
                out[table].append(line)
        if not _has_jump(dump, table, src, dst, comment):
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


def cleanup_input(dump: Dump) -> str:
    """Restore input that deletes every jump to a KUBE-* chain and every KUBE-* chain."""
    out: list[str] = []
    for table, chains in dump.tables.items():
        ours = sorted(c for c in chains if c.startswith("KUBE-"))
        builtin = [c for c in chains.values() if c.name in BUILTIN]  # the targets of these rules only
        jumps = [r.text for c in builtin for r in c.rules if r.target.startswith("KUBE-")]
        if not ours and not jumps:
            continue
        out.append(f"*{table}")
        out += [f":{c} - [0:0]" for c in ours]
        out += ["-D" + text[2:] for text in jumps]
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
