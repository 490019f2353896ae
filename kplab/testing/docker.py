"""A Docker engine for the container and hub tests: commands run bounded, dockerd installed and stopped.

tests/system/conftest.py holds the session-wide fixtures (the engine, the lab image built once for
test_container.py and test_hub.py); these are the plain helpers both use.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from kplab.cluster.run import NETNS_DIR


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


def compose(project: dict[str, Any], *args: str, timeout: float = 180, check: bool = True) -> str:
    """`docker compose` (or docker-compose) in the project's build context, with its environment."""
    return sh([*project["cmd"], *args], timeout=timeout, env=project["env"], cwd=project["context"],
              check=check).stdout


def kplab_images() -> set[str]:
    return set(sh(["docker", "images", "-a", "-q", "--no-trunc", "--filter", "label=org.kplab.build=1"]).stdout.split())


def kplab_containers() -> set[str]:
    """Containers of kplab images (they inherit the label), including a failed build step's."""
    return set(sh(["docker", "ps", "-a", "-q", "--no-trunc", "--filter", "label=org.kplab.build=1"]).stdout.split())


def image_id(tag: str) -> str:
    return sh(["docker", "image", "inspect", "-f", "{{.Id}}", tag]).stdout.strip()


def host_snapshot(lab: str = "default") -> dict[str, str]:
    """What a container's lab could change in the host's root namespace (other labs' namespaces left out)."""
    def out(*argv: str) -> str:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return "\n".join(l for l in cp.stdout.splitlines() if not l.startswith("#"))

    names = sorted(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else []
    return {
        "links": out("ip", "-o", "link", "show"),
        "addrs": out("ip", "-o", "addr", "show"),
        "routes": out("ip", "route", "show", "table", "all"),
        "iptables": out("iptables-save"),
        "iptables-legacy": out("iptables-legacy-save") if shutil.which("iptables-legacy-save") else "",
        "nft": out("nft", "list", "ruleset"),
        "netns": "\n".join(n for n in names if not n.startswith("kplab-") or n.startswith(f"kplab-{lab}-")),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
    }


def build(project: dict[str, Any], service: str = "lab") -> tuple[float, str]:
    t0 = time.monotonic()
    compose(project, "build", service, timeout=1800)  # a cold build beside the IPVS VM and other tests: 900 s was once too short
    took = time.monotonic() - t0
    return took, image_id(project["image" if service == "lab" else "hub_image"])
