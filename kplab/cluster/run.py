"""Running a program inside a lab namespace: argv lists only, errors translated here.

`run(argv, netns="kplab-default-node-1")` enters only the network namespace (nsenter
--net), so the program sees the host's filesystem and tools; what it changes in the network
stack stays inside that namespace.  No shell strings, no persistent shells.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from kplab.errors import EnvironmentProblem, ProxierError

NETNS_DIR = "/run/netns"


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def netns_argv(netns: str | None, argv: list[str]) -> list[str]:
    if not netns:
        return list(argv)
    return ["nsenter", f"--net={NETNS_DIR}/{netns}", "--", *argv]


def run(
    argv: list[str],
    netns: str | None = None,
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
) -> Result:
    """Run argv (in `netns` when given); on failure with check=True raise ProxierError with stderr."""
    if shutil.which(argv[0]) is None:
        raise EnvironmentProblem(f"{argv[0]} is not installed: run `make setup` (or apt-get install it)")
    full = netns_argv(netns, argv)
    try:
        cp = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ProxierError(f"{argv[0]} did not finish within {timeout:.0f}s") from e
    res = Result(full, cp.returncode, cp.stdout, cp.stderr)
    if check and cp.returncode != 0:
        where = f" in {netns}" if netns else ""
        msg = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
        raise ProxierError(f"{' '.join(argv[:3])}{where} failed: {msg[0] if msg else cp.returncode}", msg)
    return res
