"""The eBPF way: no kube-proxy at all, a Cilium-style kube-proxy replacement in BPF maps and programs.

Not an upstream kube-proxy mode: this is what clusters running Cilium (or Calico's eBPF data
plane) do instead of kube-proxy, built small enough to read (bpf/kplab_lb.c):

* socket LB: `cgroup/connect4`/`sendmsg4`/`recvmsg4` on the node's lab-owned cgroup v2
  directory choose the backend at connect(), so no packet ever carries the ClusterIP
  (option socket_lb=False leaves it off, and the tc program below does all the work);
* per-packet LB: tc (clsact + cls_bpf) on each pod's node-side veth, DNAT of Service
  traffic and reverse NAT of replies in BPF, no netfilter involved;
* NodePort, externalIPs and LoadBalancer IPs from outside: tc on the node's eth0 (DNAT, SNAT
  to the node IP when the backend is on another node; externalTrafficPolicy: Local keeps the
  client IP).

    ProxyState --model.render()--> map contents --maps.diff(kernel's)--> bpftool batch --> maps

model (pure render), maps (pure diff and batch), kernel (bpffs, load, attach, cleanup),
view (read back like `cilium-dbg bpf lb list`, the decision log).
"""

from __future__ import annotations

import json
import marshal
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kplab.cluster.run import NETNS_DIR
from kplab.errors import EnvironmentProblem, KplabError
from kplab.proxy.base import Availability, Memory, Plan, Proxier, RulesView, SyncResult
from kplab.proxy.core import ProxyState
from kplab.proxy.ebpf import kernel, model
from kplab.proxy.ebpf.maps import Op, batch, diff, parse_dump
from kplab.proxy.ebpf.view import decisions, lb_list

IDS_FILE = "ebpf-ids.json"
ATTACHED_FILE = "ebpf-attached.json"
MAPS_FILE = "ebpf-maps.marshal"
# A sync reads the maps back from the kernel (and so repairs entries changed by hand) up to this
# many entries; above, it trusts what the last sync wrote: dumping 40,000 entries takes seconds.
READ_BACK_UP_TO = 4096


def render_text(state: ProxyState) -> str:
    """The maps a fresh node would hold for `state`, as `cilium-dbg bpf lb list` prints them."""
    contents, _ = model.render(state)
    return lb_list(contents.maps["lb4_services"], contents.maps["lb4_backends"], contents.services,
                   contents.pods).text()


@dataclass
class SyncPlan:
    full: bool  # planned from the maps read back (or empty maps), not from the last sync's memory
    text: str  # `bpftool batch` input
    changed: int  # frontends whose entries change
    ops: list[Op]
    contents: model.Contents
    ids: model.Ids
    first: bool  # nothing loaded yet: apply() loads the object first
    node_ip: str


class EbpfProxier(Proxier):
    mode = "ebpf"
    status_note = "a kube-proxy replacement (Cilium-style eBPF), not an upstream kube-proxy mode"

    @classmethod
    def preview(cls, state: ProxyState, **options: Any) -> str:
        return render_text(state)

    @property
    def kernel(self) -> kernel.NodeKernel:
        return kernel.NodeKernel(self.ctx.lab, self.ctx.node, self.ctx.netns)

    @property
    def socket_lb(self) -> bool:
        return bool(self.ctx.options.get("socket_lb", True))

    def _read(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((Path(self.ctx.state_dir) / name).read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def _write(self, name: str, data: dict[str, Any]) -> None:
        d = Path(self.ctx.state_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / (name + ".tmp")).write_text(json.dumps(data))
        os.replace(d / (name + ".tmp"), d / name)

    # the protocol of kplab.proxy.base: observe -> render -> apply
    def observe(self, state: ProxyState, full: bool = False) -> Memory:
        observed = self._observe(full)
        return Memory(observed, {}, observed["full"])

    def render(self, state: ProxyState, memory: Memory) -> Plan:
        p = self.plan_maps(state, memory.data)
        return Plan(self.mode, p.full, p.text, p.changed, payload=p)

    def _observe(self, full: bool = False) -> dict[str, Any]:
        """What render needs: the id allocation and what the maps hold (read back while they are
        small, or when `full`; else what the last sync wrote); nothing when not loaded yet."""
        first = not self.kernel.loaded
        maps = None if first or full else self._remembered()
        if maps is not None and sum(map(len, maps.values())) <= READ_BACK_UP_TO:
            maps = None  # small enough to read back: what someone changed by hand is repaired
        full = first or full or maps is None
        return {"first": first, "full": full, "ids": self._read(IDS_FILE),
                "maps": maps if maps is not None else self._kernel_maps(first)}

    def plan_maps(self, state: ProxyState, memory: dict[str, Any]) -> SyncPlan:
        """Pure: the map updates of this sync, as the `bpftool batch` text apply() sends."""
        saved = memory["ids"]
        ids = model.Ids(saved.get("backends", {}), saved.get("frontends", {}), saved.get("next", {}))
        contents, ids = model.render(state, ids)
        ops = diff(memory["maps"], contents.maps)
        changed = {o.key[:6] + o.key[8:] for o in ops if o.map == "lb4_services"}  # frontends, not slots
        return SyncPlan(memory["full"], batch(ops, self.kernel.maps), len(changed), ops, contents, ids,
                        memory["first"], state.node_ips[0])

    def apply(self, plan: Plan) -> SyncResult:
        """The only kernel writer: load on first use, one `bpftool batch`, attach to new pods."""
        start = time.monotonic()
        sp: SyncPlan = plan.payload
        k = self.kernel
        if sp.first:
            avail = self.doctor()
            if not avail.available:
                raise EnvironmentProblem(f"eBPF mode unavailable: {avail.detail}; {avail.fix}")
            k.load(sp.node_ip)
        k.write(sp.text)
        self._remember(sp.contents.maps)
        ids, c = sp.ids, sp.contents
        self._write(IDS_FILE, {"backends": ids.backends, "frontends": ids.frontends, "next": ids.next,
                               "services": {str(r): n for r, n in c.services.items()}, "pods": c.pods})
        attached = {} if sp.first else self._read(ATTACHED_FILE)
        veths = k.pod_veths()
        new = {dev: "from_pod" for dev, idx in veths.items() if attached.get(dev) != idx}
        if "eth0" not in attached:
            new["eth0"] = "from_netdev"
        k.attach_tc(new)
        if self.socket_lb:
            k.attach_sockets(fresh=not attached)  # just loaded (or no record): replace what is there
        self._write(ATTACHED_FILE, {**veths, "eth0": 0})
        return SyncResult(full=sp.full, changed_services=sp.changed, seconds=time.monotonic() - start,
                          size=len(sp.ops))

    def expected_lines(self, state: ProxyState) -> list[str]:
        """The map entries a sync from empty maps writes (with this node's id allocation)."""
        memory = self._observe(full=True)
        wanted = self.plan_maps(state, {**memory, "maps": {m: {} for m in model.MAPS}}).contents.maps
        return _map_lines(wanted, wanted)

    def held_lines(self) -> list[str]:
        if not self.kernel.loaded:
            return []
        return _map_lines(self._kernel_maps(False), model.MAPS)

    def _kernel_maps(self, fresh: bool) -> dict[str, dict[bytes, bytes]]:
        """What the maps hold (a full dump: seconds at 10,000 Services), or nothing if just loaded."""
        return {m: {} if fresh else parse_dump(self.kernel.dump(m)) for m in model.MAPS}

    def _remembered(self) -> dict[str, dict[bytes, bytes]] | None:
        """What the last sync wrote (kube-proxy keeps it in memory; a sync here is a new process)."""
        try:
            data = marshal.loads((Path(self.ctx.state_dir) / MAPS_FILE).read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            return None
        return data if isinstance(data, dict) and set(data) == set(model.MAPS) else None

    def _remember(self, maps: dict[str, dict[bytes, bytes]]) -> None:
        d = Path(self.ctx.state_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / (MAPS_FILE + ".tmp")).write_bytes(marshal.dumps(maps))
        os.replace(d / (MAPS_FILE + ".tmp"), d / MAPS_FILE)

    def cleanup(self) -> None:
        """Detach everything this node had and remove its pins (the maps and programs go with them)."""
        k = self.kernel
        k.detach_sockets()
        if os.path.exists(f"{NETNS_DIR}/{self.ctx.netns}"):
            try:
                devices = list(k.pod_veths()) + ["eth0"]
            except KplabError:  # the namespace is going: its filters go with it
                devices = []
            k.detach_tc(devices)
        k.unload()
        for name in (IDS_FILE, ATTACHED_FILE, MAPS_FILE):
            (Path(self.ctx.state_dir) / name).unlink(missing_ok=True)

    def read_back(self) -> RulesView:
        k = self.kernel
        if not k.loaded:
            return RulesView(self.mode, self.ctx.node, f"no eBPF programs loaded for {self.ctx.node}: the eBPF mode "
                                                       "is not programmed here", {"services": []})
        notes = self._read(IDS_FILE)
        services = parse_dump(k.dump("lb4_services"))
        backends = parse_dump(k.dump("lb4_backends"))
        listing = lb_list(services, backends, {int(r): n for r, n in notes.get("services", {}).items()},
                          notes.get("pods", {}))
        cg = kernel.node_cgroup(self.ctx.lab, self.ctx.node)
        header = (f"# eBPF kube-proxy replacement on {self.ctx.node}: maps pinned in {k.maps}\n"
                  f"# socket LB: {'cgroup ' + str(cg) if self.socket_lb else 'off'}; "
                  f"tc: from_pod on the pods' veths, from_netdev on eth0\n"
                  f"# read them yourself: bpftool map dump pinned {k.maps}/lb4_services\n")
        return RulesView(self.mode, self.ctx.node, header + listing.text(),
                         {"maps": str(k.maps), "cgroup": str(cg) if self.socket_lb else None,
                          "services": [vars(r) for r in listing.rows]},
                         {str(r): n for r, n in notes.get("services", {}).items()})

    def counts(self) -> dict[str, dict[str, int]]:
        """New connections so far per Service port ("ns/name:port/PROTO") and backend ("ip:port"),
        from the programs' kplab_counts map (`kplab counters`)."""
        k = self.kernel
        if not k.loaded:
            return {}
        names = self._read(IDS_FILE).get("services", {})
        backends = parse_dump(k.dump("lb4_backends"))
        out: dict[str, dict[str, int]] = {}
        for key, value in parse_dump(k.dump("kplab_counts")).items():
            b = backends.get(key[:4])
            name = names.get(str(int.from_bytes(key[4:6], "little")))
            if b is None or name is None:  # a backend or frontend gone since
                continue
            addr = f"{'.'.join(map(str, b[:4]))}:{int.from_bytes(b[4:6], 'big')}"
            row = out.setdefault(name, {})
            row[addr] = row.get(addr, 0) + int.from_bytes(value, "little")
        return out

    def service_name(self, rev_nat: int) -> str:
        return str(self._read(IDS_FILE).get("services", {}).get(str(rev_nat), ""))

    def decisions(self) -> list[Any]:
        """The node's load-balancing decisions still in kplab_log, oldest first (for `kplab trace`)."""
        k = self.kernel
        return decisions(parse_dump(k.dump("kplab_log"))) if k.loaded else []

    @classmethod
    def doctor(cls) -> Availability:
        missing = [t for t in ("bpftool", "tc", "clang") if shutil.which(t) is None]
        if missing:
            return Availability(cls.mode, False, f"{', '.join(missing)} not found",
                                fix="apt-get install clang llvm bpftool libbpf-dev (or `make setup`)")
        if not kernel.OBJECT.exists():
            return Availability(cls.mode, False, f"{kernel.OBJECT} is missing",
                                fix="`make setup` compiles bpf/kplab_lb.c with clang")
        source = kernel.OBJECT.with_suffix(".c")
        if source.exists() and source.stat().st_mtime > kernel.OBJECT.stat().st_mtime:
            return Availability(cls.mode, False, f"{kernel.OBJECT} is older than {source.name}",
                                fix="`make setup` (or `make bpf/kplab_lb.o`) compiles it again")
        if os.geteuid() != 0:
            return Availability(cls.mode, False, "not root", fix="run as root: BPF and the lab's namespaces need it")
        if kernel.cgroup2_root() is None:
            return Availability(cls.mode, False, "no cgroup v2 mount (socket LB needs one)",
                                fix="mount -t cgroup2 none /sys/fs/cgroup/unified")
        with tempfile.TemporaryDirectory(prefix="kplab-bpf-") as tmp:
            cp = subprocess.run(  # in a private mount namespace: the scratch bpffs vanishes with it
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'mount -t bpf bpf "$1" && bpftool prog loadall "$2" "$1/p" pinmaps "$1/m"', "sh", tmp,
                 str(kernel.OBJECT)], capture_output=True, text=True, check=False)
        if cp.returncode != 0:
            last = (cp.stderr.strip().splitlines() or ["?"])[-1]
            return Availability(cls.mode, False, f"the kernel refused bpf/kplab_lb.o: {last}",
                                fix="a kernel with CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF, CONFIG_NET_CLS_BPF "
                                    "(>= 5.18 for connect()'s ECONNREFUSED)")
        btf = "BTF" if Path("/sys/kernel/btf/vmlinux").exists() else "no BTF"
        version = (subprocess.run(["bpftool", "version"], check=False, capture_output=True, text=True).stdout.splitlines()
                   or ["bpftool"])[0]
        return Availability(cls.mode, True, f"{version}, {btf}, cgroup2 at {kernel.cgroup2_root()}, "
                                            "kplab_lb.o loads in a scratch bpffs", note=cls.status_note)


def _map_lines(maps: dict[str, dict[bytes, bytes]], which: Any) -> list[str]:
    """Map entries as comparable lines, for the maps a sync writes (`which`), not the decision log."""
    return [f"{m} {k.hex()} -> {v.hex()}" for m in which for k, v in maps.get(m, {}).items()]
