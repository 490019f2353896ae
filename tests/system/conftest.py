"""Session-wide Docker fixtures for test_container.py and test_hub.py: one engine and one lab image
per test run (building it is the slow part), removed again at the end.

The engine: an already running Docker is used as it is.  Otherwise docker.io (and docker-compose,
debootstrap) are installed and our own dockerd started, stopped again at the end, with
--iptables=false --ip-forward=false --bridge=none so that the engine itself leaves the host's
rules, forwarding and links alone; builds then use host networking (KPLAB_BUILD_NETWORK=host).  No
registry here: the base image is debootstrapped by containers/lab/build-base when it cannot be
pulled; it and its tarball (/var/cache/kplab) are kept as a cache between runs, and so is the hub
image's npm stage (unlabelled: it does not depend on kplab).  Everything else (containers, networks,
volumes, images) is removed; images that were there before the run (say, a `make image` of yours)
are kept, and their layers make the build here a cache hit.  Measurements go to artifacts/container.json.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kplab.testing.docker import (
    apt_install,
    build,
    compose,
    compose_command,
    host_snapshot,
    kplab_containers,
    kplab_images,
    sh,
    stop_dockerd,
    works,
)

REPO = Path(__file__).resolve().parents[2]
BASE = "debian:bookworm-slim"  # the Dockerfile's ARG BASE
# The build context: what .dockerignore lets through (so a new COPY in a Dockerfile needs no edit here;
# the ebpf merge's `COPY bpf/kplab_lb.c` broke a hand-kept list), plus the compose file.
CONTEXT = [".dockerignore", "docker-compose.yml",
           *(line[1:].strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!"))]


@pytest.fixture(scope="session")
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
    cmd = compose_command()
    assert cmd, "docker.io is there but neither `docker compose` nor `docker-compose` works"
    yield cmd
    if ours is not None:
        stop_dockerd(ours)


@pytest.fixture(scope="session")
def host_before(engine: list[str]) -> dict[str, str]:
    """Taken once the engine runs (an engine changes the host when it starts), before any build."""
    return host_snapshot()


@pytest.fixture(scope="session")
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
    return ctx


@pytest.fixture(scope="session")
def project(engine: list[str], context: Path) -> dict[str, Any]:
    """How the tests call compose: their own project name, image tags and host ports."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPLAB_", "JUPYTER_", "COMPOSE_"))}
    extra_ca = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    # Builds run in the host's network namespace: an engine started by the test gives containers no
    # route out, and the host's resolver is what reaches the package mirrors here.
    env.update(KPLAB_IMAGE=f"kplab/lab:test{os.getpid()}", KPLAB_HUB_IMAGE=f"kplab/hub:test{os.getpid()}",
               KPLAB_PORT=str(ports[0]), KPLAB_HUB_PORT=str(ports[1]), KPLAB_BUILD_NETWORK="host",
               KPLAB_HUB_NETWORK=f"kplab-hub-t{os.getpid()}",
               # stripped as the Makefile's $$(cat ...) strips it: the same build argument, so a `make image`
               # made before the run is a cache hit here (a trailing newline made every RUN step miss)
               EXTRA_CA_CERTS="".join(p.read_text() for p in extra_ca).strip())
    name = f"kplabt{os.getpid()}"
    return {"env": env, "port": ports[0], "hub_port": ports[1], "name": name, "image": env["KPLAB_IMAGE"],
            "hub_image": env["KPLAB_HUB_IMAGE"], "context": context, "measured": {},
            "cmd": [*engine, "-p", name, "-f", "docker-compose.yml"]}


@pytest.fixture(scope="session")
def image(project: dict[str, Any], context: Path, host_before: dict[str, str]) -> Iterator[str]:
    """The lab image, built cold; afterwards every image built here is removed (not the base)."""
    if not works(["docker", "image", "inspect", BASE]) and not works(["docker", "pull", BASE], timeout=120):
        if not shutil.which("debootstrap") and apt_install("debootstrap"):
            pytest.skip(f"{BASE} cannot be pulled and debootstrap cannot be installed")
        sh([str(REPO / "containers/lab/build-base"), BASE], timeout=900)
    existing, running = kplab_images(), kplab_containers()
    try:
        took, built = build(project)
        project["measured"].update(cold_build_s=round(took, 1), cold_build_reused_cache=bool(existing),
                                   image_bytes=int(sh(["docker", "image", "inspect", "-f", "{{.Size}}",
                                                       built]).stdout))
        yield built
    finally:
        compose(project, "--profile", "hub", "down", "-v", "--remove-orphans", "-t", "90", timeout=400, check=False)
        for leftover in sorted(kplab_containers() - running):
            sh(["docker", "rm", "-f", "-v", leftover], check=False)
        sh(["docker", "rmi", "-f", project["image"], project["hub_image"]], check=False)
        for leftover in sorted(kplab_images() - existing):
            sh(["docker", "rmi", "-f", leftover], check=False)
        out = REPO / "artifacts" / "container.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(project["measured"], indent=2) + "\n")


@pytest.fixture(scope="session")
def course(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The course run once, in order, by a learner who typed every solution (kplab.testing.course):
    test_notebooks.py reads each notebook's outcome, test_grading.py replays the saved notebooks."""
    from kplab.testing.course import CourseRun, edition

    base = tmp_path_factory.mktemp("course-run")
    run = CourseRun(edition(base / "typed", "learner"), edition(base / "solutions", "instructor"), lab="crslrn")
    yield run
    run.close()
