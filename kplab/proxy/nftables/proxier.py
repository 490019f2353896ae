"""kube-proxy's nftables mode for one node: the rules upstream's GA proxier programs.

Upstream is kubernetes/kubernetes `pkg/proxy/nftables/proxier.go` as of 1.34+ (layout of
kubernetes#132456, ClusterIP masquerade of #131492; expectations of proxier_test.go at
81810de6); the option `nftables_version: "1.33"` writes the 1.33.0-1.33.5 layout instead.
Everything lives in one table, `ip kube-proxy`, whose deletion is the whole cleanup:

    prerouting   filter-prerouting-pre-dnat (dstnat-10) ct new -> firewall-check -> @firewall-ips
                 nat-prerouting     (dstnat)    -> services -> @service-ips        -> service-/external-<svc>
                                                            -> @service-nodeports  -> external-<svc>
    input        filter-input       (filter, after DNAT) ct new -> nodeport-endpoints-check, service-endpoints-check
    forward      filter-forward     (filter) ct new -> service-endpoints-check, cluster-ips-check
    output       filter-output-pre-dnat (dstnat-10) ct new -> firewall-check
                 nat-output         (dstnat)    -> services
                 filter-output      (filter) ct new -> service-endpoints-check, cluster-ips-check
    postrouting  nat-postrouting    (srcnat)    -> masquerading (what mark-for-masquerade marked)

    service-<svc>  : masquerade off-cluster sources, `numgen random mod N vmap` -> endpoint-<ep>
    endpoint-<ep>  : hairpin masquerade, `dnat to ip:port` (and `update @affinity-<ep>`)

(1.33 ran filter-input/forward/output at dstnat-10, before DNAT, and cluster-ips-check in
filter-output-post-dnat: host traffic that nat-output short-circuits to a cluster endpoint
was dropped first.)

Per-service names are `<prefix><hash_and_truncate("ns/name/proto/port")>` (kplab.formats.naming).
The rule text is written by kplab.proxy.nftables.rules; the read-back view for `kplab rules`
is kplab.proxy.nftables.view.

`plan()` is pure: from a ProxyState and what the previous sync left (`Memory`) it writes the
one `nft -f` transaction of this sync, full or partial like upstream (only changed services'
chains rewritten, map elements diffed, stale chains flushed now and deleted > 1 s later).
`NftablesProxier` wraps it in the protocol (kplab.proxy.base): observe() opens the Memory (an
SQLite file in `ctx.state_dir`: a partial sync reads only the rows of what changed), render() is
plan(), apply() loads the transaction in the node's netns and commits the Memory.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kplab.cluster.run import run
from kplab.errors import ProxierError
from kplab.proxy import drift
from kplab.proxy.base import Availability, Proxier, RulesView, SyncResult
from kplab.proxy.base import Memory as ProxyMemory
from kplab.proxy.base import Plan as ProxyPlan
from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName
from kplab.proxy.nftables.load import load
from kplab.proxy.nftables.memory import MEMORY_FILE, Delta, ElementKey, Key, Memory
from kplab.proxy.nftables.rules import (
    BASE_CHAINS_BY_LAYOUT,
    CONTAINERS,
    DEFAULT_LAYOUT,
    FAMILY,
    TABLE,
    Config,
    Transaction,
    write_skeleton,
)
from kplab.proxy.nftables.services import ServiceEntry, service_digest, write_service
from kplab.proxy.tracker import FULL_SYNC_PERIOD

STALE_SECONDS = 1.0  # upstream deletes flushed chains only in a sync more than 1 s later
# Sent before a partial transaction: a no-op while the table is there, an error once someone
# deleted it, which turns the sync into a full one.
CANARY = f"# is the table still there?\nadd chain {FAMILY} {TABLE} services\n"


@dataclass
class Existing:
    """What a full sync finds in the kernel: service chains and affinity sets (flushed or
    deleted when not wanted), base chains (another layout's are deleted), the map and set
    elements (diffed, not re-added) and per endpoint chain its (rule count, counters), so that
    a restarted proxier keeps what is already right, as upstream's TestSyncProxyRulesStartup."""

    chains: set[str] = field(default_factory=set)
    affinity_sets: set[str] = field(default_factory=set)
    base_chains: set[str] = field(default_factory=set)
    elements: dict[ElementKey, tuple[str, str]] = field(default_factory=dict)  # (value, comment)
    endpoints: dict[str, tuple[int, bool]] = field(default_factory=dict)


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
    layout: str = DEFAULT_LAYOUT,
) -> Plan:
    """The transaction of one sync: full without usable memory (first sync, config change),
    else partial: only the service ports whose Service changed are rewritten.  A full sync
    starts from `existing` (what the kernel holds; None: an empty kernel)."""
    cfg = Config.of(state, counters, layout)
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
    ex = existing or Existing()
    if full:
        ours = {c[0] for c in BASE_CHAINS_BY_LAYOUT[cfg.layout]}
        write_skeleton(tx, cfg, recreate_base=True, foreign_base=ex.base_chains - ours)
    active: set[str] = set()
    new: dict[Key, ServiceEntry] = {}
    found = ex.endpoints if full else None
    for k, svc in rewrite:
        entry = write_service(tx, svc, eps.get(svc.name, []), cfg, True, active, found)
        if entry is not None:
            entry.digest = digests[k]
            new[k] = entry
    delta = Delta(config, full, new, removed + [k for k, _ in rewrite if k not in new and k in old_digests])

    # Stale chains: flushed now, deleted in a sync more than STALE_SECONDS later.
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
    in_kernel = ex.elements
    if full and existing is None and memory is not None:  # a config change: the Memory knows
        in_kernel = memory.all_elements()
    _diff_elements(tx, delta, old, new, memory, in_kernel)
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
    in_kernel: dict[ElementKey, tuple[str, str]],
) -> None:
    """Full syncs diff against the elements in the kernel (`in_kernel`); partial ones against
    the Memory: add, replace and delete only what changed (upstream's nftElementStorage),
    counting owners so a shared key stays."""
    before: dict[ElementKey, tuple[str, str, int]] = {}
    after: dict[ElementKey, list[Any]] = {}
    if delta.full:
        before = {ck: (v, c, 0) for ck, (v, c) in in_kernel.items()}
        after = {ck: [v, c, 0] for ck, (v, c) in in_kernel.items()}
    elif memory is not None:
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
    """What the kernel's table holds, read back once before a full sync (`nft -j`)."""
    res = run(["nft", "-j", "list", "table", FAMILY, TABLE], netns=netns, check=False)
    return existing_of(json.loads(res.stdout).get("nftables", []) if res.ok else [])


def existing_of(objects: list[dict[str, Any]]) -> Existing:
    """Existing from `nft -j list table` objects."""
    from kplab.proxy.nftables.view import _fmt

    out = Existing()
    for obj in objects:
        if "chain" in obj:
            c = obj["chain"]
            if "hook" in c:
                out.base_chains.add(c["name"])
            elif "/" in c["name"]:
                out.chains.add(c["name"])
                if c["name"].startswith("endpoint-"):
                    out.endpoints.setdefault(c["name"], (0, False))
        elif "rule" in obj and obj["rule"]["chain"].startswith("endpoint-"):
            r = obj["rule"]
            n, counters = out.endpoints.get(r["chain"], (0, False))
            out.endpoints[r["chain"]] = (n + 1, counters or any("counter" in x for x in r["expr"]))
        elif "set" in obj or "map" in obj:
            s = obj.get("set") or obj["map"]
            if s["name"].startswith("affinity-"):
                out.affinity_sets.add(s["name"])
            elif s["name"] in CONTAINERS:
                for e in s.get("elem", []):
                    key, value = e if isinstance(e, list) else (e, "")
                    comment = ""
                    if isinstance(key, dict) and "elem" in key:
                        key, comment = key["elem"]["val"], key["elem"].get("comment", "")
                    out.elements[f"{s['name']}\t{_fmt(key)}"] = (_fmt(value) if value else "", comment)
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
    status_note = "GA in Kubernetes 1.33; the layout here is 1.34+'s (option nftables_version: 1.33 for the old one)"

    @classmethod
    def preview(cls, state: ProxyState, **options: Any) -> str:
        """The transaction a freshly started kube-proxy sends for `state` (counters=True: as the lab loads it)."""
        layout = str(options.get("nftables_version") or DEFAULT_LAYOUT)
        return plan(state, None, now=0.0, counters=bool(options.get("counters", False)), layout=layout).tx.text()

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

    def observe(self, state: ProxyState, full: bool = False) -> ProxyMemory:
        """The SQLite memory when it matches this configuration and the last full sync is less than
        upstream's FullSyncPeriod (an hour) old; otherwise (a full sync) what the kernel's table
        holds, so that a restarted or reconfigured proxier keeps what is right and drift (an
        element deleted by hand) is repaired within the hour, as upstream does."""
        counters, layout = self._config()
        memory = self._memory()
        fresh = time.time() - memory.last_full() <= FULL_SYNC_PERIOD
        usable = memory if not full and fresh and memory.config() is not None else None
        full = usable is None or usable.config() != Config.of(state, counters, layout).digest()
        existing = _existing(self.ctx.netns) if full else None  # a full sync starts from the kernel's table
        facts = {"db": memory, "usable": usable, "existing": existing, "now": time.time()}
        return ProxyMemory(facts=facts, full=full)

    def _config(self) -> tuple[bool, str]:
        return bool(self.ctx.options.get("counters", True)), str(self.ctx.options.get("nftables_version") or DEFAULT_LAYOUT)

    def render(self, state: ProxyState, memory: ProxyMemory) -> ProxyPlan:
        f = memory.facts
        counters, layout = self._config()
        p = plan(state, f["usable"], now=f["now"], counters=counters, existing=f["existing"], layout=layout)
        text = p.tx.text() if p.full else CANARY + p.tx.text()
        return ProxyPlan(self.mode, p.full, text, p.changed, payload=(p, f["db"]))

    def apply(self, plan: ProxyPlan) -> SyncResult:
        """One `nft -f` transaction (partial ones start with a canary that fails once the table is gone);
        more only where the kernel refuses a netlink message that large (kplab.proxy.nftables.load)."""
        p, db = plan.payload
        try:
            transactions = load(self.ctx.netns, plan.text)
            if self.ctx.options.get("keep_input"):  # bench/sync replays exactly what was loaded
                (Path(self.ctx.state_dir) / "last-input.txt").write_text(plan.text)
            db.commit(p.delta)
        finally:
            db.close()
        note = "" if transactions == 1 else (
            f"the kernel refused one netlink message this large here (net.core.wmem_max, which a container's "
            f"root cannot raise), so the sync went in {transactions} transactions, not in one as upstream's does")
        return SyncResult(full=p.full, changed_services=p.changed, seconds=0.0, size=p.tx.ops, note=note)

    def sync(self, state: ProxyState, full: bool = False) -> SyncResult:
        gc_was_on = gc.isenabled()
        gc.disable()  # plans allocate many small objects next to a big long-lived state: no GC passes
        try:
            return super().sync(state, full)
        finally:
            if gc_was_on:
                gc.enable()

    def cleanup(self) -> None:
        """The whole cleanup is deleting the table (upstream's CleanupLeftovers)."""
        res = run(["nft", "delete", "table", FAMILY, TABLE], netns=self.ctx.netns, check=False)
        if not res.ok and "No such file" not in res.stderr:
            raise ProxierError(
                f"nft delete table {FAMILY} {TABLE} in {self.ctx.netns} failed: {res.stderr.strip()}",
                res.stderr.splitlines(),
            )
        self._forget()

    def read_back(self) -> RulesView:
        from kplab.proxy.nftables.view import read_back

        pods: dict[str, str] = {}
        if self._memory_path.exists():
            memory = self._memory()
            try:
                pods = {addr: pod for e in memory.entries().values() for addr, pod in e.pods}
            finally:
                memory.close()
        view = read_back(self.ctx.netns, pods)
        notes = {c["name"]: " ".join(str(c[k]) for k in ("service", "endpoint", "pod") if c.get(k))
                 for c in view["chains"] if c.get("service")}  # fmt: skip
        return RulesView(self.mode, self.ctx.node, view.pop("text"), view, notes)

    def expected_lines(self, state: ProxyState) -> list[str]:
        counters, layout = self._config()
        text = plan(state, None, now=0.0, counters=counters, layout=layout).tx.text()
        with drift.scratch(self.ctx.netns) as ns:
            load(ns, text)
            return drift.nft_lines(run(["nft", "list", "table", FAMILY, TABLE], netns=ns).stdout)

    def held_lines(self) -> list[str]:
        res = run(["nft", "list", "table", FAMILY, TABLE], netns=self.ctx.netns, check=False)
        return drift.nft_lines(res.stdout) if res.ok else []

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
