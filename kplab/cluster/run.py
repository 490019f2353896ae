"""Running a program inside a lab namespace: argv lists only, errors translated here.

`run(argv, netns="kplab-default-node-1")` enters only the network namespace (nsenter
--net), so the program sees the host's filesystem and tools; what it changes in the network
stack stays inside that namespace.  No shell strings, no persistent shells.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass

from kplab.errors import CommandError, EnvironmentProblem

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
    """Run argv (in `netns` when given); on failure with check=True raise CommandError with its output."""
    if shutil.which(argv[0]) is None:
        raise EnvironmentProblem(f"{argv[0]} is not installed: run `make setup` (or apt-get install it)")
    full = netns_argv(netns, argv)
    try:
        cp = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise CommandError(f"{argv[0]} did not finish within {timeout:.0f}s") from e
    res = Result(full, cp.returncode, cp.stdout, cp.stderr)
    if check and cp.returncode < 0:  # killed: say by what, not "failed: -9"
        raise CommandError(killed(argv[0], -cp.returncode), cp.stderr.splitlines())
    if check and cp.returncode != 0:
        where = f" in {netns}" if netns else ""
        msg = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
        raise CommandError(f"{' '.join(argv[:3])}{where} failed: {msg[0] if msg else cp.returncode}", msg)
    return res


def killed(program: str, signum: int) -> str:
    """SIGKILL from nobody in the lab is the kernel's OOM killer: a memory limit (a learner's container's)
    too small for what the sync loads (10,000 Services: nft and kplab about 0.5 GiB each)."""
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"signal {signum}"
    why = (": most likely out of memory, at this container's memory limit (`cat /sys/fs/cgroup/memory.max "
           "/sys/fs/cgroup/memory/memory.limit_in_bytes`); apply fewer objects, or ask for a larger limit"
           if signum == signal.SIGKILL else "")
    return f"{program} was killed by {name}{why}"
