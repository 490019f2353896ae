"""The class's JupyterHub: one kplab lab container per learner (DockerSpawner), a workshop password,
an instructor who is the hub's admin, idle servers culled.  Every knob is an environment variable set
in docker-compose.yml's `hub` service; docs/WORKSHOP.md ("A class on one server") explains them.

Learner containers get exactly the lab service's least privileges (cap_drop ALL, the same cap_add
and security options, a tmpfs /run), a volume of their own at /workspace, and CPU/memory limits; and
everything a learner runs (their lab, their kernels, their terminal) is root of a user namespace whose
ids are unprivileged ids of the host (kplab-userns; docs/WORKSHOP.md, "Learners are not trusted with the host").
"""

import os
import secrets
import socket
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (JupyterHub's config loader defines it)
env = os.environ.get
DATA = Path(env("KPLAB_HUB_DATA", "/srv/jupyterhub"))


def required(name: str, at_least: int) -> str:
    """A password the hub cannot start without: one readable line, not a traceback, when it is missing."""
    value = env(name, "")
    if len(value) < at_least:
        sys.exit(f"kplab hub: set {name} (at least {at_least} characters) in the environment or in .env "
                 "next to docker-compose.yml; see docs/WORKSHOP.md")
    return value


# --- the hub itself: all interfaces inside its container; docker-compose.yml publishes it on 127.0.0.1
c.JupyterHub.bind_url = f"{'https' if env('KPLAB_HUB_TLS_CERT') else 'http'}://0.0.0.0:8000"
if env("KPLAB_HUB_TLS_CERT"):
    c.JupyterHub.ssl_cert = env("KPLAB_HUB_TLS_CERT")
    c.JupyterHub.ssl_key = env("KPLAB_HUB_TLS_KEY")
if env("KPLAB_HUB_PUBLIC_URL"):  # e.g. https://class.example.org/ behind a reverse proxy
    c.JupyterHub.public_url = env("KPLAB_HUB_PUBLIC_URL")
c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
# How learner servers reach the hub: its address on the class network (from /etc/hosts, which Docker
# writes), so no DNS is needed; the learners are stopped with the hub, so a new address on restart is fine.
c.JupyterHub.hub_connect_url = f"http://{env('KPLAB_HUB_HOST') or socket.gethostbyname(socket.gethostname())}:8081"
c.JupyterHub.db_url = f"sqlite:///{DATA}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = str(DATA / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(DATA / "jupyterhub-proxy.pid")
c.JupyterHub.last_activity_interval = int(env("KPLAB_HUB_ACTIVITY_INTERVAL", "300"))
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every learner container

# --- accounts: anyone with the workshop password gets a server; the instructor logs in with their own
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = required("KPLAB_HUB_PASSWORD", 8)
c.SharedPasswordAuthenticator.admin_password = required("KPLAB_HUB_ADMIN_PASSWORD", 32)
# The workshop password admits the room, not a person: whoever has it can sign in under any learner's
# name (never the instructor's, which takes the admin password) and so see that learner's work.
print("kplab hub: WARNING: the workshop password (KPLAB_HUB_PASSWORD) lets anyone who knows it sign in "
      "as any learner, and so open that learner's server and work; for a room you do not trust, see "
      "docs/WORKSHOP.md, \"Accounts\"", file=sys.stderr, flush=True)
c.Authenticator.admin_users = {env("KPLAB_HUB_INSTRUCTOR", "instructor")}
c.Authenticator.allow_all = True
# Names become container and volume names: lower-case letters, digits, '-', '_', '.', at most 32.
c.Authenticator.username_pattern = r"^[a-z0-9][a-z0-9._-]{0,31}$"

# --- one lab container per learner
c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = env("KPLAB_LEARNER_IMAGE", "kplab/lab:latest")
c.DockerSpawner.pull_policy = env("KPLAB_LEARNER_PULL", "ifnotpresent")
# Behind the image's kplab-entrypoint: kplab-userns maps the learner's root to host ids 100000.., then the
# entrypoint brings the lab up and serves JupyterHub's single-user server, both inside that namespace.
c.DockerSpawner.cmd = ["kplab-userns", "kplab-entrypoint", "jupyterhub-singleuser", "--allow-root"]
c.DockerSpawner.prefix = "kplab-learner"
c.DockerSpawner.network_name = env("KPLAB_HUB_NETWORK", "kplab-hub")
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True  # the container goes with the server; the work stays in the volume
c.DockerSpawner.notebook_dir = "/workspace"
c.DockerSpawner.default_url = "/lab"
c.DockerSpawner.volumes = {"kplab-learner-{username}": "/workspace"}
c.DockerSpawner.environment = {"KPLAB_MODE": env("KPLAB_MODE", "iptables")}
c.DockerSpawner.mem_limit = env("KPLAB_LEARNER_MEM", "2G")  # a learner's 10,000 Services peaked at 1.2 GiB (test_hub)
c.DockerSpawner.cpu_limit = float(env("KPLAB_LEARNER_CPUS", "1"))
c.DockerSpawner.extra_host_config = {  # the same as docker-compose.yml's lab service
    "cap_drop": ["ALL"],
    "cap_add": ["NET_ADMIN", "SYS_ADMIN", "NET_RAW", "SETUID", "SETGID", "CHOWN", "KILL"],
    "security_opt": ["apparmor:unconfined", "no-new-privileges:true"],
    "tmpfs": {"/run": ""},
    "pids_limit": int(env("KPLAB_LEARNER_PIDS", "1024")),
}
c.DockerSpawner.extra_create_kwargs = {"labels": {"org.kplab.learner": "1"}}
# The lab comes up before the learner's server starts listening: give it time.
c.Spawner.start_timeout = int(env("KPLAB_LEARNER_START_TIMEOUT", "300"))
c.Spawner.http_timeout = int(env("KPLAB_LEARNER_START_TIMEOUT", "300"))


def unavailable(message: str) -> RuntimeError:
    """An error whose words JupyterHub shows the learner (API reply and spawn page), not "Internal Server Error"."""
    e = RuntimeError(message)
    e.jupyterhub_message = message
    return e


async def before_spawn(spawner) -> None:
    """Say it in one line when the lab image is missing (DockerSpawner's own error is a registry's 404);
    then create the learner's volume with a label, so the class's volumes can be listed and removed
    together (`docker volume ls -f label=org.kplab.learner`): compose does not know them."""
    import docker.errors
    from docker.utils import parse_repository_tag

    try:
        await spawner.docker("inspect_image", spawner.image)
    except docker.errors.ImageNotFound:
        if spawner.pull_policy.lower() == "never":
            raise unavailable(f"the lab image {spawner.image} is not on this server: the instructor builds it "
                              "(`docker compose build lab`, docs/WORKSHOP.md), then start your server again")
        try:
            repo, tag = parse_repository_tag(spawner.image)
            await spawner.docker("pull", repo, tag or "latest")
        except docker.errors.APIError as e:
            raise unavailable(f"the lab image {spawner.image} is not on this server and cannot be pulled "
                              f"({e.explanation or e}): the instructor builds it (`docker compose build lab`, "
                              "docs/WORKSHOP.md), then start your server again") from None
    name = f"kplab-learner-{spawner.escaped_name}"
    await spawner.docker("create_volume", name=name, labels={"org.kplab.learner": spawner.user.name})


c.DockerSpawner.pre_spawn_hook = before_spawn

# --- services: the idle culler, and the token the instructor's class grading uses (kplab-class-grade)
grader_token_file = DATA / "grader-token"
if not grader_token_file.exists():
    old = os.umask(0o077)
    grader_token_file.write_text(secrets.token_hex(32))
    os.umask(old)
c.JupyterHub.services = [
    {"name": "idle-culler",
     "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                 f"--timeout={env('KPLAB_HUB_IDLE_TIMEOUT', '3600')}",
                 f"--cull-every={env('KPLAB_HUB_CULL_EVERY', '300')}"]},
    {"name": "class-grader", "api_token": grader_token_file.read_text().strip()},
]
c.JupyterHub.load_roles = [
    {"name": "idle-culler", "services": ["idle-culler"],
     "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]},
    {"name": "class-grader", "services": ["class-grader"], "scopes": ["list:users", "read:users", "read:servers"]},
]
