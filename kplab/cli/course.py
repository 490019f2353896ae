"""The course's commands: check, grade (and grade collect), reset, and lab (JupyterLab on labs/).

    kplab check 03-iptables            # the notebook's checks against the current lab
    kplab grade -o junit --out me.xml  # every check, as a report for an instructor
    kplab grade collect reports/ --out gradebook.csv
    kplab reset 03-iptables            # the lab as that notebook starts (notebooks untouched)
    kplab lab                          # the default lab up, JupyterLab on 127.0.0.1 with a token
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kplab.cli import current_lab

if TYPE_CHECKING:
    from kplab.grading.runner import CheckResult

OUT = typer.Option("-o", "--output", help="json (default: a table)")


def _table(results: list[CheckResult]) -> str:
    words = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}
    lines = []
    for r in results:
        lines.append(f"{words[r.outcome]:5} {r.id:34} {r.title}")
        if not r.passed and r.message:
            lines.append(f"      {r.message}")
        if not r.passed and r.hint and r.outcome != "skipped":
            lines.append(f"      hint: {r.hint}")
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} of {len(results)} checks passed")
    return "\n".join(lines)


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise typer.BadParameter("no free port on 127.0.0.1")


def register(app: typer.Typer) -> None:
    @app.command()
    def check(
        selection: Annotated[list[str] | None, typer.Argument(help="notebooks (03-iptables, 03) or check ids")] = None,
        output: Annotated[str | None, OUT] = None,
        list_only: Annotated[bool, typer.Option("--list", help="list the checks without running them")] = False,
    ) -> None:
        """Run graded checks against the current lab; exit 1 if any does not pass."""
        from kplab.grading.runner import list_checks, run_checks

        if list_only:
            found = list_checks(selection)
            if output == "json":
                typer.echo(json.dumps([{"id": r.id, "title": r.title, "digest": r.digest} for r in found], indent=2))
            else:
                typer.echo("\n".join(f"{r.id:34} {r.title}" for r in found))
            return
        results = run_checks(selection, lab=current_lab())
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2) if output == "json" else _table(results))
        failing = [r for r in results if not r.passed]
        if failing:
            from kplab.errors import CheckError

            raise CheckError(f"{len(failing)} of {len(results)} checks did not pass")

    grade_app = typer.Typer(help="Grade: every check, as a report (learner, check, pass/fail, time).")
    app.add_typer(grade_app, name="grade")

    @grade_app.callback(invoke_without_command=True)
    def grade(
        ctx: typer.Context,
        output: Annotated[str, typer.Option("-o", "--output", help="json, junit or csv")] = "json",
        out: Annotated[Path | None, typer.Option("--out", help="write the report here (default: stdout)")] = None,
        learner: Annotated[str | None, typer.Option("--learner", help="default: $KPLAB_LEARNER or your user name")] = None,
    ) -> None:
        """Run every check and write a report; `kplab grade collect DIR` merges many."""
        if ctx.invoked_subcommand:
            return
        from kplab.grading import report
        from kplab.grading.runner import run_checks

        rep = report.make_report(run_checks(lab=current_lab()), learner=learner, lab=current_lab())
        text = report.render(rep, output)
        if out:
            out.write_text(text)
            typer.echo(f"{rep.learner}: {rep.passed} of {len(rep.results)} checks passed; report in {out}",
                       err=True)
        else:
            typer.echo(text, nl=False)

    @grade_app.command()
    def collect(
        directory: Annotated[Path, typer.Argument(help="a folder of reports (.json, .xml, .csv), searched recursively")],
        out: Annotated[Path, typer.Option("--out", help="the gradebook CSV to write")],
    ) -> None:
        """Merge many learners' reports into one gradebook (a row per learner, a column per check)."""
        from kplab.grading.report import collect as do_collect

        text, n = do_collect(directory, exclude=out)
        out.write_text(text)
        typer.echo(f"{n} reports, {len(text.splitlines()) - 1} learners -> {out}")

    @app.command()
    def reset(
        notebook: Annotated[str | None, typer.Argument(help="e.g. 03-iptables (default: the last one)")] = None,
    ) -> None:
        """Put the lab back to a notebook's starting state (its manifests and mode); notebooks are untouched."""
        from kplab.grading.course import reset as do_reset

        lab = do_reset(notebook, current_lab())
        st = lab.status()
        typer.echo(f"lab {st['name']!r} reset: mode {st['mode']}, {st['pods']} pods, {st['services']} services")

    @app.command("lab")
    def jupyter_lab(
        port: Annotated[int, typer.Option("--port", help="port on 127.0.0.1 (the next free one if taken)")] = 8888,
        token: Annotated[str | None, typer.Option("--token", help="default: $KPLAB_TOKEN or a random one")] = None,
        notebooks: Annotated[Path | None, typer.Option("--notebooks", help="serve this folder (default: labs/)")] = None,
    ) -> None:
        """Make sure the lab is up, then serve the notebooks in labs/ with JupyterLab on 127.0.0.1."""
        from kplab.errors import EnvironmentProblem, KplabError
        from kplab.grading.course import LABS
        from kplab.grading.course import reset as do_reset
        from kplab.lab import Lab

        jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or shutil.which("jupyter")
        if jupyter is None:
            raise EnvironmentProblem("JupyterLab is not installed: run `make setup`")
        try:
            lab = Lab.attach(current_lab())
            typer.echo(f"lab {lab.name!r} is up (mode {lab.mode})")
        except KplabError:  # not up: build it as the first notebook starts
            lab = do_reset(None, current_lab())
            typer.echo(f"lab {lab.name!r} is up (mode {lab.mode})")
        port = _free_port(port)
        token = token or os.environ.get("KPLAB_TOKEN") or secrets.token_hex(16)
        typer.echo(f"JupyterLab: http://127.0.0.1:{port}/lab?token={token}")
        sys.stdout.flush()
        argv = [jupyter, "lab", f"--ServerApp.root_dir={notebooks or LABS}", "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                "--ServerApp.open_browser=False", "--allow-root"]
        os.execve(jupyter, argv, {**os.environ, "KPLAB_LAB": current_lab()})
