"""pytest plugin: `ipvs`-marked tests run here when the kernel has IPVS, else in one throwaway VM.

Registered through the `pytest11` entry point, so every pytest run in the project venv has it.

* Kernel with IPVS (or inside the VM): the ipvs tests run directly; the VM test is skipped.
* Kernel without IPVS: the ipvs tests are skipped here, and the one test that asks for the
  `ipvs_vm_run` fixture (tests/system/test_ipvs_vm.py) gets the result of one VM that ran
  exactly those tests, by node id, so `-k`/file selections carry over.  The VM boots as soon as
  collection is done and runs beside the host's tests at a lower CPU priority (nice 10); that
  test is moved to the end of the session and waits for it.  KPLAB_VM_BACKGROUND=0 boots it
  only when that test runs.  Its result is printed in the terminal summary.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from kplab.testing import vm

_TARGETS = pytest.StashKey[list[str]]()
_RUNS = pytest.StashKey[list[Any]]()
_JOB = pytest.StashKey["VmJob"]()
VM_FIXTURE = "ipvs_vm_run"
BACKGROUND_TIMEOUT = 4500.0  # seconds: beside the host's tests the VM gets what CPU they leave (CI has 90 min)
BACKGROUND_NICE = 10


class VmJob:
    """One VM running the ipvs tests in a thread, so the host's tests go on meanwhile."""

    def __init__(self, pytest_args: list[str], background: bool) -> None:
        self.args, self.sid, self.run, self.error = pytest_args, 0, None, None
        how = {"timeout": BACKGROUND_TIMEOUT, "nice": BACKGROUND_NICE} if background else {}
        self.thread = threading.Thread(target=self._go, kwargs=how, name="kplab-ipvs-vm", daemon=True)

    def _go(self, **how: Any) -> None:
        try:
            self.run = vm.run_pytest_in_vm(self.args, started=self._started, **how)
        except BaseException as exc:  # handed to the waiting test
            self.error = exc

    def _started(self, sid: int) -> None:
        self.sid = sid

    def result(self) -> vm.VmRun:
        if not self.thread.is_alive() and self.run is None and self.error is None:
            self.thread.start()
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.run is not None
        return self.run

    def stop(self) -> None:
        """The session ends before the test that waits for it ran (interrupted, -x): kill the VM."""
        if self.thread.is_alive():
            if self.sid:
                vm.kill_session(self.sid)
            self.thread.join(timeout=60)  # run_in_vm's own cleanup removes its temporary directory


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: hand the VM exactly the tests left
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    ipvs_items = [i for i in items if i.get_closest_marker("ipvs")]
    if not ipvs_items:
        return
    runners = [i for i in ipvs_items if VM_FIXTURE in getattr(i, "fixturenames", ())]
    tests = [i for i in ipvs_items if i not in runners]
    if os.environ.get("KPLAB_IN_VM") == "1" or vm.ipvs_available():
        for item in runners:
            item.add_marker(pytest.mark.skip(reason="this kernel has IPVS: the ipvs tests run directly"))
        return
    config.stash[_TARGETS] = [i.nodeid for i in tests]
    reason = "no IPVS in this kernel: runs in the throwaway VM (tests/system/test_ipvs_vm.py)"
    if not runners:
        reason += "; select that test too, or run `make test-ipvs`"
    for item in tests:
        item.add_marker(pytest.mark.skip(reason=reason))
    if runners and os.geteuid() == 0 and not config.option.collectonly:
        items[:] = [i for i in items if i not in runners] + runners  # they wait for the VM: last
        background = os.environ.get("KPLAB_VM_BACKGROUND", "1") != "0"
        job = config.stash[_JOB] = VmJob(["-m", "ipvs", *(config.stash[_TARGETS] or ["tests"])], background)
        if background:
            job.thread.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    job = config.stash.get(_JOB, None)
    if job is not None:
        job.stop()


@pytest.fixture
def ipvs_vm_run(request: pytest.FixtureRequest) -> vm.VmRun:
    """The VM run of the ipvs tests this session skipped (all `-m ipvs` tests if none were collected):
    started at collection, waited for here."""
    job = request.config.stash.get(_JOB, None)
    if job is None:
        targets = request.config.stash.get(_TARGETS, []) or ["tests"]
        job = request.config.stash[_JOB] = VmJob(["-m", "ipvs", *targets], background=False)
    return job.result()


def record_vm_run(config: pytest.Config, run: vm.VmRun) -> None:
    """Keep a VM run for the terminal summary."""
    config.stash.setdefault(_RUNS, []).append(run)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for run in config.stash.get(_RUNS, []):
        terminalreporter.section("ipvs tests in the throwaway VM")
        terminalreporter.line(run.summary())
