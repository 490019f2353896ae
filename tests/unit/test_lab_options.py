"""A misspelt lab option is named before anything is built (it used to be silently ignored)."""

from __future__ import annotations

import pytest

from kplab import Lab
from kplab.cluster import options
from kplab.errors import LabError


def test_a_typo_in_up_is_one_line_naming_the_options(monkeypatch):
    """Lab.up(conntrak_cleanup=True) built a lab that cleaned conntrack anyway."""

    def built(*_a, **_k):
        raise AssertionError("nothing may be built for a bad option")

    monkeypatch.setattr("kplab.cluster.netns.check_environment", built)
    with pytest.raises(LabError) as e:
        Lab.up("typo", conntrak_cleanup=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert "unknown lab option 'conntrak_cleanup' (did you mean conntrack_cleanup?)" in msg
    assert all(k in msg for k in ("masquerade_all", "scheduler", "socket_lb", "service_cidr"))


def test_set_mode_checks_its_options_before_switching():
    lab = Lab.__new__(Lab)  # no lab needed: the check comes before anything is read or changed
    with pytest.raises(LabError, match="unknown lab option 'schedular' \\(did you mean scheduler\\?\\)"):
        lab.set_mode("ipvs", schedular="lc")


def test_every_option_the_cli_and_the_course_pass_is_known():
    from pathlib import Path

    import yaml

    from kplab.cli.core import SETTABLE
    from kplab.proxy.localdetect import OPTIONS as LOCAL

    options.check([*SETTABLE, *LOCAL])
    course = yaml.safe_load((Path(__file__).parents[2] / "labs" / "manifest.yaml").read_text())
    found = [
        k
        for entry in course.values()
        if isinstance(entry, dict)
        for start in entry.values()
        if isinstance(start, dict)
        for k in start.get("options") or {}
    ]
    assert found, "the course's starts name options (08: conntrack_cleanup)"
    options.check(found)

def test_an_option_the_mode_does_not_read_is_named():
    """`--set drop_invalid=false` in nftables mode was accepted and did nothing."""
    (line,) = options.ignored(["drop_invalid", "masquerade_all"], "nftables")
    assert line.startswith("option drop_invalid: nftables mode ignores it; it is read in iptables mode")
    assert options.ignored(["iptables_backend", "masquerade_all"], "userspace") == []
    assert "ipvs and userspace" in options.ignored(["iptables_backend"], "nftables")[0]
    assert options.ignored(["scheduler"], "none") == []  # no kube-proxy at all: nothing to say
    assert set(options.MODES_READING) <= set(options.OPTIONS)


def test_a_misspelt_iptables_backend_is_one_line():
    """`kplab mode iptables --set iptables_backend=lagacy` ended in a KeyError traceback."""
    from kplab.proxy.xtables import detect_backend

    with pytest.raises(LabError, match="iptables_backend .lagacy.: use nft or legacy"):
        detect_backend("lagacy")
    assert detect_backend("nft") == "nf_tables"
