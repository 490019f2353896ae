"""What `kplab explain` finds in a rule dump, organised by Service, and how it is printed.

The readers (`explain_iptables`, `explain_nft`, `explain_ipvs`) each turn one format into an
`Explanation`: a `ServiceView` per service port (its ways in, its endpoints with each one's
real share of new connections, affinity, traffic policies, anomalies) plus dump-wide
anomalies.  `text()` is the human view, `to_dict()` the `-o json` one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EndpointView:
    address: str  # "10.1.0.64:53"
    chain: str = ""  # KUBE-SEP-... / endpoint-...; "" for IPVS real servers
    share: float = 0.0  # percent of new connections that pick it (no affinity)
    rule: str = ""  # how it is chosen: "probability 0.5000000000", "numgen 0 of 2", "rr weight 1"
    pod: str = ""  # targetRef from --services
    affinity: bool = False  # ClientIP affinity remembers clients that picked it


@dataclass
class Entry:
    """One way into the Service: an address (or NodePort) and the chain it lands in."""

    kind: str  # ClusterIP | NodePort | ExternalIP | LoadBalancer | external
    address: str  # "10.96.0.10:53", or "*:31674" for a NodePort
    chain: str = ""  # where the dispatch rule sends it ("" for IPVS)
    note: str = ""  # "no endpoints: REJECT", "source ranges ...", ...


@dataclass
class ServiceView:
    key: str  # the reader's grouping key (hash, nft base name, VIP)
    name: str = ""  # "namespace/name:port", "" when it could not be named
    protocol: str = ""  # TCP | UDP | SCTP
    name_from: str = ""  # "comment", "comment, hash checked", "chain name, hash checked", "--services"
    chains: dict[str, str] = field(default_factory=dict)  # role (svc/local/external/firewall) -> chain
    entries: list[Entry] = field(default_factory=list)
    endpoints: list[EndpointView] = field(default_factory=list)  # Cluster policy choice
    local_endpoints: list[EndpointView] = field(default_factory=list)  # Local policy choice
    affinity_seconds: int = 0
    external_policy: str = ""  # Cluster | Local | "" (no external access)
    internal_policy: str = "Cluster"
    no_endpoints: str = ""  # what the ruleset does without (local) endpoints: "no endpoints: REJECT (...)"
    source_ranges: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.name or f"(unnamed: {self.key})"


@dataclass
class Explanation:
    format: str  # iptables | nftables | ipvs
    services: list[ServiceView] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)  # dump-wide: orphan chains, missing chains
    notes: list[str] = field(default_factory=list)  # how names were found, what was skipped

    def service(self, name: str, protocol: str | None = None) -> ServiceView | None:
        for s in self.services:
            if s.name == name and (protocol is None or s.protocol == protocol.upper()):
                return s
        return None

    def all_anomalies(self) -> list[str]:
        return self.anomalies + [f"{s.title}: {a}" for s in self.services for a in s.anomalies]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        return render_text(self)


def cascade_shares(probabilities: list[float | None]) -> tuple[list[float], float]:
    """iptables' cascade turned into each rule's real share (percent) and what falls through.

    Rule i is tried only if rules before it did not match, so its share is p_i times what is
    left; a rule without probability takes everything left.

    >>> [round(s, 2) for s in cascade_shares([1/3, 0.5, None])[0]]
    [33.33, 33.33, 33.33]
    """
    left = 100.0
    out = []
    for p in probabilities:
        take = left if p is None else left * p
        out.append(take)
        left -= take
    return out, left


def uneven(endpoints: list[EndpointView]) -> str:
    """An anomaly line when endpoints' shares differ by more than 1% (relative), else ""."""
    shares = [e.share for e in endpoints]
    if len(shares) < 2 or min(shares) <= 0:
        return ""
    if max(shares) / min(shares) - 1 <= 0.01:
        return ""
    listing = ", ".join(f"{e.address} {e.share:.1f}%" for e in endpoints)
    return f"uneven weights: {listing} (an even split is {100 / len(shares):.1f}% each)"


def dispatch(v: ServiceView, endpoints: Callable[[ServiceView, str], list[EndpointView]]) -> None:
    """Fill v's endpoints from its svc and local chains (`endpoints` reads one chain), noting uneven weights."""
    if "svc" in v.chains:
        v.endpoints = endpoints(v, v.chains["svc"])
    if "local" in v.chains:
        v.local_endpoints = endpoints(v, v.chains["local"])
    for eps in (v.endpoints, v.local_endpoints):
        if msg := uneven(eps):
            v.anomalies.append(msg)


def _endpoint_lines(label: str, eps: list[EndpointView]) -> list[str]:
    if not eps:
        return [f"  {label:<12} none"]
    lines = [f"  {label:<12} {len(eps)}"]
    width = max(len(e.address) for e in eps)
    for e in eps:
        extra = "  ".join(p for p in (e.chain, e.rule, f"pod {e.pod}" if e.pod else "") if p)
        lines.append(f"    {e.share:5.1f}%  {e.address:<{width}}  {extra}".rstrip())
    return lines


def render_text(ex: Explanation) -> str:
    eps = sum(len(s.endpoints) or len(s.local_endpoints) for s in ex.services)
    out = [f"{ex.format} dump: {len(ex.services)} service ports, {eps} endpoints"]
    out += [f"  ({n})" for n in ex.notes]
    for s in sorted(ex.services, key=lambda s: (s.name == "", s.name, s.protocol, s.key)):
        out.append("")
        head = f"{s.title}  {s.protocol}".rstrip()
        out.append(f"{head}    [name from {s.name_from}]" if s.name_from else head)
        order = ["svc", "local", "external", "firewall"]
        if s.chains:
            chains = [
                s.chains[r] for r in sorted(s.chains, key=lambda r: order.index(r) if r in order else 9)
            ]
            out.append(f"  {'chains':<12} {', '.join(chains)}")
        for e in s.entries:
            line = f"  {e.kind:<12} {e.address}"
            if e.chain:
                line += f"  -> {e.chain}"
            out.append(line + (f"  ({e.note})" if e.note else ""))
        if s.external_policy:
            out.append(
                f"  {'policy':<12} externalTrafficPolicy={s.external_policy}, internalTrafficPolicy={s.internal_policy}"
            )
        elif s.internal_policy != "Cluster":
            out.append(f"  {'policy':<12} internalTrafficPolicy={s.internal_policy}")
        if s.affinity_seconds:
            out.append(f"  {'affinity':<12} ClientIP, {s.affinity_seconds}s")
        if s.source_ranges:
            out.append(f"  {'sources':<12} {', '.join(s.source_ranges)}")
        if s.endpoints or not s.local_endpoints:
            out += _endpoint_lines("endpoints", s.endpoints)
        if s.local_endpoints:
            out += _endpoint_lines("local only", s.local_endpoints)
        if s.no_endpoints:
            out.append(f"  {'if none':<12} {s.no_endpoints}")
        out += [f"  ! {a}" for a in s.anomalies]
    if ex.anomalies:
        out += ["", "Anomalies in the dump:"] + [f"  ! {a}" for a in ex.anomalies]
    return "\n".join(out)
