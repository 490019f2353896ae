"""One way for tests to get "a lab in mode M": skipped with the reason where the mode cannot run.

    @pytest.fixture(scope="module", params=mode_params())
    def lab(request):
        with lab_in_mode(request.param, "dp" + request.param[:4]) as lab:
            yield lab

Every system test file that needs a lab of one mode, or the same checks for every mode, uses
`lab_in_mode` (the copies of this fixture in five test files differed only by name and mode).
`run_cli` runs the CLI against a lab in the test's own process (it was copied in two files).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from kplab.errors import KplabError
from kplab.lab import Lab, clean
from kplab.proxy.base import MODES, proxier_class


def mode_params(modes: Iterable[str] = MODES) -> list[Any]:
    """pytest params, one per mode; IPVS marked so that `make test-ipvs` runs it in its VM."""
    return [pytest.param(m, marks=[pytest.mark.ipvs] if m == "ipvs" else [], id=m) for m in modes]


@contextlib.contextmanager
def lab_in_mode(mode: str, name: str, manifests: list[Any] | None = None, **options: Any) -> Iterator[Lab]:
    """A fresh lab `name` in `mode` (leftovers of an earlier run cleaned first), removed afterwards."""
    try:
        avail = proxier_class(mode).doctor()
    except KplabError as e:
        pytest.skip(str(e))
    if not avail.available:
        pytest.skip(f"{mode}: {avail.detail}")
    clean(lab=name)
    lab = Lab.up(name, mode=mode, manifests=manifests, **options)
    try:
        yield lab
    finally:
        clean(lab=name)


def run_cli(capsys: Any, monkeypatch: Any, lab: str, *argv: str) -> tuple[int, str, str]:
    """`kplab ARGV` against lab `lab` in this process (no fork, fast): exit code, stdout, stderr.
    Takes pytest's capsys and monkeypatch fixtures (KPLAB_LAB is set for the test only)."""
    from kplab.cli import main

    monkeypatch.setenv("KPLAB_LAB", lab)
    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err
