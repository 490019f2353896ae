"""The IPVS table of one node namespace over generic netlink (pyroute2), and its ipvsadm-like view.

IPVS state is per network namespace, so the socket is opened inside the node's namespace.
pyroute2's IPVS wrapper has sharp edges this module keeps in one place: services default to
the wlc scheduler and real servers to direct routing (fwd_method 3), so both are always given
explicitly (kube-proxy: the configured scheduler, masquerade = 0); and its "update" verb sends a
delete, so only add / set / del are used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Self

from pyroute2 import IPVS, IPVSDest, IPVSService
from pyroute2.netlink.exceptions import NetlinkError

from kplab.cluster.netns import entered
from kplab.errors import EnvironmentProblem, ProxierError
from kplab.proxy.base import Availability
from kplab.proxy.ipvs import rules as R

PROTO_NAMES = {v: k for k, v in R.PROTO_NUMBERS.items()}
FIX = (
    "load it: `modprobe ip_vs` (and ip_vs_rr, ip_vs_lc, ... for other schedulers); in a container, mount "
    "the host's modules read-only (-v /lib/modules:/lib/modules:ro) and grant SYS_MODULE (--cap-add "
    "SYS_MODULE), or load ip_vs on the host; the kernel needs CONFIG_IP_VS (+ CONFIG_IP_VS_RR, "
    "CONFIG_IP_VS_NFCT, CONFIG_NETFILTER_XT_MATCH_IPVS).  Here, `make test-ipvs` runs the IPVS tests in a "
    "throwaway VM with Debian's kernel"
)


def modprobe(module: str) -> bool:
    """Try to load a module; False when there is no `modprobe` to try with (a container without kmod)."""
    if not shutil.which("modprobe"):
        return False
    subprocess.run(["modprobe", "-q", module], capture_output=True, check=False, timeout=30)
    return True


def kernel_has_ipvs() -> bool:
    """/proc/net/ip_vs exists once the module is loaded (this tries `modprobe ip_vs` once)."""
    if not Path("/proc/net/ip_vs").exists():
        modprobe("ip_vs")
    return Path("/proc/net/ip_vs").exists()


def kernel_has_dummy() -> bool:
    """Whether kube-ipvs0 can be a real dummy device (CONFIG_DUMMY, module loaded on demand)."""
    if not Path("/sys/module/dummy").exists():
        modprobe("dummy")
    return Path("/sys/module/dummy").exists()


def doctor(mode: str, note: str) -> Availability:
    """Whether this machine can run the IPVS mode (kernel, schedulers, dummy devices, tools)."""
    if not kernel_has_ipvs():
        detail = "no IPVS in this kernel (/proc/net/ip_vs is missing)"
        if not shutil.which("modprobe"):
            detail += "; no modprobe on PATH to load it (apt-get install kmod)"
        return Availability(mode, False, detail, FIX, note)
    tools = [t for t in ("ipset", "iptables-restore") if not shutil.which(t)]
    if tools:
        return Availability(mode, False, f"missing {', '.join(tools)}", "make setup (apt-get install ipset iptables)",
                            note)  # fmt: skip
    mods = Path(f"/lib/modules/{os.uname().release}/kernel/net/netfilter/ipvs")
    scheds = [s for s in R.SCHEDULERS if any(mods.glob(f"ip_vs_{s}.ko*")) or Path(f"/sys/module/ip_vs_{s}").exists()]
    version = Path("/proc/net/ip_vs").read_text().splitlines()[0].split("(")[0].strip()
    detail = f"{version}; schedulers: {', '.join(scheds) or 'built in? try modprobe ip_vs_<name>'}"
    fix = ""
    if not kernel_has_dummy():
        detail += "; no dummy interfaces (CONFIG_DUMMY): kube-ipvs0 will be an ifb device (NOARP, no traffic)"
        fix = "modprobe dummy, or a kernel with CONFIG_DUMMY, for a real dummy kube-ipvs0"
    return Availability(mode, True, detail, fix, note)


def netlink_error(what: str, e: NetlinkError) -> ProxierError:
    hint = ""
    if "service" in what and e.code == 2:
        hint = " (is that scheduler's module loaded? modprobe ip_vs_<scheduler>)"
    return ProxierError(f"IPVS {what} failed: {os.strerror(e.code) if e.code else e}{hint}")


def _service(vs: R.VirtualServer) -> IPVSService:
    return IPVSService(
        addr=vs.ip,
        port=vs.port,
        protocol=R.PROTO_NUMBERS[vs.protocol],
        sched_name=vs.scheduler,
        flags={"flags": vs.flags, "mask": 0xFFFFFFFF},
        timeout=vs.timeout,
    )


def _dest(rs: R.RealServer, weight: int | None = None) -> IPVSDest:
    return IPVSDest(addr=rs.ip, port=rs.port, fwd_method=0, weight=rs.weight if weight is None else weight)


def _stats(nla: Any, prefix: str) -> dict[str, int]:
    st = nla.get_attr(f"{prefix}_STATS64") or nla.get_attr(f"{prefix}_STATS")
    if st is None:
        return {}
    return {k: int(st.get_attr(f"IPVS_STATS_ATTR_{k.upper()}") or 0) for k in ("conns", "inpkts", "outpkts")}


class IpvsTable:
    """The node namespace's IPVS table, read and written over netlink."""

    def __init__(self, netns: str, log: list[str] | None = None) -> None:
        self.log = log  # when a list: every change, appended as an `ipvsadm --restore` line
        try:
            with entered(netns):  # the socket (bound at once) stays in the node's namespace; no helper fork
                self.ipvs = IPVS()
        except NetlinkError as e:
            raise EnvironmentProblem(f"no IPVS netlink family in this kernel ({e}): {FIX}") from None

    def close(self) -> None:
        self.ipvs.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def services(self) -> dict[str, tuple[R.VirtualServer, dict[str, int]]]:
        out = {}
        for msg in self.ipvs.service("dump"):
            a = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
            proto = PROTO_NAMES.get(a.get_attr("IPVS_SVC_ATTR_PROTOCOL"))
            ip = a.get_attr("IPVS_SVC_ATTR_ADDR")
            if proto is None or not ip:
                continue  # fwmark services are none of ours
            flags = a.get_attr("IPVS_SVC_ATTR_FLAGS") or {"flags": 0}
            vs = R.VirtualServer(
                ip,
                int(a.get_attr("IPVS_SVC_ATTR_PORT")),
                proto,
                a.get_attr("IPVS_SVC_ATTR_SCHED_NAME") or "",
                int(flags["flags"]) & ~R.FLAG_HASHED,
                int(a.get_attr("IPVS_SVC_ATTR_TIMEOUT") or 0),
            )
            out[vs.key] = (vs, _stats(a, "IPVS_SVC_ATTR"))
        return out

    def dests(self, vs: R.VirtualServer) -> dict[str, dict[str, Any]]:
        out = {}
        try:
            msgs = list(self.ipvs.dest("dump", service=_service(vs)))
        except NetlinkError as e:  # e.g. the virtual server was deleted by hand: a partial sync retries full
            raise netlink_error(f"list real servers of {vs.key}", e) from None
        for msg in msgs:
            a = msg.get_attr("IPVS_CMD_ATTR_DEST")
            rs = R.RealServer(
                a.get_attr("IPVS_DEST_ATTR_ADDR"),
                int(a.get_attr("IPVS_DEST_ATTR_PORT")),
                int(a.get_attr("IPVS_DEST_ATTR_WEIGHT")),
            )
            out[rs.key] = {
                "rs": rs,
                "fwd": int(a.get_attr("IPVS_DEST_ATTR_FWD_METHOD") or 0),
                "active": int(a.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0),
                "inactive": int(a.get_attr("IPVS_DEST_ATTR_INACT_CONNS") or 0),
                "persistent": int(a.get_attr("IPVS_DEST_ATTR_PERSIST_CONNS") or 0),
                **_stats(a, "IPVS_DEST_ATTR"),
            }
        return out

    def listing(self, names: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
        """Every virtual server with its real servers and counters; `names`: key -> service, kind."""
        out = []
        for key, (vs, stats) in sorted(self.services().items(), key=lambda kv: vs_sort(kv[1][0])):
            reals = [
                {**{x: v for x, v in d.items() if x != "rs"}, "address": rk, "weight": d["rs"].weight}
                for rk, d in sorted(self.dests(vs).items())
            ]
            info = names.get(key, {})
            out.append(
                {
                    "key": key,
                    "protocol": vs.protocol,
                    "address": f"{vs.ip}:{vs.port}",
                    "scheduler": vs.scheduler,
                    "flags": R.flags_text(vs),
                    **stats,
                    "service": info.get("service", ""),
                    "kind": info.get("kind", ""),
                    "reals": reals,
                }
            )
        return out

    def service(self, verb: str, vs: R.VirtualServer) -> None:
        """verb: add, set (edit in place) or del; never pyroute2's "update", which deletes."""
        if self.log is not None:
            self.log.append(R.ipvsadm_service({"add": "-A", "set": "-E", "del": "-D"}[verb], vs))
        try:
            self.ipvs.service(verb, service=_service(vs))
        except NetlinkError as e:
            raise netlink_error(f"{verb} service {vs.key} ({vs.scheduler})", e) from None

    def dest(self, verb: str, vs: R.VirtualServer, rs: R.RealServer, weight: int | None = None) -> None:
        if self.log is not None:
            self.log.append(R.ipvsadm_dest({"add": "-a", "set": "-e", "del": "-d"}[verb], vs, rs, weight))
        try:
            self.ipvs.dest(verb, service=_service(vs), dest=_dest(rs, weight))
        except NetlinkError as e:
            raise netlink_error(f"{verb} real server {rs.key} of {vs.key}", e) from None


def vs_sort(vs: R.VirtualServer) -> tuple[str, tuple[int, ...], int]:
    return (vs.protocol, tuple(int(x) for x in vs.ip.split(".")), vs.port)


def view(
    netns: str,
    servers: list[dict[str, Any]],
    bound: list[str],
    ipsets: dict[str, list[str]],
    ipt: list[str],
    graceful: list[str],
) -> str:
    """An `ipvsadm -Ln --stats`-like listing, each virtual server annotated with its Service."""
    out = [
        f"IP Virtual Server in {netns} (like ipvsadm -Ln, plus counters)",
        f"{'Prot LocalAddress:Port Scheduler Flags':<44} {'Conns':>6} {'InPkts':>7} {'OutPkts':>7}",
        (
            f"{'  -> RemoteAddress:Port   Forward Weight ActiveConn InActConn':<60} {'Conns':>6} {'InPkts':>7} "
            f"{'OutPkts':>7}"
        ),
    ]
    for s in servers:
        head = f"{s['protocol']:<4} {s['address']} {s['scheduler']} {s['flags']}".rstrip()
        note = f"  # {s['service']} ({s['kind']})" if s["service"] else ""
        out.append(
            f"{head:<44} {s.get('conns', 0):>6} {s.get('inpkts', 0):>7} {s.get('outpkts', 0):>7}{note}"
        )
        for r in s["reals"]:
            fwd = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route"}.get(r["fwd"], str(r["fwd"]))
            line = f"  -> {r['address']:<21} {fwd:<7} {r['weight']:<6} {r['active']:<10} {r['inactive']:<9}"
            out.append(
                f"{line:<60} {r.get('conns', 0):>6} {r.get('inpkts', 0):>7} {r.get('outpkts', 0):>7}"
                + ("  (draining)" if f"{s['key']}|{r['address']}" in graceful else "")
            )
    out += ["", f"{R.DUMMY_DEVICE}: {', '.join(bound) or '(no addresses)'}", "", "ipsets:"]
    out += [f"  {n} ({len(m)}): {' '.join(m)}".rstrip() for n, m in ipsets.items()]
    out += ["", "iptables (kube chains):", *(f"  {line}" for line in ipt)]
    return "\n".join(out) + "\n"
