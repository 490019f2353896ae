"""The workshop container with a real Docker engine: containers/lab/Dockerfile and docker-compose.yml.

What a workshop attendee does, end to end: build the image, `docker compose up`, wait for the
healthcheck, use the lab (kplab curl; the first notebook run by the container's kernel, then its
checks) and JupyterLab, keep work in the learner volume across `down`/`up`, and the host's root
namespace is left as it was.

The engine: an already running Docker is used as it is.  Otherwise the test installs docker.io
(and docker-compose, debootstrap) and starts its own dockerd, stopped again at the end, with
--iptables=false --ip-forward=false --bridge=none so that the engine itself leaves the host's
rules, forwarding and links alone; builds then use `--network host` (the host's resolver and
CA).  No registry here: the base image is debootstrapped by containers/lab/build-base when it
cannot be pulled; it and its tarball (/var/cache/kplab) are kept as a cache between runs.
Everything else this test creates (containers, network, volume, images) is removed.
Measurements (build times, image size) go to artifacts/container.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BASE = "debian:bookworm-slim"  # the Dockerfile's ARG BASE
CONTEXT = ["pyproject.toml", "README.md", ".dockerignore", "docker-compose.yml", "kplab", "labs", "checks",
           "containers/lab"]
LAB = "default"  # the lab the entrypoint brings up inside the container
MEASURED: dict[str, Any] = {}


def sh(argv: list[str], timeout: float = 120, env: dict[str, str] | None = None,
       cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run argv (bounded); on failure the assertion shows the command's own words."""
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{' '.join(argv[:4])} did not finish within {timeout:.0f}s") from e
    if check and cp.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({cp.returncode}):\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}")
    return cp


def works(argv: list[str], timeout: float = 30) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def apt_install(*packages: str) -> str:
    """Install Debian packages; returns '' or why it could not."""
    if not shutil.which("apt-get"):
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=120"]
    for argv in (["apt-get", "update", "-qq", *lock], ["apt-get", "install", "-y", "-qq", *lock, *packages]):
        cp = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
        if cp.returncode != 0:
            return f"{' '.join(argv[:2])} failed: {(cp.stderr or cp.stdout).strip().splitlines()[-1:]}"
    return ""


# ------------------------------------------------------------------------------------- engine
@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A running Docker engine (ours only if none was running); yields the compose command."""
    if os.geteuid() != 0:
        pytest.skip("the container test needs root (to install and start a Docker engine)")
    if not (shutil.which("dockerd") and shutil.which("docker")) or not compose_command():
        why = apt_install("docker.io", "docker-compose")
        if why:
            pytest.skip(f"no Docker engine and docker.io cannot be installed: {why}")
    ours: subprocess.Popen[bytes] | None = None
    if not works(["docker", "info"]):
        log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        with open(log, "wb") as f:
            ours = subprocess.Popen(["dockerd", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
                                     "--bridge=none"], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not works(["docker", "info"]) and ours.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        if not works(["docker", "info"]):
            stop_dockerd(ours)
            pytest.skip("dockerd could not be started: " + " | ".join(log.read_text().splitlines()[-3:]))
    compose = compose_command()
    assert compose, "docker.io is there but neither `docker compose` nor `docker-compose` works"
    yield compose
    if ours is not None:
        stop_dockerd(ours)


def compose_command() -> list[str] | None:
    if works(["docker", "compose", "version"]):
        return ["docker", "compose"]
    if shutil.which("docker-compose") and works(["docker-compose", "version"]):
        return ["docker-compose"]
    return None


def stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    """Stop the dockerd this test started (and its containerd, in its process group)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------- the host
def host_snapshot() -> dict[str, str]:
    """What the lab could change in the host's root namespace (other labs' namespaces left out)."""
    def out(*argv: str) -> str:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return "\n".join(l for l in cp.stdout.splitlines() if not l.startswith("#"))

    names = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    return {
        "links": out("ip", "-o", "link", "show"),
        "addrs": out("ip", "-o", "addr", "show"),
        "routes": out("ip", "route", "show", "table", "all"),
        "iptables": out("iptables-save"),
        "iptables-legacy": out("iptables-legacy-save") if shutil.which("iptables-legacy-save") else "",
        "nft": out("nft", "list", "ruleset"),
        "netns": "\n".join(n for n in names if not n.startswith("kplab-") or n.startswith(f"kplab-{LAB}-")),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
    }


@pytest.fixture(scope="module")
def host_before(engine: list[str]) -> dict[str, str]:
    """Taken once the engine runs (an engine changes the host when it starts), before any build."""
    return host_snapshot()


# ------------------------------------------------------------------------------ the image
@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the build context, so the warm-build test can edit kplab/ without touching the tree."""
    ctx = tmp_path_factory.mktemp("context")
    for rel in CONTEXT:
        src, dst = REPO / rel, ctx / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.whl"))
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    # Builds run in the host's network namespace: an engine started by this test gives containers no
    # route out, and the host's resolver is what reaches the package mirrors here.
    (ctx / "build-net.yml").write_text("services:\n  lab:\n    build:\n      network: host\n")
    return ctx


@pytest.fixture(scope="module")
def project(engine: list[str], context: Path) -> dict[str, Any]:
    """How this test calls compose: its own project name, image tag and host port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPLAB_", "JUPYTER_", "COMPOSE_"))}
    extra_ca = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    env.update(KPLAB_IMAGE=f"kplab/lab:test{os.getpid()}", KPLAB_PORT=str(port),
               EXTRA_CA_CERTS="".join(p.read_text() for p in extra_ca))
    name = f"kplabt{os.getpid()}"
    return {"env": env, "port": port, "name": name, "image": env["KPLAB_IMAGE"], "context": context,
            "cmd": [*engine, "-p", name, "-f", "docker-compose.yml", "-f", "build-net.yml"]}


def compose(project: dict[str, Any], *args: str, timeout: float = 180, check: bool = True) -> str:
    return sh([*project["cmd"], *args], timeout=timeout, env=project["env"], cwd=project["context"], check=check).stdout


def kplab_images() -> set[str]:
    return set(sh(["docker", "images", "-a", "-q", "--no-trunc", "--filter", "label=org.kplab.build=1"]).stdout.split())


def kplab_containers() -> set[str]:
    """Containers of kplab images (they inherit the label), including a failed build step's."""
    return set(sh(["docker", "ps", "-a", "-q", "--no-trunc", "--filter", "label=org.kplab.build=1"]).stdout.split())


def build(project: dict[str, Any]) -> tuple[float, str]:
    t0 = time.monotonic()
    compose(project, "build", "lab", timeout=900)
    took = time.monotonic() - t0
    return took, sh(["docker", "image", "inspect", "-f", "{{.Id}}", project["image"]]).stdout.strip()


def layers(image: str) -> list[str]:
    return json.loads(sh(["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", image]).stdout)


@pytest.fixture(scope="module")
def image(project: dict[str, Any], context: Path, host_before: dict[str, str]) -> Iterator[str]:
    """The lab image, built cold; afterwards every image this module built is removed (not the base)."""
    if not works(["docker", "image", "inspect", BASE]) and not works(["docker", "pull", BASE], timeout=120):
        if not shutil.which("debootstrap") and apt_install("debootstrap"):
            pytest.skip(f"{BASE} cannot be pulled and debootstrap cannot be installed")
        sh([str(REPO / "containers/lab/build-base"), BASE], timeout=900)
    existing, running = kplab_images(), kplab_containers()
    try:
        took, image_id = build(project)
        MEASURED.update(cold_build_s=round(took, 1), cold_build_reused_cache=bool(existing),
                        image_bytes=int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", image_id]).stdout))
        yield image_id
    finally:
        compose(project, "down", "-v", "--remove-orphans", "-t", "90", timeout=240, check=False)
        for leftover in sorted(kplab_containers() - running):
            sh(["docker", "rm", "-f", "-v", leftover], check=False)
        sh(["docker", "rmi", "-f", project["image"]], check=False)
        for leftover in sorted(kplab_images() - existing):
            sh(["docker", "rmi", "-f", leftover], check=False)
        out = REPO / "artifacts" / "container.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(MEASURED, indent=2) + "\n")


def test_warm_build_reuses_the_dependency_layers(project: dict[str, Any], context: Path, image: str) -> None:
    """A change to kplab's source rebuilds only the layers from the source on: OS packages and the
    Python dependencies (the slow part) come from the cache."""
    init = context / "kplab" / "__init__.py"
    init.write_text(init.read_text() + "\n# warm-build probe\n")
    took, warm = build(project)
    MEASURED["warm_build_s"] = round(took, 1)
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
    token = in_container(stack, "cat", "/workspace/.jupyter-token").stdout.strip()
    assert jupyter(project, "/api/contents", token) == 200, "JupyterLab does not answer with its token"
    assert jupyter(project, "/api/contents", None) == 403, "JupyterLab answers without a token"
    assert jupyter(project, "/api/contents/labs", token) == 200, "the notebooks were not copied to /workspace"


def test_first_notebook_runs_in_the_container_and_its_checks_pass(stack: str) -> None:
    """What a learner does: run the first graded notebook (its solution cells included) with the
    container's own Jupyter kernel, then `kplab check` grades the lab it left: every check passes."""
    listed = json.loads(in_container(stack, "kplab", "check", "--list", "-o", "json").stdout)
    assert listed, "no checks in the image (/opt/kplab/checks)"
    notebook = min(c["id"].split("/")[0] for c in listed)
    in_container(stack, "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output", "/tmp/executed.ipynb",
                 "--ExecutePreprocessor.timeout=180", f"/workspace/labs/{notebook}.ipynb", timeout=600)
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
