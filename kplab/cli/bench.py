"""`kplab bench`: the modes measured side by side, each against a baseline from the same run.

    kplab bench startup    [--pods 4,100] [--rounds 3] [--mode iptables]
    kplab bench sync       --mode iptables[,nftables] --services 1000,5000,10000 [--endpoints 2]
    kplab bench latency    --mode iptables,nftables --services 100,1000,5000,10000 [--samples 1000]
    kplab bench throughput --mode userspace,iptables,nftables [--rounds 6]
    kplab bench plot       the curves (PNG + SVG) from bench/results/
    kplab bench table      the "Which mode should you use?" table, filled from bench/results/

Each benchmark builds its own throwaway lab (`--name`, never the lab of `--lab`), prints a
table, writes JSON to bench/results/ (`--json FILE` to choose) and removes what it built.
The code is kplab.bench, importable from a notebook.
"""

from __future__ import annotations

from pathlib import Path

import typer

from kplab.errors import KplabError

JSON = typer.Option(None, "--json", help="where to write the result (default: bench/results/<bench>.json)")
QUIET = typer.Option(False, "--no-progress", help="no progress bars")


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes:
        raise KplabError("--mode: name at least one mode, e.g. iptables,nftables")
    return modes


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise KplabError(f"{flag} {text!r}: give numbers separated by commas") from None


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Measure the modes side by side (each against a baseline from the same run).",
                        no_args_is_help=True)
    app.add_typer(bench, name="bench")

    @bench.command()
    def startup(
        pods: str = typer.Option("4,100", "--pods", help="pod counts (4 = the default lab)"),
        rounds: int = typer.Option(3, "--rounds"),
        mode: str = typer.Option("iptables", "--mode"),
        json_path: Path | None = JSON,
        no_progress: bool = QUIET,
    ) -> None:
        """Lab up/down (kplab CLI) against a plain `ip` script building the same topology."""
        from kplab.bench import report
        from kplab.bench import startup as b

        result = b.run_startup(_ints(pods, "--pods"), rounds, mode, show_progress=not no_progress)
        report.show(result, b.COLUMNS)
        typer.echo(f"written: {report.save(result, json_path)}")

    @bench.command()
    def sync(
        mode: str = typer.Option("iptables", "--mode", help="one mode or several, comma-separated"),
        services: str = typer.Option("1000,5000,10000", "--services", help="sizes, comma-separated"),
        endpoints: int = typer.Option(2, "--endpoints", help="endpoints per Service"),
        rounds: int = typer.Option(3, "--rounds"),
        option: list[str] | None = typer.Option(None, "--option", help="mode option KEY=VALUE"),
        name: str = typer.Option("bench", "--name", help="prefix of the throwaway namespaces"),
        json_path: Path | None = JSON,
        no_progress: bool = QUIET,
    ) -> None:
        """Full sync and add-one-Service sync against the raw loader of the same input."""
        from kplab.bench import report
        from kplab.bench import sync as b

        opts = {}
        for o in option or []:
            if "=" not in o:
                raise KplabError(f"--option {o!r}: write KEY=VALUE, e.g. iptables_backend=legacy")
            k, v = o.split("=", 1)
            opts[k] = v
        modes = _modes(mode)
        for m in modes:
            result = b.run_sync(m, services, endpoints, rounds, opts, lab=name, show_progress=not no_progress)
            report.show(result, b.COLUMNS)
            out = json_path.with_name(f"{json_path.stem}-{m}{json_path.suffix}") if json_path and len(modes) > 1 \
                else json_path
            typer.echo(f"written: {report.save(result, out)}")

    @bench.command()
    def latency(
        mode: str = typer.Option("iptables,nftables", "--mode", help="one mode or several, comma-separated"),
        services: str = typer.Option("100,1000,2000,5000,10000", "--services", help="sizes, comma-separated"),
        samples: int = typer.Option(1000, "--samples", help="connections per target and size"),
        rounds: int = typer.Option(5, "--rounds", help="probe runs per size (ratios: median over rounds)"),
        name: str = typer.Option("blat", "--name", help="the throwaway lab's name"),
        json_path: Path | None = JSON,
        no_progress: bool = QUIET,
    ) -> None:
        """Connect time (SYN -> SYN-ACK) to the first and last Service, against the pod IP."""
        from kplab.bench import latency as b
        from kplab.bench import report

        result = b.run_latency(_modes(mode), services, samples=samples, rounds=rounds, lab=name,
                               show_progress=not no_progress)
        report.show(result, b.COLUMNS)
        typer.echo(f"written: {report.save(result, json_path)}")

    @bench.command()
    def throughput(
        mode: str = typer.Option("iptables", "--mode", help="one mode or several, comma-separated"),
        rounds: int = typer.Option(6, "--rounds"),
        requests: int = typer.Option(1000, "--requests", help="requests per throughput run"),
        latency_requests: int = typer.Option(300, "--latency-requests", help="requests per one-at-a-time run"),
        concurrency: int = typer.Option(16, "--concurrency"),
        spread: int = typer.Option(300, "--spread", help="connections for the load-balancing spread (0: none)"),
        name: str = typer.Option("bdp", "--name", help="the throwaway lab's name"),
        json_path: Path | None = JSON,
        no_progress: bool = QUIET,
    ) -> None:
        """Requests/s and latency through each mode against the pod IPs directly."""
        from kplab.bench import report
        from kplab.bench import throughput as b

        result = b.run_throughput(_modes(mode), rounds=rounds, requests=requests, latency_requests=latency_requests,
                                  concurrency=concurrency, spread_requests=spread, lab=name,
                                  show_progress=not no_progress)
        report.show(result, b.COLUMNS)
        report.show({"bench": "spread over the backends", "rows": result["spread"]}, b.SPREAD_COLUMNS)
        typer.echo(f"written: {report.save(result, json_path)}")

    @bench.command()
    def plot(
        out: Path = typer.Option(Path("docs"), "--out", help="directory for the PNG and SVG files"),
        results: Path | None = typer.Option(None, "--results", help="directory of the JSON results"),
    ) -> None:
        """Latency vs Services and sync time vs Services, per mode, from the JSON results."""
        from kplab.bench import plot as b

        for path in b.plot_all(out, results):
            typer.echo(f"written: {path}")

    @bench.command()
    def table(results: Path | None = typer.Option(None, "--results", help="directory of the JSON results")) -> None:
        """The seed's "Which mode should you use?" table, filled with the measured numbers (Markdown)."""
        from kplab.bench import compare

        typer.echo(compare.markdown(compare.table(results)))
