"""The small protocol every kube-proxy mode implements, and the registry of modes.

Like upstream's `Provider` with `Sync()`: a mode is a class with

* `render(state, **options) -> str`: pure, the exact text (or listing) the mode would load,
  shown to learners and compared with upstream's expected output in unit tests;
* `sync(state) -> SyncResult`: the only place that writes to the node's kernel state, one
  batch per call (iptables-restore, nft -f, a netlink batch), partial when it can be;
* `cleanup()`: removes every trace of the mode from the node's namespace;
* `rules() -> dict`: the mode's state read back from the kernel, for `kplab rules`;
* `doctor() -> Availability`: whether this machine can run the mode, and how to fix it.

One instance per node per sync call: anything a mode must remember between syncs (for
partial syncs) lives in `ctx.state_dir`, because the CLI and a notebook are separate
processes acting on the same lab.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kplab.errors import KplabError
from kplab.proxy.core import ProxyState

MODES: dict[str, str] = {
    "iptables": "kplab.proxy.iptables:IptablesProxier",
    "nftables": "kplab.proxy.nftables:NftablesProxier",
    "ipvs": "kplab.proxy.ipvs:IpvsProxier",
    "userspace": "kplab.proxy.userspace:UserspaceProxier",
}


@dataclass
class NodeContext:
    """Where a mode acts: one node of one lab."""

    lab: str
    node: str  # "node-1"
    netns: str  # "kplab-<lab>-node-1"
    state_dir: Path  # private to this node and mode; survives between CLI calls
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {"scheduler": "rr"}


@dataclass
class SyncResult:
    full: bool  # a full sync (everything rewritten) or a partial one
    changed_services: int  # service ports whose per-service objects were rewritten
    seconds: float  # wall time of the sync, kernel load included
    size: int = 0  # lines (or objects) sent to the kernel


@dataclass
class Availability:
    mode: str
    available: bool
    detail: str  # what was found, e.g. "iptables v1.8.9 (nf_tables)"
    fix: str = ""  # exactly what to do when not available
    note: str = ""  # e.g. "deprecated upstream in 1.35"


class Proxier(abc.ABC):
    mode: ClassVar[str]
    status_note: ClassVar[str] = ""  # "historical: removed upstream in 1.26", "deprecated in 1.35"

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    @classmethod
    @abc.abstractmethod
    def render(cls, state: ProxyState, **options: Any) -> str: ...

    @abc.abstractmethod
    def sync(self, state: ProxyState) -> SyncResult: ...

    @abc.abstractmethod
    def cleanup(self) -> None: ...

    @abc.abstractmethod
    def rules(self) -> dict[str, Any]: ...

    @classmethod
    @abc.abstractmethod
    def doctor(cls) -> Availability: ...


def proxier_class(mode: str) -> type[Proxier]:
    """The class implementing `mode`; a KplabError naming the choices otherwise."""
    if mode not in MODES:
        raise KplabError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    module_name, _, cls_name = MODES[mode].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise KplabError(f"mode {mode!r} is not available yet in this kplab version") from None
    return getattr(module, cls_name)  # type: ignore[no-any-return]


def available_modes() -> list[str]:
    out = []
    for mode in MODES:
        try:
            proxier_class(mode)
        except KplabError:
            continue
        out.append(mode)
    return out
