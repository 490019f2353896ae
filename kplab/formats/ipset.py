"""ipset text: members read back from `ipset save`, and the `ipset restore` batch to a wanted state.

Only the sets a caller names are read or written (kplab never touches another's sets).

    >>> parse_save("create S hash:ip,port family inet\\nadd S 10.96.0.10,tcp:80\\n", {"S"})
    {'S': {'10.96.0.10,tcp:80'}}
    >>> restore_batch({"S": {"a"}}, {"S": {"b"}}, {"S": "hash:ip,port"}).splitlines()[1:]
    ['del S a -exist', 'add S b -exist']
"""

from __future__ import annotations

from collections.abc import Container, Mapping


def parse_save(text: str, names: Container[str]) -> dict[str, set[str]]:
    """Members per set from `ipset save` output, for the sets in `names` only."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "create" and parts[1] in names:
            out.setdefault(parts[1], set())
        elif len(parts) >= 3 and parts[0] == "add" and parts[1] in names:
            out.setdefault(parts[1], set()).add(parts[2])
    return out


def restore_batch(current: Mapping[str, set[str]], wanted: Mapping[str, set[str]], kinds: Mapping[str, str]) -> str:
    """`ipset restore` input: create every set of `kinds` (-exist), then only the membership differences."""
    lines = []
    for name, kind in kinds.items():
        opts = "range 0-65535" if kind.startswith("bitmap") else "family inet hashsize 1024 maxelem 65536"
        lines.append(f"create {name} {kind} {opts} -exist")
    for name in kinds:
        have, want = current.get(name, set()), wanted.get(name, set())
        lines += [f"del {name} {e} -exist" for e in sorted(have - want)]
        lines += [f"add {name} {e} -exist" for e in sorted(want - have)]
    return "\n".join(lines) + "\n"
