"""Where the eBPF mode touches the kernel: only things the lab owns, all found again by name.

    /run/kplab/<lab>/bpffs                 a bpffs of the lab's own (not /sys/fs/bpf: `ip netns
                                           exec` remounts /sys and would hide it)
        <node>/progs/{from_pod,...}        the programs of bpf/kplab_lb.o, loaded once per node
        <node>/maps/{lb4_services,...}     that node's maps
    <cgroup2>/kplab-<lab>.<id>/<node>      a cgroup v2 directory per node: the socket hooks are
                                           attached here and the lab's clients run inside it;
                                           never on the cgroup root or a cgroup the lab did not make
    tc clsact + cls_bpf                    on each pod's node-side veth (from_pod) and the node's
                                           eth0 (from_netdev), inside the node's netns only

`<id>` tells apart labs of the same name run from different /run/kplab (isolated sessions on
one host share the cgroup tree).  Programs live while pinned or attached: removing the pins,
the filters and the cgroup frees them; `remove_leftovers()` does that after a crash too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from kplab.cluster.run import run
from kplab.errors import EnvironmentProblem, ProxierError

REPO = Path(__file__).resolve().parents[3]
OBJECT = Path(os.environ.get("KPLAB_BPF_OBJECT", REPO / "bpf" / "kplab_lb.o"))
SOCK_HOOKS = {"sock4_connect": "connect4", "sock4_sendmsg": "sendmsg4", "sock4_recvmsg": "recvmsg4"}
# bpftool shows libbpf's attach type names; `cgroup attach/detach` take the short ones
ATTACH_NAMES = {"cgroup_inet4_connect": "connect4", "cgroup_udp4_sendmsg": "sendmsg4", "cgroup_udp4_recvmsg": "recvmsg4"}


def state_root() -> Path:
    from kplab.cluster.store import STATE_ROOT

    return STATE_ROOT


def bpffs(lab: str) -> Path:
    return state_root() / lab / "bpffs"


def cgroup2_root() -> Path | None:
    """Where cgroup v2 is mounted (/sys/fs/cgroup/unified on hybrid hosts, /sys/fs/cgroup on v2)."""
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    except OSError:
        pass
    return None


def lab_cgroup(lab: str) -> Path | None:
    root = cgroup2_root()
    if root is None:
        return None
    return root / f"kplab-{lab}.{os.stat(state_root()).st_dev:x}"


def node_cgroup(lab: str, node: str) -> Path | None:
    base = lab_cgroup(lab)
    return None if base is None else base / node


def _bpftool(args: list[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("bpftool") is None:
        raise EnvironmentProblem("bpftool is not installed: run `make setup` (or apt-get install bpftool)")
    cp = subprocess.run(["bpftool", *args], check=False, input=input, capture_output=True, text=True, timeout=600)
    if check and cp.returncode != 0:
        msg = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
        raise ProxierError(f"bpftool {' '.join(args[:3])} failed: {msg[-1] if msg else cp.returncode}", msg)
    return cp


def _is_mounted(path: Path) -> bool:
    try:
        return any(line.split()[1] == str(path) for line in Path("/proc/self/mounts").read_text().splitlines())
    except OSError:
        return False


class NodeKernel:
    """One node's programs, maps and attachments."""

    def __init__(self, lab: str, node: str, netns: str) -> None:
        self.lab, self.node, self.netns = lab, node, netns
        self.dir = bpffs(lab) / node
        self.progs, self.maps = self.dir / "progs", self.dir / "maps"

    @property
    def loaded(self) -> bool:
        return (self.progs / "from_pod").exists()

    def load(self, node_ip: str) -> None:
        """Mount the lab's bpffs if needed and load the object for this node."""
        if not OBJECT.exists():
            raise EnvironmentProblem(f"{OBJECT} is missing: run `make setup` (it compiles bpf/kplab_lb.c with clang)")
        root = bpffs(self.lab)
        root.mkdir(parents=True, exist_ok=True)
        if not _is_mounted(root):
            subprocess.run(["mount", "-t", "bpf", "kplab-bpffs", str(root)], check=True, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)  # pins of a load that died half-way would be in the way
        self.dir.mkdir()
        _bpftool(["prog", "loadall", str(OBJECT), str(self.progs), "pinmaps", str(self.maps)])
        self.write_config(node_ip, log_on=True)

    def write_config(self, node_ip: str, log_on: bool) -> None:
        import socket

        value = socket.inet_aton(node_ip) + int(log_on).to_bytes(4, "little") + bytes(8)
        _bpftool(["map", "update", "pinned", str(self.maps / "kplab_config"), "key", "hex", "00", "00", "00", "00",
                  "value", "hex", *(f"{b:02x}" for b in value)])

    # ------------------------------------------------------------------ maps
    def dump(self, name: str) -> list[dict[str, Any]]:
        cp = _bpftool(["-j", "map", "dump", "pinned", str(self.maps / name)])
        return json.loads(cp.stdout or "[]")  # type: ignore[no-any-return]

    def write(self, batch: str) -> None:
        if batch:
            _bpftool(["batch", "file", "-"], input=batch)

    # ------------------------------------------------------------------ attachments
    def pod_veths(self) -> dict[str, int]:
        """The node-side veths of the node's pods (name -> ifindex)."""
        from kplab.cluster.netns import open_ipr

        ipr = open_ipr(self.netns)  # netlink, no fork
        try:
            return {name: link["index"] for link in ipr.get_links()
                    if (name := link.get_attr("IFLA_IFNAME") or "").startswith("veth")}
        finally:
            ipr.close()

    def attach_tc(self, devices: dict[str, str]) -> None:
        """clsact + a direct-action cls_bpf filter, one `tc -batch` for all: {device: program}."""
        lines = []
        for dev, prog in sorted(devices.items()):
            lines.append(f"qdisc replace dev {dev} clsact")
            lines.append(f"filter replace dev {dev} ingress prio 1 handle 1 bpf da object-pinned {self.progs / prog}")
        if lines:
            run(["tc", "-batch", "-"], netns=self.netns, input="\n".join(lines) + "\n")

    def detach_tc(self, devices: list[str]) -> None:
        lines = [f"qdisc del dev {d} clsact" for d in devices]
        if lines:
            run(["tc", "-force", "-batch", "-"], netns=self.netns, input="\n".join(lines) + "\n", check=False)

    def attach_sockets(self, fresh: bool = False) -> Path:
        """The socket hooks on the node's cgroup; `fresh`: just loaded, so programs of an earlier
        load still attached there (their pins were removed by hand) are replaced."""
        cg = node_cgroup(self.lab, self.node)
        if cg is None:
            raise EnvironmentProblem("no cgroup v2 mount: socket LB needs one (mount -t cgroup2 none /sys/fs/cgroup/unified)")
        try:
            cg.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EnvironmentProblem(f"cannot make the cgroup {cg} for socket LB ({e.strerror}): give the lab a "
                                     "writable cgroup v2, or run without socket LB (`kplab mode ebpf --no-socket-lb`)"
                                     ) from None
        attached = _attached(cg)
        if fresh:
            for hook, prog_id in attached.items():
                _bpftool(["cgroup", "detach", str(cg), hook, "id", str(prog_id)], check=False)
            attached = {}
        for prog, hook in SOCK_HOOKS.items():
            if hook not in attached:
                _bpftool(["cgroup", "attach", str(cg), hook, "pinned", str(self.progs / prog), "multi"])
        return cg

    def detach_sockets(self) -> None:
        cg = node_cgroup(self.lab, self.node)
        if cg is None or not cg.is_dir():
            return
        for hook, prog_id in _attached(cg).items():
            _bpftool(["cgroup", "detach", str(cg), hook, "id", str(prog_id)], check=False)
        _rmdir_cgroup(cg)

    def unload(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)  # unlinking pins frees what nothing else holds
        root = bpffs(self.lab)
        if _is_mounted(root) and not [p for p in root.iterdir() if not p.name.endswith(".debug")]:
            subprocess.run(["umount", str(root)], check=False, capture_output=True)
            shutil.rmtree(root, ignore_errors=True)


def _attached(cg: Path) -> dict[str, int]:
    """Socket hooks attached directly to `cg`: {attach type: program id}."""
    cp = _bpftool(["-j", "cgroup", "show", str(cg)], check=False)
    try:
        return {ATTACH_NAMES.get(e["attach_type"], e["attach_type"]): e["id"] for e in json.loads(cp.stdout or "[]")}
    except (ValueError, KeyError):
        return {}


def _rmdir_cgroup(cg: Path, wait: float = 10.0) -> None:
    """rmdir once its processes (the lab's short-lived clients) are gone; bounded wait."""
    deadline = time.monotonic() + wait
    while True:
        try:
            cg.rmdir()
            break
        except FileNotFoundError:
            break
        except OSError:
            if time.monotonic() > deadline:
                raise ProxierError(f"cannot remove cgroup {cg}: processes still inside "
                                   f"({(cg / 'cgroup.procs').read_text().split()})") from None
            time.sleep(0.1)
    parent = cg.parent
    if parent.name.startswith("kplab-") and parent.is_dir() and not any(p.is_dir() for p in parent.iterdir()):
        try:
            parent.rmdir()
        except OSError:
            pass


def remove_leftovers(lab: str) -> None:
    """What a lab in eBPF mode may leave after a crash: its cgroups (and their socket hooks) and its
    bpffs mount.  The tc filters went with the lab's namespaces."""
    base = lab_cgroup(lab)
    if base is not None and base.is_dir():
        for cg in [p for p in base.iterdir() if p.is_dir()]:
            for hook, prog_id in _attached(cg).items():
                _bpftool(["cgroup", "detach", str(cg), hook, "id", str(prog_id)], check=False)
            _rmdir_cgroup(cg)
        try:
            base.rmdir()
        except OSError:
            pass
    root = bpffs(lab)
    if _is_mounted(root):
        for p in root.iterdir():
            if p.is_dir() and not p.name.endswith(".debug"):
                shutil.rmtree(p, ignore_errors=True)
        subprocess.run(["umount", str(root)], check=False, capture_output=True)


def client_cgroup(proxier: Any) -> str | None:
    """The node's socket-LB cgroup when the eBPF mode attached its hooks there, else None."""
    if not proxier.ctx.options.get("socket_lb", True):
        return None
    cg = node_cgroup(proxier.ctx.lab, proxier.ctx.node)
    return str(cg) if cg is not None and cg.is_dir() else None
