"""Shared test plumbing: root-only tests skip cleanly elsewhere; labs are always removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the checkout


def pytest_configure(config: pytest.Config) -> None:
    """Progress records of checks run by tests go to a folder of the run, never into the checkout's labs/."""
    if "KPLAB_WORK" not in os.environ:
        import tempfile

        os.environ["KPLAB_WORK"] = tempfile.mkdtemp(prefix="kplab-test-work-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real network namespaces")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lab_factory():
    """Build labs in a test; every one is taken down afterwards, whatever happened."""
    from kplab import Lab, clean

    made: list[str] = []

    def make(name: str, **kw):
        made.append(name)
        return Lab.up(name, **kw)

    yield make
    for name in made:
        clean(lab=name)
