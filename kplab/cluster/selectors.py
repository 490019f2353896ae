"""kubectl's label selectors: `app=web`, `app==web`, `app!=web`, `app`, `!app`, `app in (a,b)`,
`app notin (a,b)`, joined by commas (a comma inside parentheses belongs to the set)."""

from __future__ import annotations

import re

from kplab.errors import LabError

_REQ = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<nk>[\w./-]+)|(?P<k>[\w./-]+)\s*(?:(?P<op>==|!=|=)\s*(?P<v>[\w.-]*)|"
    r"\s+(?P<set>in|notin)\s*\((?P<vals>[^)]*)\))?)\s*$"
)


def parse(text: str) -> list[tuple[str, str, set[str]]]:
    """kubectl's label selector: k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b), joined by commas."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for part in parts:
        m = _REQ.match(part)
        if not m or not part.strip():
            raise LabError(
                f"label selector {text!r}: cannot read {part.strip()!r} "
                "(use k=v, k!=v, k, !k, k in (a,b) or k notin (a,b), joined by commas)"
            )
        if m["not"]:
            out.append((m["nk"], "!", set()))
        elif m["set"]:
            out.append((m["k"], m["set"], {v.strip() for v in m["vals"].split(",") if v.strip()}))
        elif m["op"]:
            out.append((m["k"], "!=" if m["op"] == "!=" else "=", {m["v"]}))
        else:
            out.append((m["k"], "exists", set()))
    return out


def selects(reqs: list[tuple[str, str, set[str]]], labels: dict[str, str]) -> bool:
    for key, op, values in reqs:
        has, value = key in labels, labels.get(key)
        ok = {
            "=": has and value in values,
            "in": has and value in values,
            "!=": value not in values,
            "notin": value not in values,
            "exists": has,
            "!": not has,
        }[op]
        if not ok:
            return False
    return True
