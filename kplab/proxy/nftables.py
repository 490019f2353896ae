"""kube-proxy's nftables mode for one node: the rules upstream's GA proxier programs.

Upstream is kubernetes/kubernetes `pkg/proxy/nftables/proxier.go` (the v1.33 layout, GA);
everything lives in one table, `ip kube-proxy`, whose deletion is the whole cleanup:

    prerouting   filter-prerouting  (dstnat-10) ct new -> firewall-check -> @firewall-ips -> firewall-<svc>
                 nat-prerouting     (dstnat)    -> services -> @service-ips        -> service-/external-<svc>
                                                            -> @service-nodeports  -> external-<svc>
    input        filter-input       (dstnat-10) ct new -> nodeport-endpoints-check, service-endpoints-check
    forward      filter-forward     (dstnat-10) ct new -> service-endpoints-check, cluster-ips-check
    output       filter-output      (dstnat-10) ct new -> service-endpoints-check, firewall-check
                 nat-output         (dstnat)    -> services
                 filter-output-post-dnat (dstnat+10) ct new -> cluster-ips-check
    postrouting  nat-postrouting    (srcnat)    -> masquerading (what mark-for-masquerade marked)

    service-<svc>  : masquerade off-cluster sources, `numgen random mod N vmap` -> endpoint-<ep>
    endpoint-<ep>  : hairpin masquerade, `dnat to ip:port` (and `update @affinity-<ep>`)

Per-service names are `<prefix><hash_and_truncate("ns/name/proto/port")>` (kplab.proxy.naming).
The rule text is written by kplab.proxy.nftables_rules; the read-back view for `kplab rules`
is kplab.proxy.nftables_view.

`plan()` is pure: from a ProxyState and what the previous sync left (`Memory`) it writes the
one `nft -f` transaction of this sync, full or partial like upstream (only changed services'
chains rewritten, map elements diffed, stale chains flushed now and deleted > 1 s later).
`NftablesProxier.sync()` loads it in the node's netns and keeps the Memory in `ctx.state_dir`.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kplab.cluster.run import run
from kplab.errors import ProxierError
from kplab.proxy.base import Availability, Proxier, SyncResult
from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName
from kplab.proxy.nftables_rules import (
    FAMILY,
    TABLE,
    Config,
    ServiceEntry,
    Transaction,
    service_digest,
    write_service,
    write_skeleton,
)

MEMORY_FILE = "nftables.pickle"
MEMORY_VERSION = 1
STALE_SECONDS = 1.0  # upstream deletes flushed chains only in a sync more than 1 s later


# ---------------------------------------------------------------------------------------------
# A whole sync: plan() is pure, NftablesProxier.sync() runs it.
# ---------------------------------------------------------------------------------------------


@dataclass
class Memory:
    """What a sync leaves for the next one (upstream keeps it in the Proxier struct)."""

    config: str = ""
    services: dict[str, ServiceEntry] = field(default_factory=dict)
    stale: dict[str, float] = field(default_factory=dict)  # flushed chain -> when it became stale
    version: int = MEMORY_VERSION


@dataclass
class Existing:
    """Service chains and affinity sets found in the kernel when there is no Memory."""

    chains: set[str] = field(default_factory=set)
    affinity_sets: set[str] = field(default_factory=set)


@dataclass
class Plan:
    tx: Transaction
    memory: Memory
    full: bool
    changed: int  # service ports whose chains were rewritten


def _key(svc: ServicePort) -> str:
    return f"{svc.name}/{svc.protocol}"


def plan(
    state: ProxyState,
    memory: Memory | None,
    *,
    now: float,
    counters: bool = False,
    existing: Existing | None = None,
) -> Plan:
    """The transaction of one sync. Full when there is no usable memory (first sync, config change)."""
    cfg = Config.of(state, counters)
    tx = Transaction(counters)
    full = memory is None or memory.config != cfg.digest()
    old = Memory() if memory is None else memory
    services = list(state.services.values())
    digests = {}
    changed_ns: set[str] = set()
    for svc in services:
        k = _key(svc)
        d = service_digest(svc, state.endpoints.get(svc.name, []))
        digests[k] = d
        prev = old.services.get(k)
        if prev is None or prev.digest != d:
            changed_ns.add(svc.name.namespaced_name)
    current = set(digests)
    changed_ns.update(e.namespaced for k, e in old.services.items() if k not in current)

    if full:
        services.sort(key=lambda s: (s.name.namespace, s.name.name, s.name.port, s.protocol))
        write_skeleton(tx, cfg, recreate_base=memory is None)
    active: set[str] = set()
    entries: dict[str, ServiceEntry] = {}
    changed = 0
    for svc in services:
        k = _key(svc)
        prev = old.services.get(k)
        if not full and prev is not None and svc.name.namespaced_name not in changed_ns:
            entries[k] = prev
            active.update(prev.chains)
            continue
        entry = write_service(tx, svc, state.endpoints.get(svc.name, []), cfg, True, active)
        if entry is not None:
            entry.digest = digests[k]
            entries[k] = entry
            changed += 1

    # Elements: full syncs add all of them to the flushed maps, partial ones diff (upstream's
    # nftElementStorage ensureElem / cleanupLeftoverKeys).
    want = _elements(entries.values())
    have = {} if full else _elements(old.services.values())
    adds, deletes = [], []
    for (container, key), (value, comment) in want.items():
        before = have.get((container, key))
        if before is None or before[0] != value:
            if before is not None:
                deletes.append((container, key))
            adds.append((container, key, value, comment))
    deletes += [ck for ck in have if ck not in want]

    # Stale chains: flushed now, deleted in a sync more than STALE_SECONDS later.
    ex = existing or Existing()
    known = set(ex.chains) | set(old.stale)
    for e in old.services.values():
        known.update(e.chains)
    stale = {c: t for c, t in old.stale.items() if c not in active}
    delete_now = sorted(c for c, t in stale.items() if now - t > STALE_SECONDS)
    for c in sorted(known - active - set(stale)):
        tx.flush("chain", c)
        stale[c] = now
    for c in delete_now:
        del stale[c]
    sets_before = set(ex.affinity_sets)
    for e in old.services.values():
        sets_before.update(e.affinity_sets)
    sets_now = {s for e in entries.values() for s in e.affinity_sets}
    for s in sorted(sets_before - sets_now):
        tx.delete("set", s)
    for container, key in deletes:
        tx.element("delete", container, key)
    for container, key, value, comment in adds:
        tx.element("add", container, key, value, comment or None)
    if delete_now:  # last, so a failure here is told apart (see sync)
        tx.note(f"stale chains flushed more than {STALE_SECONDS:.0f} s ago")
        for c in delete_now:
            tx.delete("chain", c)
    return Plan(tx, Memory(cfg.digest(), entries, stale), full, changed)


def _elements(entries: Iterable[ServiceEntry]) -> dict[tuple[str, str], tuple[str, str]]:
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for e in entries:
        for container, key, value, comment in e.elements:
            out[(container, key)] = (value, comment)
    return out


def _existing(netns: str) -> Existing:
    """Service chains and affinity sets of a table left by an earlier run we have no memory of."""
    res = run(["nft", "-j", "-t", "list", "table", FAMILY, TABLE], netns=netns, check=False)
    out = Existing()
    if not res.ok:
        return out
    for obj in json.loads(res.stdout).get("nftables", []):
        if "chain" in obj and "/" in obj["chain"]["name"]:
            out.chains.add(obj["chain"]["name"])
        elif "set" in obj and obj["set"]["name"].startswith("affinity-"):
            out.affinity_sets.add(obj["set"]["name"])
    return out


def _probe_state() -> ProxyState:
    """One service using every statement kube-proxy writes (numgen, dnat, affinity, fib...)."""
    name = ServicePortName("kplab", "probe", "http")
    svc = ServicePort(
        name,
        "10.96.0.10",
        80,
        node_port=30080,
        load_balancer_ips=("172.18.255.1",),
        load_balancer_source_ranges=("172.18.0.0/24",),
        session_affinity_seconds=10,
        external_policy_local=True,
        service_type="LoadBalancer",
    )
    eps = [Endpoint("10.244.1.2", 8080, "node-1", is_local=True), Endpoint("10.244.2.2", 8080, "node-2")]
    return ProxyState(services={name: svc}, endpoints={name: eps})


class NftablesProxier(Proxier):
    mode = "nftables"
    status_note = "GA in Kubernetes 1.33; the layout here is v1.33's"

    @classmethod
    def render(cls, state: ProxyState, **options: Any) -> str:
        """The transaction a freshly started kube-proxy sends for `state` (counters=True: as the lab loads it)."""
        return plan(state, None, now=0.0, counters=bool(options.get("counters", False))).tx.text()

    @property
    def _memory_path(self) -> Path:
        return Path(self.ctx.state_dir) / MEMORY_FILE

    def _load(self) -> Memory | None:
        try:
            mem = pickle.loads(self._memory_path.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, TypeError):
            return None
        return mem if isinstance(mem, Memory) and mem.version == MEMORY_VERSION else None

    def _save(self, mem: Memory | None) -> None:
        path = self._memory_path
        if mem is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(mem, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, path)

    def _load_tx(self, text: str) -> None:
        run(["nft", "-f", "-"], netns=self.ctx.netns, input=text, timeout=600)

    def sync(self, state: ProxyState) -> SyncResult:
        """One `nft -f` transaction; if it fails, one full sync from what the kernel holds."""
        start = time.monotonic()
        counters = bool(self.ctx.options.get("counters", True))
        memory = self._load()
        p = plan(
            state,
            memory,
            now=time.time(),
            counters=counters,
            existing=_existing(self.ctx.netns) if memory is None else None,
        )
        try:
            self._load_tx(p.tx.text())
        except ProxierError:
            if memory is None:
                raise
            self._save(None)  # like upstream's needFullSync after a failed sync
            p = plan(state, None, now=time.time(), counters=counters, existing=_existing(self.ctx.netns))
            self._load_tx(p.tx.text())
        self._save(p.memory)
        return SyncResult(
            full=p.full, changed_services=p.changed, seconds=time.monotonic() - start, size=p.tx.ops
        )

    def cleanup(self) -> None:
        """The whole cleanup is deleting the table (upstream's CleanupLeftovers)."""
        res = run(["nft", "delete", "table", FAMILY, TABLE], netns=self.ctx.netns, check=False)
        if not res.ok and "No such file" not in res.stderr:
            raise ProxierError(
                f"nft delete table {FAMILY} {TABLE} in {self.ctx.netns} failed: {res.stderr.strip()}",
                res.stderr.splitlines(),
            )
        self._save(None)

    def rules(self) -> dict[str, Any]:
        from kplab.proxy.nftables_view import read_back

        return read_back(self.ctx.netns, self._load())

    @classmethod
    def doctor(cls) -> Availability:
        nft = shutil.which("nft")
        if nft is None:
            return Availability(
                cls.mode, False, "nft not found", fix="apt-get install nftables (or `make setup`)"
            )
        version = subprocess.run(
            [nft, "--version"], check=False, capture_output=True, text=True
        ).stdout.strip()
        if os.geteuid() != 0:
            return Availability(cls.mode, False, version, fix="run as root: the lab needs network namespaces")
        probe = plan(_probe_state(), None, now=0.0, counters=True).tx.text()
        cp = subprocess.run(
            ["unshare", "--net", "--", nft, "-f", "-"],
            check=False,
            input=probe,
            capture_output=True,
            text=True,
        )
        if cp.returncode != 0:
            return Availability(
                cls.mode, False, version, fix=f"nft cannot load kube-proxy's table: {cp.stderr.strip()}"
            )
        return Availability(
            cls.mode, True, f"{version}, kube-proxy table loads in a scratch netns", note=cls.status_note
        )
