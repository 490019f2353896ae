"""The workshop container's files read as text, no Docker needed: the promises docs/WORKSHOP.md makes
(least privilege, 127.0.0.1 only, IPVS extras only when asked) and the image keeping up with the repo.
The real-Docker test is tests/system/test_container.py."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
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
    labs = {name: svc for name, svc in COMPOSE["services"].items() if name != "hub"}
    for name, svc in labs.items():
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


@pytest.mark.parametrize("dockerfile", ["containers/lab/Dockerfile", "containers/hub/Dockerfile"])
def test_dockerignore_lets_through_everything_the_dockerfile_copies(dockerfile: str) -> None:
    """The hub's first real build failed here: .dockerignore let only containers/lab through."""
    text = (REPO / dockerfile).read_text()
    allowed = [l[1:].strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.startswith("!")]
    sources = [src for line in re.findall(r"^COPY (?!--from)(.*)$", text, re.MULTILINE) for src in line.split()[:-1]]
    for src in sources:
        if "*" in src:
            continue
        src = src.rstrip("/")
        assert any(src == a or src.startswith(a + "/") for a in allowed), f".dockerignore drops {src}"
        assert (REPO / src).exists(), f"the Dockerfile copies {src}, which is not in the repository"


def test_image_puts_the_venv_on_login_shells_path() -> None:
    """Issue 14: JupyterLab's terminal is a login shell; /etc/profile resets PATH, so `kplab` was not found.
    (tests/system/test_container.py runs `bash -l -c 'kplab status'` in the real container.)"""
    assert "/etc/profile.d/kplab.sh" in DOCKERFILE and "PATH=/opt/kplab/.venv/bin:$PATH" in DOCKERFILE


def test_hub_service_is_opt_in_local_and_unprivileged() -> None:
    hub = COMPOSE["services"]["hub"]
    assert hub["profiles"] == ["hub"] and hub["depends_on"] == ["lab"]
    assert hub["cap_drop"] == ["ALL"] and "cap_add" not in hub and not hub.get("privileged")
    assert [str(p) for p in hub["ports"]] == ["${KPLAB_HUB_BIND:-127.0.0.1}:${KPLAB_HUB_PORT:-8000}:8000"]
    assert hub["build"]["dockerfile"] == "containers/hub/Dockerfile"
    assert hub["environment"]["KPLAB_LEARNER_IMAGE"] == COMPOSE["services"]["lab"]["image"]


def test_hub_config_gives_learners_the_lab_services_privileges_and_never_the_dummy_authenticator(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The shipped jupyterhub_config.py, loaded as JupyterHub loads it (with the passwords it requires)."""
    from traitlets.config import Config

    path = REPO / "containers/hub/jupyterhub_config.py"
    text = path.read_text()
    assert "dummy" not in text.lower()
    cfg = Config()
    env = {"KPLAB_HUB_PASSWORD": "p" * 8, "KPLAB_HUB_ADMIN_PASSWORD": "a" * 32, "KPLAB_HUB_DATA": str(tmp_path),
           "KPLAB_HUB_HOST": "hub"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        runpy.run_path(str(path), init_globals={"get_config": lambda: cfg})
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    lab = COMPOSE["services"]["lab"]
    host = cfg.DockerSpawner.extra_host_config
    assert host["cap_drop"] == lab["cap_drop"] and host["cap_add"] == lab["cap_add"]
    assert host["security_opt"] == lab["security_opt"] and "/run" in host["tmpfs"]
    assert "privileged" not in host
    assert cfg.DockerSpawner.mem_limit and cfg.DockerSpawner.cpu_limit
    assert cfg.JupyterHub.authenticator_class == "shared-password"
    assert cfg.JupyterHub.spawner_class == "docker"
    assert {s["name"] for s in cfg.JupyterHub.services} == {"idle-culler", "class-grader"}
    assert cfg.DockerSpawner.volumes == {"kplab-learner-{username}": "/workspace"}
    assert cfg.DockerSpawner.cmd[0] == "kplab-userns", "learners' root must be an unprivileged host user"
    # The shared password's limit, said at every start (test_hub.py checks the hub's log for it).
    assert "lets anyone who knows it sign in as any learner" in capfd.readouterr().err


def test_hub_config_without_passwords_is_one_readable_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPLAB_HUB")}
    script = ("import runpy; runpy.run_path('containers/hub/jupyterhub_config.py',"
              " init_globals={'get_config': lambda: __import__('traitlets.config').config.Config()})")
    cp = subprocess.run([sys.executable, "-c", script],
                        cwd=REPO, env={**env, "KPLAB_HUB_DATA": str(tmp_path)}, capture_output=True, text=True,
                        check=False)
    assert cp.returncode != 0
    assert cp.stderr.strip().splitlines() == [
        ("kplab hub: set KPLAB_HUB_PASSWORD (at least 8 characters) in the environment or in .env next to "
         "docker-compose.yml; see docs/WORKSHOP.md")]


def test_z2jh_values_file_fits_the_charts_schema() -> None:
    """containers/hub/z2jh-values.yaml against Zero to JupyterHub's own values schema (tests/data/, its
    'required' lists dropped: a values file overrides the chart's defaults).  No helm or cluster here."""
    import json

    import jsonschema

    schema = json.loads((REPO / "tests/data/z2jh-values.schema.json").read_text())
    values = yaml.safe_load((REPO / "containers/hub/z2jh-values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    ctx = values["hub"]["config"]["KubeSpawner"]["container_security_context"]
    lab = COMPOSE["services"]["lab"]
    assert ctx["capabilities"] == {"drop": lab["cap_drop"], "add": lab["cap_add"]}
    assert values["singleuser"]["cmd"] == ["kplab-userns", "kplab-entrypoint", "jupyterhub-singleuser", "--allow-root"]
    assert "dummy" not in json.dumps(values)


def test_z2jh_schema_rejects_a_misspelt_key() -> None:
    """The lint has teeth: a key the chart does not know is an error."""
    import json

    import jsonschema

    schema = json.loads((REPO / "tests/data/z2jh-values.schema.json").read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors({"singleuser": {"extraContainerConfig": {}}}))
    assert errors and "extraContainerConfig" in errors[0].message


@pytest.mark.parametrize(("args", "said"), [
    ([], "kplab-userns: usage: kplab-userns [--enter] CMD..."),
    (["--enter", "true"], "kplab-userns: no learner namespace in this container (was it started with kplab-userns?)"),
])
def test_userns_launcher_misuse_is_one_readable_line(args: list[str], said: str) -> None:
    if os.geteuid() != 0 and args:
        said = "kplab-userns: run as the container's root"
    cp = subprocess.run([sys.executable, str(REPO / "containers/lab/userns"), *args], capture_output=True, text=True,
                        check=False)
    assert cp.returncode != 0 and cp.stderr.strip().splitlines() == [said]
