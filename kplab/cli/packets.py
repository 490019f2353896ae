"""Seeing the packet: send, capture, conntrack, trace, counters, explain."""

from __future__ import annotations

from pathlib import Path

import typer

from kplab.cli import attach, check_output, emit

OUT = typer.Option(None, "-o", "--output", help="json or yaml for data, default: text", callback=check_output)


def register(app: typer.Typer) -> None:
    @app.command()
    def send(
        frm: str = typer.Argument(..., metavar="FROM", help="pod, node or outside"),
        target: str = typer.Argument(
            ..., help="web, web:80, web:dns, node-1:web, 10.96.0.10:53, a pod (icmp)"
        ),
        tcp_syn: bool = typer.Option(False, "--tcp-syn", help="one TCP SYN (the default)"),
        udp: bool = typer.Option(False, "--udp", help="one UDP datagram"),
        icmp: bool = typer.Option(False, "--icmp", help="one ICMP echo request"),
        timeout: float = typer.Option(2.0, "--timeout"),
        output: str | None = OUT,
    ) -> None:
        """Craft one packet with scapy inside FROM's namespace and show what came back.

        A crafted SYN is not a kernel connection: the client's kernel answers the SYN-ACK with a RST.
        """
        from kplab.cli.core import outside_note
        from kplab.packets.api import packets

        if sum((tcp_syn, udp, icmp)) > 1:
            raise typer.BadParameter("choose one of --tcp-syn, --udp, --icmp")
        lab = attach()
        pk = packets(lab, frm)
        reply = (
            pk.udp(target, timeout=timeout)
            if udp
            else pk.icmp(target, timeout=timeout)
            if icmp
            else pk.syn(target, timeout=timeout)
        )
        note = [] if reply.answered or icmp else outside_note(lab, frm, target)
        emit(reply.to_dict(), output, "\n".join([reply.text(), *note]))

    @app.command()
    def capture(
        name: str = typer.Argument(..., help="pod, node or outside whose interfaces to watch"),
        filter: str = typer.Option("", "--filter", "-f", help="BPF, as tcpdump: 'tcp port 8080'"),
        count: int = typer.Option(10, "--count", "-c", help="stop after N packets (0: until --timeout)"),
        timeout: float = typer.Option(30.0, "--timeout", help="stop after this many seconds"),
        iface: str | None = typer.Option(None, "--iface", "-i", help="one interface (default: all but lo)"),
        output: str | None = OUT,
    ) -> None:
        """Capture packets in a lab namespace (run your curl or send in another terminal meanwhile)."""
        from kplab.packets.api import capture as start

        cap = start(attach(), name, filter=filter, count=count, timeout=timeout, iface=iface)
        typer.echo(
            f"capturing in {name} ({filter or 'everything'}) for up to {count or 'any number of'} packets, "
            f"{timeout:g}s ...",
            err=True,
        )
        emit(cap.packets, output, cap.text())

    @app.command(name="conntrack")
    def conntrack_cmd(
        node: str = typer.Argument(..., help="the node whose conntrack table to read"),
        service: str | None = typer.Option(None, "--service", "-s", help="only this Service's entries"),
        clear: bool = typer.Option(
            False, "--clear", help="delete the Service's entries (what kube-proxy does for UDP)"
        ),
        udp_only: bool = typer.Option(False, "--udp", help="with --clear: UDP entries only, as upstream"),
        output: str | None = OUT,
    ) -> None:
        """Conntrack entries with original and reply tuples: DNAT and SNAT made visible."""
        from kplab.inspect import conntrack

        lab = attach()
        if clear:
            if not service:
                raise typer.BadParameter("--clear needs --service NAME")
            n = conntrack.clear(lab, service, nodes=[node], protocols=["udp"] if udp_only else None)
            typer.echo(f"deleted {n} conntrack entries of {service} on {node}")
            return
        found = conntrack.list_entries(lab, node, service)
        emit([e.to_dict() for e in found], output, conntrack.text(found))

    @app.command()
    def trace(
        frm: str = typer.Argument(..., metavar="FROM", help="pod, node or outside"),
        target: str = typer.Argument(..., help="web, web:80, web:dns, node-1:web, lb:web, ip:port"),
        timeout: float = typer.Option(3.0, "--timeout"),
        output: str | None = OUT,
    ) -> None:
        """One real connection and its path through the nodes, rule by rule, from the kernel's own tracing."""
        from kplab.inspect.trace import trace as do_trace

        res = do_trace(attach(), frm, target, timeout=timeout)
        emit(res.to_dict(), output, res.text())

    @app.command()
    def counters(
        service: str = typer.Argument(..., help="the Service (namespace/name or name)"),
        port: str | None = typer.Option(None, "--port", "-p", help="one port (name or number)"),
        frm: str | None = typer.Option(
            None, "--from", help="send -n requests from here and count only those"
        ),
        n: int = typer.Option(100, "-n", help="requests with --from"),
        output: str | None = OUT,
    ) -> None:
        """New connections per endpoint as the kernel counted them (SEP / endpoint chain counters)."""
        from kplab.inspect.counters import counting, read

        lab = attach()
        if not frm:
            c = read(lab, service, port)
            emit(c.__dict__, output, c.text())
            return
        target = f"{service}:{port}" if port else service
        with counting(lab, service, port) as c:
            res = lab.curl(frm, target, n=n)
        text = c.text() + "\n\nkplab curl saw: " + ", ".join(f"{p} {k}" for p, k in res.backends.items())
        emit({"kernel": c.__dict__, "curl": res.backends}, output, text)

    @app.command()
    def explain(
        dump: Path = typer.Argument(
            ..., help="iptables-save, nft list ruleset or ipvsadm -Ln output of a node; - reads stdin"
        ),
        services: Path | None = typer.Option(
            None, "--services", help="kubectl get svc,endpointslices -A -o yaml"
        ),
        output: str | None = OUT,
    ) -> None:
        """Organise a real node's kube-proxy rules by Service (no root, no lab needed)."""
        from kplab.inspect.explain import explain_file

        ex = explain_file(dump, services)
        emit(ex.to_dict(), output, ex.text())
