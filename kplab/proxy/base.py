"""The one protocol every kube-proxy mode implements, the sync loop written once, and the registry.

Like upstream's `Provider` with `Sync()`, split so that a learner can look before it happens:

    observe(state, full)   -> Memory    what the last sync left (the memory store) and the kernel facts
                                        render needs (backend, chains already there); reads, never writes
    render(state, memory)  -> Plan      pure: the whole intended state (full) or the partial delta,
                                        with the exact text apply() sends
    apply(plan)            -> SyncResult  the only kernel writer; stores the new memory once it loaded
    read_back()            -> RulesView   the same shape for every mode: text, objects, annotations
    cleanup()                           removes exactly what the mode created in the node's namespace
    doctor()               -> Availability  whether this machine can run the mode, and how to fix it

`sync(state)` is observe, render, apply, with upstream's fallback in one place: a partial sync
the kernel refused is retried once as a full sync from what the kernel holds.  `preview(state)`
is what a freshly started kube-proxy would load (shown by `kplab render`, compared with upstream's
expected output in unit tests).  `diff(state)` is `kplab diff NODE`: the next sync's plan and any
drift between what a full sync would program and what the kernel holds (kplab.proxy.drift).

One instance per node per call: what a mode remembers between syncs lives in `ctx.state_dir`
(kplab.proxy.tracker.MemoryStore), because the CLI and a notebook are separate processes.
"""

from __future__ import annotations

import abc
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kplab.cluster.options import meant
from kplab.errors import CommandError, KplabError, ProxierError
from kplab.proxy.core import ProxyState
from kplab.proxy.drift import Diff, compare

MODES: dict[str, str] = {
    "iptables": "kplab.proxy.iptables:IptablesProxier",
    "nftables": "kplab.proxy.nftables:NftablesProxier",
    "ipvs": "kplab.proxy.ipvs:IpvsProxier",
    "userspace": "kplab.proxy.userspace:UserspaceProxier",
    "ebpf": "kplab.proxy.ebpf:EbpfProxier",  # a kube-proxy replacement (Cilium-style), not a kube-proxy mode
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
    # iptables mode: table -> (rules kube-proxy owns, rules written in this sync), for the
    # sync_proxy_rules_iptables_total / _last gauges
    iptables_rules: dict[str, tuple[int, int]] = field(default_factory=dict)
    # the stale-UDP conntrack cleanup at the end of the sync: (seconds, entries deleted); None: not run
    conntrack: tuple[float, int] | None = None
    note: str = ""  # what the user should know of how this sync was done (said as a warning)


@dataclass
class Availability:
    mode: str
    available: bool
    detail: str  # what was found, e.g. "iptables v1.8.9 (nf_tables)"
    fix: str = ""  # exactly what to do when not available
    note: str = ""  # e.g. "deprecated upstream in 1.35"


@dataclass
class Memory:
    """What render() may know besides the ProxyState: the last sync's memory and kernel facts.

    `data` is what the last successful apply() stored; `facts` what observe() read from the node
    (the backend, chains already there, the time); `full` whether this sync must be a full one."""

    data: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    full: bool = True


@dataclass
class Plan:
    """One sync, before it happens: full or partial, the text sent to the kernel, and the memory
    the store keeps once it loaded.  `payload` is the mode's own typed plan (for apply)."""

    mode: str
    full: bool
    text: str
    changed: int = 0  # service ports whose objects are (re)written
    memory: dict[str, Any] = field(default_factory=dict)
    payload: Any = None

    @property
    def size(self) -> int:
        return self.text.count("\n")


class RulesView(dict[str, Any]):
    """A node's proxy state read back, one shape for every mode (and plain JSON-able data).

    `text` for people; the mode's own structure beside it (chains, sets/maps, virtual servers,
    portals, with counters where the kernel keeps them); `annotations`: hashed name -> what it is.
    """

    def __init__(self, mode: str, node: str, text: str, objects: dict[str, Any] | None = None,
                 annotations: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__({**(objects or {}), "mode": mode, "node": node, "text": text,
                          "annotations": dict(annotations or {})})  # fmt: skip

    @property
    def mode(self) -> str:
        return str(self["mode"])

    @property
    def node(self) -> str:
        return str(self["node"])

    @property
    def text(self) -> str:
        return str(self["text"])

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self["annotations"])


class Proxier(abc.ABC):
    mode: ClassVar[str]
    status_note: ClassVar[str] = ""  # "historical: removed upstream in 1.26", "deprecated in 1.35"

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ the protocol
    @abc.abstractmethod
    def observe(self, state: ProxyState, full: bool = False) -> Memory:
        """The memory store and the kernel facts render() needs; `full` forces a full sync.
        (`state` only tells whether the memory was made for the same configuration.)"""

    @abc.abstractmethod
    def render(self, state: ProxyState, memory: Memory) -> Plan:
        """Pure: what this sync writes, from the state and what observe() found."""

    @abc.abstractmethod
    def apply(self, plan: Plan) -> SyncResult:
        """The only kernel writer: load the plan, then store its memory."""

    @abc.abstractmethod
    def read_back(self) -> RulesView: ...

    @abc.abstractmethod
    def cleanup(self) -> None: ...

    @classmethod
    @abc.abstractmethod
    def doctor(cls) -> Availability: ...

    @classmethod
    @abc.abstractmethod
    def preview(cls, state: ProxyState, **options: Any) -> str:
        """Pure: the text a freshly started kube-proxy would load for `state`."""

    # ------------------------------------------------------------------ written once for every mode
    def sync(self, state: ProxyState, full: bool = False) -> SyncResult:
        """observe, render, apply; a partial sync the kernel refused is retried once as a full one."""
        start = time.monotonic()
        plan = self.render(state, self.observe(state, full))
        try:
            result = self._applied(plan)
        except ProxierError:
            if plan.full:
                raise
            plan = self.render(state, self.observe(state, full=True))  # upstream: needFullSync after a failure
            result = self._applied(plan)
        result.seconds = time.monotonic() - start
        return result

    def _applied(self, plan: Plan) -> SyncResult:
        """apply(plan); a loader it ran that failed (iptables-restore, nft -f) is this mode's failure."""
        try:
            return self.apply(plan)
        except CommandError as e:
            raise ProxierError(str(e), e.lines) from e

    def plan(self, state: ProxyState) -> Plan:
        """What the next sync would write, without writing it."""
        return self.render(state, self.observe(state))

    def rules(self) -> RulesView:
        """The mode's state read back (`kplab rules NODE`)."""
        return self.read_back()

    def diff(self, state: ProxyState) -> Diff:
        """The next sync's plan, and the drift between what a full sync programs and the kernel."""
        missing, extra = compare(self.expected_lines(state), self.held_lines())
        return Diff(self.ctx.node, self.mode, self.plan(state), missing, extra)

    @abc.abstractmethod
    def expected_lines(self, state: ProxyState) -> list[str]:
        """What a full sync from an empty kernel leaves, read back in the kernel's words (drift.scratch)."""

    @abc.abstractmethod
    def held_lines(self) -> list[str]:
        """The same kind of lines, read back from the node's kernel."""


def proxier_class(mode: str) -> type[Proxier]:
    """The class implementing `mode`; a KplabError naming the choices otherwise."""
    if mode not in MODES:
        raise KplabError(f"unknown mode {mode!r}{meant(mode, MODES)}: choose one of {', '.join(MODES)}")
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
