"""Fixtures every graded check can use: the lab, and testinfra hosts inside its namespaces.

    def test_something(lab, ns):
        node = ns("node-1")                          # testinfra Host in kplab-<lab>-node-1
        assert node.iptables.rules("nat", "KUBE-SERVICES"), "node-1 has no KUBE-SERVICES chain"
        assert lab.curl("client", "web", n=10).ok == 10

The lab is `$KPLAB_LAB` (default `default`), as `kplab check` and `check()` set it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import testinfra
from testinfra.host import Host

from kplab.errors import CheckError, KplabError
from kplab.grading.netns import current_lab
from kplab.lab import Lab


@pytest.fixture
def lab() -> Lab:
    try:
        return Lab.attach(current_lab())
    except KplabError as e:
        raise CheckError(f"lab {current_lab()!r} is not up: {e}") from None


@pytest.fixture
def ns(lab: Lab) -> Callable[[str], Host]:
    """ns("node-1") -> a testinfra Host running commands in that node's (pod's, outside's) netns."""
    return lambda name: testinfra.get_host(f"netns://{lab.netns(name)}")
