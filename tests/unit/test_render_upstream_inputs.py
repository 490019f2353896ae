"""Every mode renders every input upstream's own tests feed kube-proxy (no root).

`kplab render MODE` on the Services and EndpointSlices of upstream's TestOverallIPTablesRules
(the same objects as TestOverallNFTablesRules) and TestBadIPs, with their odd corners: a
loadBalancerSourceRanges entry with a leading space (upstream trims it: "Extra whitespace to
ensure that invalid value will not result in a crash") and leading zeros in every address.
IPVS used to crash on the first with a ValueError.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kplab.cli import main

DATA = Path(__file__).parent / "data"
INPUTS = [DATA / "iptables" / "overall" / "manifests.yaml", DATA / "nftables" / "bad-ips" / "manifests.yaml"]
MODES = ["iptables", "nftables", "ipvs", "userspace"]


def cluster_ips(path: Path) -> set[str]:
    ips = set()
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] == "Service":
            ip = doc["spec"]["clusterIP"]
            ips.add(".".join(str(int(p)) for p in ip.split(".")))  # upstream writes 172.30.0.041 as .41
    return ips


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", INPUTS, ids=lambda p: f"{p.parent.parent.name}-{p.parent.name}")
def test_render_accepts_upstream_inputs(mode, path, capsys):
    assert main(["render", mode, "-f", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    missing = {ip for ip in cluster_ips(path) if ip not in out}
    assert not missing, f"{mode} shows no rules for {sorted(missing)}"


def test_ipvs_render_keeps_the_trimmed_source_range(capsys):
    assert main(["render", "ipvs", "-f", str(INPUTS[0])]) == 0
    out = capsys.readouterr().out
    assert "5.6.7.8,tcp:80,203.0.113.0/25" in out, "the LB source range, trimmed, as an ipset member"
