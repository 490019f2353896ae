"""Namespaces, links, addresses, routes and sysctls of a lab, over netlink (pyroute2).

Naming scheme (everything a lab creates carries its prefix, and nothing lives in the host's
root namespace, so removing a lab's namespaces removes every link it made):

    kplab-<lab>-net        the node network: bridge br0 172.18.0.1/24 (routes nothing further)
    kplab-<lab>-node-<i>   a node: eth0 172.18.0.(10+i) on br0, bridge cni0 = first IP of its pod CIDR
    kplab-<lab>-<pod>      a pod: eth0 on its node's cni0 (peer veth<hash> in the node, hairpin on)
    kplab-<lab>-outside    a client off the cluster, on the node network

Sysctls are written through /proc/sys after entering the namespace on the calling thread
(`entered()`): /proc/sys/net shows the network namespace of the thread that opens it.

Speed: pyroute2's `netns.create()` and `IPRoute(netns=...)` fork a helper process each time.
A thread may unshare its own network namespace, and a socket keeps the namespace it was made
in, so kplab creates namespaces (unshare + bind mount, as iproute2 does) and opens netlink
sockets in them on the calling thread: ~1 ms per pod instead of ~50 ms.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import socket
import struct
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kplab.cluster.run import NETNS_DIR
from kplab.errors import EnvironmentProblem, LabError

PREFIX = "kplab-"
CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_SHARED, MNT_DETACH = 4096, 16384, 1 << 20, 2
_libc = ctypes.CDLL(None, use_errno=True)


def _prepare_netns_dir() -> None:
    """Make /run/netns a shared bind mount, as `ip netns add` does, so mounts propagate."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    d = NETNS_DIR.encode()
    if _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) != 0:
        if _libc.mount(d, d, b"none", MS_BIND | MS_REC, None) != 0 or \
                _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) != 0:
            raise LabError(f"cannot prepare {NETNS_DIR}: {os.strerror(ctypes.get_errno())}")


def create_named_netns(name: str) -> IPRoute:
    """Create netns `name` (visible to `ip netns`) and return a netlink socket inside it."""
    path = f"{NETNS_DIR}/{name}"
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileNotFoundError:
        _prepare_netns_dir()
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            os.unlink(path)
            raise LabError(f"cannot create namespace {name}: {os.strerror(ctypes.get_errno())}")
        try:
            if _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None) != 0:
                err = ctypes.get_errno()
                os.unlink(path)
                raise LabError(f"cannot bind namespace {name}: {os.strerror(err)}")
            ipr = IPRoute()
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            return ipr
        finally:
            _libc.setns(own, CLONE_NEWNET)
    finally:
        os.close(own)


def open_ipr(netns: str) -> IPRoute:
    """A netlink socket inside an existing named netns, made on this thread (no fork)."""
    with entered(netns):
        ipr = IPRoute()
        ipr.link_lookup(ifname="lo")
        return ipr


def ns_name(lab: str, name: str) -> str:
    return f"{PREFIX}{lab}-{name}"


def lab_namespaces(lab: str | None = None) -> list[str]:
    """Named netns of one lab (or of every lab when lab is None), found by prefix only."""
    prefix = PREFIX + (f"{lab}-" if lab else "")
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the body with the calling thread inside `netns` (sockets made here stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"{NETNS_DIR}/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise LabError(f"cannot enter namespace {netns}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            _libc.setns(own, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


def write_sysctls(netns: str, values: dict[str, str]) -> None:
    with entered(netns):
        for key, value in values.items():
            path = "/proc/sys/" + key.replace(".", "/")
            try:
                with open(path, "w") as f:
                    f.write(value)
            except FileNotFoundError:
                raise EnvironmentProblem(
                    f"sysctl {key} is missing in this kernel"
                    + (": load br_netfilter (modprobe br_netfilter)" if "bridge" in key else "")
                ) from None


def read_sysctl(netns: str, key: str) -> str:
    with entered(netns), open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def veth_name(pod_netns: str) -> str:
    """Node-side name of a pod's veth: 'veth' + 8 hex of its netns name (interface names <= 15)."""
    return "veth" + hashlib.sha256(pod_netns.encode()).hexdigest()[:8]


class Builder:
    """Creates namespaces and links; remembers what it made, in order, for an all-or-nothing up."""

    def __init__(self, on_create: callable[[str], None] | None = None) -> None:  # type: ignore[valid-type]
        self.created: list[str] = []
        self._on_create = on_create
        self._sockets: dict[str, IPRoute] = {}

    def ipr(self, netns: str) -> IPRoute:
        if netns not in self._sockets:
            self._sockets[netns] = open_ipr(netns)
        return self._sockets[netns]

    def close(self) -> None:
        for s in self._sockets.values():
            s.close()
        self._sockets.clear()

    def create_netns(self, name: str) -> None:
        if os.path.exists(f"{NETNS_DIR}/{name}"):
            raise LabError(f"namespace {name} exists already: run `kplab down` or `kplab clean` first")
        if self._on_create:
            self._on_create(name)  # journal first, so a crash right after still knows it
        self._sockets[name] = create_named_netns(name)
        self.created.append(name)

    def bridge(self, netns: str, name: str, address: str | None) -> int:
        ipr = self.ipr(netns)
        with kernel_feature("bridge", "CONFIG_BRIDGE"):
            ipr.link("add", ifname=name, kind="bridge")
        idx = ipr.link_lookup(ifname=name)[0]
        # A bridge whose MAC was never set takes the lowest MAC of its ports, so a pod coming or
        # going could change it and leave the other pods' ARP entry for their gateway wrong for
        # half a minute.  Setting it (to what it is) makes it stay.
        mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        ipr.link("set", index=idx, address=mac)
        if address:
            ip, plen = address.split("/")
            ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
        ipr.link("set", index=idx, state="up")
        return idx

    def attach(self, bridge_ns: str, bridge_idx: int, port_name: str, inner_ns: str, address: str,
               gateway: str | None, hairpin: bool = False, mac: str | None = None) -> str:
        """veth from a bridge in `bridge_ns` to eth0 in `inner_ns`, addressed and routed; eth0's MAC."""
        ipr = self.ipr(bridge_ns)
        peer = {"ifname": "eth0", "net_ns_fd": inner_ns, **({"address": mac} if mac else {})}
        with kernel_feature("veth", "CONFIG_VETH"):
            ipr.link("add", ifname=port_name, kind="veth", peer=peer)
        idx = ipr.link_lookup(ifname=port_name)[0]
        ipr.link("set", index=idx, master=bridge_idx, state="up")
        if hairpin:
            ipr.brport("set", index=idx, mode=1)
        inner = self.ipr(inner_ns)
        eth0 = inner.link_lookup(ifname="eth0")[0]
        ip, plen = address.split("/")
        inner.addr("add", index=eth0, address=ip, prefixlen=int(plen))
        inner.link("set", index=eth0, state="up")
        if gateway:
            inner.route("add", dst="0.0.0.0/0", gateway=gateway)
        return str(inner.get_links(eth0)[0].get_attr("IFLA_ADDRESS"))

    def route(self, netns: str, dst: str, gateway: str) -> None:
        self.ipr(netns).route("add", dst=dst, gateway=gateway)

    def detach(self, bridge_ns: str, port_name: str) -> None:
        ipr = self.ipr(bridge_ns)
        found = ipr.link_lookup(ifname=port_name)
        if found:
            ipr.link("del", index=found[0])


@contextlib.contextmanager
def kernel_feature(kind: str, option: str) -> Iterator[None]:
    """Turn the kernel refusing a link kind into one line that says what is missing."""
    try:
        yield
    except NetlinkError as e:
        if e.code in (95, 93):  # EOPNOTSUPP / EPROTONOSUPPORT: the kind is unknown to this kernel
            raise EnvironmentProblem(f"this kernel cannot create {kind} interfaces: load the module "
                                     f"(modprobe {kind}) or use a kernel built with {option}") from None
        raise LabError(f"the kernel refused to create a {kind} interface: {e}") from None


def announce(netns: str, ip: str, ifname: str = "eth0") -> None:
    """A gratuitous ARP for `ip` from `ifname`: neighbours that knew the address with another MAC
    (a pod rebuilt with its old address) learn the new one now, not when their entry expires."""
    with entered(netns), socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        mac, addr = s.getsockname()[4], socket.inet_aton(ip)
        s.send(b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
               + mac + addr + b"\x00" * 6 + addr)


def remove_netns(name: str) -> None:
    """Remove one named netns (its links go with it); quiet if it is already gone."""
    path = f"{NETNS_DIR}/{name}"
    if os.path.exists(path):
        _libc.umount2(path.encode(), MNT_DETACH)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def check_environment() -> None:
    """Root and the kernel features the lab stands on; one line saying what to do otherwise."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("kplab needs root to create network namespaces: run it with sudo (or as root)")
    for feature, path in (("network namespaces", "/proc/self/ns/net"),):
        if not os.path.exists(path):
            raise EnvironmentProblem(f"this kernel lacks {feature} (CONFIG_NET_NS)")
