"""pytest plugin: `ipvs`-marked tests run here when the kernel has IPVS, else in one throwaway VM.

Registered through the `pytest11` entry point, so every pytest run in the project venv has it.

* Kernel with IPVS (or inside the VM): the ipvs tests run directly; the VM test is skipped.
* Kernel without IPVS: the ipvs tests are skipped here, and the one test that asks for the
  `ipvs_vm_targets` fixture (tests/system/test_ipvs_vm.py) boots the VM and runs exactly
  those tests there, by node id, so `-k`/file selections carry over.  Its result is printed
  in the terminal summary.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from kplab.testing import vm

_TARGETS = pytest.StashKey[list[str]]()
_RUNS = pytest.StashKey[list[Any]]()
VM_FIXTURE = "ipvs_vm_targets"


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


@pytest.fixture
def ipvs_vm_targets(request: pytest.FixtureRequest) -> list[str]:
    """Node ids of the ipvs tests this session skipped (all `-m ipvs` tests if none were collected)."""
    return request.config.stash.get(_TARGETS, []) or ["-m", "ipvs", "tests"]


def record_vm_run(config: pytest.Config, run: vm.VmRun) -> None:
    """Keep a VM run for the terminal summary."""
    config.stash.setdefault(_RUNS, []).append(run)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for run in config.stash.get(_RUNS, []):
        terminalreporter.section("ipvs tests in the throwaway VM")
        terminalreporter.line(run.summary())
