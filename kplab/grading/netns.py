"""A testinfra backend that runs commands inside a lab's network namespace.

    >>> import testinfra, kplab.grading
    >>> node = testinfra.get_host("netns://node-1")        # kplab-$KPLAB_LAB-node-1
    >>> node.iptables.rules("nat", "KUBE-SERVICES")[:1]
    ['-N KUBE-SERVICES']

`netns://kplab-ipt1-node-1` names a namespace outright; `netns://node-1` (a node, a pod or
`outside`) is resolved against the current lab, `$KPLAB_LAB` or `default`.  Like testinfra's own
backends this one overrides only `run()`: every testinfra module (`iptables`, `socket`,
`interface`, `run`...) then works inside the namespace.  Only the network namespace is entered
(nsenter --net), so the host's tools and files are used, as with `kplab exec`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import testinfra.backend
from testinfra.backend import base

from kplab.cluster.run import NETNS_DIR, netns_argv
from kplab.cluster.store import current_lab
from kplab.errors import CheckError

PREFIX = "kplab-"


def resolve(name: str, lab: str | None = None) -> str:
    """`node-1` -> `kplab-<lab>-node-1`; a full `kplab-...` name is kept as it is."""
    if name.startswith(PREFIX):
        return name
    return f"{PREFIX}{lab or current_lab()}-{name}"


class NetnsBackend(base.BaseBackend):
    """Runs each command with /bin/sh inside one named network namespace."""

    NAME = "netns"

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.netns = resolve(name)
        if not Path(NETNS_DIR, self.netns).exists():
            raise CheckError(f"no network namespace {self.netns}: is the lab up? (kplab up, or kplab status)")
        super().__init__(self.netns, *args, **kwargs)

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        argv = netns_argv(self.netns, ["/bin/sh", "-c", cmd])
        try:
            cp = subprocess.run(argv, check=False, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired as e:
            raise CheckError(f"{cmd!r} in {self.netns} did not finish within 60s") from e
        return self.result(cp.returncode, self.encode(cmd), cp.stdout, cp.stderr)


def register() -> None:
    """Make `netns://` a connection testinfra knows (idempotent)."""
    testinfra.backend.BACKENDS.setdefault("netns", f"{__name__}.NetnsBackend")


register()
