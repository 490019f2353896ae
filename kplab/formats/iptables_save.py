"""`iptables-save` output as data: tables, chains, rules with their options and counters.

Used wherever kplab reads iptables back: the iptables mode (the chains and jumps already
there, its `rules()` view), `kplab explain` (a real node's dump), per-endpoint counters
(`iptables-save -c`), trace annotation.  It reads any rule, kube-proxy's or not,
and never chokes on odd text (weave's ipset names hold `;`, `$`, `|`, `~`, `]`).

    >>> d = parse('*nat\\n:KUBE-SERVICES - [0:0]\\n-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-X\\nCOMMIT\\n')
    >>> d.rules("nat", "KUBE-SERVICES")[0].target
    'KUBE-SVC-X'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

ALIASES = {
    "--source": "-s",
    "--destination": "-d",
    "--protocol": "-p",
    "--jump": "-j",
    "--goto": "-g",
    "--in-interface": "-i",
    "--out-interface": "-o",
    "--match": "-m",
    "--destination-port": "--dport",
    "--source-port": "--sport",
}
_COUNTERS = re.compile(r"^\[(\d+):(\d+)\]\s*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.?)*)"?')  # an unclosed quote runs to the end of the line
_TOKEN = re.compile(r'(?:[^\s"]|"(?:[^"\\]|\\.?)*"?)+')  # plain characters and quoted runs
_ESCAPED = re.compile(r"""\\(["\\'])""")
_NUMBER = re.compile(r"-\.?\d")  # a negative value, not an option


def tokenize(line: str) -> list[str]:
    """Split like iptables-restore: whitespace separates, double quotes group, \\" escapes."""
    return [_QUOTED.sub(_unquote, t) if '"' in t else t for t in _TOKEN.findall(line)]


def _unquote(m: re.Match[str]) -> str:
    return _ESCAPED.sub(r"\1", m.group(1))


@dataclass
class Option:
    name: str  # canonical short form: -s, -d, -p, -j, --dport, --comment, ...
    values: list[str]
    negated: bool = False


@dataclass
class Rule:
    """One `-A CHAIN ...` line."""

    table: str
    chain: str
    number: int  # 1-based position in its chain, as `iptables -L --line-numbers` and TRACE show
    text: str  # the line as written (without counters)
    packets: int | None = None  # from `iptables-save -c`
    bytes: int | None = None

    @cached_property
    def options(self) -> list[Option]:
        """Parsed on first use: a sync reads ~100k rules but looks into a few."""
        return parse_options(tokenize(self.text)[2:])

    def opt(self, name: str) -> Option | None:
        for o in self.options:
            if o.name == name:
                return o
        return None

    def value(self, name: str, default: str = "") -> str:
        o = self.opt(name)
        return o.values[0] if o and o.values else default

    def has(self, name: str) -> bool:
        return self.opt(name) is not None

    @property
    def target(self) -> str:
        """The -j (or -g) target: a chain name or a verdict such as DNAT, REJECT."""
        return self.value("-j") or self.value("-g")

    @property
    def comment(self) -> str:
        return self.value("--comment")

    @property
    def matches(self) -> list[str]:
        return [v for o in self.options if o.name == "-m" for v in o.values[:1]]


@dataclass
class Chain:
    name: str
    policy: str = "-"  # ACCEPT/DROP for built-in chains, "-" for user chains
    rules: list[Rule] = field(default_factory=list)
    packets: int = 0  # the policy's counters (`:INPUT ACCEPT [3:180]`)
    bytes: int = 0


@dataclass
class Dump:
    """A whole `iptables-save`: tables by name, chains by name, rules in order."""

    tables: dict[str, dict[str, Chain]] = field(default_factory=dict)

    def chains(self, table: str) -> dict[str, Chain]:
        return self.tables.get(table, {})

    def rules(self, table: str, chain: str) -> list[Rule]:
        c = self.chains(table).get(chain)
        return c.rules if c else []

    def all_rules(self, table: str | None = None) -> list[Rule]:
        tables = [table] if table else list(self.tables)
        return [r for t in tables for c in self.chains(t).values() for r in c.rules]


def parse_options(tokens: list[str]) -> list[Option]:
    """`-s 10.0.0.0/8 ! -d 1.2.3.4 -m tcp --dport 80` -> Options; values are the non-option tokens."""
    out: list[Option] = []
    negate = False
    cur: Option | None = None
    for tok in tokens:
        if tok == "!":
            if cur is not None and not cur.values:  # old syntax: `-s ! 1.2.3.4`
                cur.negated = True
            else:
                negate = True
            continue
        if tok.startswith("-") and len(tok) > 1 and not _NUMBER.match(tok):
            cur = Option(ALIASES.get(tok, tok), [], negate)
            out.append(cur)
            negate = False
        elif cur is not None:
            cur.values.append(tok)
    return out


def parse(text: str) -> Dump:
    """Parse iptables-save (with or without -c) text; unknown lines are ignored, never fatal."""
    dump = Dump()
    table: dict[str, Chain] | None = None
    table_name = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table_name = line[1:].strip()
            table = dump.tables.setdefault(table_name, {})
            continue
        if table is None or line == "COMMIT":
            continue
        if line.startswith(":"):
            parts = line[1:].split()
            if parts:
                m = _COUNTERS.match(parts[2]) if len(parts) > 2 else None
                counts = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
                table.setdefault(parts[0], Chain(parts[0], parts[1] if len(parts) > 1 else "-", [], *counts))
            continue
        packets = nbytes = None
        m = _COUNTERS.match(line)
        if m:
            packets, nbytes = int(m.group(1)), int(m.group(2))
            line = line[m.end() :]
        tokens = line.split(None, 2)  # the command and the chain: no quotes in either
        if len(tokens) == 2 and tokens[0] in ("-X", "--delete-chain"):
            table.pop(tokens[1], None)  # restore input deleting a stale chain
            continue
        if len(tokens) < 2 or tokens[0] not in ("-A", "--append", "-I", "--insert"):
            continue
        chain = table.setdefault(tokens[1], Chain(tokens[1]))
        rule = Rule(table_name, chain.name, 0, line, packets, nbytes)
        if tokens[0] in ("-I", "--insert"):
            chain.rules.insert(0, rule)
        else:
            chain.rules.append(rule)
    for chains in dump.tables.values():
        for c in chains.values():
            for i, r in enumerate(c.rules, 1):
                r.number = i
    return dump


def looks_like(text: str) -> bool:
    """Whether text is iptables-save output (or iptables-restore input)."""
    return bool(re.search(r"^\*(nat|filter|mangle|raw|security)\s*$", text, re.MULTILINE)) or bool(
        re.search(r"^(\[\d+:\d+\]\s*)?-A \S+ ", text, re.MULTILINE)
    )
