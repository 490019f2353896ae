"""The path picture rendered from traces recorded on a real lab, one per mode.

`data/path/recorded.json` holds, per mode, the `nft -j list ruleset` of the node that made the
NAT decision and `lab.trace("client", "web").to_dict()`, both taken from a live lab (iptables,
nftables, userspace here; IPVS in the throwaway VM, see the data's README).  The picture must
light exactly the hooks the kernel's tracer reported and name the rule that matched.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kplab.widgets.path import PathPicture, entries, layout_from_ruleset, path_svg

DATA = Path(__file__).parent / "data" / "path"
RECORDED = json.loads((DATA / "recorded.json").read_text())
SVG = "{http://www.w3.org/2000/svg}"


def picture(mode: str) -> tuple[PathPicture, dict]:
    rec = RECORDED[mode]
    layout = layout_from_ruleset(rec["ruleset"], mode, rec["node"], ipvs=rec.get("ipvs"))
    return PathPicture(layout, rec["trace"]), rec["trace"]


def lit(svg: str) -> list[str]:
    root = ET.fromstring(svg)  # well-formed: JupyterLab and browsers render it
    return [r.get("data-key") for r in root.iter(f"{SVG}rect") if "hit" in (r.get("class") or "").split()
            and r.get("data-key")]


def test_iptables_lights_the_four_base_chains_the_syn_crossed():
    pic, trace = picture("iptables")
    assert pic.highlighted == [("raw", "PREROUTING"), ("nat", "PREROUTING"), ("filter", "FORWARD"),
                               ("nat", "POSTROUTING")]
    assert lit(pic.svg) == ["raw|PREROUTING", "nat|PREROUTING", "filter|FORWARD", "nat|POSTROUTING"]
    steps = pic.steps[("nat", "PREROUTING")]
    assert steps[0] == "KUBE-SERVICES" and steps[1].startswith("KUBE-SVC-") and "(default/web:http)" in steps[1]
    assert steps[2].startswith("KUBE-SEP-") and steps[-1] == trace["nat"]  # the DNAT the kernel did
    assert trace["nat"] in pic.svg


def test_nftables_lights_kube_proxys_own_base_chains_with_their_priorities():
    pic, trace = picture("nftables")
    keys = [k for k in pic.highlighted if k[0] == "ip kube-proxy"]
    assert keys == [("ip kube-proxy", "filter-prerouting"), ("ip kube-proxy", "nat-prerouting"),
                    ("ip kube-proxy", "filter-forward"), ("ip kube-proxy", "nat-postrouting")]
    steps = pic.steps[("ip kube-proxy", "nat-prerouting")]
    assert steps[0] == "services" and steps[1].startswith("service-") and steps[-1] == trace["nat"]
    by_hook = entries(pic.layout)
    prio = {e.key: e.prio for h in by_hook.values() for e in h}
    assert prio[("ip kube-proxy", "nat-prerouting")] == -100  # dstnat
    assert prio[("ip kube-proxy", "filter-prerouting")] == -110  # dstnat - 10
    assert "ipvs" not in {e.kind for h in by_hook.values() for e in h}


def test_userspace_lights_the_redirect_and_the_proxy_process():
    pic, trace = picture("userspace")
    assert ("nat", "PREROUTING") in pic.highlighted and ("process", "userspace") in pic.highlighted
    assert pic.steps[("nat", "PREROUTING")] == ["KUBE-PORTALS-CONTAINER", trace["nat"]]
    assert pic.highlighted[-1] == ("process", "userspace")
    root = ET.fromstring(pic.svg)
    assert any("hit" in (r.get("class") or "") and "process" in (r.get("class") or "")
               for r in root.iter(f"{SVG}rect"))
    assert "kube-proxy (userspace)" in pic.svg


def test_ipvs_lights_ipvs_at_local_in_and_names_kube_ipvs0():
    if "ipvs" not in RECORDED:
        pytest.skip("no IPVS trace recorded")
    pic, trace = picture("ipvs")
    assert ("ipvs", "input:99") in pic.highlighted
    assert pic.steps[("ipvs", "input:99")] == trace["path"]
    assert "kube-ipvs0 holds every ClusterIP" in pic.svg
    assert "ipvs|input:99" in lit(pic.svg)


def test_without_a_trace_nothing_is_lit_and_an_empty_netns_has_idle_conntrack():
    layout = layout_from_ruleset('{"nftables": []}', "none", "node-1")
    svg = path_svg(layout)
    assert lit(svg) == [] and "idle: no rule here needs it" in svg
    pic, _ = picture("iptables")
    assert lit(path_svg(pic.layout)) == []
    assert "idle" not in path_svg(pic.layout)


@pytest.mark.parametrize("mode", sorted(RECORDED))
def test_every_mode_renders_well_formed_svg_with_the_hooks(mode):
    pic, _ = picture(mode)
    root = ET.fromstring(pic.svg)
    hooks = {r.get("data-hook") for r in root.iter(f"{SVG}rect") if r.get("data-hook")}
    assert hooks == {"prerouting", "input", "forward", "output", "postrouting"}
    assert "<svg" in pic._repr_html_() and pic._repr_svg_() == pic.svg


def test_an_ebpf_trace_says_a_bpf_program_decided_not_an_empty_path():
    """Seen in notebook 09 after `lab.set_mode("ebpf")`: path_picture(lab, trace) printed an empty
    path and its picture asked for a trace it had been given; the decision was a BPF program's."""
    rec = RECORDED["iptables"]
    layout = layout_from_ruleset(rec["ruleset"], "ebpf", rec["node"])
    trace = {"mode": "ebpf", "decided_on": rec["node"], "hops": [],
             "path": ["cgroup/connect4 (sock4_connect)", "lb4_services 10.96.0.20:80/TCP slot 0", "slot 2 -> 10.244.2.2:8080"]}
    pic = PathPicture(layout, trace)
    assert "cgroup/connect4 (sock4_connect) -> lb4_services" in repr(pic)
    assert "then path_picture(lab, trace) highlights" not in pic.svg and "cgroup/connect4" in pic.svg
    assert lit(pic.svg) == []
