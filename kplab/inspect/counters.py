"""The kernel's own count of new connections per endpoint of a Service, to hold against `kplab curl`.

Where the counts come from, per mode (nothing is added to what the mode programs):

* iptables: the packet counter of each KUBE-SEP chain's DNAT rule (`iptables-save -c`); the
  nat table sees only a connection's first packet, so it counts new connections;
* nftables: the `counter` on each endpoint chain's `dnat` rule, when the mode's rules carry
  one (`nft list table ip kube-proxy`);
* userspace: the kernel's rules only REDIRECT to the proxy process, so its counters cannot see
  past the proxy: the proxy's own count of the connections (TCP) and clients (UDP) it
  forwarded to each endpoint (its `stats` answer, as `kplab rules NODE` shows it);
* ebpf: no netfilter rule and (with socket LB) no conntrack entry sees the translation: the
  BPF programs' own count of new connections per frontend and backend (`kplab_counts`);
* otherwise (IPVS, nft rules without counters): conntrack, i.e. the Service's
  connections the nodes still remember (TCP TIME_WAIT lasts 120 s, UDP 30 s), by the
  endpoint in each entry's reply tuple.

Counters add up over the life of a chain, so compare differences: `with counting(lab, "web")
as c: lab.curl(...)` leaves `c.per_pod` = what the kernel did during the block.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kplab.cluster.run import run
from kplab.inspect import conntrack
from kplab.inspect.explain import explain
from kplab.inspect.labview import LabView

_NFT_COUNTER = re.compile(r"counter packets (\d+)")


@dataclass
class Counts:
    service: str
    source: str  # where the numbers come from (see the module docstring)
    per_endpoint: dict[str, int] = field(default_factory=dict)  # "10.244.2.2:8080" -> new connections
    per_pod: dict[str, int] = field(default_factory=dict)
    per_node: dict[str, dict[str, int]] = field(default_factory=dict)  # where the NAT decision was made
    pods: dict[str, str] = field(default_factory=dict)  # endpoint -> pod name

    @property
    def total(self) -> int:
        return sum(self.per_endpoint.values())

    def minus(self, before: Counts) -> Counts:
        out = Counts(self.service, self.source, pods=self.pods)
        out.per_endpoint = {k: v - before.per_endpoint.get(k, 0) for k, v in self.per_endpoint.items()}
        out.per_pod = {k: v - before.per_pod.get(k, 0) for k, v in self.per_pod.items()}
        out.per_node = {
            n: {k: v - before.per_node.get(n, {}).get(k, 0) for k, v in eps.items()}
            for n, eps in self.per_node.items()
        }
        return out

    def text(self) -> str:
        lines = [f"{self.service}: {self.total} new connection{'' if self.total == 1 else 's'} ({self.source})"]
        for ep, n in sorted(self.per_endpoint.items()):
            lines.append(f"  {n:6d}  {ep}  {self.pods.get(ep, '')}".rstrip())
        return "\n".join(lines)


def _matches(name: str, service: str, port: str | None) -> bool:
    ns, _, svc = service.rpartition("/")
    base = f"{ns or 'default'}/{svc}"
    if name != base and not name.startswith(base + ":"):
        return False
    return port is None or name.endswith(f":{port}")


def _from_rules(text: str, service: str, port: str | None, counter_of: Any) -> dict[str, int]:
    out: Counter[str] = Counter()
    seen: set[str] = set()
    for s in explain(text).services:
        if not _matches(s.name, service, port):
            continue
        for e in s.endpoints + s.local_endpoints:
            if e.chain in seen:
                continue  # a SEP chain reached from both KUBE-SVC and KUBE-SVL is one counter
            seen.add(e.chain)
            n = counter_of(text, e.chain)
            if n is None:
                raise LookupError(e.chain)
            out[e.address] += n
    return dict(out)


def _iptables_counter(_: str, chain: str, dump: Any = None) -> int | None:
    rule = next((r for r in dump.rules("nat", chain) if r.target == "DNAT"), None) if dump else None
    return rule.packets if rule else None


def read(lab: LabView, service: str, port: str | None = None) -> Counts:
    """Absolute counts now (see `counting` for differences over a block)."""
    from kplab.formats import iptables_save, nft_text

    # a misspelt Service or port is an error, not "0 new connections"; a port number counts as its name
    named = lab.service_port(service, port).get("name") or None
    port = named if port is not None else None
    mode = lab.mode
    pods = {p.status.pod_ip: p.metadata.name for p in lab.pods()}
    per_node: dict[str, dict[str, int]] = {}
    source = ""
    try:
        for node in lab.nodes:
            ns = lab.netns(node)
            if mode == "iptables":
                text = run(["iptables-save", "-c", "-t", "nat"], ns).stdout
                dump = iptables_save.parse(text)
                per_node[node] = _from_rules(
                    text, service, port, lambda t, c, d=dump: _iptables_counter(t, c, d)
                )
                source = "KUBE-SEP DNAT rule counters, iptables-save -c"
            elif mode == "nftables":
                text = run(["nft", "list", "table", "ip", "kube-proxy"], ns).stdout
                table = nft_text.parse(text).table("kube-proxy")

                def nft_counter(_: str, chain: str, t: Any = table) -> int | None:
                    for rule in t.chains.get(chain).rules if t and chain in t.chains else []:
                        m = _NFT_COUNTER.search(rule)
                        if m and "dnat" in rule:
                            return int(m.group(1))
                    return None

                per_node[node] = _from_rules(text, service, port, nft_counter)
                source = "endpoint chain dnat rule counters, nft list table ip kube-proxy"
            elif mode == "ebpf":
                per_node[node] = _from_ebpf(lab, node, service, port)
                source = "the BPF programs' own count of new connections per backend, kplab_counts"
            elif mode == "userspace":
                per_node[node] = _from_proxy(lab, node, service, port)
                source = "the userspace proxy's own count of what it forwarded; the kernel sees only the proxy"
            else:
                raise LookupError(mode)
    except LookupError:
        per_node, source = _from_conntrack(lab, service, port), "conntrack entries still remembered"
    total: Counter[str] = Counter()
    for eps in per_node.values():
        total.update(eps)
    names = {ep: pods.get(ep.rsplit(":", 1)[0], "") for ep in total}
    by_pod: Counter[str] = Counter()
    for ep, n in total.items():
        by_pod[names[ep] or ep] += n
    return Counts(service, source, dict(total), dict(by_pod), per_node, names)


def _from_proxy(lab: LabView, node: str, service: str, port: str | None) -> dict[str, int]:
    proxy = lab.rules(node).get("proxy") or {}
    if not proxy.get("running") or "error" in proxy:
        raise LookupError(f"{node}: the userspace proxy is not answering")
    out: Counter[str] = Counter()
    for svc in proxy.get("services", []):
        if _matches(svc["name"], service, port):
            for ep, st in svc.get("endpoints", {}).items():
                out[ep] += int(st.get("connections", 0))
    return dict(out)


def _from_ebpf(lab: LabView, node: str, service: str, port: str | None) -> dict[str, int]:
    out: Counter[str] = Counter()
    for name, eps in lab.proxier(node).counts().items():
        if _matches(name.rsplit("/", 1)[0], service, port):
            out.update(eps)
    return dict(out)


def _from_conntrack(lab: LabView, service: str, port: str | None) -> dict[str, dict[str, int]]:
    match = conntrack.service_match(lab, service)
    wanted = None
    if port is not None:
        p = lab.service_port(service, port)
        wanted = {int(p["port"]), int(p.get("nodePort") or 0)}
    out: dict[str, dict[str, int]] = {}
    for node in lab.nodes:
        c: Counter[str] = Counter()
        for e in conntrack.entries(lab.netns(node)):
            if match(e) and e.dnat and (wanted is None or e.original.dport in wanted):
                c[f"{e.reply.src}:{e.reply.sport}"] += 1
        out[node] = dict(c)
    return out


@contextlib.contextmanager
def counting(lab: LabView, service: str, port: str | None = None) -> Iterator[Counts]:
    """Counts during the block: `with counting(lab, "web") as c: lab.curl("client", "web", n=100)`."""
    before = read(lab, service, port)
    result = Counts(service, before.source)
    try:
        yield result
    finally:
        diff = read(lab, service, port).minus(before)
        result.per_endpoint, result.per_pod, result.per_node = diff.per_endpoint, diff.per_pod, diff.per_node
        result.pods = diff.pods
