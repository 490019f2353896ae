"""The course's commands: check, grade (and grade collect), reset, and lab (JupyterLab on labs/).

    kplab check 03-iptables            # the notebook's checks against the current lab
    kplab progress                     # the checks you passed so far (your progress record)
    kplab grade --work labs --learner ada --out ada.json   # replay ada's notebooks into a report
    kplab grade collect reports/ --out gradebook.csv       # a class: rows, pass rates, a chart
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
    words = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "not-applicable": "N/A"}
    lines = []
    for r in results:
        lines.append(f"{words[r.outcome]:5} {r.id:34} {r.title}")
        if not r.passed and r.message:
            lines.append(f"      {r.message}")
        if not r.passed and r.hint and r.applicable:
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


# no news pop-up, no update check: a lab has no business with the internet (and may have none);
# every cell in the page (windowingMode none): the notebooks are short, and a widget or picture
# scrolled away keeps its state
QUIET_JUPYTER = [f"--LabApp.app_settings_dir={Path(__file__).parent / 'jupyter_settings'}",
                 "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]


def terminal_shell() -> str:
    """JupyterLab's terminals: the user's shell, not as a login shell.  Without a tty Jupyter starts
    `$SHELL -l`, whose /etc/profile resets PATH, and `kplab` is "command not found" there."""
    return f"--ServerApp.terminado_settings=shell_command={os.environ.get('SHELL') or '/bin/bash'}"


def jupyter_env() -> dict[str, str]:
    """Jupyter's environment: the venv's bin first on PATH, so `!kplab ...` in a notebook (and a
    terminal opened in JupyterLab) finds this kplab; the lab the notebooks use."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if venv_bin not in path.split(os.pathsep):
        path = os.pathsep.join([venv_bin, path]) if path else venv_bin
    return {**os.environ, "PATH": path, "KPLAB_LAB": current_lab()}


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
        from kplab.grading.progress import record

        record(results, via="kplab check")
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2) if output == "json" else _table(results))
        failing = [r for r in results if not r.passed]
        if failing:
            from kplab.errors import CheckError

            raise CheckError(f"{len(failing)} of {len(results)} checks did not pass")

    grade_app = typer.Typer(help="Grade a learner's saved notebooks by replay; `grade collect DIR` for a class.")
    app.add_typer(grade_app, name="grade")

    @grade_app.callback(invoke_without_command=True)
    def grade(
        ctx: typer.Context,
        work: Annotated[Path | None, typer.Option("--work", help="the learner's folder of notebooks "
                                                  "(default: $KPLAB_WORK, ./ or ./labs when they hold notebooks)")] = None,
        learner: Annotated[str | None, typer.Option("--learner", help="default: $JUPYTERHUB_USER, $KPLAB_LEARNER, "
                                                    "or the id kept in the work folder (asked once)")] = None,
        notebook: Annotated[list[str] | None, typer.Option("--notebook", help="grade only this notebook (03 or "
                                                           "03-iptables); repeat for more")] = None,
        output: Annotated[str, typer.Option("-o", "--output", help="json, junit or csv")] = "json",
        out: Annotated[Path | None, typer.Option("--out", help="write the report here (default: stdout)")] = None,
        lab: Annotated[str, typer.Option("--grading-lab", help="the lab the replay builds and removes "
                                         "(not yours)")] = "grading",
        cell_timeout: Annotated[float, typer.Option("--cell-timeout", help="seconds a cell may run")] = 120.0,
    ) -> None:
        """Replay the learner's saved notebooks, each from its starting state, and write a report.

        Every check runs at the place of its check cell; your own lab is not touched (the replay
        builds its own, `--grading-lab`, and removes it).  Exit 0 when the report was written.
        """
        if ctx.invoked_subcommand:
            return
        from kplab.grading import progress, report
        from kplab.grading.replay import chosen_notebooks, grade_course

        folder = progress.work_dir(work)
        if output not in report.FORMATS:
            report.render(report.Report("", lab, []), output)  # the one-line "unknown format" error
        chosen_notebooks(folder, notebook)  # a typo or a wrong folder is said before the learner is asked
        who = progress.learner_id(learner, folder)
        grades = grade_course(folder, notebook, lab=lab, cell_timeout=cell_timeout,
                              progress=lambda line: typer.echo(line, err=True))
        firsts = {r["id"]: r["first_passed"] for r in progress.table(folder) if r["first_passed"]}
        rep = report.make_report([r for g in grades for r in g.results], learner=who, lab=lab,
                                 work=str(folder.resolve()), progress=firsts,
                                 notebooks=[{"notebook": g.notebook, "seconds": g.seconds, "problems": g.problems,
                                             "slowest": g.slowest}
                                            for g in grades])
        text = report.render(rep, output)
        summary = (f"{rep.learner}: {rep.passed} of {rep.applicable} applicable checks passed ({rep.percent}%)"
                   + (f"; {len(rep.results) - rep.applicable} not applicable here" if rep.applicable < len(rep.results) else ""))
        if out:
            out.write_text(text)
            typer.echo(f"{summary}; report in {out}", err=True)
        else:
            typer.echo(text, nl=False)
            typer.echo(summary, err=True)

    @grade_app.command()
    def collect(
        directory: Annotated[Path, typer.Argument(help="a folder of reports (.json, .xml, .csv), searched recursively")],
        out: Annotated[Path, typer.Option("--out", help="the gradebook CSV to write (and beside it "
                                          "NAME-checks.csv/.png/.svg: the class's pass rate per check)")],
        allow_shared_ids: Annotated[bool, typer.Option("--allow-shared-ids", help="keep the newest report of "
                                                       "a learner id that several machines handed in")] = False,
    ) -> None:
        """Merge many learners' reports: a gradebook row per learner, and per check the class's pass rate."""
        from kplab.grading import report

        stem = out.with_name(out.stem + report.SUMMARY_SUFFIX)
        text, n = report.collect(directory, exclude=out, allow_shared_ids=allow_shared_ids)
        reports = [rep for _, rep in report.read_all(directory, [out])]
        rows = report.class_summary(reports)
        out.write_text(text)
        stem.with_suffix(".csv").write_text(report.summary_csv(rows))
        charts = report.chart(rows, stem)
        typer.echo(report.summary_text(rows))
        typer.echo(f"{n} reports, {len(text.splitlines()) - 1} learners -> {out}; per check: "
                   + ", ".join(str(p) for p in [stem.with_suffix(".csv"), *charts]))

    @app.command()
    def progress(
        work: Annotated[Path | None, typer.Option("--work", help="the work folder (default as for grade)")] = None,
        output: Annotated[str | None, OUT] = None,
    ) -> None:
        """Where you stand: every check of the course, when you first passed it, your latest outcome."""
        from kplab.grading import progress as prog

        rows = prog.table(prog.work_dir(work))
        if output == "json":
            typer.echo(json.dumps(rows, indent=2))
            return
        by_nb: dict[str, list[dict]] = {}
        for r in rows:
            by_nb.setdefault(r["notebook"], []).append(r)
        for nb, mine in by_nb.items():
            done = sum(bool(r["first_passed"]) for r in mine)
            typer.echo(f"{nb:22} {done} of {len(mine)} passed")
            for r in mine:
                mark = "✓" if r["first_passed"] else ("✗" if r["last"] else "·")
                when = f"first passed {r['first_passed']}" if r["first_passed"] else (
                    f"last {r['last']}, {r['tries']} tries" if r["tries"] else "not tried")
                typer.echo(f"  {mark} {r['id'].partition('/')[2]:32} {when}")
        total = sum(bool(r["first_passed"]) for r in rows)
        typer.echo(f"the course: {total} of {len(rows)} checks passed (a record of your own runs; "
                   "`kplab grade` replays your notebooks for the grade)")

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
                "--ServerApp.open_browser=False", "--allow-root", *QUIET_JUPYTER, terminal_shell()]
        os.execve(jupyter, argv, jupyter_env())
