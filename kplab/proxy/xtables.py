"""The one xtables helper of every mode that writes iptables rules (iptables, ipvs, userspace).

* `Xtables(netns)`: iptables-save / iptables-restore in a node's namespace with the backend the
  node's `iptables` is (`detect_backend`: "(nf_tables)" or "(legacy)"; an option overrides it),
  a refused restore reported with the input lines it names (`failing_lines`);
* jump rules from the built-in chains as data, `(table, from, to, extra matches, comment)`:
  a sync adds the missing ones to its own restore (`missing_jumps`, `ensure_lines`, `merge`)
  instead of one `iptables -C`/`-I` per jump, and the iptables mode's KUBE-PROXY-CANARY chains;
* owned-chain cleanup: every chain a mode owns and every jump to one, nothing else
  (`cleanup_input`, `Xtables.cleanup`).

The kernel's tables are read with `kplab.formats.iptables_save.parse`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kplab.cluster.run import run
from kplab.errors import LabError, ProxierError
from kplab.formats.iptables_save import Dump, parse

Jump = tuple[str, str, str, str, str]  # (table, from chain, to chain, extra matches, comment)
RESTORE_TIMEOUT = 900.0  # iptables-nft needs minutes for ~100k rules
TOOLS = {
    "nf_tables": ("iptables-nft", "iptables-nft-save", "iptables-nft-restore"),
    "legacy": ("iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore"),
}


def detect_backend(override: str | None = None) -> str:
    """Which backend: "nf_tables" or "legacy", as `iptables --version` reports, unless overridden."""
    if override:
        backends = {"nft": "nf_tables", "nf_tables": "nf_tables", "legacy": "legacy"}
        if override not in backends:
            raise LabError(f"iptables_backend {override!r}: use nft or legacy")
        return backends[override]
    out = run(["iptables", "--version"]).stdout
    m = re.search(r"\((nf_tables|legacy)\)", out)
    return m.group(1) if m else "legacy"  # iptables < 1.8 prints no backend: legacy


Chains = dict[str, tuple[str, ...]]  # table -> the chains a mode declares in its restore, in order


def owned_by(chains: Chains) -> Callable[[str, str], bool]:
    """Cleanup's and drift's test for a mode that owns exactly `chains` (ipvs, userspace)."""
    return lambda table, chain: chain in chains.get(table, ())


def kube_owned(table: str, chain: str) -> bool:
    """The iptables mode owns every KUBE-* chain (upstream's CleanupLeftovers)."""
    return chain.startswith("KUBE-")


class Xtables:
    """iptables-save and iptables-restore in one namespace, with one backend for both."""

    def __init__(self, netns: str, backend: str | None = None, *, override: str | None = None) -> None:
        self.netns = netns
        self.backend = backend or detect_backend(override)
        self.tool, self.save_tool, self.restore_tool = TOOLS[self.backend]

    def save(self, counters: bool = False) -> str:
        return str(run([self.save_tool, *(["-c"] if counters else [])], netns=self.netns).stdout)

    def dump(self, counters: bool = False) -> Dump:
        return parse(self.save(counters))

    def run(self, argv: list[str], **kw: Any) -> Any:
        return run([self.tool, *argv], netns=self.netns, **kw)

    def restore(self, text: str, counters: bool = False) -> None:
        """One `iptables-restore -w 5 --noflush`; ProxierError with the refused lines otherwise."""
        argv = [self.restore_tool, "-w", "5", "--noflush", *(["--counters"] if counters else [])]
        res = run(argv, netns=self.netns, input=text, check=False, timeout=RESTORE_TIMEOUT)
        if not res.ok:
            lines = failing_lines(text, res.stderr)
            first = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[0]
            raise ProxierError(f"iptables-restore in {self.netns} failed: {first}{too_long_hint(first)}", lines)

    def cleanup(self, owned: Callable[[str, str], bool] = kube_owned) -> None:
        """Remove every owned chain and every jump to one from a built-in chain."""
        text = cleanup_input(self.dump(), owned)
        if text:
            self.restore(text)

    def note_tables(self, state_dir: str | Path) -> None:
        """Before a mode's first restore: the tables the node had, so cleanup knows which it made."""
        path = Path(state_dir) / TABLES_BEFORE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(sorted(self.dump().tables)))

    def drop_created_tables(self, state_dir: str | Path) -> None:
        """After cleanup: delete the iptables-nft tables the mode created that hold nothing now
        (an empty nat table still hooks NAT, and so conntrack, into the node)."""
        path = Path(state_dir) / TABLES_BEFORE
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if self.backend == "nf_tables":  # legacy's tables are the kernel modules': always there
            for table, chains in self.dump().tables.items():
                if table not in before and all(c.name in BUILTIN and not c.rules and c.policy == "ACCEPT"
                                               for c in chains.values()):
                    run(["nft", "delete", "table", "ip", table], netns=self.netns, check=False)
        path.unlink(missing_ok=True)


def too_long_hint(error: str) -> str:
    """iptables-nft sends a table as one netlink message; root of a user namespace (a learner's
    container) cannot raise the socket buffer for a large one, the legacy backend has no such limit."""
    if "Message too long" not in error:
        return ""
    return ("; this kernel refuses a netlink message that large here (in a container, root cannot raise "
            "net.core.wmem_max): switch to the legacy backend, `kplab mode MODE --set iptables_backend=legacy`")


CANARY = "KUBE-PROXY-CANARY"
TABLES_BEFORE = "xtables-before.json"  # in the node's state directory

# Upstream's iptablesJumpChains then iptablesKubeletJumpChains: (table, from, to, extra matches, comment).
# Each is prepended when missing, in this order, so the last one ends up first in its chain.
_NEW = "-m conntrack --ctstate NEW"
JUMPS: tuple[Jump, ...] = (
    *(("filter", c, "KUBE-EXTERNAL-SERVICES", _NEW, "kubernetes externally-visible service portals")
      for c in ("INPUT", "FORWARD")),
    ("filter", "INPUT", "KUBE-NODEPORTS", "", "kubernetes health check service ports"),
    ("filter", "FORWARD", "KUBE-SERVICES", _NEW, "kubernetes service portals"),
    ("filter", "OUTPUT", "KUBE-SERVICES", _NEW, "kubernetes service portals"),
    ("filter", "FORWARD", "KUBE-FORWARD", "", "kubernetes forwarding rules"),
    *(("filter", c, "KUBE-PROXY-FIREWALL", _NEW, "kubernetes load balancer firewall")
      for c in ("INPUT", "OUTPUT", "FORWARD")),
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


def missing_jumps(dump: Dump, jumps: Iterable[Jump]) -> list[Jump]:
    """The jumps of `jumps` that `dump` lacks (same source, target and comment)."""
    return [j for j in jumps if not _has_jump(dump, j[0], j[1], j[2], j[4])]


def ensure_lines(
    dump: Dump, declared: dict[str, set[str]], jumps: Iterable[Jump] = JUMPS, canary: bool = True,
    position: str = " 1",
) -> dict[str, list[str]]:
    """Per table, the restore lines that create what upstream's EnsureChain/EnsureRule and the
    canary monitor would create, for what is missing (`declared`: chains the restore declares).
    `position`: "-I CHAIN 1" (the default) or "" for "-I CHAIN", which also inserts first."""
    out: dict[str, list[str]] = {"filter": [], "nat": [], "mangle": []}
    for table, lines in out.items():
        if canary and CANARY not in dump.chains(table):
            lines.append(f":{CANARY} - [0:0]")
    for table, src, dst, extra, comment in jumps:
        if dst not in dump.chains(table) and dst not in declared.get(table, set()):
            line = f":{dst} - [0:0]"
            if line not in out[table]:
                out[table].append(line)
        if not _has_jump(dump, table, src, dst, comment):
            out[table].append(f"-I {src}{position} " + jump_matches(dst, extra, comment))
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


def cleanup_input(dump: Dump, owned: Callable[[str, str], bool] = kube_owned) -> str:
    """Restore input that deletes every jump to an owned chain and every owned chain (KUBE-*)."""
    out: list[str] = []
    for table, chains in dump.tables.items():
        ours = sorted(c for c in chains if owned(table, c) and c not in BUILTIN)
        builtin = [c for c in chains.values() if c.name in BUILTIN]  # the targets of these rules only
        jumps = [r.text for c in builtin for r in c.rules if owned(table, r.target)]
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
