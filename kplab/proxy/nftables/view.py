"""`kplab rules NODE` for the nftables mode: the `ip kube-proxy` table read back and explained.

Two reads of the node's table: `nft -j list table` (the structure: chains, sets, maps with
their elements, counters) and `nft -a list table` (each rule as nft prints it, keyed by
handle). Every per-service chain is annotated from its readable name (kube-proxy puts
"ns/name/proto/port[__ip/port]" after the hash) and from what the last sync remembered
(the pod behind an endpoint), and with the map elements that lead to it (its ClusterIP,
NodePort...). Counters appear where the rules have them (the lab loads a `counter` in every
rule; upstream has none).
"""

from __future__ import annotations

import json
import re
from typing import Any

from kplab.cluster.run import run
from kplab.proxy.nftables.rules import BASE_CHAINS_BY_LAYOUT, FAMILY, TABLE

NAME = re.compile(r"^(service|local|external|firewall|endpoint)-[A-Z2-7]{8}-(.+)$")
HANDLE = re.compile(r"^(.*?)\s*# handle (\d+)$")
KIND_NOTES = {
    "service": "Cluster traffic policy: picks an endpoint",
    "local": "Local traffic policy: picks a local endpoint",
    "external": "NodePort / externalIP / LB IP traffic",
    "firewall": "LoadBalancerSourceRanges",
    "endpoint": "DNAT to one endpoint",
}


def describe_chain(name: str) -> dict[str, Any]:
    """What a chain is, from its name alone: kind, service port name, protocol, endpoint."""
    m = NAME.match(name)
    if not m:
        base = {c[0]: c for layout in reversed(BASE_CHAINS_BY_LAYOUT.values()) for c in layout}
        if name in base:
            _, ctype, hook, prio = base[name]
            return {"kind": "base", "type": ctype, "hook": hook, "priority": prio}
        return {"kind": "helper"}
    kind, rest = m.groups()
    service, _, endpoint = rest.partition("__")
    parts = service.split("/")
    out: dict[str, Any] = {"kind": kind}
    if len(parts) == 4:
        ns, svc, proto, port = parts
        out["service"] = f"{ns}/{svc}" + (f":{port}" if port else "")
        out["protocol"] = proto
    if endpoint and not endpoint.endswith("..."):
        ip, _, port = endpoint.rpartition("/")
        out["endpoint"] = f"{ip}:{port}" if "." in ip and ip.count(".") == 3 else f"[{ip}]:{port}"
    return out


def _fmt(v: Any) -> str:
    """nft's JSON element/value forms back to nft's text."""
    if isinstance(v, dict):
        if "concat" in v:
            return " . ".join(_fmt(x) for x in v["concat"])
        if "elem" in v:
            e = v["elem"]
            text = _fmt(e["val"])
            if "expires" in e:
                text += f" expires {e['expires']}s"
            if "comment" in e:
                text += f' comment "{e["comment"]}"'
            return text
        if "prefix" in v:
            return f"{v['prefix']['addr']}/{v['prefix']['len']}"
        if "range" in v:
            return "-".join(_fmt(x) for x in v["range"])
        for verdict in ("goto", "jump"):
            if verdict in v:
                return f"{verdict} {v[verdict]['target']}"
        if len(v) == 1:
            return next(iter(v))  # {"drop": null}, {"accept": null}
    return str(v)


def _texts(netns: str) -> dict[int, str]:
    """handle -> rule text, from the `nft -a list table` listing."""
    res = run(["nft", "-a", "list", "table", FAMILY, TABLE], netns=netns, check=False)
    out: dict[int, str] = {}
    in_chain = False
    for line in res.stdout.splitlines():
        s = line.strip()
        if s.startswith("chain "):
            in_chain = True
        elif s == "}":
            in_chain = False
        elif in_chain and (m := HANDLE.match(s)):
            out[int(m.group(2))] = m.group(1)
    return out


def read_back(netns: str, pods: dict[str, str]) -> dict[str, Any]:
    """The table in `netns`; `pods` names the pod behind each endpoint "ip:port"."""
    res = run(["nft", "-j", "list", "table", FAMILY, TABLE], netns=netns, check=False)
    if not res.ok:
        return {
            "mode": "nftables",
            "netns": netns,
            "table": None,
            "chains": [],
            "sets": {},
            "maps": {},
            "text": f"no table {FAMILY} {TABLE} in {netns}: the nftables mode is not programmed here",
        }
    objects = json.loads(res.stdout).get("nftables", [])
    texts = _texts(netns)
    chains: dict[str, dict[str, Any]] = {}
    sets: dict[str, list[str]] = {}
    maps: dict[str, list[dict[str, str]]] = {}
    for obj in objects:
        if "chain" in obj:
            c = obj["chain"]
            info = {"name": c["name"], **describe_chain(c["name"]), "rules": []}
            if "endpoint" in info and info["endpoint"] in pods:
                info["pod"] = pods[info["endpoint"]]
            chains[c["name"]] = info
        elif "rule" in obj:
            r = obj["rule"]
            counter = next((x["counter"] for x in r["expr"] if "counter" in x), None)
            rule = {"handle": r["handle"], "text": texts.get(r["handle"], ""), **(counter or {})}
            chains.setdefault(r["chain"], {"name": r["chain"], "rules": []})["rules"].append(rule)
        elif "set" in obj:
            sets[obj["set"]["name"]] = [_fmt(e) for e in obj["set"].get("elem", [])]
        elif "map" in obj:
            maps[obj["map"]["name"]] = [
                {"key": _fmt(k), "value": _fmt(v)} for k, v in obj["map"].get("elem", [])
            ]
    for name, elements in maps.items():  # what leads to each chain: "service-ips: 10.96.0.10 . tcp . 80"
        for el in elements:
            target = el["value"].split(" ", 1)[-1]
            if target in chains:
                chains[target].setdefault("reached_by", []).append(f"@{name} {el['key']}")
    out = {
        "mode": "nftables",
        "netns": netns,
        "table": f"{FAMILY} {TABLE}",
        "chains": list(chains.values()),
        "sets": sets,
        "maps": maps,
    }
    out["text"] = _text(out)
    return out


def _text(view: dict[str, Any]) -> str:
    lines = [f"table {view['table']}   (netns {view['netns']}; counters: packets that took each rule)"]
    for c in view["chains"]:
        head = f"chain {c['name']}"
        kind = c.get("kind", "helper")
        if kind == "base":
            head += f"   [hook {c['hook']}, {c['type']}, priority {c['priority']}]"
        elif kind != "helper":
            note = [c.get("service", ""), KIND_NOTES[kind]]
            if "endpoint" in c:
                note.append(f"-> {c['endpoint']}" + (f" (pod {c['pod']})" if c.get("pod") else ""))
            head += "   # " + ", ".join(n for n in note if n)
        lines.append("")
        lines.append(head)
        for via in c.get("reached_by", []):
            lines.append(f"    <- {via}")
        for r in c["rules"]:
            count = f"{r['packets']:>7} pkts " if "packets" in r else " " * 13
            text = re.sub(r" ?counter packets \d+ bytes \d+", "", r["text"]).strip()
            lines.append(f"  {count} {text}")
    for kind, coll in (("set", view["sets"]), ("map", view["maps"])):
        for name, elements in coll.items():
            lines.append("")
            lines.append(f"{kind} {name}   ({len(elements)} elements)")
            for el in elements:
                lines.append(f"    {el['key']} : {el['value']}" if isinstance(el, dict) else f"    {el}")
    return "\n".join(lines) + "\n"
