"""The options a lab takes (`Lab.up(..., **options)`, `lab.set_mode(mode, **options)`, `--set`).

They are read in many places (the network, the local-traffic detector, each mode), each with
a default, so a misspelt one would be silently ignored: `check()` names it before anything is
built, with the known ones, as the CLI's `--set` does.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from kplab.errors import LabError

OPTIONS = {
    # the lab's network (kplab.cluster.manifests.Network)
    "service_cidr": "Service ClusterIP range",
    "cluster_cidr": "pod range",
    "node_cidr": "node network",
    "lb_pool": "LoadBalancer IP pool",
    "zones": "topology zones given to the nodes in turn",
    # kube-proxy, every mode
    "masquerade_all": "SNAT every Service packet",
    "nodeport_addresses": "addresses NodePorts listen on",
    "detect_local_mode": "how local (pod) traffic is told apart",
    "pod_bridge_interface": "detect_local_mode=BridgeInterface's bridge",
    "pod_interface_name_prefix": "detect_local_mode=InterfaceNamePrefix's prefix",
    "conntrack_cleanup": "clear stale UDP conntrack entries (default true)",
    "keep_input": "keep the last loaded input (benchmarks)",
    # one mode each
    "iptables_backend": "iptables: nft or legacy",
    "drop_invalid": "iptables: KUBE-FORWARD drops ct state INVALID (default true; false as before 1.15)",
    "nftables_version": "nftables: the layout of 1.33 or 1.34+",
    "counters": "nftables: counters in the rules",
    "scheduler": "ipvs: rr, lc, wrr, ...",
    "full_sync": "ipvs: every sync full",
    "proxy_ports": "userspace: proxy port per service port",
    "proxy_port_range": "userspace: range proxy ports come from",
    "udp_timeout": "userspace: UDP idle timeout",
    "listen_ip": "userspace: address the proxy listens on",
    "host_ip": "userspace: where host traffic is sent when listening on 0.0.0.0",
    "socket_lb": "ebpf: choose backends at connect()",
}


# the options only some modes read (the others take every mode's); a learner who sets one in
# another mode gets a warning rather than a silent no-op
MODES_READING = {
    "iptables_backend": ("iptables", "ipvs", "userspace"),
    "drop_invalid": ("iptables",),
    "nftables_version": ("nftables",),
    "counters": ("nftables",),
    "scheduler": ("ipvs",),
    "full_sync": ("ipvs",),
    "proxy_ports": ("userspace",),
    "proxy_port_range": ("userspace",),
    "udp_timeout": ("userspace",),
    "listen_ip": ("userspace",),
    "host_ip": ("userspace",),
    "socket_lb": ("ebpf",),
}


def ignored(options: Iterable[str], mode: str) -> list[str]:
    """One line per option given that `mode` does not read (kept for the modes that do)."""
    return [f"option {k}: {mode} mode ignores it; it is read in {' and '.join(MODES_READING[k])} mode "
            f"(kept for when the lab runs {'that' if len(MODES_READING[k]) == 1 else 'those'})"
            for k in options if mode in PROXY_MODES and mode not in MODES_READING.get(k, (mode,))]


PROXY_MODES = ("iptables", "ipvs", "nftables", "userspace", "ebpf")


def meant(key: str, known: Iterable[str]) -> str:
    """" (did you mean X?)" for the known name closest to a misspelt `key`, or ""."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


CHOICES = {"iptables_backend": ("nft", "nf_tables", "legacy")}  # options whose value is one of a few words


def check(options: Iterable[str] | dict[str, object]) -> None:
    """LabError naming every unknown option (and the likely one meant), with the known ones; and a
    value that is none of an option's choices (before a mode switch tears anything down)."""
    if isinstance(options, dict):
        for key, choices in CHOICES.items():
            value = options.get(key)
            if value is not None and str(value) not in choices:
                raise LabError(f"{key} {value!r}: use {' or '.join(c for c in choices if c != 'nf_tables')}"
                               f"{meant(str(value), choices)}")
    unknown = [k for k in options if k not in OPTIONS]
    if not unknown:
        return
    hints = [f"{k!r}{meant(k, OPTIONS)}" for k in unknown]
    raise LabError(f"unknown lab option {', '.join(hints)}: the options are {', '.join(OPTIONS)}")
