"""Helpers to hold kplab's nftables transactions against upstream kube-proxy's own tests (no root).

* `load_state(path)`: upstream's test inputs, re-typed as YAML, with NewFakeProxier's settings.
* `Ruleset`: a strict in-memory table that applies `nft -f` transactions (like knftables'
  Fake): a transaction that nft would refuse (deleting what does not exist, a rule in a missing
  chain, a goto to a missing chain) fails here too. `dump()` writes it out as the Fake does.
* `normalize(text)`: upstream's sortNFTablesTransaction, applied to both sides before comparing.
* `Ruleset.trace(...)`: upstream's tracePacket semantics (filter-prerouting, nat-prerouting,
  DNAT, filter-forward, filter-input), returning ("ip:port, ..." | "DROP" | "REJECT" | "", masq).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiClient

from kplab.proxy.core import ProxyState, build_state

DATA = Path(__file__).parent / "data" / "nftables"
KINDS = {"Service": "V1Service", "EndpointSlice": "V1EndpointSlice"}
# NewFakeProxier (IPv4): node test-node with 192.168.0.2 (+ .1.2 and .99.11 on the same link),
# pod CIDR 10.0.0.0/8 (the local detector), ServiceCIDR 172.30.0.0/16, nodeport-addresses
# 192.168.0.2/32.
UPSTREAM: dict[str, Any] = {
    "node_name": "test-node",
    "node_ips": ("192.168.0.2", "192.168.1.2", "192.168.99.11"),
    "cluster_cidr": "10.0.0.0/8",
    "service_cidr": "172.30.0.0/16",
    "nodeport_addresses": ("192.168.0.2/32",),
}
NODE_IPS = ["192.168.0.2", "192.168.1.2", "192.168.99.11"]


def state_of(docs: list[dict[str, Any]], **overrides: Any) -> ProxyState:
    """ProxyState of Service/EndpointSlice documents, with NewFakeProxier's settings."""
    api = ApiClient()
    services, slices = [], []
    for doc in docs:
        obj = api.deserialize(json.dumps(doc), KINDS[doc["kind"]], "application/json")
        (services if doc["kind"] == "Service" else slices).append(obj)
    return build_state(services, slices, **{**UPSTREAM, **overrides})


def load_state(path: Path, **overrides: Any) -> ProxyState:
    return state_of([d for d in yaml.safe_load_all(path.read_text()) if d], **overrides)


# --- sortNFTablesTransaction ------------------------------------------------------------------

_ORDER = {"table": 10, "chain": 9, "rule": 8, "set": 7, "map": 6, "element": 5}


def _cmp(a: str, b: str) -> int:
    def less(x: str, y: str) -> bool:
        wx, wy = x.split(" "), y.split(" ")
        if len(wx) < 5 or len(wy) < 5:
            return False
        if wx[1] != wy[1]:
            return _ORDER.get(wx[1], 0) >= _ORDER.get(wy[1], 0)
        if wx[4] != wy[4]:
            return wx[4] < wy[4]
        if wx[1] == "rule":
            return False  # rules keep their order within a chain
        return x < y

    return -1 if less(a, b) else (1 if less(b, a) else 0)


def normalize(text: str) -> str:
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    return "\n".join(sorted(lines, key=functools.cmp_to_key(_cmp)))


# --- a strict in-memory table ----------------------------------------------------------------

_PREFIX = re.compile(r"^(add|flush|delete) (table|chain|rule|set|map|element) ip kube-proxy ?(.*)$")
_COMMENT = re.compile(r' comment "([^"]*)"$')


@dataclass
class Chain:
    spec: str = ""
    rules: list[tuple[str, str]] = field(default_factory=list)  # (rule, comment)


@dataclass
class Container:
    kind: str
    spec: str
    elements: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (value, comment)


class Ruleset:
    def __init__(self) -> None:
        self.table = ""
        self.chains: dict[str, Chain] = {}
        self.containers: dict[str, Container] = {}

    def apply(self, text: str) -> int:
        """Apply one transaction (all or nothing, like nft -f); returns its operation count."""
        import copy

        saved = copy.deepcopy((self.table, self.chains, self.containers))
        ops = 0
        try:
            for line in text.split("\n"):
                line = line.strip()
                if line and not line.startswith("#"):
                    self._op(line)
                    ops += 1
        except AssertionError:
            self.table, self.chains, self.containers = saved
            raise
        return ops

    def _op(self, line: str) -> None:
        m = _PREFIX.match(line)
        assert m, f"not understood: {line}"
        verb, kind, rest = m.groups()
        if kind == "table":
            self.table = rest
            return
        if kind == "rule":
            assert verb == "add", line
            chain, _, rule = rest.partition(" ")
            assert chain in self.chains, f"rule in missing chain: {line}"
            comment = ""
            cm = _COMMENT.search(rule)
            if cm:
                comment, rule = cm.group(1), rule[: cm.start()]
            for target in re.findall(r"(?:goto|jump) (\S+)", rule):
                assert target in self.chains, f"jump to missing chain: {line}"
            self.chains[chain].rules.append((rule, comment))
            return
        if kind == "element":
            name, _, body = rest.partition(" ")
            assert name in self.containers, f"element of missing set: {line}"
            body = body.strip()[1:-1].strip()
            elements = self.containers[name].elements
            if verb == "delete":
                assert body in elements, f"deleting a missing element: {line}"
                del elements[body]
                return
            key, _, value = body.partition(" : ")
            comment = ""
            cm = re.search(r' comment "([^"]*)"$', key)
            if cm:
                comment, key = cm.group(1), key[: cm.start()]
            for target in re.findall(r"goto (\S+)", value):
                assert target in self.chains, f"element to missing chain: {line}"
            elements.setdefault(key, (value, comment))
            return
        name, _, spec = rest.partition(" ")
        spec = spec.strip()[1:-1].strip() if spec else ""
        if kind == "chain":
            if verb == "add":
                self.chains.setdefault(name, Chain(spec))
            elif verb == "flush":
                assert name in self.chains, f"flushing a missing chain: {line}"
                self.chains[name].rules.clear()
            else:
                assert name in self.chains, f"deleting a missing chain: {line}"
                assert not self._referenced(name), f"deleting a chain still in use: {line}"
                del self.chains[name]
            return
        if verb == "add":
            self.containers.setdefault(name, Container(kind, spec))
        elif verb == "flush":
            assert name in self.containers, f"flushing a missing {kind}: {line}"
            self.containers[name].elements.clear()
        else:
            assert name in self.containers, f"deleting a missing {kind}: {line}"
            assert not any(f"@{name} " in r + " " for c in self.chains.values() for r, _ in c.rules), line
            del self.containers[name]

    def _referenced(self, chain: str) -> bool:
        pat = re.compile(rf"(?:goto|jump) {re.escape(chain)}(?:\s|$)")
        return any(pat.search(r) for c in self.chains.values() for r, _ in c.rules) or any(
            pat.search(v) for s in self.containers.values() for v, _ in s.elements.values()
        )

    def dump(self) -> str:
        """Like knftables' Fake.Dump()."""
        out = [f"add table ip kube-proxy {self.table}"]
        for name in sorted(self.chains):
            spec = self.chains[name].spec
            out.append(f"add chain ip kube-proxy {name}" + (f" {{ {spec} }}" if spec else ""))
        for kind in ("set", "map"):
            for name in sorted(n for n, c in self.containers.items() if c.kind == kind):
                out.append(f"add {kind} ip kube-proxy {name} {{ {self.containers[name].spec} }}")
        for name in sorted(self.chains):
            for rule, comment in self.chains[name].rules:
                out.append(
                    f"add rule ip kube-proxy {name} {rule}" + (f' comment "{comment}"' if comment else "")
                )
        for kind in ("set", "map"):
            for name in sorted(n for n, c in self.containers.items() if c.kind == kind):
                for key, (value, comment) in self.containers[name].elements.items():
                    c = f' comment "{comment}"' if comment else ""
                    v = f" : {value}" if value else ""
                    out.append(f"add element ip kube-proxy {name} {{ {key}{c}{v} }}")
        return "\n".join(out) + "\n"

    # --- tracePacket ---------------------------------------------------------------------------

    def trace(self, src: str, proto: str, dst: str, dport: int, local_ips: list[str]) -> tuple[str, bool]:
        """A packet arriving at the node: prerouting (pre-DNAT filter, DNAT), then forward and input."""
        t = _Trace(self, src, proto.lower(), dst, str(dport), set(local_ips))
        pre = "filter-prerouting-pre-dnat" if "filter-prerouting-pre-dnat" in self.chains else "filter-prerouting"
        if t.run(pre):
            return t.result()
        t.run("nat-prerouting")
        if t.outputs:
            t.dst = t.outputs[0].rsplit(":", 1)[0]
        if t.run("filter-forward"):
            return t.result()
        t.run("filter-input")
        return t.result()

    def trace_output(
        self, src: str, proto: str, dst: str, dport: int, local_ips: list[str]
    ) -> tuple[str, bool]:
        """A packet a host process sends: the output hook's base chains in priority order, the
        filter ones seeing the destination as DNAT (nat-output) left it when they run after it."""
        t = _Trace(self, src, proto.lower(), dst, str(dport), set(local_ips))
        hooked = []
        for name, chain in self.chains.items():
            m = re.match(r"type (\w+) hook output priority (-?\d+)", chain.spec)
            if m:
                hooked.append((int(m.group(2)), m.group(1) == "filter", name))
        for _, is_filter, name in sorted(hooked):
            if is_filter:
                if t.run(name):
                    return t.result()
            else:
                t.run(name)
                if t.outputs:
                    t.dst = t.outputs[0].rsplit(":", 1)[0]
        return t.result()


def _in(ip: str, spec: str) -> bool:
    return any(
        ipaddress.ip_address(ip) in ipaddress.ip_network(s.strip(), strict=False)
        for s in spec.split(",")
        if s.strip()
    )


class _Trace:
    def __init__(self, rs: Ruleset, src: str, proto: str, dst: str, dport: str, local: set[str]) -> None:
        self.rs, self.src, self.proto, self.dst, self.dport, self.local = rs, src, proto, dst, dport, local
        self.outputs: list[str] = []
        self.masq = False

    def result(self) -> tuple[str, bool]:
        return ", ".join(self.outputs), self.masq

    def _lookup(self, name: str, key: str) -> tuple[str, str] | None:
        return self.rs.containers[name].elements.get(key)

    def run(self, chain: str) -> bool:
        """True when the packet met a terminal statement."""
        for rule, _ in self.rs.chains[chain].rules:
            rule = re.sub(r"^ct state new ?", "", rule)
            while rule:
                rule = rule.strip()
                m = None
                if m := re.match(r"ip daddr \. meta l4proto \. th dport vmap @(\S+)$", rule):
                    hit = self._lookup(m.group(1), f"{self.dst} . {self.proto} . {self.dport}")
                    rule = hit[0] if hit else ""
                elif m := re.match(r"meta l4proto \. th dport vmap @(\S+)$", rule):
                    hit = self._lookup(m.group(1), f"{self.proto} . {self.dport}")
                    rule = hit[0] if hit else ""
                elif m := re.match(r"ip (daddr|saddr) @(\S+)", rule):
                    ip = self.dst if m.group(1) == "daddr" else self.src
                    ok = not m.group(2).startswith("affinity-") and self._lookup(m.group(2), ip) is not None
                    rule = rule[m.end() :] if ok else ""
                elif m := re.match(r"ip (daddr|saddr) (!= )?(?:\{([^}]*)\}|(\S+))", rule):
                    ip = self.dst if m.group(1) == "daddr" else self.src
                    ok = _in(ip, m.group(3) or m.group(4)) != bool(m.group(2))
                    rule = rule[m.end() :] if ok else ""
                elif m := re.match(r"fib (daddr|saddr) type local", rule):
                    ok = (self.dst if m.group(1) == "daddr" else self.src) in self.local
                    rule = rule[m.end() :] if ok else ""
                elif m := re.match(r"(tcp|udp|sctp) dport (\d+)", rule):
                    ok = (m.group(1), m.group(2)) == (self.proto, self.dport)
                    rule = rule[m.end() :] if ok else ""
                elif rule == "jump mark-for-masquerade":
                    self.masq = True
                    rule = ""
                elif m := re.match(r"(jump|goto) (\S+)$", rule):
                    if self.run(m.group(2)):
                        return True
                    if m.group(1) == "goto":
                        return False
                    rule = ""
                elif m := re.match(r"update @\S+ \{ ip saddr \}", rule):
                    rule = rule[m.end() :]  # affinity bookkeeping: no effect on this packet
                elif rule in ("drop", "reject"):
                    self.outputs.append(rule.upper())
                    return True
                elif rule == "return":
                    return False
                elif m := re.match(r"meta l4proto (tcp|udp|sctp) dnat to (\S+)$", rule):
                    self.outputs.append(m.group(2))
                    return True
                elif m := re.match(r"numgen random mod \d+ vmap \{(.*)\}$", rule):
                    for target in re.findall(r"\d+ : goto (\S+)", m.group(1)):
                        self.run(target)
                    return True
                else:
                    raise AssertionError(f"tracer does not understand: {rule}")
        return False
