"""A lab's state directory: what it created, its objects, its lock.

    /run/kplab/<lab>/lab.json         name, mode, nodes, options, objects, status
    /run/kplab/<lab>/netns.journal    every netns, written *before* it is created (crash cleanup)
    /run/kplab/<lab>/lock             flock: one writer at a time; free lock + status
                                      "building" = a crashed `up`
    /run/kplab/<lab>/**/*.pid         every process the lab started (echo agent, proxies)
    /run/kplab/<lab>/nodes/<node>/<mode>/   a mode's memory between syncs

The directory is the lab's identity: `kplab up` creates it with mkdir (so a second `up` of
the same name fails at once), `down`/`clean` remove it last.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kplab.errors import LabError

STATE_ROOT = Path(os.environ.get("KPLAB_STATE_DIR", "/run/kplab"))
# How long the lab waits for its own processes (echo workload, kube-proxy's servers) to say they
# are ready: 30 s on a machine, more in an emulated VM (kplab.testing.vm sets it), where Python
# alone takes tens of seconds to import what they need.
START_TIMEOUT = float(os.environ.get("KPLAB_START_TIMEOUT", "30"))
LAB_NAME = re.compile(r"^[a-z0-9]{1,12}$")


def current_lab() -> str:
    """The lab the CLI, the checks and the notebooks act on: `$KPLAB_LAB`, else `default`."""
    return os.environ.get("KPLAB_LAB") or "default"


def check_lab_name(name: str) -> None:
    if not LAB_NAME.match(name):
        raise LabError(f"lab name {name!r} must be 1-12 characters of a-z and 0-9 "
                       "(it prefixes every namespace the lab creates: kplab-<lab>-<name>)")


class Store:
    def __init__(self, lab: str) -> None:
        self.lab = lab
        self.dir = STATE_ROOT / lab

    @property
    def exists(self) -> bool:
        return (self.dir / "lab.json").exists() or self.dir.is_dir()

    def create(self) -> None:
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        try:
            self.dir.mkdir()
        except FileExistsError:
            if self.crashed():
                raise LabError(f"{self.crashed_message()}, then `kplab up` again") from None
            raise LabError(f"lab {self.lab!r} exists already: use it, or `kplab down --lab {self.lab}` first "
                           f"(`kplab clean --lab {self.lab}` if it crashed)") from None

    def crashed(self) -> bool:
        """An `up` that died (kill -9, a reboot of the kernel's namespaces aside): the directory is there,
        its state was never saved as "up", and nobody holds its lock."""
        if not self.dir.is_dir() or not self.lock_is_free():
            return False
        try:
            return json.loads((self.dir / "lab.json").read_text()).get("status") != "up"
        except (FileNotFoundError, ValueError):
            return True

    def crashed_message(self) -> str:
        return (f"lab {self.lab!r} crashed while it was being built (its `kplab up` was stopped): "
                f"`kplab clean --lab {self.lab}` removes what it left")

    def not_up_error(self) -> LabError:
        """Why a lab that has a directory cannot be used: crashed, or still being built."""
        if self.crashed():
            return LabError(self.crashed_message())
        return LabError(f"lab {self.lab!r} is being built (another kplab command holds its lock): "
                        "wait for it, or see `kplab status` in a moment")

    @contextlib.contextmanager
    def locked(self, timeout: float = 60.0) -> Iterator[None]:
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            start = time.monotonic()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - start > timeout:
                        raise LabError(f"lab {self.lab!r} is busy (another kplab command holds its lock)") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def lock_is_free(self) -> bool:
        try:
            fd = os.open(self.dir / "lock", os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def load(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / "lab.json").read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            if self.dir.is_dir():
                raise self.not_up_error() from None
            raise LabError(f"no lab named {self.lab!r}: start one with `kplab up --lab {self.lab}`") from None

    def save(self, data: dict[str, Any]) -> None:
        tmp = self.dir / "lab.json.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.dir / "lab.json")

    def journal(self, netns: str) -> None:
        with open(self.dir / "netns.journal", "a") as f:
            f.write(netns + "\n")
            f.flush()
            os.fsync(f.fileno())

    def journaled(self) -> list[str]:
        try:
            return [l for l in (self.dir / "netns.journal").read_text().splitlines() if l]
        except FileNotFoundError:
            return []

    def node_dir(self, node: str, mode: str) -> Path:
        d = self.dir / "nodes" / node / mode
        d.mkdir(parents=True, exist_ok=True)
        return d


def pid_alive_and_ours(pid: int, marker: str) -> bool:
    """True if `pid` runs and its command line contains `marker` (never kill a stranger)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return marker in cmdline


def _reap(pid: int, wait: float = 0.0) -> None:
    """Collect our own exited child, so no zombie is left in a long-lived process (a notebook).

    An exiting process's cmdline empties a moment before it becomes a zombie: wait up to `wait`
    seconds for that moment.  A process that is not our child is left to its parent.
    """
    end = time.monotonic() + wait
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            _children.discard(pid)
            return
        if done == pid:
            _children.discard(pid)  # reaped: the pid may be reused, it is no longer ours
            return
        if time.monotonic() >= end:
            return
        time.sleep(0.005)


def stop_pid(pid: int, marker: str, wait: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `wait` seconds, a process we started (checked by marker)."""
    if pid_alive_and_ours(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + wait
        while time.monotonic() < end and pid_alive_and_ours(pid, marker):
            _reap(pid)
            time.sleep(0.01)
        if pid_alive_and_ours(pid, marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _reap(pid, wait=2.0)


def stop_recorded_processes(root: Path) -> None:
    """Stop every process recorded as <root>/**/*.pid whose command line mentions kplab."""
    reap_children()
    for pidfile in sorted(root.rglob("*.pid")) if root.is_dir() else []:
        try:
            pid = int(pidfile.read_text().split()[0])
        except (ValueError, IndexError, FileNotFoundError):
            continue
        stop_pid(pid, "kplab")
        pidfile.unlink(missing_ok=True)


_children: set[int] = set()  # lab processes this process started: ours to reap, whoever stopped them


def reap_children() -> None:
    """Collect every lab process this process started that has exited since.

    A lab brought down by another process (`kplab down` in a terminal beside the notebook)
    stops our children without our knowing: without this, each stays `<defunct>` under the
    long-lived process (a notebook kernel) that started it, one more per reset.
    """
    for pid in list(_children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid  # not ours (any more)
        if done == pid:
            _children.discard(pid)


def spawn_detached(argv: list[str], log: Path) -> int:
    """Start a lab process in its own session, output to `log`; the caller records its pid."""
    reap_children()
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    pid = os.posix_spawn(argv[0], argv, dict(os.environ), setsid=True, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), flags, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ])
    _children.add(pid)
    return pid
