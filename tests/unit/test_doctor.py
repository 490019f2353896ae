"""`kplab doctor` off the happy path: a tool it runs is missing (a slim container without kmod)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_ipvs_doctor_without_modprobe_is_one_line(monkeypatch, tmp_path):
    """FileNotFoundError: 'modprobe' came out of `kplab doctor` as a traceback."""
    from kplab.proxy.ipvs.proxier import IpvsProxier

    if Path("/proc/net/ip_vs").exists():
        pytest.skip("this kernel has IPVS: modprobe is never needed")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    a = IpvsProxier.doctor()
    assert not a.available
    assert "no modprobe on PATH" in a.detail and "apt-get install kmod" in a.detail


def test_doctor_report_names_a_missing_tool_of_any_mode(monkeypatch):
    from kplab.cli import views
    from kplab.proxy.base import proxier_class

    def missing(cls):
        raise FileNotFoundError(2, "No such file or directory", "unshare")

    monkeypatch.setattr(proxier_class("nftables"), "doctor", classmethod(missing))
    monkeypatch.setattr(views, "_running_lab", lambda: None)
    data, text = views.doctor_report()
    assert data["modes"]["nftables"]["detail"] == "unshare not found on PATH"
    assert "no  nftables   unshare not found on PATH" in text and "Traceback" not in text
