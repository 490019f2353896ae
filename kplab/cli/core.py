"""Lab lifecycle and the lab's own verbs: up, down, clean, status, ready, exec, curl, mode, rules,
render, doctor (kubectl's verbs are in kplab.cli.kubectl)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Optional

import typer

from kplab.cli import NO_SYNC, attach, check_output, current_lab, emit, holding
from kplab.cluster.options import meant
from kplab.cluster.run import netns_argv
from kplab.errors import KplabError

Files = Optional[list[Path]]
OUT = typer.Option(None, "-o", "--output", help="json or yaml for data, default: text", callback=check_output)


SET = typer.Option([], "--set", help="a kube-proxy option KEY=VALUE, e.g. masquerade_all=true, "
                   "detect_local_mode=BridgeInterface, pod_bridge_interface=cni0, nftables_version=1.33, "
                   "conntrack_cleanup=false, drop_invalid=false, iptables_backend=legacy (repeatable)")
SETTABLE = ("masquerade_all", "detect_local_mode", "pod_bridge_interface", "pod_interface_name_prefix",
            "nftables_version", "conntrack_cleanup", "drop_invalid", "iptables_backend")


def lab_options(sets: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs as lab options (true/false as booleans)."""
    out: dict[str, Any] = {}
    for item in sets or []:
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in SETTABLE:
            hint = meant(key.strip(), SETTABLE) if eq else ""
            raise KplabError(f"--set {item!r}{hint}: use KEY=VALUE with KEY one of {', '.join(SETTABLE)}")
        low = value.strip().lower()
        out[key.strip()] = True if low == "true" else False if low == "false" else value.strip()
    return out


def outside_note(lab: Any, frm: str, target: str) -> list[str]:
    """Why `outside` got no answer from a ClusterIP (it has no route to one), for curl and send."""
    ip = lab.resolve(target)[0]
    if frm != "outside" or not any((svc.get("spec") or {}).get("clusterIP") == ip for svc in lab.objects("Service")):
        return []
    name = target.split(":")[0]
    return [(f"  note: a ClusterIP is routed only inside the cluster (as on a real one): from outside use "
             f"{lab.nodes[0]}:{name} (its NodePort) or lb:{name}")]


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        files: Files = typer.Option(None, "-f", "--filename", help="manifests (default: the demo app)"),
        mode: str = typer.Option("iptables", "--mode", help="iptables, nftables, ipvs, userspace, none, or ebpf "
                                 "(no kube-proxy: a Cilium-style eBPF replacement)"),
        nodes: int = typer.Option(2, "--nodes"),
        scheduler: str | None = typer.Option(None, "--scheduler", help="IPVS scheduler (rr, lc, wrr, ...)"),
        zones: str = typer.Option("", "--zones", help="topology zones given to the nodes in turn, e.g. a,b"),
        sets: list[str] = SET,
        socket_lb: bool = typer.Option(True, "--socket-lb/--no-socket-lb", help="ebpf: choose backends at connect()"),
    ) -> None:
        """Build a lab: nodes, pods and an outside client in network namespaces, kube-proxy on each node."""
        from kplab.lab import Lab

        opts: dict[str, Any] = {"scheduler": scheduler} if scheduler else {}
        opts.update(lab_options(sets))
        if not socket_lb:
            opts["socket_lb"] = False
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
        """Remove leftovers of crashed labs (only names with the kplab- prefix are touched).

        A lab that is up (or busy) stays, even when named by --lab or $KPLAB_LAB: `kplab down`
        removes it, `--all` removes every lab.
        """
        import os

        from kplab.lab import clean as do_clean

        only = os.environ.get("KPLAB_LAB") if not all_labs else None
        skipped: list[str] = []
        removed = do_clean(lab=only, everything=all_labs, crashed_only=True, skipped=skipped if only else None)
        typer.echo("removed: " + (", ".join(removed) if removed else "nothing"))
        for name in skipped:
            typer.echo(f"kept lab {name!r}: it is up or busy (`kplab down --lab {name}` removes it, "
                       "`kplab clean --all` removes every lab)", err=True)

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
    def ready(pod: str, state: str = typer.Argument("true", help="true, false or terminating"),
              no_sync: bool = NO_SYNC) -> None:  # fmt: skip
        """Flip a pod's readiness (or make it terminating): watch its endpoint follow."""
        if state not in ("true", "false", "terminating"):
            raise typer.BadParameter("state is true, false or terminating")
        lab = attach()
        with holding(lab, no_sync):
            lab.set_ready(pod, ready=state == "true", terminating=state == "terminating")
        typer.echo(f"pod/{pod} ready={state}")

    @app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def exec_(ctx: typer.Context, name: str) -> None:
        """Run a command inside a pod, a node or `outside`: kplab exec client -- ip route"""
        argv = list(ctx.args)
        if not argv:
            raise typer.BadParameter("give a command after --, e.g. kplab exec node-1 -- iptables-save")
        lab = attach()
        proc = subprocess.run(netns_argv(lab.netns(name), argv))
        raise typer.Exit(proc.returncode)

    @app.command()
    def curl(frm: str, target: str, n: int = typer.Option(1, "-n"), udp: bool = typer.Option(False, "--udp"),
             timeout: float = typer.Option(2.0, "--timeout"), output: str | None = OUT) -> None:
        """Send N requests from FROM (pod, node, outside) to TARGET (svc, svc:port, node-1:svc, lb:svc, ip:port)."""
        lab = attach()
        res = lab.curl(frm, target, n=n, proto="udp" if udp else None, timeout=timeout)
        d = res.to_dict()
        lines = [f"{res.ok}/{res.requests} answered from {frm} to {target}"]
        lines += [f"  {pod:<32} {c:>5}  {'#' * round(40 * c / max(res.ok, 1))}" for pod, c in res.backends.items()]
        if res.answers:
            seen = sorted({a["client_ip"] for a in res.answers})
            lines.append(f"  the backends saw the client as: {', '.join(seen)}")
        lines += [f"  failed: {err} x{c}" for err, c in res.errors.items()]
        if res.ok == 0:
            lines += outside_note(lab, frm, target)
        emit(d, output, "\n".join(lines))
        if res.ok == 0:
            raise typer.Exit(1)  # as curl: no answer is a failure a script can see

    @app.command()
    def mode(new_mode: str | None = typer.Argument(None), scheduler: str | None = typer.Option(None),
             socket_lb: bool | None = typer.Option(None, "--socket-lb/--no-socket-lb", show_default=False,
                                                   help="ebpf: choose backends at connect() (default: on, or as "
                                                        "last set: options persist, as in kube-proxy's config)"),
             output: str | None = OUT, sets: list[str] = SET) -> None:
        """Show the lab's mode, or switch every node to another (the old mode's state is removed)."""
        lab = attach()
        if new_mode is not None:
            opts: dict[str, Any] = {"scheduler": scheduler} if scheduler else {}
            if socket_lb is not None:  # another mode warns that it ignores it
                opts["socket_lb"] = socket_lb
            lab.set_mode(new_mode, **opts, **lab_options(sets))
            for w in lab.notes:
                typer.echo(f"warning: {w}", err=True)
        elif sets:
            raise KplabError("--set changes kube-proxy's options with a mode switch: `kplab mode MODE --set KEY=VALUE`")
        data = {"lab": lab.name, "mode": lab.mode, "options": lab.options}
        text = lab.mode if new_mode is None else f"lab {lab.name!r} now runs kube-proxy in {new_mode} mode"
        if new_mode == "ebpf":
            on = bool(lab.options.get("socket_lb", True))  # as the proxier reads it
            how = "socket LB at connect() and tc" if on else "tc programs only (no socket LB)"
            text = f"lab {lab.name!r} now runs no kube-proxy: the eBPF replacement does it ({how})"
        emit(data, output, text)

    @app.command()
    def rules(node: str, output: str | None = OUT) -> None:
        """The node's rules as loaded in the kernel (read back), with counters and annotations."""
        data = attach().rules(node)
        emit(dict(data), output, data.get("text", ""))

    @app.command()
    def diff(node: str, output: str | None = OUT) -> None:
        """What NODE's next sync writes, and how its kernel differs from what a sync programs
        (+ missing, - not wanted); empty when in sync.  `kplab sync` applies it."""
        d = attach().diff(node)
        emit(d.as_dict(), output, d.text())

    @app.command()
    def sync(full: bool = typer.Option(False, "--full", help="rewrite everything (repairs any drift)")) -> None:
        """Run every node's kube-proxy sync now (after --no-sync changes); --full also repairs drift."""
        for node, r in attach().sync(full=full).items():
            typer.echo(f"{node}: {'full' if r.full else 'partial'} sync, {r.changed_services} service ports, "
                       f"{r.size} lines/objects, {r.seconds:.2f}s")  # fmt: skip

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
        masquerade_all: bool = typer.Option(False, "--masquerade-all", help="SNAT all traffic to ClusterIPs"),
        detect_local_mode: str = typer.Option("ClusterCIDR", "--detect-local-mode",
                                              help="ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix"),
        node_cidr: str = typer.Option("", "--node-cidr", help="the node's podCIDR (NodeCIDR)"),
        pod_bridge_interface: str = typer.Option("", "--pod-bridge-interface", help="e.g. cni0 (BridgeInterface)"),
        pod_interface_name_prefix: str = typer.Option("", "--pod-interface-name-prefix",
                                                      help="e.g. veth (InterfaceNamePrefix)"),
        nftables_version: str = typer.Option("", "--nftables-version", help="nftables layout: 1.34 (default) or 1.33"),
    ) -> None:
        """What MODE would program for these objects, without a kernel and without root."""
        from kplab.cli.views import render_text

        notes: list[str] = []
        options = {"nftables_version": nftables_version} if nftables_version else {}
        typer.echo(render_text(mode, files, notes, options, node_name=node_name, node_ips=tuple(node_ip),
                               cluster_cidr=cluster_cidr, service_cidr=service_cidr, zone=zone,
                               nodeport_addresses=tuple(c for c in nodeport_addresses.split(",") if c),
                               masquerade_all=masquerade_all, detect_local_mode=detect_local_mode,
                               node_cidr=node_cidr, pod_bridge_interface=pod_bridge_interface,
                               pod_interface_name_prefix=pod_interface_name_prefix), nl=False)
        for n in notes:
            typer.echo(f"note: {n}", err=True)

    @app.command()
    def doctor(output: str | None = OUT) -> None:
        """Can this machine run each mode? And exactly what to do when it cannot."""
        from kplab.cli.views import doctor_report

        data, text = doctor_report()
        emit(data, output, text)
        if not data["lab"]["ok"]:
            raise typer.Exit(1)


__all__ = ["Any", "register"]
