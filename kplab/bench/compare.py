"""The seed's "Which mode should you use?" table, filled with numbers measured on this machine.

    kplab bench table                     # Markdown, from bench/results/*.json
    compare.markdown(compare.table())     # the same, in notebook 06

Rows (the seed's): Speed, Scalability, Load Balancing, Kernel-Level Processing, Best For;
columns: the four modes and the eBPF replacement (no kube-proxy).  Every number comes from a result file with its baseline from the
same run: Speed from `throughput` (req/s and new-connection p50 against the pod IPs),
Scalability from `latency` (connect p50 to the last Service against the pod IP with no
Services) and `sync-<mode>` (full and add-one sync against the raw loader), Load Balancing
from the spread `throughput` measured.  A cell says "not measured" when no result has it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kplab.bench import report
from kplab.bench.plot import rows_by_mode

MODES = ("userspace", "iptables", "ipvs", "nftables", "ebpf")
HEADERS = {"userspace": "Userspace", "iptables": "iptables (default)", "ipvs": "IPVS", "nftables": "nftables",
           "ebpf": "eBPF (no kube-proxy)"}
SIZES = (1000, 5000, 10000)
THROUGHPUT_LOAD = "connect x16"

ALGORITHM = {
    "userspace": "round robin in the proxy process",
    "iptables": "random: a cascade of `statistic --probability 1/n` rules",
    "ipvs": "a scheduler per Service: rr (default), wrr, lc, sh, mh...",
    "nftables": "random: `numgen random mod n` into a verdict map",
    "ebpf": "random: slot = random % count + 1 in a BPF hash map (Cilium's default; Maglev left out)",
}
KERNEL = {
    "userspace": "only the REDIRECT; every byte crosses a user process (two TCP connections)",
    "iptables": "all of it: nat rules walked per new connection, then conntrack",
    "ipvs": "all of it: an IPVS hash lookup, plus iptables/ipset for masquerade and filtering",
    "nftables": "all of it: verdict-map lookups in one nf_tables table, then conntrack",
    "ebpf": "all of it, no netfilter: a map lookup at connect() (socket LB) or per packet at tc",
}
BEST_FOR = {
    "userspace": "learning what a proxy does; removed upstream in 1.26",
    "iptables": "the default; small and medium clusters (first-packet cost grows with Services)",
    "ipvs": "large clusters before nftables existed; deprecated upstream since 1.35",
    "nftables": "large clusters: flat lookup, small partial syncs; GA since 1.33",
    "ebpf": "clusters running Cilium or Calico eBPF instead of kube-proxy (not a kube-proxy mode)",
}


def _newest(pattern: str, folder: Path) -> dict[str, Any] | None:
    for f in sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("bench") == "throughput":
            return dict(data)
    return None


def _speed(thr: dict[str, Any] | None, mode: str) -> str:
    rows = {r["load"]: r for r in (thr or {}).get("rows", []) if r["target"] == mode}
    load = next((k for k in rows if k.startswith("connect x")), None)
    if not rows or load is None:
        return "not measured"
    t, c = rows[load], rows.get("connect", {})
    text = f"{t['rps']:.0f} req/s at {load.split()[-1]} (×{t.get('rps_vs_pods', 0):.2f} of pod IP)"
    if c:
        text += f"; new conn. p50 {c['p50_ms']:.2f} ms (×{c.get('p50_vs_pods', 0):.2f})"
    return text


def _scale(lat: list[dict[str, Any]], sync: list[dict[str, Any]], where: str = "") -> str:
    parts = []
    pts = {r["services"]: r for r in lat if r.get("services") in SIZES and r.get("last_ratio")}
    if pts:
        parts.append("new connection to the last Service: " + ", ".join(
            f"×{pts[n]['last_ratio']:.2f} at {n // 1000}k" for n in sorted(pts)) + " of the pod-to-pod p50")
    syn = {r["services"]: r for r in sync if r.get("services") in SIZES}
    if syn:
        parts.append("full sync: " + ", ".join(
            f"{syn[n]['full_kplab']:.2f} s at {n // 1000}k" for n in sorted(syn)) +
            f" (×{syn[max(syn)]['full_ratio']:.2f} raw)")
        big = syn[max(syn)]
        parts.append(f"add one at {max(syn) // 1000}k: {1000 * big['add_one_kplab']:.0f} ms "
                     f"(×{big['add_one_ratio']:.2f} raw)")
    return "; ".join(parts) + where if parts else "not measured"


def _host_or_vm(lat: dict[str, Any], syn: dict[str, Any], mode: str) -> tuple[list[Any], list[Any], str]:
    """A mode's rows from this machine, else from the throwaway VM (IPVS on a kernel without it)."""
    if mode in lat or mode in syn:
        return lat.get(mode, []), syn.get(mode, []), ""
    vm = f"{mode} (VM)"
    return lat.get(vm, []), syn.get(vm, []), " (in the emulated VM)" if vm in lat or vm in syn else ""


def _balance(thr: dict[str, Any] | None, mode: str) -> str:
    s = next((x for x in (thr or {}).get("spread", []) if x["mode"] == mode), None)
    text = ALGORITHM[mode]
    if s and s.get("requests"):
        text += f"; measured {s.get('shares', '')} of {s['requests']}"
        if s.get("p_uniform") is not None:
            text += f" (χ² p={s['p_uniform']:.2f})"
    return text


def table(results: Path | str | None = None) -> list[dict[str, str]]:
    """The filled table as rows {"feature": ..., <mode>: ...}."""
    folder = Path(results) if results else report.results_dir()
    thr = _newest("throughput*.json", folder) or _newest("datapath*.json", folder)
    lat, syn = rows_by_mode("latency", folder), rows_by_mode("sync", folder)
    rows = [
        {"feature": "Speed", **{m: _speed(thr, m) for m in MODES}},
        {"feature": "Scalability", **{m: _scale(*_host_or_vm(lat, syn, m)) for m in MODES}},
        {"feature": "Load Balancing", **{m: _balance(thr, m) for m in MODES}},
        {"feature": "Kernel-Level Processing", **KERNEL},
        {"feature": "Best For", **BEST_FOR},
    ]
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    head = "| Feature | " + " | ".join(HEADERS[m] for m in MODES) + " |"
    lines = [head, "|" + "---|" * (len(MODES) + 1)]
    for r in rows:
        lines.append(f"| **{r['feature']}** | " + " | ".join(r[m].replace("|", "\\|") for m in MODES) + " |")
    return "\n".join(lines)
