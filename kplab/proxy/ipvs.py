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
import json
import os
import re
import socket
import time
from dataclasses import astuple
from pathlib import Path
from shutil import which
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kplab.cluster.netns import entered, write_sysctls
from kplab.cluster.run import run
from kplab.errors import EnvironmentProblem, ProxierError
from kplab.proxy import ipvs_rules as R
from kplab.proxy.base import Availability, Proxier, SyncResult
from kplab.proxy.core import ProxyState
from kplab.proxy.ipvs_kernel import FIX, IpvsTable, kernel_has_dummy, kernel_has_ipvs, view

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
    def render(cls, state: ProxyState, **options: Any) -> str:
        plan = R.build_plan(state, options.get("scheduler") or R.DEFAULT_SCHEDULER)
        return R.render_text(state, plan)

    @property
    def scheduler(self) -> str:
        return R.check_scheduler(self.ctx.options.get("scheduler") or R.DEFAULT_SCHEDULER)

    # ------------------------------------------------------------------ persisted between syncs
    @property
    def _state_file(self) -> Path:
        return Path(self.ctx.state_dir) / "ipvs.json"

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_file.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def _save(self, data: dict[str, Any]) -> None:
        Path(self.ctx.state_dir).mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self._state_file)

    # ------------------------------------------------------------------ sync
    def sync(self, state: ProxyState) -> SyncResult:
        start = time.monotonic()
        scheduler = self.scheduler
        if not kernel_has_ipvs():
            raise EnvironmentProblem(f"this kernel has no IPVS: {FIX}")
        write_sysctls(self.ctx.netns, sysctls())
        saved = self._load()
        full = not saved or bool(self.ctx.options.get("full_sync"))
        try:
            result = self._sync(state, scheduler, saved, full)
        except ProxierError:
            if full:
                raise
            result = self._sync(state, scheduler, saved, full=True)  # the kernel moved under us: read it all
        result.seconds = time.monotonic() - start
        return result

    def _sync(self, state: ProxyState, scheduler: str, saved: dict[str, Any], full: bool) -> SyncResult:
        """One sync.  Full: read addresses and virtual servers back from the kernel (as upstream does on
        every sync).  Partial: trust what the last sync recorded and touch only what changed since."""
        inputs: dict[str, list[str]] = {"ip -batch -": [], "ipvsadm --restore": []}  # what went to the kernel
        with _iproute(self.ctx.netns) as ipr:
            dev = self._ensure_device(ipr)
            local = self._local_addresses(ipr, dev) if full else tuple(saved.get("local", ()))
            nodeport_ips = tuple(a for a in local if _in_any(a, state.nodeport_addresses))
            plan = R.build_plan(state, scheduler, nodeport_ips=nodeport_ips, local_addrs=local)
            inputs["ipset restore"] = self._sync_ipsets(plan)
            inputs["iptables-restore --noflush"] = self._sync_iptables(plan)
            if full:
                bound = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=dev, family=socket.AF_INET)}
            else:
                bound = set(saved.get("bind", ()))
            for addr in plan.bind_addrs:
                if addr not in bound:
                    self._address(ipr, "add", dev, addr)
                    inputs["ip -batch -"].append(f"address add {addr}/32 dev {R.DUMMY_DEVICE}")
            with IpvsTable(self.ctx.netns, log=inputs["ipvsadm --restore"]) as kernel:
                changed, graceful = self._sync_ipvs(kernel, plan, saved, full)
            for addr in bound - set(plan.bind_addrs):
                self._address(ipr, "del", dev, addr)
                inputs["ip -batch -"].append(f"address del {addr}/32 dev {R.DUMMY_DEVICE}")
        servers = {sp.vs.key: {"fp": sp.fingerprint(), "vs": list(astuple(sp.vs)), "service": sp.service,
                               "kind": sp.kind} for sp in plan.servers}  # fmt: skip
        self._save({"servers": servers, "graceful": graceful, "scheduler": scheduler, "local": list(local),
                    "bind": plan.bind_addrs})  # fmt: skip
        if self.ctx.options.get("keep_input"):  # for bench/sync: the same input, loaded by the plain tools
            text = "".join(
                f"### {tool}\n" + "".join(f"{x}\n" for x in lines) for tool, lines in inputs.items()
            )
            (Path(self.ctx.state_dir) / "last-input.txt").write_text(text)
        size = sum(len(lines) for lines in inputs.values())
        return SyncResult(full=full, changed_services=changed, seconds=0.0, size=size)

    def _address(self, ipr: IPRoute, verb: str, dev: int, addr: str) -> None:
        try:
            ipr.addr(verb, index=dev, address=addr, prefixlen=32)
        except NetlinkError as e:
            raise ProxierError(
                f"{verb} {addr}/32 on {R.DUMMY_DEVICE} in {self.ctx.netns}: {os.strerror(e.code)}"
            ) from None

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

    def _sync_iptables(self, plan: R.IpvsPlan) -> list[str]:
        """One `iptables-restore --noflush` of our chains, plus the jumps from built-in chains still missing."""
        saved = run(["iptables-save"], self.ctx.netns).stdout
        missing = [j for j in R.JUMPS if R.jump_line(j) not in saved]
        text = R.with_jumps(plan.iptables, R.jump_rules(missing))
        run(["iptables-restore", "--noflush"], self.ctx.netns, input=text)
        return text.splitlines()

    def _sync_ipvs(
        self, k: IpvsTable, plan: R.IpvsPlan, saved: dict[str, Any], full: bool
    ) -> tuple[int, dict[str, Any]]:
        """Virtual servers and real servers; returns (virtual servers touched, the graceful list)."""
        known = saved.get("servers", {})
        if full:
            have = {key: vs for key, (vs, _) in k.services().items()}
        else:
            have = {key: R.VirtualServer(*info["vs"]) for key, info in known.items() if "vs" in info}
        graceful: dict[str, Any] = dict(saved.get("graceful", {}))
        draining = {g.split("|")[0] for g in graceful}
        changed = 0
        for sp in plan.servers:
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
        wanted = {sp.vs.key for sp in plan.servers}
        for key, vs in have.items():
            if key not in wanted:
                k.service("del", vs)  # upstream's cleanLegacyService
                graceful = {g: v for g, v in graceful.items() if not g.startswith(key + "|")}
        self._reap(k, graceful, {sp.vs.key: sp.vs for sp in plan.servers})
        return changed, graceful

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
        if not Path(f"/run/netns/{self.ctx.netns}").exists():
            return
        if Path("/proc/net/ip_vs").exists():
            with IpvsTable(self.ctx.netns) as k:
                for vs, _ in k.services().values():
                    k.service("del", vs)
        saved = run(["iptables-save"], self.ctx.netns, check=False).stdout
        lines = []
        for table, chains in (("nat", R.NAT_CHAINS), ("filter", R.FILTER_CHAINS)):
            present = [c for c in chains if f"\n:{c} " in _table(saved, table)]
            jumps = [R.jump_line(j, "-D") for j in R.JUMPS if j[0] == table and R.jump_line(j) in saved]
            if present or jumps:
                lines += [
                    f"*{table}",
                    *(f":{c} - [0:0]" for c in present),
                    *jumps,
                    *(f"-X {c}" for c in present),
                    "COMMIT",
                ]
        if lines:
            run(["iptables-restore", "--noflush"], self.ctx.netns, input="\n".join(lines) + "\n")
        existing = R.parse_ipset_save(run(["ipset", "save"], self.ctx.netns, check=False).stdout)
        if existing:
            run(["ipset", "restore"], self.ctx.netns, input="".join(f"destroy {n}\n" for n in existing))
        with _iproute(self.ctx.netns) as ipr:
            for idx in ipr.link_lookup(ifname=R.DUMMY_DEVICE):
                ipr.link("del", index=idx)
        self._state_file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ read back
    def rules(self) -> dict[str, Any]:
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
        ipt = [
            line
            for line in run(["iptables-save"], self.ctx.netns, check=False).stdout.splitlines()
            if "KUBE-" in line or line.startswith(("*", "COMMIT"))
        ]
        with _iproute(self.ctx.netns) as ipr:
            dev = ipr.link_lookup(ifname=R.DUMMY_DEVICE)
            bound = (
                [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=dev[0], family=socket.AF_INET)]
                if dev
                else []
            )
        graceful = sorted(saved.get("graceful", {}))
        text = view(self.ctx.netns, servers, bound, ipsets, ipt, graceful)
        return {
            "text": text,
            "virtual_servers": servers,
            "kube_ipvs0": bound,
            "ipsets": ipsets,
            "iptables": ipt,
            "graceful": graceful,
        }

    @classmethod
    def doctor(cls) -> Availability:
        if not kernel_has_ipvs():
            return Availability(
                cls.mode, False, "no IPVS in this kernel (/proc/net/ip_vs is missing)", FIX, cls.status_note
            )
        tools = [t for t in ("ipset", "iptables-restore") if not which(t)]
        if tools:
            return Availability(
                cls.mode,
                False,
                f"missing {', '.join(tools)}",
                "make setup (apt-get install ipset iptables)",
                cls.status_note,
            )
        mods = Path(f"/lib/modules/{os.uname().release}/kernel/net/netfilter/ipvs")
        scheds = [
            s
            for s in R.SCHEDULERS
            if any(mods.glob(f"ip_vs_{s}.ko*")) or Path(f"/sys/module/ip_vs_{s}").exists()
        ]
        version = Path("/proc/net/ip_vs").read_text().splitlines()[0].split("(")[0].strip()
        detail = f"{version}; schedulers: {', '.join(scheds) or 'built in? try modprobe ip_vs_<name>'}"
        fix = ""
        if not kernel_has_dummy():
            detail += (
                "; no dummy interfaces (CONFIG_DUMMY): kube-ipvs0 will be an ifb device (NOARP, no traffic)"
            )
            fix = "modprobe dummy, or a kernel with CONFIG_DUMMY, for a real dummy kube-ipvs0"
        return Availability(cls.mode, True, detail, fix, cls.status_note)


def _iproute(netns: str) -> IPRoute:
    """An rtnetlink socket opened inside `netns` (entering it on this thread: no helper process)."""
    with entered(netns):
        return IPRoute()


def _in_any(ip: str, cidrs: tuple[str, ...]) -> bool:
    """Whether ip is in one of cidrs (--nodeport-addresses); no cidrs means every address."""
    return not cidrs or any(ipaddress.ip_address(ip) in ipaddress.ip_network(c, strict=False) for c in cidrs)


def _table(saved: str, table: str) -> str:
    start = saved.find(f"*{table}\n")
    return "" if start < 0 else saved[start : saved.find("COMMIT", start)]
