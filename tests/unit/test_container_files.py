"""The workshop container's files read as text, no Docker needed: the promises docs/WORKSHOP.md makes
(least privilege, 127.0.0.1 only, IPVS extras only when asked) and the image keeping up with the repo.
The real-Docker test is tests/system/test_container.py."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "containers/lab/Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_image_has_every_debian_package_the_makefile_installs() -> None:
    debs = re.search(r"^DEBS := (.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert debs, "the Makefile has no DEBS line"
    missing = set(debs.group(1).split()) - set(re.findall(r"[a-z0-9][a-z0-9.+-]+", DOCKERFILE))
    assert not missing, f"add to the Dockerfile's apt-get install: {sorted(missing)}"


def test_compose_grants_least_privilege() -> None:
    for name, svc in COMPOSE["services"].items():
        assert not svc.get("privileged") and svc.get("network_mode") != "host", name
        assert svc["cap_drop"] == ["ALL"], name
        ipvs = svc.get("profiles") == ["ipvs"]
        assert ("SYS_MODULE" in svc["cap_add"]) == ipvs, f"{name}: SYS_MODULE only in the ipvs profile"
        assert any(v.startswith("/lib/modules:/lib/modules:ro") for v in svc["volumes"]) == ipvs, name
        assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"]), f"{name}: publish on 127.0.0.1 only"
        assert "work:/workspace" in svc["volumes"] and svc["healthcheck"]["test"], name
        assert svc["stop_grace_period"], name
    assert "work" in COMPOSE["volumes"]
    assert "--privileged" not in DOCKERFILE


def test_requirements_are_pyprojects_runtime_and_lab_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = subprocess.run([sys.executable, str(REPO / "containers/lab/requirements.py"), str(REPO / "pyproject.toml")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert set(project["dependencies"]) | set(project["optional-dependencies"]["lab"]) <= set(out)


def test_dockerignore_lets_through_everything_the_dockerfile_copies() -> None:
    allowed = [l[1:].strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.startswith("!")]
    sources = [src for line in re.findall(r"^COPY (?!--from)(.*)$", DOCKERFILE, re.MULTILINE) for src in line.split()[:-1]]
    for src in sources:
        if "*" in src:
            continue
        src = src.rstrip("/")
        assert any(src == a or src.startswith(a + "/") for a in allowed), f".dockerignore drops {src}"
        assert (REPO / src).exists(), f"the Dockerfile copies {src}, which is not in the repository"
