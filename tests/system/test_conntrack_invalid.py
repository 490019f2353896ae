"""kubernetes#74839 for real: an out-of-window segment from the pod resets a client's connection
without KUBE-FORWARD's INVALID drop, and 08's check `invalid-survives` says so; both upstream fixes
(the DROP rule, a liberal conntrack) make it pass.  Real packets in the lab's own namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kplab.course.invalid import reset_probe
from kplab.errors import KplabError
from kplab.lab import Lab

pytestmark = [pytest.mark.root]

LAB = "crsinv"


def check(cid: str) -> dict:
    env = {**os.environ, "KPLAB_LAB": LAB, "KPLAB_LEARNER": "tester"}
    cp = subprocess.run([sys.executable, "-m", "kplab.cli", "check", cid, "-o", "json"], capture_output=True,
                        text=True, env=env, check=False, timeout=300)
    [res] = json.loads(cp.stdout)
    return dict(res)


def test_invalid_segment_resets_until_fixed() -> None:
    try:
        Lab(LAB).down()
    except KplabError:
        pass
    lab = Lab.up(LAB, mode="iptables", drop_invalid=False)
    try:
        assert "INVALID" not in lab.exec("node-1", ["iptables", "-S", "KUBE-FORWARD"]).stdout
        broken = reset_probe(lab)
        assert broken.unnatted and broken.unnatted[0]["src"] == broken.pod_ip, broken.text()
        assert broken.client_rsts, broken.text()  # the client's kernel answered the pod's address with a RST
        assert not broken.survived and "reset" in broken.error.lower(), broken.text()
        res = check("08-troubleshooting/invalid-survives")
        assert res["outcome"] == "failed" and "own address" in res["message"], res

        for node in lab.nodes:  # fix 1: a liberal conntrack (the DROP rule stays out)
            lab.exec(node, ["sysctl", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=1"])
        lab.set_mode("iptables")
        assert "INVALID" not in lab.exec("node-1", ["iptables", "-S", "KUBE-FORWARD"]).stdout
        assert check("08-troubleshooting/invalid-survives")["outcome"] == "passed"

        for node in lab.nodes:  # fix 2: kube-proxy >= 1.15 drops INVALID in KUBE-FORWARD
            lab.exec(node, ["sysctl", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=0"])
        lab.set_mode("iptables", drop_invalid=True)
        assert "--ctstate INVALID" in lab.exec("node-1", ["iptables", "-S", "KUBE-FORWARD"]).stdout
        fixed = reset_probe(lab)
        assert fixed.survived and not fixed.unnatted and not fixed.client_rsts, fixed.text()
        assert check("08-troubleshooting/invalid-survives")["outcome"] == "passed"
    finally:
        lab.down()
