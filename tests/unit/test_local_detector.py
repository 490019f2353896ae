"""masqueradeAll and the local-traffic detectors in every kernel mode's render (no root).

Detector words are upstream's localdetector_test.go vectors (nftables with `iifname`, as since
kubernetes#134024); the rules they go into are upstream's: the ClusterIP masquerade rule takes
IfNotLocal, the eTP=Local external chain's pod short-circuit takes IfLocal.
"""

from __future__ import annotations

import pytest
from nftables_upstream import DATA, load_state

from kplab.cli.views import render_text
from kplab.errors import KplabError
from kplab.proxy.iptables.proxier import IptablesProxier
from kplab.proxy.ipvs.proxier import IpvsProxier
from kplab.proxy.localdetect import Detector, detector
from kplab.proxy.nftables.proxier import NftablesProxier

CASE = DATA / "internal-external-masquerade" / "manifests.yaml"
SVC1 = "service-ULMVA6XW-ns1/svc1/tcp/p80"


def state(**config):
    return load_state(CASE, **config)


@pytest.mark.parametrize(
    "config,want",
    [
        ({"cluster_cidr": "10.0.0.0/14"},
         Detector(("-s", "10.0.0.0/14"), ("!", "-s", "10.0.0.0/14"), "ip saddr 10.0.0.0/14", "ip saddr != 10.0.0.0/14")),
        ({"cluster_cidr": ""}, Detector()),
        ({"cluster_cidr": "2002:0:0:1234::/64"}, Detector()),  # the IPv6 proxier's
        ({"detect_local_mode": "NodeCIDR", "node_cidr": "10.0.0.0/24"},
         Detector(("-s", "10.0.0.0/24"), ("!", "-s", "10.0.0.0/24"), "ip saddr 10.0.0.0/24", "ip saddr != 10.0.0.0/24")),
        ({"detect_local_mode": "NodeCIDR"}, Detector()),  # no podCIDR: upstream's no-op detector
        ({"detect_local_mode": "BridgeInterface", "pod_bridge_interface": "eth0"},
         Detector(("-i", "eth0"), ("!", "-i", "eth0"), "iifname eth0", "iifname != eth0")),
        ({"detect_local_mode": "InterfaceNamePrefix", "pod_interface_name_prefix": "eth"},
         Detector(("-i", "eth+"), ("!", "-i", "eth+"), "iifname eth*", "iifname != eth*")),
    ],
)
def test_detectors_as_upstream(config, want):
    assert detector(state(**config)) == want


@pytest.mark.parametrize(
    "config,match",
    [
        ({"detect_local_mode": "PodCIDR"}, "--detect-local-mode 'PodCIDR': choose one of ClusterCIDR, NodeCIDR"),
        ({"detect_local_mode": "BridgeInterface"}, "needs --pod-bridge-interface set"),
        ({"detect_local_mode": "InterfaceNamePrefix", "pod_interface_name_prefix": "a b"}, "needs --pod-interface"),
        ({"detect_local_mode": "NodeCIDR", "node_cidr": "10.0.0/24x"}, "podCIDR '10.0.0/24x' is not a CIDR"),
    ],
)
@pytest.mark.parametrize("mode", [IptablesProxier, IpvsProxier, NftablesProxier])
def test_bad_detector_is_one_clear_error(config, match, mode):
    with pytest.raises(KplabError, match=match):
        mode.preview(state(**config))


BRIDGE = {"detect_local_mode": "BridgeInterface", "pod_bridge_interface": "cni0"}


def test_nftables_rules_take_the_detector():
    text = NftablesProxier.preview(state(**BRIDGE))
    assert f"add rule ip kube-proxy {SVC1} ip daddr 172.30.0.41 iifname != cni0 jump mark-for-masquerade\n" in text
    assert ('add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 iifname cni0 '
            'goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit pod traffic"\n') in text
    text = NftablesProxier.preview(state(masquerade_all=True, **BRIDGE))
    assert f"add rule ip kube-proxy {SVC1} ip daddr 172.30.0.41 tcp dport 80 jump mark-for-masquerade\n" in text
    assert "iifname != cni0" not in text


def test_iptables_rules_take_the_detector():
    text = IptablesProxier.preview(state(**BRIDGE))
    assert '-m tcp -p tcp -d 172.30.0.41 --dport 80 ! -i cni0 -j KUBE-MARK-MASQ' in text
    assert '"pod traffic for ns2/svc2:p80 external destinations" -i cni0 -j KUBE-SVC-' in text
    prefix = IptablesProxier.preview(state(detect_local_mode="InterfaceNamePrefix", pod_interface_name_prefix="veth"))
    assert "--dport 80 ! -i veth+ -j KUBE-MARK-MASQ" in prefix
    everything = IptablesProxier.preview(state(masquerade_all=True, **BRIDGE))
    assert "-d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ" in everything and "! -i cni0" not in everything


def test_ipvs_rules_take_the_detector():
    text = IpvsProxier.preview(state(**BRIDGE))
    assert "-m set --match-set KUBE-CLUSTER-IP dst,dst ! -i cni0 -j KUBE-MARK-MASQ" in text
    assert "KUBE-CLUSTER-IP src,dst" in IpvsProxier.preview(state(cluster_cidr=""))  # no detector: hairpin only


def test_render_cli_options(tmp_path):
    text = render_text("nftables", [CASE], options={"nftables_version": "1.33"}, node_ips=("192.168.0.2",),
                       cluster_cidr="10.0.0.0/8", masquerade_all=False, detect_local_mode="NodeCIDR",
                       node_cidr="10.0.1.0/24")
    assert "ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.1.0/24 jump mark-for-masquerade" in text


def test_cli_set_options():
    from kplab.cli.core import lab_options

    assert lab_options(["masquerade_all=true", "detect_local_mode=NodeCIDR", "conntrack_cleanup=false"]) == {
        "masquerade_all": True, "detect_local_mode": "NodeCIDR", "conntrack_cleanup": False}
    with pytest.raises(KplabError, match="--set 'masquerade-all': use KEY=VALUE"):
        lab_options(["masquerade-all"])
    # a typo in the key names the option meant, as Lab.up's own check does
    with pytest.raises(KplabError, match=r"--set 'conntrak_cleanup=false' \(did you mean conntrack_cleanup\?\)"):
        lab_options(["conntrak_cleanup=false"])
