"""The `kplab` command: kubectl-like verbs over one lab.

Every command acts on one lab, chosen by `--lab NAME` (before or after the subcommand), or by
$KPLAB_LAB, default `default`.  Commands live in one module per concern; each module has
`register(app)`, and CLI_MODULES lists them.  Errors that kplab raises on purpose
(KplabError) print as one line, `kplab: <message>`, with exit code 1; nothing else is caught.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from typing import Any

import typer

from kplab.cluster.store import current_lab

CLI_MODULES = ["kplab.cli.core", "kplab.cli.kubectl", "kplab.cli.packets", "kplab.cli.course", "kplab.cli.bench"]

app = typer.Typer(
    help="kplab: how Kubernetes Services really work on a node (kube-proxy's modes, in network namespaces).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def attach() -> Any:
    from kplab.lab import Lab

    return Lab.attach(current_lab())


NO_SYNC = typer.Option(False, "--no-sync",
                       help="leave the nodes' rules as they are: see `kplab diff NODE`, then `kplab sync`")


def holding(lab: Any, no_sync: bool) -> Any:
    """`lab.no_sync()` when asked (--no-sync), else nothing."""
    return lab.no_sync() if no_sync else contextlib.nullcontext()


def check_output(value: str | None) -> str | None:
    """-o of the commands that print data: json or yaml, else text (checked before anything runs)."""
    if value not in (None, "json", "yaml"):
        raise typer.BadParameter(f'output format "{value}": use json or yaml (text without -o)')
    return value


def emit(data: Any, output: str | None, text: str | None = None) -> None:
    """Print data as JSON/YAML when asked, else the human text (or JSON when there is none)."""
    if output == "json" or (text is None and output is None):
        typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    elif output == "yaml":
        import yaml

        typer.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
    else:
        typer.echo(text if text is not None else json.dumps(data, indent=2, default=str))


def _lift_lab_option(argv: list[str]) -> list[str]:
    """Accept `--lab NAME` anywhere on the line by moving it into $KPLAB_LAB."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--lab" and i + 1 < len(argv):
            os.environ["KPLAB_LAB"] = argv[i + 1]
            i += 2
            continue
        if a.startswith("--lab="):
            os.environ["KPLAB_LAB"] = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return out


def _register() -> None:
    if getattr(app, "_kplab_registered", False):
        return  # main() may run more than once in a process (tests)
    app._kplab_registered = True  # type: ignore[attr-defined]
    for name in CLI_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # a concern not built yet
            raise
        module.register(app)


def main(argv: list[str] | None = None) -> int:
    import warnings

    from kplab.errors import KplabError, KplabWarning

    warnings.filterwarnings("ignore", category=KplabWarning)  # the commands print them as `warning: ...`
    args = _lift_lab_option(list(sys.argv[1:] if argv is None else argv))
    _register()
    try:
        rv = app(args, prog_name="kplab", standalone_mode=False)
        return rv if isinstance(rv, int) else 0  # without standalone mode, typer.Exit(n) comes back as n
    except KplabError as e:
        typer.echo(f"kplab: {e}", err=True)
        return 1
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except typer.Abort:
        typer.echo("kplab: aborted", err=True)
        return 1
    except typer.TyperException as e:  # usage errors: typer's (vendored) click exceptions
        show = getattr(e, "show", None)
        if show is None:
            raise
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" or ctx is None or not hasattr(e, "format_message"):
            show()
        else:  # one line that says what is wrong and where the help is
            typer.echo(f"{ctx.command_path}: {e.format_message()} (see `{ctx.command_path} --help`)", err=True)
        return int(getattr(e, "exit_code", 2))


if __name__ == "__main__":
    sys.exit(main())
