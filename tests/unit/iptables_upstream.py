"""Helpers to compare kplab's iptables render with upstream kube-proxy's own test expectations.

* `load_state(path)`: upstream's test inputs, re-typed as YAML manifests, read into
  kubernetes client models and then a ProxyState with upstream's NewFakeProxier settings.
* `sort_rules(text)`: the normalisation upstream's assertIPTablesRulesEqual applies before
  comparing (sortIPTablesRules in proxier_test.go): tables by name; chains KUBE-NODEPORTS,
  KUBE-SERVICES, other KUBE-* alphabetically, then the rest; rules grouped by chain; the
  KUBE-NODEPORTS and KUBE-SERVICES rules stably ordered by the service named in the comment.
* `trace(text, ...)`: upstream's packet tracer semantics (tracePacket) over restore text.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiClient

from kplab.proxy.core import ProxyState, build_state

DATA = Path(__file__).parent / "data" / "iptables"
KINDS = {"Service": "V1Service", "EndpointSlice": "V1EndpointSlice"}


def load_objects(path: Path | list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    api = ApiClient()
    services, slices = [], []
    docs = yaml.safe_load_all(path.read_text()) if isinstance(path, Path) else path
    for doc in docs:
        if not doc:
            continue
        obj = api.deserialize(json.dumps(doc), KINDS[doc["kind"]], "application/json")
        (services if doc["kind"] == "Service" else slices).append(obj)
    return services, slices


def upstream_config() -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = yaml.safe_load((DATA / "upstream.yaml").read_text())
    state = dict(cfg["state"])
    state["node_ips"] = tuple(state["node_ips"])
    options = dict(cfg["options"])
    options["local_addresses"] = tuple(options["local_addresses"])
    return state, options


def load_state(path: Path | list[dict[str, Any]], **overrides: Any) -> ProxyState:
    services, slices = load_objects(path)
    config, _ = upstream_config()
    config.update(overrides)
    config["nodeport_addresses"] = tuple(config.get("nodeport_addresses", ()))
    return build_state(services, slices, **config)


# --- sortIPTablesRules ------------------------------------------------------------------------


def _comment(rule: str) -> str | None:
    m = re.search(r'--comment (?:"([^"]*)"|(\S+))', rule)
    return None if m is None else (m.group(1) if m.group(1) is not None else m.group(2))


def _service_of(rule: str) -> str | None:
    c = _comment(rule)
    return None if c is None else re.split(r"[ :]", c, maxsplit=1)[0]


def _chain_key(name: str) -> tuple[int, str]:
    if name == "KUBE-NODEPORTS":
        return (0, "")
    if name == "KUBE-SERVICES":
        return (1, "")
    return (2 if name.startswith("KUBE-") else 3, name)


def _stable_by_service(rules: list[str], last_marker: str | None = None) -> list[str]:
    """Go's sort.SliceStable with orderByCommentServiceName (rules without comments keep their place
    relative to everything, which insertion sort with that comparator gives)."""

    def less(a: str, b: str) -> bool:
        if last_marker is not None:
            if last_marker in (_comment(a) or ""):
                return False
            if last_marker in (_comment(b) or ""):
                return True
        sa, sb = _service_of(a), _service_of(b)
        return sa is not None and sb is not None and sa < sb

    out: list[str] = []
    for r in rules:  # insertion sort: stable and uses only less(), as SliceStable's does
        i = len(out)
        while i > 0 and less(r, out[i - 1]):
            i -= 1
        out.insert(i, r)
    return out


def sort_rules(text: str) -> str:
    tables: dict[str, tuple[list[str], dict[str, list[str]], list[str]]] = {}
    current = ""
    for line in text.strip("\n").split("\n"):
        if line.startswith("*"):
            current = line[1:]
            tables[current] = ([], {}, [])
        elif line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            tables[current][0].append(line)
            tables[current][1].setdefault(name, [])
        elif line.startswith("-A "):
            name = line.split(" ", 2)[1]
            tables[current][1].setdefault(name, []).append(line)
        elif line.startswith("-X "):
            tables[current][2].append(line)
        elif line == "COMMIT":
            continue
        elif line:
            raise AssertionError(f"unexpected line {line!r}")
    out = []
    for tname in sorted(tables):
        decls, chains, deletes = tables[tname]
        order = sorted(chains, key=_chain_key)
        decl_of = {d[1:].split(" ", 1)[0]: d for d in decls}
        out.append(f"*{tname}")
        out += [decl_of[c] for c in order if c in decl_of]
        for c in order:
            rules = chains[c]
            if c == "KUBE-NODEPORTS":
                rules = _stable_by_service(rules)
            elif c == "KUBE-SERVICES":
                rules = _stable_by_service(rules, "must be the last rule" if tname == "nat" else None)
            out += rules
        out += sorted(deletes, key=lambda d: _chain_key(d.split()[1]))
        out.append("COMMIT")
    return "\n".join(out) + "\n"


# --- tracePacket ------------------------------------------------------------------------------


def _parse(text: str) -> dict[str, dict[str, list[list[str]]]]:
    tables: dict[str, dict[str, list[list[str]]]] = {}
    current = ""
    for line in text.split("\n"):
        if line.startswith("*"):
            current = line[1:]
            tables[current] = {}
        elif line.startswith(":"):
            tables[current].setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            words = shlex.split(line)
            tables[current].setdefault(words[1], []).append(words[2:])
    return tables


def flow_cases() -> list[tuple[str, dict[str, Any]]]:
    """(id, case) for every case of every data/iptables/flows/*.yaml file."""
    out = []
    for path in sorted((DATA / "flows").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for case in doc.get("cases") or [doc]:
            out.append((f"{doc['upstream']}/{case.get('name', '')}".rstrip("/"), case))
    return out


def _addr_match(value: str, negated: bool, ip: str) -> bool:
    hit = ipaddress.ip_address(ip) in ipaddress.ip_network(value, strict=False)
    return hit != negated


def _opts(words: list[str]) -> dict[str, tuple[str, bool]]:
    """flag -> (value, negated) for the flags the tracer looks at."""
    out: dict[str, tuple[str, bool]] = {}
    neg = False
    i = 0
    while i < len(words):
        w = words[i]
        if w == "!":
            neg = True
            i += 1
            continue
        if w in (
            "-s",
            "-d",
            "-p",
            "--dport",
            "--src-type",
            "--dst-type",
            "-j",
            "--to-destination",
            "--probability",
        ):
            out[w] = (words[i + 1], neg)
            i += 2
        elif w in ("--rcheck", "--mark", "--ctstate"):
            out[w] = ("", neg)
            i += 1
        else:
            i += 1
        neg = False
    return out


class Tracer:
    """Follows a packet through restore text like upstream's iptablesTracer."""

    def __init__(self, text: str, local_ips: list[str]) -> None:
        self.tables = _parse(text)
        self.local = {"127.0.0.1", *local_ips}

    def _matches(self, o: dict[str, tuple[str, bool]], src: str, proto: str, dst: str, dport: str) -> bool:
        if "-s" in o and not _addr_match(o["-s"][0], o["-s"][1], src):
            return False
        if (
            "--src-type" in o
            and (o["--src-type"][0] == ("LOCAL" if src in self.local else "x")) == o["--src-type"][1]
        ):
            return False
        if "-p" in o and (o["-p"][0] == proto) == o["-p"][1]:
            return False
        if "-d" in o and not _addr_match(o["-d"][0], o["-d"][1], dst):
            return False
        if (
            "--dst-type" in o
            and (o["--dst-type"][0] == ("LOCAL" if dst in self.local else "x")) == o["--dst-type"][1]
        ):
            return False
        if "--dport" in o and (o["--dport"][0] == dport) == o["--dport"][1]:
            return False
        return not ("--rcheck" in o or "--mark" in o or "--ctstate" in o)

    def _run(self, table: str, chain: str, pkt: tuple[str, str, str, str], acc: dict[str, Any]) -> bool:
        for words in self.tables.get(table, {}).get(chain, []):
            o = _opts(words)
            if "-j" not in o or not self._matches(o, *pkt):
                continue
            target = o["-j"][0]
            if target == "KUBE-MARK-MASQ":
                acc["masq"] = True
            elif target in ("ACCEPT", "REJECT", "DROP"):
                acc["out"].append(target)
                return True
            elif target == "DNAT":
                acc["out"].append(o["--to-destination"][0])
                return True
            elif self._run(table, target, pkt, acc) and "--probability" not in o:
                return True
        return False

    def trace(self, src: str, proto: str, dst: str, dport: int) -> tuple[str, bool]:
        acc: dict[str, Any] = {"out": [], "masq": False}
        pkt = (src, proto, dst, str(dport))
        self._run("nat", "PREROUTING", pkt, acc)
        self._run("nat", "KUBE-SERVICES", pkt, acc)  # what PREROUTING jumps to
        if acc["out"]:
            dst = acc["out"][0].split(":")[0]
        pkt = (src, proto, dst, str(dport))
        for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"):
            self._run("filter", chain, pkt, acc)
        return ", ".join(acc["out"]), acc["masq"]
