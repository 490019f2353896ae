"""The ipvs tests, run for real in one throwaway VM when this kernel has no IPVS.

The plugin (kplab.testing.pytest_plugin) skips each ipvs test here, runs them in a VM beside the
host's tests, and hands the result to this test (the session's last) through `ipvs_vm_run`; on a
kernel with IPVS this test is skipped instead.
"""

from __future__ import annotations

import os

import pytest

from kplab.testing import vm
from kplab.testing.pytest_plugin import record_vm_run

pytestmark = [pytest.mark.ipvs, pytest.mark.root, pytest.mark.slow]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (installs the VM's packages, runs the lab)")
def test_ipvs_suite_in_vm(ipvs_vm_run: vm.VmRun, request: pytest.FixtureRequest) -> None:
    run = ipvs_vm_run
    record_vm_run(request.config, run)
    if not run.ok:
        tail = "\n".join(run.output.splitlines()[-60:])
        pytest.fail(f"{run.summary()}\n--- end of the VM's pytest output ---\n{tail}", pytrace=False)
