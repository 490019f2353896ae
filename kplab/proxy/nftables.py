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

import gc
import json
import marshal
import os
import shutil
import sqlite3
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

MEMORY_FILE = "nftables.sqlite"
MEMORY_VERSION = 3
STALE_SECONDS = 1.0  # upstream deletes flushed chains only in a sync more than 1 s later
# Sent before a partial transaction: a no-op while the table is there, an error once someone
# deleted it, which turns the sync into a full one.
CANARY = f"# is the table still there?\nadd chain {FAMILY} {TABLE} services\n"


# ---------------------------------------------------------------------------------------------
# What one sync leaves for the next (upstream keeps it in its Proxier struct).
# ---------------------------------------------------------------------------------------------

Key = str  # "ns/name:port/PROTO" (port may be empty), one service port
ElementKey = str  # "<set or map>\t<element key>"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS services (key TEXT PRIMARY KEY, namespaced TEXT, digest BLOB, data BLOB);
CREATE TABLE IF NOT EXISTS elements (ck TEXT PRIMARY KEY, value TEXT, comment TEXT, refs INTEGER);
CREATE TABLE IF NOT EXISTS stale (chain TEXT PRIMARY KEY, since REAL);
"""


@dataclass
class Delta:
    """How a sync changes the Memory once its transaction has been loaded."""

    config: str
    full: bool
    entries: dict[Key, ServiceEntry] = field(default_factory=dict)
    removed: list[Key] = field(default_factory=list)
    elements: dict[ElementKey, tuple[str, str, int] | None] = field(default_factory=dict)
    stale: dict[str, float] = field(default_factory=dict)  # the whole stale list after this sync


class Memory:
    """An SQLite file in ctx.state_dir: per service port its digest and what it owns, the map
    elements with how many service ports want each, and the stale chains. A partial sync reads
    the digests and only the rows of what changed, so its cost follows the change, not the table."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.executescript("PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF;" + SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def config(self) -> str | None:
        return self._meta("config") if self._meta("version") == str(MEMORY_VERSION) else None

    def digests(self) -> dict[Key, bytes]:
        return dict(self.db.execute("SELECT key, digest FROM services"))

    def entries(self, keys: Iterable[Key] | None = None) -> dict[Key, ServiceEntry]:
        if keys is None:
            rows = list(self.db.execute("SELECT key, namespaced, digest, data FROM services"))
        else:
            rows = []
            wanted = list(keys)
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows += self.db.execute(
                    f"SELECT key, namespaced, digest, data FROM services WHERE key IN ({marks})", chunk
                ).fetchall()
        return {k: ServiceEntry(ns, d, *marshal.loads(blob)) for k, ns, d, blob in rows}

    def elements(self, cks: Iterable[ElementKey]) -> dict[ElementKey, tuple[str, str, int]]:
        out: dict[ElementKey, tuple[str, str, int]] = {}
        wanted = list(cks)
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for ck, v, c, r in self.db.execute(f"SELECT * FROM elements WHERE ck IN ({marks})", chunk):
                out[ck] = (v, c, r)
        return out

    def stale(self) -> dict[str, float]:
        return dict(self.db.execute("SELECT chain, since FROM stale"))

    def commit(self, delta: Delta) -> None:
        db = self.db
        db.execute("BEGIN")
        if delta.full:
            db.execute("DELETE FROM services")
            db.execute("DELETE FROM elements")
        db.executemany("DELETE FROM services WHERE key = ?", [(k,) for k in delta.removed])
        db.executemany(
            "INSERT OR REPLACE INTO services VALUES (?, ?, ?, ?)",
            [
                (k, e.namespaced, e.digest, marshal.dumps((e.chains, e.affinity_sets, e.elements, e.pods)))
                for k, e in delta.entries.items()
            ],
        )
        db.executemany(
            "DELETE FROM elements WHERE ck = ?", [(ck,) for ck, v in delta.elements.items() if v is None]
        )
        db.executemany(
            "INSERT OR REPLACE INTO elements VALUES (?, ?, ?, ?)",
            [(ck, *v) for ck, v in delta.elements.items() if v is not None],
        )
        db.execute("DELETE FROM stale")
        db.executemany("INSERT INTO stale VALUES (?, ?)", delta.stale.items())
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("version", str(MEMORY_VERSION)), ("config", delta.config)],
        )
        db.execute("COMMIT")


@dataclass
class Existing:
    """Service chains and affinity sets found in the kernel when there is no Memory."""

    chains: set[str] = field(default_factory=set)
    affinity_sets: set[str] = field(default_factory=set)


@dataclass
class Plan:
    tx: Transaction
    delta: Delta
    full: bool
    changed: int  # service ports whose chains were rewritten


# ---------------------------------------------------------------------------------------------
# One sync: plan() is pure (it only reads the Memory), NftablesProxier.sync() runs it.
# ---------------------------------------------------------------------------------------------


def plan(
    state: ProxyState,
    memory: Memory | None,
    *,
    now: float,
    counters: bool = False,
    existing: Existing | None = None,
) -> Plan:
    """The transaction of one sync: full without usable memory (first sync, config change),
    else partial: only the service ports whose Service changed are rewritten."""
    cfg = Config.of(state, counters)
    config = cfg.digest()
    full = memory is None or memory.config() != config
    keyed = [
        (f"{s.name.namespace}/{s.name.name}:{s.name.port}/{s.protocol}", s) for s in state.services.values()
    ]
    eps = state.endpoints
    digests = {k: service_digest(s, eps.get(s.name, [])) for k, s in keyed}
    old_digests = {} if memory is None else memory.digests()
    removed = [k for k in old_digests if k not in digests]
    if full:
        rewrite = sorted(
            keyed, key=lambda ks: (ks[1].name.namespace, ks[1].name.name, ks[1].name.port, ks[1].protocol)
        )
        old = {} if memory is None else memory.entries()
    else:
        old = memory.entries(removed) if memory is not None else {}
        changed_ns = {s.name.namespaced_name for k, s in keyed if old_digests.get(k) != digests[k]}
        changed_ns.update(e.namespaced for e in old.values())
        rewrite = [(k, s) for k, s in keyed if changed_ns and s.name.namespaced_name in changed_ns]
        old.update(memory.entries(k for k, _ in rewrite if k in old_digests) if memory is not None else {})
    tx = Transaction(counters)
    if full:
        write_skeleton(tx, cfg, recreate_base=memory is None)
    active: set[str] = set()
    new: dict[Key, ServiceEntry] = {}
    for k, svc in rewrite:
        entry = write_service(tx, svc, eps.get(svc.name, []), cfg, True, active)
        if entry is not None:
            entry.digest = digests[k]
            new[k] = entry
    delta = Delta(config, full, new, removed + [k for k, _ in rewrite if k not in new and k in old_digests])

    # Stale chains: flushed now, deleted in a sync more than STALE_SECONDS later.
    ex = existing or Existing()
    known = set(ex.chains)
    for e in old.values():
        known.update(e.chains)
    stale = {} if memory is None else memory.stale()
    stale = {c: t for c, t in stale.items() if c not in active}
    delete_now = sorted(c for c, t in stale.items() if now - t > STALE_SECONDS)
    for c in sorted(known - active - set(stale)):
        tx.flush("chain", c)
        stale[c] = now
    for c in delete_now:
        del stale[c]
    delta.stale = stale
    sets_before = set(ex.affinity_sets).union(*(e.affinity_sets for e in old.values()))
    for s in sorted(sets_before.difference(*(e.affinity_sets for e in new.values()))):
        tx.delete("set", s)
    _diff_elements(tx, delta, old, new, memory)
    if delete_now:
        tx.note(f"stale chains flushed more than {STALE_SECONDS:.0f} s ago")
        for c in delete_now:
            tx.delete("chain", c)
    return Plan(tx, delta, full, len(new))


def _diff_elements(
    tx: Transaction,
    delta: Delta,
    old: dict[Key, ServiceEntry],
    new: dict[Key, ServiceEntry],
    memory: Memory | None,
) -> None:
    """Full syncs add every element to the flushed maps; partial ones add, replace and delete
    only what changed (upstream's nftElementStorage), counting owners so a shared key stays."""
    before: dict[ElementKey, tuple[str, str, int]] = {}
    after: dict[ElementKey, list[Any]] = {}
    if not delta.full and memory is not None:
        touched = {f"{c}\t{k}" for e in (*old.values(), *new.values()) for c, k, _, _ in e.elements}
        before = memory.elements(touched)
        after = {ck: list(v) for ck, v in before.items()}
        for e in old.values():
            for c, k, _, _ in e.elements:
                after[f"{c}\t{k}"][2] -= 1
    for e in new.values():
        for c, k, value, comment in e.elements:
            row = after.setdefault(f"{c}\t{k}", [value, comment, 0])
            row[0], row[1], row[2] = value, comment, max(row[2], 0) + 1
    for ck, row in after.items():
        was = before.get(ck)
        if row[2] <= 0:
            delta.elements[ck] = None
            if was is not None:
                tx.element("delete", *ck.split("\t", 1))
            continue
        delta.elements[ck] = (row[0], row[1], row[2])
        if was is not None and was[0] == row[0]:
            continue
        container, key = ck.split("\t", 1)
        if was is not None:
            tx.element("delete", container, key)
        tx.element("add", container, key, row[0], row[1] or None)


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

    def _memory(self) -> Memory:
        path = self._memory_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return Memory(path)
        except sqlite3.DatabaseError:  # not ours, or damaged: start over with a full sync
            path.unlink(missing_ok=True)
            return Memory(path)

    def _forget(self) -> None:
        self._memory_path.unlink(missing_ok=True)

    def _load_tx(self, text: str) -> None:
        run(["nft", "-f", "-"], netns=self.ctx.netns, input=text, timeout=600)
        if self.ctx.options.get("keep_input"):  # bench/sync replays exactly what was loaded
            (Path(self.ctx.state_dir) / "last-input.txt").write_text(text)

    def sync(self, state: ProxyState) -> SyncResult:
        """One `nft -f` transaction; if it fails, one full sync from what the kernel holds."""
        start = time.monotonic()
        counters = bool(self.ctx.options.get("counters", True))
        memory = self._memory()
        gc_was_on = gc.isenabled()
        gc.disable()  # plans allocate many small objects next to a big long-lived state: no GC passes
        try:
            usable = memory if memory.config() is not None else None
            existing = _existing(self.ctx.netns) if usable is None else None
            p = plan(state, usable, now=time.time(), counters=counters, existing=existing)
            try:
                self._load_tx(p.tx.text() if p.full else CANARY + p.tx.text())
            except ProxierError:
                if usable is None:
                    raise
                # like upstream's needFullSync after a failed sync: start from what the kernel has
                p = plan(state, None, now=time.time(), counters=counters, existing=_existing(self.ctx.netns))
                self._load_tx(p.tx.text())
            memory.commit(p.delta)
        finally:
            memory.close()
            if gc_was_on:
                gc.enable()
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
        self._forget()

    def rules(self) -> dict[str, Any]:
        from kplab.proxy.nftables_view import read_back

        pods: dict[str, str] = {}
        if self._memory_path.exists():
            memory = self._memory()
            try:
                pods = {addr: pod for e in memory.entries().values() for addr, pod in e.pods}
            finally:
                memory.close()
        return read_back(self.ctx.netns, pods)

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
