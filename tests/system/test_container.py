"""The workshop container with a real Docker engine: containers/lab/Dockerfile and docker-compose.yml.

What a workshop attendee does, end to end: build the image, `docker compose up`, wait for the
healthcheck, use the lab (kplab curl; the first notebook run by the container's kernel, then its
checks) and JupyterLab, keep work in the learner volume across `down`/`up`, and the host's root
namespace is left as it was.

The engine and the image (built once per run, shared with test_hub.py) come from conftest.py, which
says how the engine is had and what is removed afterwards.  Measurements (build times, image size)
go to artifacts/container.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kplab.testing.docker import build, compose, host_snapshot, sh

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LAB = "default"  # the lab the entrypoint brings up inside the container


def layers(image: str) -> list[str]:
    return json.loads(sh(["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", image]).stdout)


def test_warm_build_reuses_the_dependency_layers(project: dict[str, Any], context: Path, image: str) -> None:
    """A change to kplab's source rebuilds only the layers from the source on: OS packages and the
    Python dependencies (the slow part) come from the cache."""
    init = context / "kplab" / "__init__.py"
    init.write_text(init.read_text() + "\n# warm-build probe\n")
    took, warm = build(project)
    project["measured"]["warm_build_s"] = round(took, 1)
    cold_layers, warm_layers = layers(image), layers(warm)
    assert warm != image, "the source changed, so the image must change"
    # base, apt tools, the venv with the dependencies
    assert warm_layers[:3] == cold_layers[:3], "the dependency layers were rebuilt for a source-only change"


# ----------------------------------------------------------------------------- the stack
def container_id(project: dict[str, Any]) -> str:
    cid = compose(project, "ps", "-q", "lab").strip().splitlines()
    assert cid, "compose has no container for the lab service"
    return cid[-1]


def wait_healthy(project: dict[str, Any], limit: float = 300) -> str:
    deadline = time.monotonic() + limit
    cid, status = container_id(project), "?"
    while time.monotonic() < deadline:
        state = json.loads(sh(["docker", "inspect", "-f", "{{json .State}}", cid]).stdout)
        status = (state.get("Health") or {}).get("Status", "none")
        if status == "healthy":
            return cid
        if status == "unhealthy" or not state.get("Running"):
            break
        time.sleep(2)
    logs = sh(["docker", "logs", "--tail", "40", cid], check=False)
    raise AssertionError(f"the lab container is {status}, not healthy:\n{logs.stdout}{logs.stderr}")


def in_container(cid: str, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh(["docker", "exec", cid, *argv], timeout=timeout, check=check)


@pytest.fixture(scope="module")
def stack(project: dict[str, Any], image: str) -> str:
    """`docker compose up -d`, the workshop path, with the image built above; the container id once
    healthy.  Only the `lab` service starts: `lab-ipvs` is behind its profile."""
    compose(project, "up", "-d", "--no-build")
    running = compose(project, "ps", "--services", "--filter", "status=running").split()
    assert running == ["lab"], f"`docker compose up` started {running}"
    return wait_healthy(project)


def jupyter(project: dict[str, Any], path: str, token: str | None) -> int:
    url = f"http://127.0.0.1:{project['port']}{path}" + (f"?token={token}" if token else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_compose_up_serves_the_lab_and_jupyterlab(project: dict[str, Any], stack: str,
                                                  host_before: dict[str, str]) -> None:
    status = json.loads(in_container(stack, "kplab", "status", "-o", "json").stdout)
    assert status["name"] == LAB and set(status["nodes"]) == {"node-1", "node-2"}
    res = json.loads(in_container(stack, "kplab", "curl", "client", "web", "-n", "30", "-o", "json").stdout)
    assert res["ok"] == 30, f"{res['failed']} of 30 requests to the web Service failed: {res['errors']}"
    assert len(res["backends"]) >= 2 and all(p.startswith("web-") for p in res["backends"]), res["backends"]
    # The lab's namespaces exist only in the container's mount and network namespaces.
    assert host_snapshot()["netns"] == host_before["netns"], "the container's lab shows up on the host"
    # JupyterLab's terminal is a login shell, whose /etc/profile sets PATH anew (issue 14: "command not found").
    login = in_container(stack, "bash", "-l", "-c", "kplab status -o json", check=False)
    assert login.returncode == 0 and json.loads(login.stdout)["name"] == LAB, login.stderr
    token = in_container(stack, "cat", "/workspace/.jupyter-token").stdout.strip()
    logs = sh(["docker", "logs", stack]).stdout
    assert f"/lab?token={token}" in logs, "the entrypoint did not print the URL"
    assert jupyter(project, "/api/contents", token) == 200, "JupyterLab does not answer with its token"
    assert jupyter(project, "/api/contents", None) == 403, "JupyterLab answers without a token"
    assert jupyter(project, "/api/contents/labs", token) == 200, "the notebooks were not copied to /workspace"


def test_first_notebook_runs_in_the_container_and_its_checks_pass(stack: str, tmp_path: Path) -> None:
    """What a learner does: run the first graded notebook, exercises solved (the instructor edition:
    the image serves the learner edition, with empty cells where the solutions go), with the
    container's own Jupyter kernel, then `kplab check` grades the lab it left: every check passes."""
    listed = json.loads(in_container(stack, "kplab", "check", "--list", "-o", "json").stdout)
    assert listed, "no checks in the image (/opt/kplab/checks)"
    notebook = min(c["id"].split("/")[0] for c in listed)
    root = Path(__file__).resolve().parents[2]
    sh([sys.executable, str(root / "labs" / "build.py"), "--instructor", str(tmp_path)], cwd=root)
    sh(["docker", "cp", str(tmp_path / f"{notebook}.ipynb"), f"{stack}:/workspace/labs/solved-{notebook}.ipynb"])
    in_container(stack, "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output", "/tmp/executed.ipynb",
                 "--ExecutePreprocessor.timeout=180", f"/workspace/labs/solved-{notebook}.ipynb", timeout=600)
    cp = in_container(stack, "kplab", "check", notebook, "-o", "json", timeout=300, check=False)
    try:
        results = json.loads(cp.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"kplab check {notebook} did not report: {cp.stdout[-2000:]}{cp.stderr[-2000:]}") from None
    assert results, f"kplab check {notebook} ran no check"
    assert cp.returncode == 0, [r for r in results if r["outcome"] != "passed"]


def test_learner_work_survives_down_and_up(project: dict[str, Any], stack: str) -> None:
    in_container(stack, "sh", "-c", "echo 'my notes' > /workspace/labs/notes.txt")
    token = in_container(stack, "cat", "/workspace/.jupyter-token").stdout.strip()
    compose(project, "stop", "-t", "90", "lab", timeout=150)
    logs = sh(["docker", "logs", stack]).stdout
    state = json.loads(sh(["docker", "inspect", "-f", "{{json .State}}", stack]).stdout)
    assert f"lab '{LAB}' removed" in logs, f"SIGTERM did not run `kplab down`:\n{logs[-2000:]}"
    assert state["ExitCode"] == 0, f"the container did not stop cleanly (exit {state['ExitCode']})"
    compose(project, "down", "-t", "90", timeout=150)
    compose(project, "up", "-d", "--no-build")
    cid = wait_healthy(project)
    assert cid != stack, "down/up should give a new container"
    assert in_container(cid, "cat", "/workspace/labs/notes.txt").stdout == "my notes\n"
    assert in_container(cid, "cat", "/workspace/.jupyter-token").stdout.strip() == token, "the token changed"
    assert json.loads(in_container(cid, "kplab", "status", "-o", "json").stdout)["name"] == LAB


def test_host_root_namespace_unchanged(project: dict[str, Any], image: str, host_before: dict[str, str]) -> None:
    """After `docker compose down -v` the host's links, addresses, routes, rules and named namespaces
    are as before the first build (the engine's own changes, made when it started, are not counted)."""
    compose(project, "down", "-v", "-t", "90", timeout=150)
    after = host_snapshot()
    changed = {k: (host_before[k], after[k]) for k in host_before if host_before[k] != after[k]}
    assert not changed, f"the host's root namespace changed: {changed}"
