"""nftables text as data: `nft list ruleset` listings and `nft -f` transactions alike.

Two shapes reach kplab: what `nft list ruleset` prints on a node (nested `table { chain {
... } }` blocks, map elements over several lines), and the flat transaction kube-proxy loads
and upstream's tests expect (`add rule ip kube-proxy <chain> ...`, knftables' Fake dump).
Both become the same `Ruleset`: tables with chains (rules as text) and sets/maps (elements
as key, comment, value).  Rule semantics are left to the readers (explain, trace).

    >>> rs = parse("add table ip t\\nadd chain ip t c\\nadd rule ip t c jump d\\n")
    >>> rs.table("t").chains["c"].rules
    ['jump d']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HANDLE = re.compile(r"\s*#\s*handle\s+\d+\s*$")
_TIME = re.compile(r"(\d+)(ms|d|h|m|s)")


@dataclass
class Element:
    key: str  # "10.96.0.10 . udp . 53"
    value: str = ""  # "goto service-..." for maps, "" for sets
    comment: str = ""

    @property
    def parts(self) -> list[str]:
        """The concatenated key split: ["10.96.0.10", "udp", "53"]."""
        return [p.strip() for p in self.key.split(" . ")]


@dataclass
class NftSet:
    name: str
    is_map: bool = False
    type: str = ""
    flags: str = ""
    timeout: int = 0  # seconds
    comment: str = ""
    elements: list[Element] = field(default_factory=list)


@dataclass
class NftChain:
    name: str
    hook: str = ""  # "nat prerouting priority dstnat" for base chains
    comment: str = ""
    rules: list[str] = field(default_factory=list)


@dataclass
class NftTable:
    family: str
    name: str
    comment: str = ""
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)

    def chain(self, name: str) -> NftChain:
        return self.chains.setdefault(name, NftChain(name))

    def set(self, name: str, is_map: bool = False) -> NftSet:
        s = self.sets.setdefault(name, NftSet(name, is_map))
        s.is_map = s.is_map or is_map
        return s


@dataclass
class Ruleset:
    tables: list[NftTable] = field(default_factory=list)

    def table(self, name: str, family: str | None = None) -> NftTable | None:
        for t in self.tables:
            if t.name == name and (family is None or t.family == family):
                return t
        return None

    def get_or_add(self, family: str, name: str) -> NftTable:
        t = self.table(name, family)
        if t is None:
            t = NftTable(family, name)
            self.tables.append(t)
        return t


def unquote(name: str) -> str:
    return name[1:-1] if len(name) >= 2 and name[0] == name[-1] == '"' else name


def seconds(text: str) -> int:
    """nft durations: "10800s", "3h", "1d2h3m4s" -> seconds."""
    total = 0.0
    for n, unit in _TIME.findall(text):
        total += int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return int(total)


def split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside braces and quotes."""
    out, depth, quoted, cur = [], 0, False, []
    i = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "{":
            depth += 1
        elif not quoted and c == "}":
            depth -= 1
        if not quoted and depth == 0 and text.startswith(sep, i):
            out.append("".join(cur))
            cur = []
            i += len(sep)
            continue
        cur.append(c)
        i += 1
    out.append("".join(cur))
    return [p.strip() for p in out if p.strip()]


def _balance(s: str) -> int:
    depth, quoted = 0, False
    for c in s:
        if c == '"':
            quoted = not quoted
        elif not quoted:
            depth += (c == "{") - (c == "}")
    return depth


def _logical_lines(text: str) -> list[str]:
    """Physical lines joined until braces balance, except block openers (`chain x {`)."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = _HANDLE.sub("", raw).strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if pending:
            pending += " " + line
            if _balance(pending) <= 0:
                out.append(pending)
                pending = ""
            continue
        if re.match(
            r"^(table|chain|set|map|flowtable|counter|quota|ct\s+(helper|timeout|expectation))\s+.*\{$", line
        ):
            out.append(line)  # block opener, closed by a lone "}"
        elif _balance(line) > 0:
            pending = line
        else:
            out.append(line)
    if pending:
        out.append(pending)
    return out


def parse_elements(body: str) -> list[Element]:
    """`a : goto x, b comment "c" : drop` -> Elements (the part inside `elements = { }`)."""
    out = []
    for item in split_top(body.strip().strip("{}"), ","):
        key, _, value = item.partition(" : ")
        comment = ""
        m = re.search(r'\s+comment\s+"((?:[^"\\]|\\.)*)"\s*$', key)
        if m:
            comment, key = m.group(1), key[: m.start()]
        out.append(Element(key.strip(), value.strip(), comment))
    return out


def _set_property(s: NftSet, stmt: str) -> None:
    stmt = stmt.strip().rstrip(";").strip()
    if stmt.startswith("type "):
        s.type = stmt[5:]
    elif stmt.startswith("flags "):
        s.flags = stmt[6:]
    elif stmt.startswith("timeout "):
        s.timeout = seconds(stmt[8:])
    elif stmt.startswith("comment "):
        s.comment = unquote(stmt[8:].strip())
    elif stmt.startswith("elements"):
        s.elements.extend(parse_elements(stmt.split("=", 1)[1]))


def _chain_property(c: NftChain, stmt: str) -> bool:
    """Base-chain and comment statements inside a chain block; False for an ordinary rule."""
    stmt = stmt.strip().rstrip(";").strip()
    if stmt.startswith("type ") and " hook " in stmt:
        c.hook = stmt[5:].split(";")[0].strip()
        return True
    if stmt.startswith(("policy ", "devices ")):
        return True
    if stmt.startswith("comment ") and stmt.count('"') == 2 and stmt.endswith('"'):
        c.comment = unquote(stmt[8:].strip())
        return True
    return False


def _apply_spec(obj: NftSet | NftChain | NftTable, spec: str) -> None:
    """The `{ type ... ; comment "..." ; }` part of `add set/map/chain/table`."""
    for stmt in split_top(spec.strip().strip("{}"), ";"):
        if isinstance(obj, NftSet):
            _set_property(obj, stmt)
        elif isinstance(obj, NftChain):
            _chain_property(obj, stmt)
        elif stmt.startswith("comment "):
            obj.comment = unquote(stmt[8:].strip())


_CMD = re.compile(r"^(add|create|insert|flush|delete|destroy)\s+(table|chain|rule|set|map|element)\s+(.*)$")


def _command(rs: Ruleset, line: str) -> None:
    m = _CMD.match(line)
    if not m:
        return
    verb, what, rest = m.groups()
    words = rest.split(None, 3)
    if what == "table":
        family, name = (
            (words[0], words[1]) if len(words) > 1 and not words[1].startswith("{") else ("ip", words[0])
        )
        if verb in ("delete", "destroy"):
            rs.tables = [t for t in rs.tables if not (t.family == family and t.name == name)]
            return
        table = rs.get_or_add(family, name)
        if verb == "flush":
            table.chains.clear()
            table.sets.clear()
        elif "{" in rest:
            _apply_spec(table, rest[rest.index("{") :])
        return
    if len(words) < 3:
        return
    family, tname, name = words[0], words[1], unquote(words[2])
    tail = words[3] if len(words) > 3 else ""
    table = rs.get_or_add(family, tname)
    if what == "chain":
        if verb in ("delete", "destroy"):
            table.chains.pop(name, None)
        elif verb == "flush":
            table.chain(name).rules.clear()
        else:
            _apply_spec(table.chain(name), tail)
    elif what in ("set", "map"):
        if verb in ("delete", "destroy"):
            table.sets.pop(name, None)
        elif verb == "flush":
            table.set(name).elements.clear()
        else:
            _apply_spec(table.set(name, what == "map"), tail)
    elif what == "rule" and verb in ("add", "insert"):
        rules = table.chain(name).rules
        tail = re.sub(r"^(position|handle|index)\s+\d+\s+", "", tail)
        rules.insert(0, tail) if verb == "insert" else rules.append(tail)
    elif what == "element":
        s = table.set(name)
        new = parse_elements(tail)
        if verb in ("delete", "destroy"):
            keys = {e.key for e in new}
            s.elements = [e for e in s.elements if e.key not in keys]
        else:
            s.elements.extend(new)


def parse(text: str) -> Ruleset:
    """Parse a listing or a transaction (or a mix); lines it does not understand are skipped."""
    rs = Ruleset()
    stack: list[NftTable | NftChain | NftSet] = []
    table: NftTable | None = None
    for line in _logical_lines(text):
        if line == "}":
            if stack:
                stack.pop()
            continue
        top = stack[-1] if stack else None
        m = re.match(r"^(table|chain|set|map|flowtable)\s+(.*?)\s*\{$", line)
        if m and top is None and m.group(1) == "table":
            words = m.group(2).split()
            family, name = (words[0], words[1]) if len(words) > 1 else ("ip", words[0])
            table = rs.get_or_add(family, name)
            stack.append(table)
            continue
        if m and isinstance(top, NftTable):
            name = unquote(m.group(2))
            kind = m.group(1)
            obj: NftChain | NftSet = top.chain(name) if kind == "chain" else top.set(name, kind == "map")
            stack.append(obj)
            continue
        if top is None:
            _command(rs, line)
        elif isinstance(top, NftTable):
            if line.startswith("comment "):
                top.comment = unquote(line[8:].strip())
        elif isinstance(top, NftSet):
            _set_property(top, line)
        elif not _chain_property(top, line):
            top.rules.append(line.rstrip(";").strip())
    return rs


def looks_like(text: str) -> bool:
    return bool(
        re.search(
            r"^\s*(table\s+\w+\s+\S+\s*\{|(add|flush|create)\s+(table|chain|rule)\s+)", text, re.MULTILINE
        )
    )
