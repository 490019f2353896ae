"""The iptables mode's `rules()`: the node's nat and filter tables as loaded, with counters.

Hashed chain names mean nothing to a reader, so each KUBE-SVC/SVL/EXT/FW/SEP chain is
annotated with its `namespace/name:port` (and endpoint and pod for KUBE-SEP): first from what
the last sync computed from the ProxyState (the hashes recomputed over the current state),
else from the chain's own rule comments.  Returns JSON-serialisable data plus a plain "text".
"""

from __future__ import annotations

import re
from typing import Any

from kplab.formats.iptables_save import Chain, Dump

SHOWN_TABLES = ("nat", "filter")


def _annotation(chain: Chain, known: dict[str, list[str]]) -> dict[str, str]:
    if chain.name in known:
        return {k: v for k, v in zip(("service", "endpoint", "pod"), known[chain.name]) if v}
    if not chain.name.startswith(("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")):
        return {}
    for rule in chain.rules:
        comment = rule.comment
        m = re.match(
            r"(?:masquerade traffic for |pod traffic for |other traffic to )?(\S+/\S+?)(?: |$)", comment
        )
        if m:
            note = {"service": m.group(1)}
            endpoint = rule.value("--to-destination")
            if chain.name.startswith("KUBE-SEP-") and not endpoint:
                endpoint = next((r.value("--to-destination") for r in chain.rules if "DNAT" in r.text), "")
            if endpoint:
                note["endpoint"] = endpoint
            return note
    return {}


def _label(note: dict[str, str]) -> str:
    if not note:
        return ""
    text = note["service"]
    if "endpoint" in note:
        text += f" -> {note['endpoint']}"
    if "pod" in note:
        text += f" ({note['pod']})"
    return text


def rules_view(dump: Dump, annotations: dict[str, list[str]], *, backend: str, node: str) -> dict[str, Any]:
    data: dict[str, Any] = {"mode": "iptables", "backend": backend, "node": node, "tables": {}}
    lines = [f"# iptables ({backend}) on {node}: packets bytes rule"]
    for tname in SHOWN_TABLES:
        chains = dump.chains(tname)
        tdata: dict[str, Any] = {}
        lines.append(f"*{tname}")
        for chain in chains.values():
            relevant = chain.name.startswith("KUBE-") or any(
                r.target.startswith("KUBE-") for r in chain.rules
            )
            if not relevant:
                continue
            note = _annotation(chain, annotations)
            tdata[chain.name] = {
                "policy": chain.policy,
                "packets": chain.packets,
                "bytes": chain.bytes,
                "annotation": note,
                "rules": [
                    {
                        "rule": r.text,
                        "packets": r.packets or 0,
                        "bytes": r.bytes or 0,
                        "target": r.target,
                        "comment": r.comment,
                    }
                    for r in chain.rules
                ],
            }
            label = _label(note)
            lines.append(f"Chain {chain.name}" + (f"   # {label}" if label else ""))
            for r in chain.rules:
                body = r.text.split(" ", 2)[2] if r.text.count(" ") >= 2 else ""
                lines.append(f"  {r.packets or 0:>8} {r.bytes or 0:>10}  {body}")
        data["tables"][tname] = tdata
    data["text"] = "\n".join(lines) + "\n"
    return data
