"""Lab lifecycle and the lab's own verbs: up, down, clean, status, ready, exec, curl, mode, rules,
render, doctor (kubectl's verbs are in kplab.cli.kubectl)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Optional

import typer

from kplab.cli import attach, current_lab, emit

Files = Optional[list[Path]]
OUT = typer.Option(None, "-o", "--output", help="json, yaml or wide where the output is data")


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        files: Files = typer.Option(None, "-f", "--filename", help="manifests (default: the demo app)"),
        mode: str = typer.Option("iptables", "--mode", help="iptables, nftables, ipvs, userspace or none"),
        nodes: int = typer.Option(2, "--nodes"),
        scheduler: str | None = typer.Option(None, "--scheduler", help="IPVS scheduler (rr, lc, wrr, ...)"),
        zones: str = typer.Option("", "--zones", help="topology zones given to the nodes in turn, e.g. a,b"),
    ) -> None:
        """Build a lab: nodes, pods and an outside client in network namespaces, kube-proxy on each node."""
        from kplab.lab import Lab

        opts: dict[str, Any] = {"scheduler": scheduler} if scheduler else {}
        if zones:
            opts["zones"] = [z.strip() for z in zones.split(",") if z.strip()]
        lab = Lab.up(current_lab(), mode=mode, manifests=files or None, nodes=nodes, **opts)
        st = lab.status()
        for w in lab.warnings():
            typer.echo(f"warning: {w}", err=True)
        typer.echo(f"lab {st['name']!r} is up: {len(st['nodes'])} nodes, {st['pods']} pods, "
                   f"{st['services']} services, mode {st['mode']}")
        from kplab.cli.kubectl import up_hint

        typer.echo(up_hint(lab))

    @app.command()
    def down() -> None:
        """Remove the lab: proxies, workload, namespaces, state. Nothing of it stays behind."""
        from kplab.lab import Lab

        Lab(current_lab()).down()
        typer.echo(f"lab {current_lab()!r} removed")

    @app.command()
    def clean(all_labs: bool = typer.Option(False, "--all", help="also labs that are up")) -> None:
        """Remove leftovers of crashed labs (only names with the kplab- prefix are touched)."""
        import os

        from kplab.lab import clean as do_clean

        only = os.environ.get("KPLAB_LAB") if not all_labs else None
        removed = do_clean(lab=only, everything=all_labs)
        typer.echo("removed: " + (", ".join(removed) if removed else "nothing"))

    @app.command()
    def status(output: str | None = OUT) -> None:
        """The lab's mode, nodes, pods and namespaces."""
        st = attach().status()
        servers = st.get("servers", {}).get("nodes", {})
        lines = [f"lab {st['name']}: mode {st['mode']}, {st['pods']} pods, {st['services']} services"]
        for n, ip in st["nodes"].items():
            lines.append(f"  {n}  {ip}")
            if n in servers:
                s = servers[n]
                hcs = ", ".join(f"{nsn} :{p}" for nsn, p in s["health_check_node_ports"].items())
                lines.append(f"    kube-proxy: {s['healthz']} -> {s['healthz_status']}, {s['metrics']}"
                             + (f", healthCheckNodePorts: {hcs}" if hcs else ""))
        text = "\n".join(lines + [f"  state: {st['state_dir']}"])
        emit(st, output, text)

    @app.command()
    def ready(pod: str, state: str = typer.Argument("true", help="true, false or terminating")) -> None:
        """Flip a pod's readiness (or make it terminating): watch its endpoint follow."""
        if state not in ("true", "false", "terminating"):
            raise typer.BadParameter("state is true, false or terminating")
        attach().set_ready(pod, ready=state == "true", terminating=state == "terminating")
        typer.echo(f"pod/{pod} ready={state}")

    @app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def exec_(ctx: typer.Context, name: str) -> None:
        """Run a command inside a pod, a node or `outside`: kplab exec client -- ip route"""
        argv = list(ctx.args)
        if not argv:
            raise typer.BadParameter("give a command after --, e.g. kplab exec node-1 -- iptables-save")
        lab = attach()
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{lab.netns(name)}", "--", *argv])
        raise typer.Exit(proc.returncode)

    @app.command()
    def curl(frm: str, target: str, n: int = typer.Option(1, "-n"), udp: bool = typer.Option(False, "--udp"),
             timeout: float = typer.Option(2.0, "--timeout"), output: str | None = OUT) -> None:
        """Send N requests from FROM (pod, node, outside) to TARGET (svc, svc:port, node-1:svc, lb:svc, ip:port)."""
        res = attach().curl(frm, target, n=n, proto="udp" if udp else None, timeout=timeout)
        d = res.to_dict()
        lines = [f"{res.ok}/{res.requests} answered from {frm} to {target}"]
        lines += [f"  {pod:<32} {c:>5}  {'#' * round(40 * c / max(res.ok, 1))}" for pod, c in res.backends.items()]
        if res.answers:
            seen = sorted({a["client_ip"] for a in res.answers})
            lines.append(f"  the backends saw the client as: {', '.join(seen)}")
        lines += [f"  failed: {err} x{c}" for err, c in res.errors.items()]
        emit(d, output, "\n".join(lines))

    @app.command()
    def mode(new_mode: str | None = typer.Argument(None), scheduler: str | None = typer.Option(None)) -> None:
        """Show the lab's mode, or switch every node to another (the old mode's state is removed)."""
        lab = attach()
        if new_mode is None:
            typer.echo(lab.mode)
            return
        lab.set_mode(new_mode, **({"scheduler": scheduler} if scheduler else {}))
        typer.echo(f"lab {lab.name!r} now runs kube-proxy in {new_mode} mode")

    @app.command()
    def rules(node: str, output: str | None = OUT) -> None:
        """The node's rules as loaded in the kernel (read back), with counters and annotations."""
        data = attach().rules(node)
        emit(data, output, data.get("text", ""))

    @app.command()
    def render(
        mode: str,
        files: list[Path] = typer.Option(..., "-f", "--filename"),
        node_name: str = typer.Option("node-1", "--node-name"),
        node_ip: list[str] = typer.Option(["172.18.0.11"], "--node-ip"),
        cluster_cidr: str = typer.Option("10.244.0.0/16", "--cluster-cidr"),
        service_cidr: str = typer.Option("10.96.0.0/16", "--service-cidr"),
        nodeport_addresses: str = typer.Option("", "--nodeport-addresses",
                                               help="CIDR,CIDR or primary (default: the mode's)"),
        zone: str = typer.Option("", "--zone", help="the node's topology.kubernetes.io/zone (topology hints)"),
    ) -> None:
        """What MODE would program for these objects, without a kernel and without root."""
        from kplab.cli.views import render_text

        typer.echo(render_text(mode, files, node_name=node_name, node_ips=tuple(node_ip), cluster_cidr=cluster_cidr,
                               service_cidr=service_cidr, zone=zone,
                               nodeport_addresses=tuple(c for c in nodeport_addresses.split(",") if c)), nl=False)

    @app.command()
    def doctor(output: str | None = OUT) -> None:
        """Can this machine run each mode? And exactly what to do when it cannot."""
        from kplab.cli.views import doctor_report

        data, text = doctor_report()
        emit(data, output, text)
        if not data["lab"]["ok"]:
            raise typer.Exit(1)


__all__ = ["Any", "register"]
