"""The curves: connect latency vs number of Services, and sync time vs number of Services, per mode.

    kplab bench plot --out docs        # -> docs/bench-latency.{png,svg}, docs/bench-sync.{png,svg}

Reads the JSON results in bench/results/ (`latency*.json`, `sync-*.json`); when several files
hold the same mode, the newest wins.  The figures are matplotlib `Figure`s made without
pyplot, so a notebook can display them (`latency_figure(...)`) and a server can save them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kplab.bench import report
from kplab.errors import EnvironmentProblem

COLORS = {"iptables": "#d62728", "nftables": "#1f77b4", "ipvs": "#2ca02c", "userspace": "#9467bd",
          "iptables (legacy)": "#ff7f0e"}


def color(label: str) -> str:
    return COLORS.get(label) or COLORS.get(label.split(" ")[0], "gray")


def rows_by_mode(kind: str, results: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Rows of the newest `<kind>*.json` result per mode, sorted by the number of Services.

    A result made with `--option iptables_backend=legacy` is its own curve, "iptables (legacy)",
    and so is one measured in the throwaway VM, "ipvs (VM)".
    """
    folder = Path(results) if results else report.results_dir()
    out: dict[str, list[dict[str, Any]]] = {}
    files = sorted(folder.glob(f"{kind}*.json"), key=lambda p: p.stat().st_mtime)
    for f in files:  # oldest first: newer files overwrite a mode's rows
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        params = data.get("params", {})
        if data.get("bench") not in (kind, f"{kind}-{params.get('mode')}"):
            continue  # e.g. sync-cpu: other figures
        backend = (params.get("options") or {}).get("iptables_backend")
        modes = {r.get("mode") or params.get("mode") for r in data.get("rows", [])}
        for m in modes:
            rows = [dict(r, mode=m) for r in data["rows"] if (r.get("mode") or params.get("mode")) == m]
            label = f"{m} ({backend})" if backend else str(m)  # e.g. iptables (legacy) beside iptables (nft)
            if data.get("machine", {}).get("in_vm"):
                label += " (VM)"  # measured in the emulated IPVS VM: only its ratios compare with the host's
            out[label] = sorted(rows, key=lambda r: r.get("services", 0))
    return out


def _figure(panels: int) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise EnvironmentProblem("plots need matplotlib: pip install 'kplab[lab]' (or `make setup`)") from None
    fig = Figure(figsize=(6.2 * panels, 4.4), layout="constrained")
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def latency_figure(data: dict[str, list[dict[str, Any]]]) -> Any:
    """Connect p50 to the first and last Service per mode: as a ratio to the baseline sampled in
    the same loop (left: robust on a busy machine), and in microseconds with that baseline (right)."""
    fig, (rel, ab) = _figure(2)
    for mode, rows in sorted(data.items()):
        vm = mode.endswith("(VM)")
        c = color(mode)
        pts = [r for r in rows if r.get("services")]
        xs = [r["services"] for r in pts]
        for target, style, alpha in (("last", "o-", 1.0), ("first", "s--", 0.6)):
            rel.plot(xs, [r.get(f"{target}_ratio") for r in pts], style, color=c, alpha=alpha * (0.5 if vm else 1),
                     label=f"{mode}: {target} Service")
            if not vm:  # emulated microseconds are not the host's
                ab.plot(xs, [r.get(f"{target}_p50_us") for r in pts], style, color=c, alpha=alpha,
                        label=f"{mode}: {target} Service")
        if vm:
            continue
        rel.plot(xs, [r.get("pod_ratio") for r in pts], "^:", color=c, alpha=0.5,
                 label=f"{mode}: pod IP through the loaded node")
        ab.plot([r["services"] for r in rows], [r.get("base_p50_us") for r in rows], ":", color=c, linewidth=1,
                label=f"{mode}: baseline (pod IP, node without Services)")
    rel.axhline(1.0, color="black", linewidth=0.8)
    rel.set_ylabel("connect() p50 / baseline p50 (same loop)")
    rel.set_title("New-connection latency, relative to the baseline")
    ab.set_ylabel("TCP connect() p50, µs")
    ab.set_title("New-connection latency (p50)")
    for ax in (rel, ab):
        ax.set_xlabel("Services in the ruleset")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def sync_figure(data: dict[str, list[dict[str, Any]]]) -> Any:
    """Full sync and add-one-Service sync seconds per mode, kplab against the raw loader."""
    fig, axes = _figure(2)
    for ax, (key, title) in zip(axes, (("full", "Full sync"), ("add_one", "Add one Service"))):
        for mode, rows in sorted(data.items()):
            c = color(mode)
            xs = [r["services"] for r in rows]
            ax.plot(xs, [r[f"{key}_kplab"] for r in rows], "o-", color=c, label=f"{mode}: kplab sync()")
            ax.plot(xs, [r[f"{key}_raw"] for r in rows], "x:", color=c, label=f"{mode}: raw loader, same input")
        ax.set_xlabel("Services (2 endpoints each)")
        ax.set_ylabel("seconds (log scale)")
        ax.set_title(title)
        ax.set_yscale("log")  # the modes and backends differ by orders of magnitude
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def plot_all(out: Path | str = "docs", results: Path | None = None) -> list[Path]:
    """Write every figure there is data for, as PNG and SVG; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, make in (("latency", latency_figure), ("sync", sync_figure)):
        data = rows_by_mode(kind, results)
        if not data:
            continue
        fig = make(data)
        for ext in ("png", "svg"):
            path = out / f"bench-{kind}.{ext}"
            fig.savefig(path, dpi=110 if ext == "png" else None, metadata={"Date": None} if ext == "svg" else None)
            written.append(path)
    if not written:
        raise EnvironmentProblem(f"no results to plot in {results or report.results_dir()}: "
                                 "run `kplab bench latency` and `kplab bench sync` first")
    return written
