"""Explain kube-proxy's nftables mode (`table ip kube-proxy`), Service by Service.

nftables chain names keep the readable part: `service-<h8>-ns/name/proto/port`, and
`endpoint-<h8>-ns/name/proto/port__ip/port`, so names come from the chain names and are
checked by recomputing upstream's `hashAndTruncate`.  The ways in are map elements
(`service-ips`, `service-nodeports`, `no-endpoint-*`, `firewall-ips`); the endpoint choice is
one `numgen random mod N vmap { ... }`, so each endpoint's share is (its slots) / N.
Reads both `nft list ruleset` output and the `add rule ...` transactions kube-proxy loads.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kplab.formats.naming import hash_and_truncate
from kplab.formats.nft_text import NftChain, NftSet, NftTable, Ruleset, parse_elements
from kplab.inspect.views import EndpointView, Entry, Explanation, ServiceView, dispatch

if TYPE_CHECKING:
    from kplab.inspect.catalog import Catalog

ROLES = {"service": "svc", "local": "local", "external": "external", "firewall": "firewall"}
_CHAIN = re.compile(r"^(service|local|external|firewall|endpoint)-([A-Z2-7]{8})-(.+)$")
_JUMP = re.compile(r'\b(?:goto|jump)\s+"?([^\s,}"]+)')
_NUMGEN = re.compile(r"numgen\s+random\s+mod\s+(\d+)\s+vmap\s+(\{.*\})")
_DNAT = re.compile(r"\bdnat\s+(?:ip6?\s+)?to\s+(\S+)")
# Statements that neither match nor decide: what a rule may carry before (or after) its verdict.
_NOT_MATCHES = re.compile(
    r'\bcounter(?:\s+packets\s+\d+\s+bytes\s+\d+)?|\bcomment\s+"[^"]*"|\bmeta\s+nftrace\s+set\s+1'
    r'|\blog(?:\s+(?:prefix\s+"[^"]*"|level\s+\S+|group\s+\d+|flags\s+\S+))*|#\s*handle\s+\d+'
)


NO_SET, NO_CHAIN = NftSet(""), NftChain("")  # read-only stand-ins for absent maps and chains


def split_chain(name: str) -> tuple[str, str]:
    """("service", "ns/name/tcp/port") for a per-service chain; ("", "") otherwise."""
    m = _CHAIN.match(name)
    return (m.group(1), m.group(3)) if m else ("", "")


def service_port_name(base: str) -> tuple[str, str]:
    """ "ns/name/tcp/p80" -> ("ns/name:p80", "TCP"); an unnamed port gives "ns/name"."""
    parts = base.split("__")[0].split("/")
    if len(parts) != 4:
        return "", ""
    ns, name, proto, port = parts
    return f"{ns}/{name}" + (f":{port}" if port else ""), proto.upper()


def matches_of(rule: str) -> str:
    """The rule without its counters, comments, nftrace and log statements: what it matches and decides.

    >>> matches_of('counter packets 3 bytes 180 goto service-X comment "c"')
    'goto service-X'
    """
    return " ".join(_NOT_MATCHES.sub(" ", rule).split())


def _target(value: str) -> str:
    m = _JUMP.search(value)
    return m.group(1) if m else ""


class _Reader:
    def __init__(self, tables: list[NftTable], catalog: Catalog | None) -> None:
        self.tables = tables
        self.catalog = catalog
        self.views: dict[str, ServiceView] = {}
        self.ex = Explanation("nftables")

    def view(self, key: str) -> ServiceView:
        """Views are keyed by the chain's base name ("ip6 " + base in an ip6 table)."""
        if key not in self.views:
            v = self.views[key] = ServiceView(key=key)
            v.name, v.protocol = service_port_name(key.removeprefix("ip6 "))
            v.name_from = "chain name"
        return self.views[key]

    def read(self) -> Explanation:
        for t in self.tables:
            self.t = t
            self.family = "ip6 " if t.family == "ip6" else ""
            for name in t.chains:
                kind, base = split_chain(name)
                if kind in ROLES:
                    v = self.view(self.family + base)
                    v.chains[ROLES[kind]] = name
                    if hash_and_truncate(base) == name[len(kind) + 1 :]:
                        v.name_from = "chain name, hash checked"
                    else:
                        v.anomalies.append(f"{name}: the hash is not upstream's hash of {base!r}")
            self._maps()
            for v in self.views.values():
                dispatch(v, self._endpoints)
                self._external(v)
            self._orphans()
        for v in self.views.values():
            self._resolve(v)
            if not v.endpoints and not v.local_endpoints and not v.no_endpoints:
                v.anomalies.append("no endpoints: its chains lead to no endpoint chain")
        self.ex.services = list(self.views.values())
        return self.ex

    def _resolve(self, v: ServiceView) -> None:
        if not self.catalog:
            return
        known = self.catalog.by_nft_base.get(v.key.removeprefix("ip6 "))
        if known is None:
            self.ex.anomalies.append(f"{v.title} ({v.protocol}) matches no Service port in --services")
            return
        v.name_from = "--services (" + v.name_from + ")"
        for e in v.entries:
            if e.kind == "external":
                ip = e.address.rsplit(":", 1)[0]
                e.kind = "LoadBalancer" if ip in known.port.load_balancer_ips else "ExternalIP"

    def _maps(self) -> None:
        sets = self.t.sets
        for el in sets.get("service-ips", NO_SET).elements:
            chain = _target(el.value)
            kind, base = split_chain(chain)
            if kind:
                ip, _, port = el.parts
                entry_kind = "ClusterIP" if kind in ("service", "local") else "external"
                if kind == "local":
                    self.view(self.family + base).internal_policy = "Local"
                self._entry(self.view(self.family + base), Entry(entry_kind, f"{ip}:{port}", chain))
        for el in sets.get("service-nodeports", NO_SET).elements:
            chain = _target(el.value)
            kind, base = split_chain(chain)
            if kind:
                self._entry(self.view(self.family + base), Entry("NodePort", f"*:{el.parts[-1]}", chain))
        for mapname in ("no-endpoint-services", "no-endpoint-nodeports"):
            for el in sets.get(mapname, NO_SET).elements:
                self._no_endpoints(mapname, el.parts, el.comment, el.value)
        for el in sets.get("firewall-ips", NO_SET).elements:
            chain = _target(el.value)
            kind, base = split_chain(chain)
            if kind:
                v = self.view(self.family + base)
                for rule in self.t.chains.get(chain, NO_CHAIN).rules:
                    m = re.search(r"saddr\s+!=\s+(\{[^}]*\}|\S+)", rule)
                    if m:
                        v.source_ranges = [s.key for s in parse_elements(m.group(1))]

    def _no_endpoints(self, mapname: str, parts: list[str], comment: str, value: str) -> None:
        """Upstream adds these elements for Services with no endpoints (goto reject-chain) and
        for Local policies with no local endpoints (drop); the comment names the Service."""
        if not comment:
            return
        ns_name, _, port = comment.partition(":")
        v = self.view(self.family + f"{ns_name}/{parts[-2]}/{port}")
        if not v.chains:
            v.name_from = "map element comment"
        action = "REJECT" if "reject" in value else value.upper()
        what = "no endpoints" if action == "REJECT" else "no local endpoints"
        if mapname == "no-endpoint-nodeports":
            addr, kind = f"*:{parts[-1]}", "NodePort"
        else:
            addr = f"{parts[0]}:{parts[-1]}"
            cluster_ips = {e.key for e in self.t.sets.get("cluster-ips", NO_SET).elements}
            kind = "ClusterIP" if parts[0] in cluster_ips else "external"
        match = next((e for e in v.entries if e.address == addr), None)
        if match:
            match.note = f"{what}: {action}"
        else:
            v.entries.append(Entry(kind, addr, f"@{mapname}", f"{what}: {action}"))
        v.no_endpoints = f"{what}: {action} (@{mapname})"
        msg = f"no endpoints: new connections get {action}"
        if action == "REJECT" and msg not in v.anomalies:
            v.anomalies.append(msg)

    @staticmethod
    def _entry(v: ServiceView, e: Entry) -> None:
        if all((x.kind, x.address) != (e.kind, e.address) for x in v.entries):
            v.entries.append(e)

    def _endpoints(self, v: ServiceView, chain: str) -> list[EndpointView]:
        rules = self.t.chains.get(chain, NO_CHAIN).rules
        sticky = {_target(r) for r in rules if re.search(r"saddr\s+@affinity-", r)}
        for r in rules:
            m = re.search(r"@(affinity-\S+)", r)
            if m and m.group(1) in self.t.sets:
                v.affinity_seconds = self.t.sets[m.group(1)].timeout
        m = next((m for r in rules if (m := _NUMGEN.search(r))), None)
        if not m:
            return []
        n = int(m.group(1))
        slots: dict[str, list[int]] = {}
        for el in parse_elements(m.group(2)):
            slots.setdefault(_target(el.value), []).append(int(el.key))
        used = sorted(i for s in slots.values() for i in s)
        if used != list(range(n)):
            v.anomalies.append(f"{chain}: numgen mod {n} has slots {used}: some numbers pick nothing")
        out = []
        for ep_chain, idx in slots.items():
            rule = f"numgen {', '.join(map(str, idx))} of {n}"
            ep = EndpointView(self._address(ep_chain), ep_chain, 100.0 * len(idx) / n, rule)
            ep.affinity = ep_chain in sticky
            out.append(ep)
        return out

    def _address(self, chain: str) -> str:
        for r in self.t.chains.get(chain, NO_CHAIN).rules:
            m = _DNAT.search(r)
            if m:
                return m.group(1)
        return "?"

    def _external(self, v: ServiceView) -> None:
        if not any(e.kind != "ClusterIP" for e in v.entries):
            return
        v.external_policy = "Cluster"
        rules = self.t.chains.get(v.chains.get("external", ""), NO_CHAIN).rules
        unconditional = [r for r in rules if re.fullmatch(r'goto\s+"?service-\S+', matches_of(r))]
        if any("local-" in _target(r) for r in rules) or (rules and not unconditional):
            v.external_policy = "Local"

    def _orphans(self) -> None:
        referenced: set[str] = set()
        for c in self.t.chains.values():
            for r in c.rules:
                referenced.update(_JUMP.findall(r))
        for s in self.t.sets.values():
            referenced.update(_target(e.value) for e in s.elements)
        for name in self.t.chains:
            kind = split_chain(name)[0]
            if kind and name not in referenced:
                if kind == "endpoint":
                    self.ex.anomalies.append(f"{name} ({self._address(name)}) is reached by no service chain")
                else:
                    self.ex.anomalies.append(f"{name} is a chain nothing jumps to")
        for name in sorted(referenced):
            if split_chain(name)[0] and name not in self.t.chains:
                self.ex.anomalies.append(f"{name} is jumped to but does not exist")


def read(rs: Ruleset, catalog: Catalog | None = None) -> Explanation:
    """The Explanation of kube-proxy's tables in an nftables ruleset."""
    tables = [t for t in rs.tables if t.name == "kube-proxy"]
    ex_note = ""
    if not tables:
        tables = rs.tables
        ex_note = "no table named kube-proxy: read every table"
    ex = _Reader(tables, catalog).read()
    if ex_note:
        ex.notes.append(ex_note)
    return ex
