"""From what the maps hold to what they should hold: the ordered updates of one sync (pure).

The order is Cilium's (pkg/loadbalancer/reconciler): backends first, then the slots, rev-NAT
and affinity/source-range entries, then the frontends' slot 0 (its new `count`), and only
then the deletions, frontends before slots before backends.  So at no moment does the datapath
read a `count` that points past a filled slot, or a slot naming a missing backend.

The batch is `bpftool batch file -` input: one `map update`/`map delete` line per entry, in
one process per sync (kube-proxy's one iptables-restore, for maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kplab.proxy.ebpf.model import MAPS


@dataclass(frozen=True)
class Op:
    verb: str  # "update" | "delete"
    map: str
    key: bytes
    value: bytes = b""


def _is_master(key: bytes) -> bool:
    return key[6:8] == b"\0\0"


def diff(current: dict[str, dict[bytes, bytes]], desired: dict[str, dict[bytes, bytes]]) -> list[Op]:
    """The updates and deletions that turn `current` into `desired`, in a safe order."""
    ups: dict[str, list[Op]] = {m: [] for m in MAPS}
    dels: dict[str, list[Op]] = {m: [] for m in MAPS}
    for m in MAPS:
        cur, want = current.get(m, {}), desired.get(m, {})
        ups[m] = [Op("update", m, k, v) for k, v in sorted(want.items()) if cur.get(k) != v]
        dels[m] = [Op("delete", m, k) for k in sorted(cur) if k not in want]
    svc_up, svc_del = ups["lb4_services"], dels["lb4_services"]
    return [
        *ups["lb4_backends"],
        *[o for o in svc_up if not _is_master(o.key)],
        *ups["lb4_reverse_nat"],
        *ups["lb_aff_match"],
        *ups["lb4_src_range"],
        *[o for o in svc_up if _is_master(o.key)],
        *[o for o in svc_del if _is_master(o.key)],
        *[o for o in svc_del if not _is_master(o.key)],
        *dels["lb4_src_range"],
        *dels["lb_aff_match"],
        *dels["lb4_reverse_nat"],
        *dels["lb4_backends"],
    ]


def _hex(b: bytes) -> str:
    return " ".join(f"{x:02x}" for x in b)


def batch(ops: list[Op], map_dir: str | Path) -> str:
    """`bpftool batch` input for `ops`, maps pinned in `map_dir`."""
    lines = []
    for o in ops:
        line = f"map {o.verb} pinned {map_dir}/{o.map} key hex {_hex(o.key)}"
        lines.append(line + (f" value hex {_hex(o.value)}" if o.verb == "update" else ""))
    return "\n".join(lines) + ("\n" if lines else "")


def parse_dump(entries: list[dict[str, Any]]) -> dict[bytes, bytes]:
    """`bpftool -j map dump` output (hex byte strings, with or without BTF) -> {key: value}."""
    out: dict[bytes, bytes] = {}
    for e in entries:
        if "key" not in e:
            continue
        out[bytes(int(x, 16) for x in e["key"])] = bytes(int(x, 16) for x in e["value"])
    return out
