"""kubectl's verbs, as a learner types them: apply, delete, get, describe, label, annotate, run,
expose, scale, rollout restart|status.  Messages are kubectl's; bad input is one line."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from kplab.cli import NO_SYNC, attach, emit, holding

NS = typer.Option(None, "-n", "--namespace", help="one namespace (default: all, with a NAMESPACE column)")
NS_DEFAULT = typer.Option("default", "-n", "--namespace", help="the object's namespace")
SELECTOR = typer.Option(
    None, "-l", "--selector", help="label selector: app=web, app!=web, app, !app, app in (a,b)"
)
Files = Optional[list[Path]]  # noqa: UP045 - typer reads this annotation
FILES = typer.Option(..., "-f", "--filename")
FILES_OPTIONAL = typer.Option(None, "-f", "--filename")
KIND_NAMES = typer.Argument(None, metavar="[KIND NAME...]")
KIND_AND_NAMES = typer.Argument(None, metavar="KIND [NAME...]")
NAMES = typer.Argument(None)
CHANGES = typer.Argument(..., metavar="KIND NAME KEY=VALUE... | KEY-...")
OBJECT = typer.Argument(..., metavar="KIND NAME")
DEPLOYMENT = typer.Argument(..., metavar="deployment NAME")


def _not_found(fn: Callable[[], list[str]]) -> None:
    """Print what was done, then kubectl's NotFound lines; exit 1 when something was missing."""
    from kplab.cluster.apiserver import NotFound

    try:
        for line in fn():
            typer.echo(line)
    except NotFound as e:
        for line in e.done:
            typer.echo(line)
        for msg in e.messages:
            typer.echo(f"Error from server (NotFound): {msg}", err=True)
        raise typer.Exit(1) from None


def _kind_name(args: list[str], what: str) -> tuple[str, str, list[str]]:
    """KIND NAME rest... or KIND/NAME rest... -> (Kind, name, rest)."""
    from kplab.cluster.kubeviews import kind_of
    from kplab.errors import LabError

    if args and "/" in args[0]:
        kind, _, name = args[0].partition("/")
        rest = args[1:]
    elif len(args) >= 2:
        kind, name, rest = args[0], args[1], args[2:]
    else:
        raise LabError(f"say which object: `kplab {what} pod NAME ...` (or pod/NAME)")
    return kind_of(kind), name, rest


def _writable(kind: str, verb: str) -> None:
    from kplab.cluster.kubeviews import writable

    writable(kind, verb)


def up_hint(lab: Any) -> str:
    """Commands to try next, naming objects this lab has."""
    pods = [p for p in lab.objects("Pod")]
    services = [s for s in lab.objects("Service") if (s["spec"].get("selector") and s["spec"].get("ports"))]
    bare = [p["metadata"]["name"] for p in pods if not p["metadata"].get("ownerReferences")]
    tries = ["kplab get pods -o wide"]
    if services and pods:
        frm = "client" if "client" in bare else (bare or [pods[0]["metadata"]["name"]])[0]
        svc = services[0]["metadata"]["name"]
        tries.append(f"kplab curl {frm} {svc} -n 30")
        if services[0]["spec"].get("type") in ("NodePort", "LoadBalancer"):
            tries.append(f"kplab curl outside {lab.nodes[-1]}:{svc}")
    tries.append(f"kplab rules {lab.nodes[0]}")
    return "  try: " + "    ".join(tries)


def register(app: typer.Typer) -> None:
    @app.command()
    def apply(files: list[Path] = FILES, no_sync: bool = NO_SYNC) -> None:
        """Create or update objects from manifests; pods, rules and namespaces follow at once."""
        lab = attach()
        with holding(lab, no_sync):
            lines = lab.apply(*files)
        for line in lines:
            typer.echo(line)
        for w in lab.warnings():
            typer.echo(f"warning: {w}", err=True)

    @app.command()
    def delete(
        args: Optional[list[str]] = KIND_NAMES,  # noqa: UP045
        files: Files = FILES_OPTIONAL,
        namespace: str = NS_DEFAULT,
        ignore_not_found: bool = typer.Option(False, "--ignore-not-found"),
    ) -> None:
        """Delete objects named in manifests (-f) or as KIND NAME...; a pod's namespace goes at once."""
        from kplab.cluster.kubeviews import kind_of
        from kplab.errors import LabError

        lab = attach()
        if files and args:
            raise LabError("give either -f FILE or KIND NAME..., not both")
        if files:
            _not_found(lambda: lab.delete(*files, ignore_not_found=ignore_not_found))
            return
        if not args or (len(args) < 2 and "/" not in args[0]):
            raise LabError("say what to delete: -f FILE, or KIND NAME... (e.g. `kplab delete pod client`)")
        pairs = (
            [(kind_of(a.partition("/")[0]), a.partition("/")[2]) for a in args]
            if "/" in args[0]
            else [(kind_of(args[0]), n) for n in args[1:]]
        )
        for kind, _ in pairs:
            _writable(kind, "delete")
        _not_found(lambda: _delete_each(lab, pairs, namespace, ignore_not_found))

    @app.command()
    def get(
        args: list[str] = KIND_AND_NAMES,
        selector: str | None = SELECTOR,
        output: str | None = typer.Option(None, "-o", "--output", help="json, yaml, wide or name"),
        namespace: str | None = NS,
        all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces", help="the default here"),
    ) -> None:
        """List objects the kubectl way: pods, svc, deploy, rs, eps, ep, nodes, all; names; -l; -o."""
        from kplab.cluster.kubeviews import get as get_view

        data, text, missing = get_view(
            attach(), list(args or []), selector, output, None if all_namespaces else namespace
        )
        if output in ("json", "yaml"):
            emit(data, output)
        elif text:
            typer.echo(text)
        elif not missing:
            typer.echo("No resources found" + (f" in {namespace} namespace." if namespace else "."), err=True)
        for msg in missing:
            typer.echo(f"Error from server (NotFound): {msg}", err=True)
        if missing:
            raise typer.Exit(1)

    @app.command()
    def describe(
        kind: str = typer.Argument(..., help="pod, service, node, endpointslice or deployment"),
        names: Optional[list[str]] = NAMES,  # noqa: UP045
        namespace: str | None = typer.Option(None, "-n", "--namespace"),
        selector: str | None = SELECTOR,
    ) -> None:
        """kubectl's fields; for a Service also every node's rules for it and its last sync."""
        from kplab.cluster.describe import describe as describe_view

        lab = attach()
        _not_found(lambda: [describe_view(lab, kind, list(names or []), namespace, selector)])

    def _label(args: list[str], overwrite: bool, namespace: str, annotate: bool) -> None:
        from kplab.cluster.edits import parse_changes

        kind, name, rest = _kind_name(args, "annotate" if annotate else "label")
        _writable(kind, "annotate" if annotate else "label")
        changes = parse_changes(rest, labels=not annotate)
        lab = attach()
        _not_found(lambda: [lab.label(kind, name, changes, overwrite, namespace, annotate)])

    @app.command(context_settings={"ignore_unknown_options": True})
    def label(
        args: list[str] = CHANGES,
        overwrite: bool = typer.Option(False, "--overwrite"),
        namespace: str = NS_DEFAULT,
    ) -> None:
        """Set (app=web) or remove (app-) labels: a pod moves in or out of Services at once."""
        _label(args, overwrite, namespace, annotate=False)

    @app.command(context_settings={"ignore_unknown_options": True})
    def annotate(
        args: list[str] = CHANGES,
        overwrite: bool = typer.Option(False, "--overwrite"),
        namespace: str = NS_DEFAULT,
    ) -> None:
        """Set or remove annotations (kplab.io/ready=false makes a pod unready)."""
        _label(args, overwrite, namespace, annotate=True)

    @app.command()
    def run(
        name: str,
        port: int | None = typer.Option(None, "--port", help="the container port the echo workload serves"),
        labels: str = typer.Option("", "--labels", "-l", help="k=v,k2=v2 (default run=NAME)"),
        image: str = typer.Option("kplab/echo", "--image", help="recorded, not run"),
        namespace: str = NS_DEFAULT,
    ) -> None:
        """Start one Pod (the echo workload) named NAME."""
        from kplab.cluster.edits import parse_label_list

        lab = attach()
        typer.echo(lab.run(name, port, parse_label_list(labels), namespace=namespace, image=image))

    @app.command()
    def expose(
        args: list[str] = OBJECT,
        port: int | None = typer.Option(None, "--port"),
        target_port: str | None = typer.Option(
            None, "--target-port", help="a number or a container port's name"
        ),
        type_: str | None = typer.Option(None, "--type", help="ClusterIP, NodePort or LoadBalancer"),
        name: str | None = typer.Option(None, "--name", help="the Service's name (default: NAME)"),
        protocol: str = typer.Option("TCP", "--protocol"),
        namespace: str = NS_DEFAULT,
    ) -> None:
        """A Service for a deployment's, pod's or service's pods."""
        from kplab.errors import LabError

        kind, obj, rest = _kind_name(args, "expose")
        if kind not in ("Deployment", "Pod", "Service") or rest:
            raise LabError("expose takes deployment NAME, pod NAME or service NAME")
        lab = attach()
        _not_found(lambda: [lab.expose(kind, obj, port, target_port, type_, name, protocol, namespace)])

    @app.command()
    def scale(
        args: list[str] = DEPLOYMENT,
        replicas: int = typer.Option(..., "--replicas"),
        namespace: str = NS_DEFAULT,
        no_sync: bool = NO_SYNC,
    ) -> None:
        """Scale a Deployment: pods come and go, EndpointSlices and rules follow."""
        dep = _deployment(args, "scale")
        lab = attach()
        with holding(lab, no_sync):
            _not_found(lambda: [lab.scale(dep, replicas, namespace)])

    rollout = typer.Typer(help="Restart a Deployment, or wait for its rollout.", no_args_is_help=True)
    app.add_typer(rollout, name="rollout")

    @rollout.command("restart")
    def rollout_restart(args: list[str] = DEPLOYMENT, namespace: str = NS_DEFAULT) -> None:
        """New pods come up; the old ones stay terminating (endpoints marked so) for their grace period."""
        dep = _deployment(args, "rollout restart")
        lab = attach()
        _not_found(lambda: [lab.rollout_restart(dep, namespace)])

    @rollout.command("status")
    def rollout_status(
        args: list[str] = DEPLOYMENT,
        namespace: str = NS_DEFAULT,
        timeout: float = typer.Option(60.0, "--timeout", help="seconds to wait"),
    ) -> None:
        """Wait until the Deployment's new pods are all up and no old one is left running."""
        from kplab.errors import LabError

        dep = _deployment(args, "rollout status")
        if timeout <= 0:
            raise LabError(f"--timeout {timeout:g}: give a number of seconds above 0")
        lab, shown, end = attach(), "", time.monotonic() + timeout

        def wait() -> list[str]:
            nonlocal shown
            while True:
                done, line = lab.rollout_status(dep, namespace)
                if done:
                    return [line]
                if line != shown:
                    typer.echo(line)
                    shown = line
                if time.monotonic() > end:
                    raise LabError(f"timed out after {timeout:g}s waiting for deployment {dep!r}: {line}")
                time.sleep(0.2)

        _not_found(wait)


def _delete_each(lab: Any, pairs: list[tuple[str, str]], namespace: str, ignore: bool) -> list[str]:
    """One deletion after another; what was deleted is said even when a later one is NotFound."""
    from kplab.cluster.apiserver import NotFound

    done: list[str] = []
    missing: list[str] = []
    by_kind: dict[str, list[str]] = {}
    for kind, name in pairs:
        by_kind.setdefault(kind, []).append(name)
    for kind, names in by_kind.items():  # one convergence per kind
        try:
            done += lab.delete_objects(kind, names, namespace=namespace, ignore_not_found=ignore)
        except NotFound as e:
            done += e.done
            missing += e.messages
    if missing:
        raise NotFound(missing, done)
    return done


def _deployment(args: list[str], verb: str) -> str:
    """`deployment NAME`, `deployment/NAME` or (for scale, as before) a bare NAME."""
    from kplab.cluster.kubeviews import kind_of
    from kplab.errors import LabError

    if len(args) == 1 and "/" not in args[0] and verb == "scale":
        return args[0]
    kind, name, rest = _kind_name(args, f"{verb} deployment")
    if kind != "Deployment" or rest:
        raise LabError(f"{verb} works on one deployment: `kplab {verb} deployment NAME`")
    kind_of(kind.lower())
    return name
