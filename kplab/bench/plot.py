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

COLORS = {"iptables": "#d62728", "nftables": "#1f77b4", "ipvs": "#2ca02c", "userspace": "#9467bd"}


def rows_by_mode(kind: str, results: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Rows of the newest `<kind>*.json` result per mode, sorted by the number of Services."""
    folder = Path(results) if results else report.results_dir()
    out: dict[str, list[dict[str, Any]]] = {}
    files = sorted(folder.glob(f"{kind}*.json"), key=lambda p: p.stat().st_mtime)
    for f in files:  # oldest first: newer files overwrite a mode's rows
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not str(data.get("bench", "")).startswith(kind):
            continue
        modes = {r.get("mode") or data.get("params", {}).get("mode") for r in data.get("rows", [])}
        for m in modes:
            rows = [dict(r, mode=m) for r in data["rows"] if (r.get("mode") or data["params"].get("mode")) == m]
            out[str(m)] = sorted(rows, key=lambda r: r.get("services", 0))
    return out


def _figure(panels: int) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise EnvironmentProblem("plots need matplotlib: pip install 'kplab[lab]' (or `make setup`)") from None
    fig = Figure(figsize=(6.2 * panels, 4.4), layout="constrained")
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def latency_figure(data: dict[str, list[dict[str, Any]]]) -> Any:
    """p50 and p99 connect() time to the first and the last Service, per mode, with the pod-IP baseline."""
    fig, axes = _figure(2)
    for ax, q in zip(axes, ("p50", "p99")):
        for mode, rows in sorted(data.items()):
            c = COLORS.get(mode, "gray")
            pts = [r for r in rows if r.get("services")]
            xs = [r["services"] for r in pts]
            ax.plot(xs, [r.get(f"last_{q}_us") for r in pts], "o-", color=c, label=f"{mode}: last Service")
            ax.plot(xs, [r.get(f"first_{q}_us") for r in pts], "s--", color=c, alpha=0.6, label=f"{mode}: first Service")
            ax.plot([r["services"] for r in rows], [r.get(f"base_{q}_us") for r in rows], ":", color=c, linewidth=1,
                    label=f"{mode}: baseline (pod IP, node without Services)")
        ax.set_xlabel("Services in the ruleset")
        ax.set_ylabel(f"TCP connect() {q}, µs")
        ax.set_title(f"New-connection latency ({q})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def sync_figure(data: dict[str, list[dict[str, Any]]]) -> Any:
    """Full sync and add-one-Service sync seconds per mode, kplab against the raw loader."""
    fig, axes = _figure(2)
    for ax, (key, title) in zip(axes, (("full", "Full sync"), ("add_one", "Add one Service"))):
        for mode, rows in sorted(data.items()):
            c = COLORS.get(mode, "gray")
            xs = [r["services"] for r in rows]
            ax.plot(xs, [r[f"{key}_kplab"] for r in rows], "o-", color=c, label=f"{mode}: kplab sync()")
            ax.plot(xs, [r[f"{key}_raw"] for r in rows], "x:", color=c, label=f"{mode}: raw loader, same input")
        ax.set_xlabel("Services (2 endpoints each)")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
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
