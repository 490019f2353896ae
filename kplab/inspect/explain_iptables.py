"""Explain an `iptables-save` dump of kube-proxy's iptables mode, Service by Service.

Every per-service chain carries the same 16-character hash (`KUBE-SVC-<h>`, `KUBE-SVL-<h>`,
`KUBE-EXT-<h>`, `KUBE-FW-<h>`; `KUBE-XLB-<h>` before 1.24), so the hash groups them.  Names
come from rule comments and are checked by recomputing upstream's hash (a comment can lie,
the hash cannot); with `--services` they come from the hash alone.  Each `KUBE-SEP-<h2>` is
resolved to its endpoint from its DNAT rule and checked the same way.  The probability
cascade of a KUBE-SVC chain is turned into each endpoint's real share.

Layouts read: current (1.22+, KUBE-EXT/SVL), older (XLB chains, masquerade rules in
KUBE-SERVICES, SEP comments without "-> ip:port").
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kplab.formats.iptables_save import Dump, Rule
from kplab.formats.naming import IPTABLES_HASH_LEN, iptables_sep_chain, port_proto_hash
from kplab.inspect.views import EndpointView, Entry, Explanation, ServiceView, cascade_shares, dispatch

if TYPE_CHECKING:
    from kplab.inspect.catalog import Catalog

ROLES = {
    "KUBE-SVC-": "svc",
    "KUBE-SVL-": "local",
    "KUBE-XLB-": "local",
    "KUBE-EXT-": "external",
    "KUBE-FW-": "firewall",
}
_NAME = re.compile(r"^[a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*(:\S*)?$")
_CIDR = re.compile(r"^[\d.]+/\d+$|^[0-9a-f:]+/\d+$")
BUILTIN_TARGETS = {
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "DNAT",
    "SNAT",
    "MASQUERADE",
    "MARK",
    "CONNMARK",
    "REDIRECT",
    "LOG",
    "NFLOG",
    "TRACE",
    "CHECKSUM",
    "NOTRACK",
    "CT",
    "TPROXY",
    "QUEUE",
    "NFQUEUE",
}


def comment_name(comment: str) -> str:
    """The "namespace/name:port" inside a kube-proxy rule comment, "" if there is none.

    >>> comment_name("masquerade traffic for ns1/svc1:p80 external destinations")
    'ns1/svc1:p80'
    """
    for tok in comment.split():
        if _NAME.match(tok) and not _CIDR.match(tok):
            return tok
    return ""


def split_chain(chain: str) -> tuple[str, str]:
    """("KUBE-SVC-", hash) for a per-service chain, ("", "") otherwise."""
    for prefix in ROLES:
        if chain.startswith(prefix) and len(chain) == len(prefix) + IPTABLES_HASH_LEN:
            return prefix, chain[len(prefix) :]
    return "", ""


def _addr(rule: Rule, port_opt: str = "--dport") -> str:
    ip = rule.value("-d").removesuffix("/32")
    port = rule.value(port_opt)
    return f"{ip}:{port}" if ip else f"*:{port}"


class _Reader:
    def __init__(self, dump: Dump, catalog: Catalog | None) -> None:
        self.dump = dump
        self.nat = dump.chains("nat")
        self.catalog = catalog
        self.views: dict[str, ServiceView] = {}
        self.ex = Explanation("iptables")

    def view(self, h: str) -> ServiceView:
        return self.views.setdefault(h, ServiceView(key=h))

    def read(self) -> Explanation:
        for name in self.nat:
            prefix, h = split_chain(name)
            if prefix:
                self.view(h).chains[ROLES[prefix]] = name
        self._entries()
        self._filter()
        for h, v in self.views.items():
            self._name(h, v)
            dispatch(v, self._endpoints)
            self._external(v)
        for v in self.views.values():
            dispatching = "svc" in v.chains or "local" in v.chains
            if dispatching and not v.endpoints and not v.local_endpoints and not v.no_endpoints:
                v.anomalies.append("no endpoints: its chains jump to no KUBE-SEP chain")
        self._orphans()
        self.ex.services = list(self.views.values())
        return self.ex

    def _note_name(self, v: ServiceView, rule: Rule) -> None:
        if rule.value("-p") and not v.protocol:
            v.protocol = rule.value("-p").upper()
        name = comment_name(rule.comment)
        if name and not v.name:
            v.name = name

    def _entries(self) -> None:
        for rule in self.dump.rules("nat", "KUBE-SERVICES"):
            prefix, h = split_chain(rule.target)
            if not prefix:
                continue
            v = self.view(h)
            self._note_name(v, rule)
            c = rule.comment
            kind = (
                "ClusterIP"
                if "cluster IP" in c
                else "ExternalIP"
                if "external IP" in c
                else "LoadBalancer"
                if "loadbalancer IP" in c
                else {"svc": "ClusterIP", "local": "ClusterIP", "firewall": "LoadBalancer"}.get(
                    ROLES[prefix], "external"
                )
            )
            if kind == "ClusterIP" and prefix == "KUBE-SVL-":
                v.internal_policy = "Local"
            self._add_entry(v, Entry(kind, _addr(rule), rule.target))
        for rule in self.dump.rules("nat", "KUBE-NODEPORTS"):
            prefix, h = split_chain(rule.target)
            if prefix:
                v = self.view(h)
                self._note_name(v, rule)
                self._add_entry(v, Entry("NodePort", _addr(rule), rule.target))

    @staticmethod
    def _add_entry(v: ServiceView, e: Entry) -> None:
        if all((x.kind, x.address, x.chain) != (e.kind, e.address, e.chain) for x in v.entries):
            v.entries.append(e)

    def _service_rules(self, v: ServiceView) -> list[Rule]:
        return [r for c in v.chains.values() for r in self.dump.rules("nat", c)]

    def _name(self, h: str, v: ServiceView) -> None:
        for rule in self._service_rules(v):
            self._note_name(v, rule)
        if not v.protocol:
            for sep in self._seps(v):
                dnat = self._dnat(sep)
                if dnat and dnat.value("-p"):
                    v.protocol = dnat.value("-p").upper()
                    break
        known = self.catalog.by_ipt_hash.get(h) if self.catalog else None
        if known:
            if v.name and v.name != known.name:
                v.anomalies.append(f"rule comments say {v.name} but the chain hash is {known.name}'s")
            v.name, v.protocol, v.name_from = known.name, known.protocol, "--services (hash)"
        elif v.name_from:
            pass  # named by a filter-table comment: the key was computed from that name
        elif v.name and v.protocol and port_proto_hash(v.name, v.protocol) == h:
            v.name_from = "comment, hash checked"
        elif v.name:
            v.name_from = "comment"
            if v.protocol:
                v.anomalies.append(
                    f"the chain hash {h} is not the hash of {v.name} ({v.protocol}): renamed by hand?"
                )
        elif self.catalog:
            self.ex.anomalies.append(
                f"chain hash {h} matches no Service port in --services (stale, or another cluster)"
            )

    def _seps(self, v: ServiceView) -> list[str]:
        return [
            r.target
            for role in ("svc", "local")
            for r in self.dump.rules("nat", v.chains.get(role, ""))
            if r.target.startswith("KUBE-SEP-")
        ]

    def _dnat(self, sep: str) -> Rule | None:
        return next((r for r in self.dump.rules("nat", sep) if r.target == "DNAT"), None)

    def _endpoints(self, v: ServiceView, chain: str) -> list[EndpointView]:
        probs: list[float | None] = []
        picks: list[Rule] = []
        sticky: set[str] = set()
        for r in self.dump.rules("nat", chain):
            if not r.target.startswith("KUBE-SEP-"):
                if r.target == "KUBE-MARK-DROP":
                    v.no_endpoints = v.no_endpoints or "no local endpoints: DROP (KUBE-MARK-DROP)"
                continue
            if r.has("--rcheck"):
                sticky.add(r.target)
                v.affinity_seconds = int(r.value("--seconds", "0") or 0)
                continue
            if picks and probs[-1] is None:
                v.anomalies.append(
                    f"{chain} rule {r.number} can never match: an unconditional jump comes first"
                )
                continue
            picks.append(r)
            p = r.value("--probability")
            probs.append(float(p) if p else None)
        shares, left = cascade_shares(probs)
        if picks and left > 1e-6:
            v.anomalies.append(
                f"{left:.1f}% of new connections match no endpoint rule in {chain} and fall through"
            )
        out = []
        for r, share, p in zip(picks, shares, probs):
            dnat = self._dnat(r.target)
            addr = dnat.value("--to-destination") if dnat else "?"
            how = f"probability {r.value('--probability')}" if p is not None else "no probability: the rest"
            ep = EndpointView(addr, r.target, share, how)
            ep.affinity = r.target in sticky
            if v.affinity_seconds and not any(x.has("--set") for x in self.dump.rules("nat", r.target)):
                v.anomalies.append(
                    f"{r.target} never records clients (no -m recent --set): affinity cannot stick"
                )
            self._check_sep(v, ep)
            out.append(ep)
        seen = [e.address for e in out]
        for a in sorted({a for a in seen if seen.count(a) > 1}):
            v.anomalies.append(f"endpoint {a} is listed {seen.count(a)} times in {chain}")
        return out

    def _check_sep(self, v: ServiceView, ep: EndpointView) -> None:
        if (
            v.name
            and v.protocol
            and ep.address != "?"
            and iptables_sep_chain(v.name, v.protocol, ep.address) != ep.chain
        ):
            v.anomalies.append(f"{ep.chain} does not hash from {v.name} -> {ep.address}")

    def _external(self, v: ServiceView) -> None:
        if not any(e.kind not in ("ClusterIP", "HealthCheck") for e in v.entries):
            return
        v.external_policy = v.external_policy or "Cluster"
        if any(e.chain.startswith("KUBE-XLB-") for e in v.entries):
            v.external_policy = "Local"
        ext = self.dump.rules("nat", v.chains.get("external", ""))
        to_svc = [r for r in ext if r.target.startswith("KUBE-SVC-")]
        if any(r.target.startswith(("KUBE-SVL-", "KUBE-XLB-")) for r in ext) or (
            to_svc and all(r.has("-s") or r.has("--src-type") for r in to_svc)
        ):
            v.external_policy = "Local"  # only pod and host traffic short-circuit to the Cluster chain
        for r in self.dump.rules("nat", v.chains.get("firewall", "")):
            if r.has("-s") and r.target.startswith(("KUBE-EXT-", "KUBE-SVC-", "KUBE-XLB-")):
                v.source_ranges.append(r.value("-s"))

    def _filter(self) -> None:
        """REJECT/DROP rules for Services without (local) endpoints live in the filter table."""
        for r in self.dump.rules("filter", "KUBE-NODEPORTS"):
            name = comment_name(r.comment)
            if name and r.target == "ACCEPT" and "health check" in r.comment:
                v = self.view(port_proto_hash(name, r.value("-p") or "tcp"))
                self._add_entry(v, Entry("HealthCheck", f"*:{r.value('--dport')}", "filter KUBE-NODEPORTS"))
        for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"):
            for r in self.dump.rules("filter", chain):
                name = comment_name(r.comment)
                if r.target not in ("REJECT", "DROP") or not name or "endpoints" not in r.comment:
                    continue
                proto = r.value("-p").upper() or "TCP"
                v = self.view(port_proto_hash(name, proto))
                if not v.chains and not v.name:
                    v.name, v.protocol, v.name_from = name, proto, "comment (filter table)"
                local = "local " if "no local endpoints" in r.comment else ""
                if r.value("--dst-type") == "LOCAL" or not r.has("-d"):
                    kind = "NodePort"
                else:
                    kind = "ClusterIP" if chain == "KUBE-SERVICES" else "external"
                addr = _addr(r)
                note = f"no {local}endpoints: {r.target}"
                match = next((e for e in v.entries if e.address == addr), None)
                if match:
                    match.note = note
                else:
                    v.entries.append(Entry(kind, addr, f"filter {chain}", note))
                v.no_endpoints = f"no {local}endpoints: {r.target} (filter {chain})"
                if local and chain == "KUBE-EXTERNAL-SERVICES":
                    v.external_policy = "Local"
                elif local:
                    v.internal_policy = "Local"
                if not local:
                    msg = f"no endpoints: new connections get {r.target}"
                    if msg not in v.anomalies:
                        v.anomalies.append(msg)

    def _orphans(self) -> None:
        targets = {r.target for r in self.dump.all_rules("nat")}
        for name in self.nat:
            if name.startswith("KUBE-SEP-") and name not in targets:
                dnat = self._dnat(name)
                addr = dnat.value("--to-destination") if dnat else "?"
                who = comment_name(dnat.comment) if dnat else ""
                self.ex.anomalies.append(
                    f"{name} ({who or '?'} -> {addr}) is reached by no KUBE-SVC/SVL chain"
                )
            elif split_chain(name)[0] and name not in targets:
                v = self.views[split_chain(name)[1]]
                self.ex.anomalies.append(f"{name} ({v.title}) is a chain nothing jumps to")
        for r in self.dump.all_rules("nat"):
            t = r.target
            if t.startswith("KUBE-") and t not in self.nat and t not in BUILTIN_TARGETS:
                msg = f"{r.chain} rule {r.number} jumps to {t}, which is not in this dump"
                if msg not in self.ex.anomalies:
                    self.ex.anomalies.append(msg)


def read(dump: Dump, catalog: Catalog | None = None) -> Explanation:
    """The Explanation of one iptables-save dump (`catalog`: Services from --services)."""
    ex = _Reader(dump, catalog).read()
    portals = [r for chain in ("KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST") for r in dump.rules("nat", chain)]
    if portals:  # the userspace mode: the kernel only REDIRECTs, the proxy process picks the endpoint
        names = sorted({comment_name(r.comment) or "?" for r in portals})
        ex.notes.append(
            f"userspace mode: {len(portals)} KUBE-PORTALS rules redirect {len(names)} Service ports "
            f"({', '.join(names)}) to the proxy process, which picks the endpoints: "
            "`kplab rules NODE` shows its table and per-endpoint counts"
        )
    return ex
