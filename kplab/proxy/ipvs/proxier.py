"""The IPVS mode: kernel IPVS virtual servers over netlink, as upstream's pkg/proxy/ipvs does.

Deprecated upstream in 1.35, still met in the field.  Each sync, in the node's namespace:

    sysctls        net.ipv4.vs.conntrack=1, expire_nodest_conn=1, expire_quiescent_template=1, ip_forward=1
    kube-ipvs0     a dummy device holding every service address as /32, so the node owns them and
                   IPVS takes the packets at LOCAL_IN          (pyroute2 IPRoute, diffed)
    ipsets         membership diffed against `ipset save`      (one `ipset restore` batch: pyroute2's
                   IPSet cannot open its socket in another namespace, and sends one message per member)
    iptables       a constant rule set over those ipsets       (one `iptables-restore --noflush`)
    IPVS           virtual servers and masquerading real servers (pyroute2 IPVS, generic netlink,
                   opened inside the node namespace: IPVS state is per namespace)

Real servers that go away drain as upstream's graceful termination does: a real server with
open connections gets weight 0 (no new connections) and is deleted by a later sync once its
ActiveConn+InActConn reach 0 (UDP ones go at once).  The list lives in `ctx.state_dir`
because every sync is a new process; `reap()` runs the check alone (upstream: every minute).
Partial syncs: after a full one, a sync trusts what the last recorded (local addresses, bound
addresses, virtual servers and a digest of each) and touches only the virtual servers that
changed; a kernel error on that path falls back to a full sync, which reads everything back.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kplab.cluster.netns import entered, write_sysctls
from kplab.cluster.run import NETNS_DIR, run
from kplab.errors import EnvironmentProblem, ProxierError
from kplab.formats.iptables_save import Dump
from kplab.proxy import drift
from kplab.proxy.base import Availability, Memory, Plan, Proxier, RulesView, SyncResult
from kplab.proxy.core import ProxyState
from kplab.proxy.ipvs import delta
from kplab.proxy.ipvs import rules as R
from kplab.proxy.ipvs.kernel import FIX, IpvsTable, doctor, kernel_has_ipvs, view
from kplab.proxy.tracker import MemoryStore
from kplab.proxy.xtables import Xtables

SYSCTLS = {
    "net.ipv4.vs.conntrack": "1",
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
    "net.ipv4.ip_forward": "1",
}
CONN_REUSE_KERNELS = ((4, 1), (5, 9))  # conn_reuse_mode=0 only in between (issue #93297)
LOAD_TIMEOUT = 900.0  # seconds for one ipset batch: one netlink message per member, ~3 ms each under qemu TCG
FALLBACK_DEVICES = ("dummy", "ifb", "bridge")  # closest to a dummy first: NOARP, carries no traffic


def sysctls(release: str = "") -> dict[str, str]:
    """Upstream's NewProxier sysctls; conn_reuse_mode=0 only where the kernel needs it."""
    nums = [int(x) for x in re.findall(r"\d+", release or os.uname().release)[:2]]
    low, fixed = CONN_REUSE_KERNELS
    extra = {"net.ipv4.vs.conn_reuse_mode": "0"} if low <= tuple(nums) < fixed else {}
    return {**SYSCTLS, **extra}


class IpvsProxier(Proxier):
    mode = "ipvs"
    status_note = "deprecated upstream in 1.35"

    # ------------------------------------------------------------------ pure
    @classmethod
    def preview(cls, state: ProxyState, **options: Any) -> str:
        plan = R.build_plan(state, options.get("scheduler") or R.DEFAULT_SCHEDULER)
        return R.render_text(state, plan)

    @property
    def scheduler(self) -> str:
        return R.check_scheduler(self.ctx.options.get("scheduler") or R.DEFAULT_SCHEDULER)

    def render(self, state: ProxyState, memory: Memory) -> Plan:
        """Full: the whole intended IPVS state, which apply() diffs against what the kernel holds.
        Partial: only the changed Services' objects, from what the last sync recorded (delta.py)."""
        local = tuple(memory.facts["local"] if memory.full else memory.data.get("local", ()))
        nodeport_ips = _nodeport_ips(state, local)
        if not memory.full:
            d = delta.partial(state, memory.data, self.scheduler, nodeport_ips, local)
            if d is not None:  # observe() checked the ledger; None only if the memory changed since
                return Plan(self.mode, False, d.text(), len(d.services), {"local": list(local)},
                            payload=(d, memory.data))  # fmt: skip
        parts = R.plan_parts(state, state.sorted_services(), self.scheduler, nodeport_ips, frozenset(local))
        plan = R.merge_parts(state, parts)
        config = delta.config_digest(state, self.scheduler, nodeport_ips, local)
        ledger = delta.ledger(state, parts, config, plan.iptables)
        return Plan(self.mode, True, R.render_text(state, plan), len(plan.servers), {"local": list(local)},
                    payload=(plan, ledger))  # fmt: skip

    # ------------------------------------------------------------------ persisted between syncs
    @property
    def store(self) -> MemoryStore:
        return MemoryStore(self.ctx.state_dir)

    def _load(self) -> dict[str, Any]:
        return self.store.load()

    def _save(self, data: dict[str, Any]) -> None:
        self.store.save(data)

    # ------------------------------------------------------------------ sync
    def observe(self, state: ProxyState, full: bool = False) -> Memory:
        """The memory; a full sync also reads the node's local addresses (upstream: every sync).  Full when
        there is no ledger of a full sync, or what every Service depends on changed (delta.config_digest)."""
        saved = self._load()
        local = tuple(saved.get("local", ()))
        config = delta.config_digest(state, self.scheduler, _nodeport_ips(state, local), local)
        full = full or bool(self.ctx.options.get("full_sync")) or saved.get("config") != config
        facts: dict[str, Any] = {}
        if full:
            with _iproute(self.ctx.netns) as ipr:
                found = ipr.link_lookup(ifname=R.DUMMY_DEVICE)
                facts["local"] = self._local_addresses(ipr, int(found[0]) if found else -1)
        return Memory(saved, facts, full)

    def apply(self, plan: Plan) -> SyncResult:
        scheduler = self.scheduler
        if not kernel_has_ipvs():
            raise EnvironmentProblem(f"this kernel has no IPVS: {FIX}")
        write_sysctls(self.ctx.netns, sysctls())
        Xtables(self.ctx.netns, override=self.ctx.options.get("iptables_backend")).note_tables(self.ctx.state_dir)
        local = tuple(plan.memory["local"])
        if plan.full:
            return self._sync_full(*plan.payload, scheduler, local)
        return self._sync_partial(*plan.payload, scheduler, local)

    def _sync_full(self, plan: R.IpvsPlan, ledger: dict[str, Any], scheduler: str,
                   local: tuple[str, ...]) -> SyncResult:  # fmt: skip
        """Read addresses, sets and virtual servers (with their real servers) back from the kernel, as
        upstream does on every sync, and write the differences from the whole plan."""
        inputs: dict[str, list[str]] = {"ip -batch -": [], "ipvsadm --restore": []}  # what went to the kernel
        graceful: dict[str, Any] = dict(self._load().get("graceful", {}))
        with _iproute(self.ctx.netns) as ipr:
            dev = self._ensure_device(ipr)
            inputs["ipset restore"] = self._sync_ipsets(plan)
            inputs["iptables-restore --noflush"] = self._sync_iptables(plan.iptables)
            bound = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=dev, family=socket.AF_INET)}
            self._bind(ipr, dev, [a for a in plan.bind_addrs if a not in bound], "add", inputs["ip -batch -"])
            with IpvsTable(self.ctx.netns, log=inputs["ipvsadm --restore"]) as k:
                have = {key: vs for key, (vs, _) in k.services().items()}
                changed = self._sync_servers(k, plan.servers, have, {}, graceful)
                wanted = {sp.vs.key for sp in plan.servers}
                self._delete_servers(k, [vs for key, vs in have.items() if key not in wanted], graceful)
                self._reap(k, graceful, {sp.vs.key: sp.vs for sp in plan.servers})
            self._bind(ipr, dev, sorted(bound - set(plan.bind_addrs)), "del", inputs["ip -batch -"])
        return self._done(inputs, True, changed, {"servers": delta.servers_memory(plan), "graceful": graceful, "scheduler": scheduler,
                                                  "local": list(local), **ledger})  # fmt: skip

    def _sync_partial(self, d: delta.Delta, saved: dict[str, Any], scheduler: str,
                      local: tuple[str, ...]) -> SyncResult:  # fmt: skip
        """Trust what the last sync recorded and write only the changed Services' objects: no read-back
        of sets, addresses or unchanged virtual servers (a kernel error retries as a full sync)."""
        inputs: dict[str, list[str]] = {"ip -batch -": [], "ipset restore": d.ipset_lines(),
                                        "iptables-restore --noflush": [], "ipvsadm --restore": []}  # fmt: skip
        known: dict[str, Any] = saved.get("servers", {})
        graceful: dict[str, Any] = dict(saved.get("graceful", {}))
        with _iproute(self.ctx.netns) as ipr:
            dev = self._ensure_device(ipr)
            if inputs["ipset restore"]:
                run(["ipset", "restore"], self.ctx.netns, input="\n".join(inputs["ipset restore"]) + "\n",
                    timeout=LOAD_TIMEOUT)  # fmt: skip
            if d.iptables:
                inputs["iptables-restore --noflush"] = self._sync_iptables(d.iptables)
            self._bind(ipr, dev, d.bind, "add", inputs["ip -batch -"])
            with IpvsTable(self.ctx.netns, log=inputs["ipvsadm --restore"]) as k:
                have = {sp.vs.key: R.VirtualServer(*known[sp.vs.key]["vs"]) for sp in d.servers if sp.vs.key in known}
                changed = self._sync_servers(k, d.servers, have, known, graceful)
                self._delete_servers(k, d.gone, graceful)
                servers = {g.split("|")[0] for g in graceful}
                self._reap(k, graceful, {key: R.VirtualServer(*d.servers_memory[key]["vs"])
                                         for key in servers if key in d.servers_memory})  # fmt: skip
            self._bind(ipr, dev, d.unbind, "del", inputs["ip -batch -"])
        return self._done(inputs, False, changed, {"servers": d.servers_memory, "graceful": graceful,
                                                   "scheduler": scheduler, "local": list(local), **d.memory})  # fmt: skip

    def _done(self, inputs: dict[str, list[str]], full: bool, changed: int, memory: dict[str, Any]) -> SyncResult:
        """Store the memory once the kernel took it; keep the kernel input for bench/sync when asked."""
        self._save(memory)
        if self.ctx.options.get("keep_input"):  # for bench/sync: the same input, loaded by the plain tools
            text = "".join(f"### {tool}\n" + "".join(f"{x}\n" for x in lines) for tool, lines in inputs.items())
            (Path(self.ctx.state_dir) / "last-input.txt").write_text(text)
        size = sum(len(lines) for lines in inputs.values())
        return SyncResult(full=full, changed_services=changed, seconds=0.0, size=size)

    def _bind(self, ipr: IPRoute, dev: int, addrs: list[str], verb: str, log: list[str]) -> None:
        for addr in addrs:
            try:
                ipr.addr(verb, index=dev, address=addr, prefixlen=32)
            except NetlinkError as e:
                raise ProxierError(
                    f"{verb} {addr}/32 on {R.DUMMY_DEVICE} in {self.ctx.netns}: {os.strerror(e.code)}"
                ) from None
            log.append(f"address {verb} {addr}/32 dev {R.DUMMY_DEVICE}")

    def _ensure_device(self, ipr: IPRoute) -> int:
        found = ipr.link_lookup(ifname=R.DUMMY_DEVICE)
        if found:
            return int(found[0])
        for kind in FALLBACK_DEVICES:
            try:
                ipr.link("add", ifname=R.DUMMY_DEVICE, kind=kind)
                return int(ipr.link_lookup(ifname=R.DUMMY_DEVICE)[0])
            except NetlinkError:
                continue
        raise ProxierError(
            f"cannot create {R.DUMMY_DEVICE} in {self.ctx.netns} (no dummy, ifb or bridge devices)"
        )

    @staticmethod
    def _local_addresses(ipr: IPRoute, dev: int) -> tuple[str, ...]:
        """Upstream's GetAllLocalAddressesExcept(kube-ipvs0), less loopback and link-local."""
        out = []
        for a in ipr.get_addr(family=socket.AF_INET):
            ip = a.get_attr("IFA_ADDRESS")
            if a["index"] != dev and not ip.startswith(("127.", "169.254.")) and ip not in out:
                out.append(ip)
        return tuple(out)

    def _sync_ipsets(self, plan: R.IpvsPlan) -> list[str]:
        """One `ipset restore`: create every set (-exist), then only the membership differences."""
        current = R.parse_ipset_save(run(["ipset", "save"], self.ctx.netns, timeout=LOAD_TIMEOUT).stdout)
        batch = R.ipset_restore(current, plan.ipsets)
        run(["ipset", "restore"], self.ctx.netns, input=batch, timeout=LOAD_TIMEOUT)
        return batch.splitlines()

    def _sync_iptables(self, rules: str) -> list[str]:
        """One `iptables-restore --noflush` of our chains, plus the jumps from built-in chains still missing."""
        xt = Xtables(self.ctx.netns, override=self.ctx.options.get("iptables_backend"))
        text = R.with_jumps(rules, xt.dump())
        xt.restore(text)
        return text.splitlines()

    def _sync_servers(self, k: IpvsTable, servers: list[R.ServerPlan], have: dict[str, R.VirtualServer],
                      known: dict[str, Any], graceful: dict[str, Any]) -> int:  # fmt: skip
        """Virtual servers and their real servers against `have` (read back, or recorded); a server whose
        fingerprint `known` recorded and that is not draining is left alone.  Returns how many it touched."""
        draining = {g.split("|")[0] for g in graceful}
        changed = 0
        for sp in servers:
            vs, key = sp.vs, sp.vs.key
            current: dict[str, dict[str, Any]] = {}
            if key not in have:
                k.service("add", vs)
            elif have[key] != vs:
                k.service("set", vs)  # scheduler, persistence or flags changed: edited in place
                current = k.dests(vs)
            elif known.get(key, {}).get("fp") == sp.fingerprint() and key not in draining:
                continue  # unchanged since our last sync: its real servers are not re-read
            else:
                current = k.dests(vs)
            changed += 1
            self._sync_reals(k, sp, current, graceful)
        return changed

    @staticmethod
    def _delete_servers(k: IpvsTable, gone: list[R.VirtualServer], graceful: dict[str, Any]) -> None:
        """Virtual servers no Service wants (upstream's cleanLegacyService), with their draining entries."""
        for vs in gone:
            k.service("del", vs)
            for g in [g for g in graceful if g.startswith(vs.key + "|")]:
                del graceful[g]

    @staticmethod
    def _sync_reals(
        k: IpvsTable, sp: R.ServerPlan, current: dict[str, dict[str, Any]], graceful: dict[str, Any]
    ) -> None:
        """Upstream's syncEndpoint: add what is missing, drain (weight 0) or delete what went away."""
        vs = sp.vs
        for rs in sp.reals:
            gkey = f"{vs.key}|{rs.key}"
            if rs.key not in current:
                k.dest("add", vs, rs)
            elif gkey in graceful:  # back while draining: upstream deletes and re-adds it
                k.dest("del", vs, rs)
                k.dest("add", vs, rs)
                del graceful[gkey]
            elif current[rs.key]["rs"].weight != rs.weight:
                k.dest("set", vs, rs)  # upstream's initialSync weight reset
        wanted = {rs.key for rs in sp.reals}
        for key, info in current.items():
            gkey = f"{vs.key}|{key}"
            if key in wanted or gkey in graceful:
                continue
            if vs.protocol == "UDP" or info["active"] + info["inactive"] == 0:
                k.dest("del", vs, info["rs"])
            else:
                k.dest("set", vs, info["rs"], weight=0)  # drain: no new connections
                graceful[gkey] = {"since": time.time()}

    @staticmethod
    def _reap(k: IpvsTable, graceful: dict[str, Any], servers: dict[str, R.VirtualServer]) -> int:
        """Delete draining real servers whose connections are gone (upstream's tryDeleteRs)."""
        deleted = 0
        for gkey in sorted(graceful):
            vs_key, rs_key = gkey.split("|")
            vs = servers.get(vs_key)
            info = k.dests(vs).get(rs_key) if vs else None
            if info is not None and info["active"] + info["inactive"] == 0:
                k.dest("del", vs, info["rs"])
                deleted += 1
            if info is None or info["active"] + info["inactive"] == 0:
                del graceful[gkey]
        return deleted

    def reap(self) -> int:
        """Run the graceful-termination check alone; returns how many real servers it deleted."""
        saved = self._load()
        graceful = dict(saved.get("graceful", {}))
        if not graceful:
            return 0
        with IpvsTable(self.ctx.netns) as k:
            deleted = self._reap(k, graceful, {key: vs for key, (vs, _) in k.services().items()})
        saved["graceful"] = graceful
        self._save(saved)
        return deleted

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        if not Path(f"{NETNS_DIR}/{self.ctx.netns}").exists():
            return
        if Path("/proc/net/ip_vs").exists():
            with IpvsTable(self.ctx.netns) as k:
                for vs, _ in k.services().values():
                    k.service("del", vs)
        xt = Xtables(self.ctx.netns, override=self.ctx.options.get("iptables_backend"))
        xt.cleanup(R.owned)
        xt.drop_created_tables(self.ctx.state_dir)
        existing = R.parse_ipset_save(run(["ipset", "save"], self.ctx.netns, check=False).stdout)
        if existing:
            run(["ipset", "restore"], self.ctx.netns, input="".join(f"destroy {n}\n" for n in existing))
        with _iproute(self.ctx.netns) as ipr:
            for idx in ipr.link_lookup(ifname=R.DUMMY_DEVICE):
                ipr.link("del", index=idx)
        self.store.forget()

    # ------------------------------------------------------------------ read back
    def read_back(self) -> RulesView:
        saved = self._load()
        names = saved.get("servers", {})
        servers = []
        if Path("/proc/net/ip_vs").exists():
            with IpvsTable(self.ctx.netns) as k:
                servers = k.listing(names)
        ipsets = {
            n: sorted(m)
            for n, m in R.parse_ipset_save(run(["ipset", "save"], self.ctx.netns, check=False).stdout).items()
        }
        saved_text = Xtables(self.ctx.netns, override=self.ctx.options.get("iptables_backend")).save()
        ipt = [line for line in saved_text.splitlines() if "KUBE-" in line or line.startswith(("*", "COMMIT"))]
        with _iproute(self.ctx.netns) as ipr:
            dev = ipr.link_lookup(ifname=R.DUMMY_DEVICE)
            bound = (
                [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=dev[0], family=socket.AF_INET)]
                if dev
                else []
            )
        graceful = sorted(saved.get("graceful", {}))
        text = view(self.ctx.netns, servers, bound, ipsets, ipt, graceful)
        objects = {"virtual_servers": servers, "kube_ipvs0": bound, "ipsets": ipsets, "iptables": ipt,
                   "graceful": graceful}  # fmt: skip
        notes = {key: info.get("service", "") for key, info in names.items() if info.get("service")}
        return RulesView(self.mode, self.ctx.node, text, objects, notes)

    def expected_lines(self, state: ProxyState) -> list[str]:
        plan = self.render(state, self.observe(state, full=True)).payload[0]
        lines = _ipvs_lines({sp.vs.key: (sp.vs, sp.reals) for sp in plan.servers})
        lines += [f"ipset {n} {m}" for n, members in plan.ipsets.items() for m in members]
        lines += [f"{R.DUMMY_DEVICE} {a}" for a in plan.bind_addrs]
        with drift.scratch(self.ctx.netns) as ns:
            run(["ipset", "restore"], ns, input=R.ipset_restore({}, plan.ipsets))
            xt = Xtables(ns, override=self.ctx.options.get("iptables_backend"))
            xt.restore(R.with_jumps(plan.iptables, Dump()))
            lines += drift.xtables_lines(xt.save(), R.owned)
        return lines

    def held_lines(self) -> list[str]:
        servers: dict[str, tuple[R.VirtualServer, list[R.RealServer]]] = {}
        if Path("/proc/net/ip_vs").exists():
            with IpvsTable(self.ctx.netns) as k:
                for key, (vs, _) in k.services().items():
                    servers[key] = (vs, [d["rs"] for d in k.dests(vs).values()])
        lines = _ipvs_lines(servers)
        saved = R.parse_ipset_save(run(["ipset", "save"], self.ctx.netns, check=False).stdout)
        lines += [f"ipset {n} {m}" for n, members in saved.items() for m in members]
        with _iproute(self.ctx.netns) as ipr:
            for dev in ipr.link_lookup(ifname=R.DUMMY_DEVICE):
                lines += [f"{R.DUMMY_DEVICE} {a.get_attr('IFA_ADDRESS')}"
                          for a in ipr.get_addr(index=dev, family=socket.AF_INET)]  # fmt: skip
        xt = Xtables(self.ctx.netns, override=self.ctx.options.get("iptables_backend"))
        return lines + drift.xtables_lines(xt.save(), R.owned)

    @classmethod
    def doctor(cls) -> Availability:
        return doctor(cls.mode, cls.status_note)


def _ipvs_lines(servers: dict[str, tuple[R.VirtualServer, list[R.RealServer]]]) -> list[str]:
    """Virtual and real servers as comparable lines (ipvsadm's words: scheduler, persistence, weight)."""
    out = []
    for key, (vs, reals) in servers.items():
        out.append(f"ipvs {key} {vs.scheduler} {R.flags_text(vs)}".rstrip())
        out += [f"ipvs {key} -> {rs.key} weight {rs.weight}" for rs in reals]
    return out


def _iproute(netns: str) -> IPRoute:
    """An rtnetlink socket opened inside `netns` (entering it on this thread: no helper process)."""
    with entered(netns):
        return IPRoute()


def _nodeport_ips(state: ProxyState, local: tuple[str, ...]) -> tuple[str, ...]:
    """The local addresses that get NodePort virtual servers (--nodeport-addresses)."""
    return tuple(a for a in local if _in_any(a, state.nodeport_addresses))


def _in_any(ip: str, cidrs: tuple[str, ...]) -> bool:
    """Whether ip is in one of cidrs (--nodeport-addresses); no cidrs means every address."""
    return not cidrs or any(ipaddress.ip_address(ip) in ipaddress.ip_network(c, strict=False) for c in cidrs)


