"""Partial IPVS syncs whose cost follows the change, not the table.

A full sync records, per Service (namespace/name), what it owns: its virtual servers, its set
members (KUBE-IPVS-IPS members are the addresses bound to kube-ipvs0) and its no-node-access
load-balancer ports, with the tracker's digest of its spec and endpoints; and a reference count per
set member, because owners overlap (two ports of a Service share a ClusterIP, two Services can
share an endpoint's KUBE-LOOP-BACK entry).

A partial sync digests every Service (kplab.proxy.tracker, cheap), builds the share of the changed
and removed ones only, and derives the delta: their virtual servers, those no Service wants any
more, set members whose count leaves or reaches 0 (and so addresses to bind or unbind), and the
constant iptables rules only when which sets are empty changed.  Upstream's IPVS proxier walks
every Service on every sync and reads each virtual server and set back from the kernel; here only
a full sync reads back (the first one, `kplab sync --full`, and the retry after a kernel error).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import astuple, dataclass, field
from typing import Any

from kplab.proxy.core import ProxyState
from kplab.proxy.ipvs import rules as R
from kplab.proxy.tracker import changed_services, service_digests

LEDGER = ("config", "digests", "owns", "refs", "nna", "iptables")  # the memory keys this module keeps


def config_digest(state: ProxyState, scheduler: str, nodeport_ips: tuple[str, ...], local: tuple[str, ...]) -> str:
    """What every Service's share depends on besides its own spec: a change here means a full sync."""
    node = [getattr(state, f.name) for f in dataclasses.fields(state) if f.name not in ("services", "endpoints")]
    return hashlib.blake2b(repr((node, scheduler, nodeport_ips, local)).encode(), digest_size=12).hexdigest()


def owned(part: R.IpvsPlan) -> dict[str, Any]:
    """One Service's share: virtual server keys, set members, no-node-access ports."""
    return {"vs": [sp.vs.key for sp in part.servers],
            "sets": {name: sorted(m) for name, m in part.ipsets.items() if m},
            "nna": ["|".join(map(str, x)) for x in part.no_node_access]}  # fmt: skip


def _packed(own: dict[str, Any]) -> str:
    """A share kept as one JSON string: loading the memory then costs one string per Service, and
    only the changed ones are decoded (10k nested dicts took half a second to load on the host)."""
    return json.dumps(own, separators=(",", ":"))


def servers_memory(part: R.IpvsPlan) -> dict[str, dict[str, Any]]:
    """What a sync remembers of each virtual server (read_back's annotations use service and kind)."""
    return {sp.vs.key: {"fp": sp.fingerprint(), "vs": list(astuple(sp.vs)), "service": sp.service,
                        "kind": sp.kind} for sp in part.servers}  # fmt: skip


def ledger(state: ProxyState, parts: dict[str, R.IpvsPlan], config: str, iptables: str) -> dict[str, Any]:
    """The memory a full sync leaves for the partial ones after it."""
    owns = {key: owned(part) for key, part in parts.items()}
    refs: dict[str, dict[str, int]] = {}
    nna: dict[str, int] = {}
    for own in owns.values():
        _count(refs, nna, own, +1)
    owns = {key: _packed(own) for key, own in owns.items()}
    return {"config": config, "digests": service_digests(state), "owns": owns, "refs": refs, "nna": nna,
            "iptables": _digest(iptables)}  # fmt: skip


@dataclass
class Delta:
    """What a partial sync writes; `memory` is the ledger once it is written."""

    services: list[str]  # Services (namespace/name) changed or removed since the last sync
    servers: list[R.ServerPlan] = field(default_factory=list)  # the changed Services' virtual servers
    gone: list[R.VirtualServer] = field(default_factory=list)  # recorded virtual servers no Service wants
    added: dict[str, list[str]] = field(default_factory=dict)  # set -> members to add
    deleted: dict[str, list[str]] = field(default_factory=dict)  # set -> members to delete
    iptables: str = ""  # the constant rules, only when they changed
    memory: dict[str, Any] = field(default_factory=dict)
    servers_memory: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def bind(self) -> list[str]:
        return self.added.get("KUBE-IPVS-IPS", [])

    @property
    def unbind(self) -> list[str]:
        return self.deleted.get("KUBE-IPVS-IPS", [])

    def ipset_lines(self) -> list[str]:
        return [f"del {n} {m} -exist" for n, ms in self.deleted.items() for m in ms] + [
            f"add {n} {m} -exist" for n, ms in self.added.items() for m in ms]  # fmt: skip

    def text(self) -> str:
        out = [f"# partial sync: {len(self.services)} Services changed or removed: {' '.join(self.services)}"]
        out += [f"ip addr add {a}/32 dev {R.DUMMY_DEVICE}" for a in self.bind]
        out += R.ipvsadm_lines(self.servers) + [R.ipvsadm_service("-D", vs) for vs in self.gone]
        out += [f"ip addr del {a}/32 dev {R.DUMMY_DEVICE}" for a in self.unbind]
        out += self.ipset_lines() + ([self.iptables.rstrip("\n")] if self.iptables else [])
        return "\n".join(out) + "\n"


def partial(state: ProxyState, saved: dict[str, Any], scheduler: str, nodeport_ips: tuple[str, ...],
            local: tuple[str, ...]) -> Delta | None:  # fmt: skip
    """The delta since the sync that left `saved`; None when only a full sync will do (no ledger, or
    what every Service depends on changed: node addresses, scheduler, detector, ...)."""
    if any(k not in saved for k in LEDGER) or saved["config"] != config_digest(state, scheduler, nodeport_ips, local):
        return None
    digests = service_digests(state)
    keys = sorted(changed_services(saved["digests"], digests) | (set(saved["digests"]) - set(digests)))
    chosen = set(keys)
    wanted = sorted((s for k, s in state.services.items() if k.namespaced_name in chosen), key=lambda s: s.name)
    parts = R.plan_parts(state, wanted, scheduler, nodeport_ips, frozenset(local))
    refs = {n: dict(m) for n, m in saved["refs"].items()}  # copies (C speed): `saved` stays as loaded
    nna, owns, servers = dict(saved["nna"]), dict(saved["owns"]), dict(saved.get("servers", {}))
    old = {key: json.loads(owns.pop(key)) for key in keys if key in owns}
    touched = {(n, m) for own in old.values() for n, ms in own["sets"].items() for m in ms}
    touched |= {(n, m) for part in parts.values() for n, ms in part.ipsets.items() for m in ms}
    before = {(n, m): refs.get(n, {}).get(m, 0) for n, m in touched}
    old_vs: set[str] = set()
    for own in old.values():
        _count(refs, nna, own, -1)
        old_vs.update(own["vs"])
        for vs_key in own["vs"]:
            servers.pop(vs_key, None)
    d = Delta(keys)
    for key, part in parts.items():
        own = owned(part)
        _count(refs, nna, own, +1)
        owns[key] = _packed(own)
        d.servers += part.servers
        servers.update(servers_memory(part))
    new_vs = {sp.vs.key for sp in d.servers}
    known = saved.get("servers", {})
    d.gone = [R.VirtualServer(*known[k]["vs"]) for k in sorted(old_vs - new_vs) if k in known]
    for n, m in sorted(touched):
        now = refs[n].get(m, 0)
        if now <= 0:
            refs[n].pop(m, None)
        if before[(n, m)] <= 0 < now:
            d.added.setdefault(n, []).append(m)
        elif now <= 0 < before[(n, m)]:
            d.deleted.setdefault(n, []).append(m)
    text = R.iptables_restore(state, _shape(refs, nna))
    if _digest(text) != saved["iptables"]:
        d.iptables = text
    d.memory = {"config": saved["config"], "digests": digests, "owns": owns, "refs": refs,
                    "nna": {k: c for k, c in nna.items() if c > 0}, "iptables": _digest(text)}  # fmt: skip
    d.servers_memory = servers
    return d


def _count(refs: dict[str, dict[str, int]], nna: dict[str, int], own: dict[str, Any], step: int) -> None:
    for name, members in own["sets"].items():
        counts = refs.setdefault(name, {})
        for m in members:
            counts[m] = counts.get(m, 0) + step
    for x in own["nna"]:
        nna[x] = nna.get(x, 0) + step


def _shape(refs: dict[str, dict[str, int]], nna: dict[str, int]) -> R.IpvsPlan:
    """What iptables_restore() reads of a plan: which sets are empty, and the no-node-access ports."""
    sets = {name: ({"x"} if any(c > 0 for c in refs.get(name, {}).values()) else set()) for name in R.IPSETS}
    ports = [(ip, proto, int(port)) for ip, proto, port in (k.split("|") for k, c in sorted(nna.items()) if c > 0)]
    return R.IpvsPlan(ipsets=sets, no_node_access=ports)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
