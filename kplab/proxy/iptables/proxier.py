"""The iptables mode: upstream kube-proxy's iptables proxier, programming a lab node's netns.

    observe()       the memory store, and on a full sync the tables (iptables-save) and node facts
    render()        pure: the iptables-restore input of this sync (rules.build), jumps merged in
    apply()         one `iptables-restore -w 5 --noflush --counters` in the node's netns
    cleanup()       removes every KUBE-* chain and jump, the nfacct counters and sysctls it set
    read_back()     `iptables-save -c` read back, hashed chains annotated with their service

Syncs follow upstream's syncProxyRules: a full sync (first sync, after a failed restore, when
the KUBE-PROXY-CANARY chain vanished, or an hour after the last full one) ensures the jump
rules from the built-in chains and rewrites everything; otherwise a partial sync (KEP-3453)
rewrites only the chains of Services whose spec or endpoints changed.  Where upstream runs
`iptables -C`/`-I` once per missing jump (EnsureRule(Prepend)), a full sync here reads the
tables once with iptables-save and adds the missing jumps and canary chains to the same
restore as `-I CHAIN 1` lines, in upstream's order: the same rules in the same places, one
process instead of ~30.  What a partial sync needs from the previous one (digests per Service,
the nat chains it left, annotations) is in the memory store (kplab.proxy.tracker), since every
CLI call or notebook cell is a new process.

The backend is the one the node's `iptables` is (kplab.proxy.xtables); `ctx.options["iptables_backend"]`
("nft"/"legacy") overrides it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from kplab.cluster.run import NETNS_DIR, run
from kplab.errors import CommandError, EnvironmentProblem
from kplab.formats.iptables_save import Dump
from kplab.proxy import drift
from kplab.proxy import xtables as jumps
from kplab.proxy.base import Availability, Memory, Plan, Proxier, RulesView, SyncResult
from kplab.proxy.core import ProxyState
from kplab.proxy.iptables.rules import (
    NFACCT_INVALID,
    NFACCT_LOCALHOST_NP,
    SERVICE_CHAIN_PREFIXES,
    RenderOptions,
    build,
)
from kplab.proxy.tracker import MemoryStore, changed_services, service_digests
from kplab.proxy.xtables import TOOLS, Xtables, detect_backend

__all__ = ["TOOLS", "IptablesProxier", "detect_backend"]
ROUTE_LOCALNET = "net.ipv4.conf.all.route_localnet"
TCP_LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"


class IptablesProxier(Proxier):
    mode = "iptables"

    # ------------------------------------------------------------------ pure
    @classmethod
    def preview(cls, state: ProxyState, **options: Any) -> str:
        """Options (RenderOptions): random_fully, nfacct, conntrack_liberal, local_addresses."""
        return build(state, RenderOptions(**options)).text

    def render(self, state: ProxyState, memory: Memory) -> Plan:
        data, facts, full = memory.data, memory.facts, memory.full
        digests = service_digests(state)
        addresses = facts["addresses"] if full else data.get("addresses")
        localhost = state.localhost_nodeports and _contains_loopback(state.nodeport_addresses)
        options = RenderOptions(
            random_fully=True,
            nfacct=bool(facts["nfacct"] if full else data.get("nfacct")),
            conntrack_liberal=bool(facts["liberal"] if full else data.get("liberal")),
            local_addresses=tuple(addresses) if addresses and state.nodeport_addresses else None,
            changed=None if full else changed_services(data.get("digests", {}), digests),
            existing_chains=set(facts["existing"]) if full else set(data.get("annotations", {})),
            previous=None if full else data.get("annotations"),
        )
        ruleset = build(state, options)
        text = ruleset.text
        if full:
            declared = {"filter": {"KUBE-FIREWALL"} if "-A KUBE-FIREWALL " in text else set()}
            text = jumps.merge(text, jumps.ensure_lines(facts["dump"], declared))
        keep = {k: v for k, v in data.items() if k not in ("digests", "annotations", "last_size")}
        set_localnet = False
        if full:
            keep.update({k: facts[k] for k in ("liberal", "nfacct")}, last_full=facts["now"],
                        addresses=addresses if state.nodeport_addresses else None,
                        nfacct_created=facts["nfacct_created"])  # fmt: skip
            if localhost:
                keep.setdefault("route_localnet_before", facts["route_localnet"])
                set_localnet = facts["route_localnet"] != "1"
        keep.update(digests=digests, annotations=ruleset.annotations, last_size=text.count("\n"))
        return Plan(self.mode, full, text, ruleset.rewritten, keep,
                    payload={**facts, "set_route_localnet": set_localnet,
                             "rule_counts": ruleset.rule_counts})  # fmt: skip

    # ------------------------------------------------------------------ kernel
    @property
    def store(self) -> MemoryStore:
        return MemoryStore(self.ctx.state_dir)

    def _xt(self, data: dict[str, Any]) -> Xtables:
        xt = Xtables(self.ctx.netns, data.get("backend"), override=self.ctx.options.get("iptables_backend"))
        data["backend"] = xt.backend
        return xt

    def _run(self, argv: list[str], **kw: Any) -> Any:
        return run(argv, netns=self.ctx.netns, **kw)

    def observe(self, state: ProxyState, full: bool = False) -> Memory:
        store = self.store
        data = store.load()
        xt = self._xt(data)
        full = (
            full
            or "annotations" not in data
            or store.needs_full(data)
            or not self._canary_present(xt)
        )
        facts: dict[str, Any] = {"backend": xt.backend, "now": time.time()}
        if full:
            facts["dump"] = current = xt.dump()
            facts["existing"] = sorted(c for c in current.chains("nat") if c.startswith(SERVICE_CHAIN_PREFIXES))
            self._node_facts(facts, data)
        return Memory(data, facts, full)

    def _node_facts(self, facts: dict[str, Any], data: dict[str, Any]) -> None:
        """What upstream's NewProxier reads on the node, on each full sync."""
        facts["route_localnet"] = self._run(["sysctl", "-n", ROUTE_LOCALNET]).stdout.strip()
        liberal = self._run(["sysctl", "-n", TCP_LIBERAL], check=False)
        # no INVALID drop rule when the node is liberal (as upstream), or with the lab's option
        # drop_invalid: false (kube-proxy before 1.15, kubernetes#74839: 08's case 8)
        old_proxy = str(self.ctx.options.get("drop_invalid", True)).lower() in ("false", "0", "no")
        facts["liberal"] = old_proxy or (liberal.ok and liberal.stdout.strip() not in ("", "0"))
        listed = self._run(["nfacct", "list"], check=False) if _has("nfacct") else None
        facts["nfacct"] = listed is not None and listed.ok
        facts["nfacct_missing"] = [n for n in (NFACCT_INVALID, NFACCT_LOCALHOST_NP)
                                   if facts["nfacct"] and f"= {n};" not in listed.stdout]  # fmt: skip
        facts["nfacct_created"] = sorted(set(data.get("nfacct_created", [])) | set(facts["nfacct_missing"]))
        facts["addresses"] = self._addresses()

    def _addresses(self) -> list[str]:
        out = self._run(["ip", "-4", "-o", "addr", "show"]).stdout
        return re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)

    def _canary_present(self, xt: Xtables) -> bool:
        return bool(xt.run(["-w", "5", "-t", "mangle", "-S", jumps.CANARY], check=False).ok)

    def apply(self, plan: Plan) -> SyncResult:
        """Node settings upstream's NewProxier makes (full syncs), then one iptables-restore."""
        facts = plan.payload
        store = self.store
        if plan.full:
            if facts.get("set_route_localnet"):
                self._run(["sysctl", "-q", "-w", f"{ROUTE_LOCALNET}=1"])
            for name in facts.get("nfacct_missing", []):
                self._run(["nfacct", "add", name], check=False)  # EBUSY: another sync just made it
        if self.ctx.options.get("keep_input"):  # the exact kernel input, for bench/ and curious readers
            (Path(self.ctx.state_dir) / "last-input.txt").parent.mkdir(parents=True, exist_ok=True)
            (Path(self.ctx.state_dir) / "last-input.txt").write_text(plan.text)
        with store.pending():
            xt = Xtables(self.ctx.netns, facts["backend"])
            xt.note_tables(self.ctx.state_dir)
            xt.restore(plan.text, counters=True)
            store.save({**plan.memory, "backend": facts["backend"]})
        return SyncResult(full=plan.full, changed_services=plan.changed, seconds=0.0, size=plan.size,
                          iptables_rules=facts["rule_counts"])

    def cleanup(self) -> None:
        store = self.store
        data = store.load()
        if not Path(f"{NETNS_DIR}/{self.ctx.netns}").exists():
            store.forget()
            return
        xt = self._xt(data)
        xt.cleanup()
        xt.drop_created_tables(self.ctx.state_dir)
        for name in data.get("nfacct_created", []):
            self._run(["nfacct", "delete", name], check=False)
        before = data.get("route_localnet_before")
        if before not in (None, "1"):
            self._run(["sysctl", "-q", "-w", f"{ROUTE_LOCALNET}={before}"], check=False)
        store.forget()

    def read_back(self) -> RulesView:
        from kplab.proxy.iptables.view import rules_view

        data = self.store.load()
        dump = self._xt(data).dump(counters=True)
        view = rules_view(dump, data.get("annotations", {}), backend=data["backend"], node=self.ctx.node)
        notes = {c: " ".join(v for v in note if v) for c, note in data.get("annotations", {}).items()}
        return RulesView(self.mode, self.ctx.node, view.pop("text"), view, notes)

    def expected_lines(self, state: ProxyState) -> list[str]:
        memory = self.observe(state, full=True)
        memory.facts.update(dump=Dump(), existing=[])  # as from an empty kernel: every jump, no stale chain
        text = self.render(state, memory).text
        with drift.scratch(self.ctx.netns) as ns:
            for name in (NFACCT_INVALID, NFACCT_LOCALHOST_NP):
                if f"--nfacct-name {name}" in text:
                    run(["nfacct", "add", name], netns=ns)
            xt = Xtables(ns, memory.facts["backend"])
            xt.restore(text)
            return drift.xtables_lines(xt.save(), jumps.kube_owned)

    def held_lines(self) -> list[str]:
        return drift.xtables_lines(self._xt(self.store.load()).save(), jumps.kube_owned)

    @classmethod
    def doctor(cls) -> Availability:
        missing = [t for t in ("iptables", "iptables-save", "iptables-restore") if not _has(t)]
        if missing:
            return Availability(
                "iptables", False, f"missing: {', '.join(missing)}", fix="apt-get install iptables"
            )
        try:
            version = run(["iptables", "--version"]).stdout.strip()
        except (EnvironmentProblem, CommandError) as e:
            return Availability("iptables", False, str(e), fix="apt-get install iptables")
        backend = detect_backend()
        if not all(_has(t) for t in TOOLS[backend]):
            return Availability("iptables", False, f"{version}: {TOOLS[backend][2]} missing",
                                fix="apt-get install iptables")  # fmt: skip
        extra = "" if _has("nfacct") else "; nfacct missing (metrics rules left out, as upstream does)"
        return Availability("iptables", True, f"{version}, using {TOOLS[backend][2]}{extra}",
                            note="upstream's default mode on Linux")  # fmt: skip


def _has(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None


def _contains_loopback(cidrs: tuple[str, ...]) -> bool:
    from kplab.proxy.iptables.rules import nodeport_addresses

    return nodeport_addresses(cidrs).contains_loopback
