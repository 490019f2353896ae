"""`kplab diff NODE`: what the next sync writes, and how the kernel differs from what a sync programs.

Two answers, from the mode's own protocol (kplab.proxy.base):

* `next_sync`: the Plan the next sync would apply (partial when it can be), its exact text;
* drift: the kernel objects a full sync from an empty kernel leaves, against those the node
  holds now.  "+" lines are missing from the node (a rule deleted by hand, an endpoint not yet
  synced), "-" lines are there but no sync would write them (something added by hand, a
  Service deleted with `--no-sync`).  Both sides are read back by the same tool, so they are
  compared in the kernel's own words: the expected side is loaded into a scratch namespace
  (`scratch()`, removed at once) and read back there.

A node whose kernel matches has no drift; a partial sync only repairs drift of the Services
it rewrites, which is why `kplab sync --full` exists.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kplab.cluster import netns
from kplab.formats.iptables_save import parse

_COUNTER = re.compile(r"\s*counter packets \d+ bytes \d+")
_HANDLE = re.compile(r"\s*# handle \d+$")


@dataclass
class Diff:
    node: str
    mode: str
    next_sync: Any  # kplab.proxy.base.Plan (not imported: base imports this module)
    missing: list[str] = field(default_factory=list)  # "+": a sync would put these in the kernel
    extra: list[str] = field(default_factory=list)  # "-": in the kernel, no sync writes them

    @property
    def clean(self) -> bool:
        return not self.missing and not self.extra

    def text(self) -> str:
        kind = "full" if self.next_sync.full else "partial"
        head = f"# {self.mode} on {self.node}: "
        if self.clean:
            head += "the kernel holds what a sync programs (no drift)\n"
        else:
            head += f"{len(self.missing)} missing (+), {len(self.extra)} not wanted (-)\n"
        lines = [f"+ {x}" for x in self.missing] + [f"- {x}" for x in self.extra]
        body = "".join(f"{x}\n" for x in lines)
        if not self.clean and not self.next_sync.full:
            body += ("# a partial sync repairs only the drift of what it rewrites; `kplab sync --full` repairs "
                     "all of it (upstream: its hourly full sync, or a restart)\n")
        nxt = f"# the next sync ({kind}, {self.next_sync.changed} service ports) writes"
        if not self.next_sync.text.strip():
            return head + body + nxt + " nothing\n"
        return head + body + nxt + ":\n" + self.next_sync.text

    def as_dict(self) -> dict[str, object]:
        return {"node": self.node, "mode": self.mode, "clean": self.clean, "missing": self.missing,
                "extra": self.extra, "next_sync": {"full": self.next_sync.full, "changed": self.next_sync.changed,
                                                   "text": self.next_sync.text}}  # fmt: skip


def compare(want: Iterable[str], have: Iterable[str]) -> tuple[list[str], list[str]]:
    """(missing, extra) between two line multisets, each sorted."""
    w, h = Counter(want), Counter(have)
    return sorted((w - h).elements()), sorted((h - w).elements())


@contextlib.contextmanager
def scratch(node_netns: str) -> Iterator[str]:
    """A throwaway named netns beside the node's (`<node netns>-diff`), removed on exit."""
    name = f"{node_netns}-diff"
    netns.remove_netns(name)  # a leftover of an interrupted diff
    netns.create_named_netns(name).close()
    try:
        yield name
    finally:
        netns.remove_netns(name)


def nft_lines(listing: str) -> list[str]:
    """`nft list table` output as comparable lines: counters without values, no handles, each rule and
    set or map element prefixed by its chain/container, leaving out elements that expire (affinity)."""
    out: list[str] = []
    container, in_elements = "", False
    for raw in listing.splitlines():
        line = _HANDLE.sub("", _COUNTER.sub(" counter", raw)).strip()
        if line.startswith(("set ", "map ", "chain ")):
            container = line.split()[1]
            out.append(line.removesuffix("{").strip())
            continue
        if line.startswith("elements = {"):
            in_elements, line = True, line.removeprefix("elements = {")
        if in_elements:
            end = line.endswith("}")
            for element in line.removesuffix("}").split(","):
                if element.strip() and "expires" not in element:
                    out.append(f"{container} element {element.strip()}")
            in_elements = not end
            continue
        if line and line != "}":
            out.append(f"{container}: {line}" if container else line)
    return out


def xtables_lines(saved: str, owned: Callable[[str, str], bool]) -> list[str]:
    """The owned chains, their rules and the jumps to them, of an iptables-save text, per table."""
    out = []
    for table, chains in parse(saved).tables.items():
        for name, chain in chains.items():
            mine = owned(table, name)
            if mine:
                out.append(f"*{table} :{name}")
            out += [f"*{table} {r.text}" for r in chain.rules if mine or owned(table, r.target)]
    return out
