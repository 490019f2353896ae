"""masqueradeAll and the local-traffic detectors with real packets: whether a pod's request to a
ClusterIP reaches the endpoint with the pod's own address (not masqueraded) or the node's.

Pods hang off each node's cni0 bridge, so they arrive on cni0: BridgeInterface cni0 and both
CIDR modes recognise them; InterfaceNamePrefix veth does not (the routed interface is the
bridge, not the veth), and masqueradeAll masquerades everyone.
"""

from __future__ import annotations

import pytest

from kplab.errors import KplabError

pytestmark = [pytest.mark.root]

CASES = [  # (lab options, masqueraded)
    ({}, False),  # ClusterCIDR, the default
    ({"masquerade_all": True}, True),
    ({"masquerade_all": False, "detect_local_mode": "NodeCIDR"}, False),
    ({"detect_local_mode": "BridgeInterface", "pod_bridge_interface": "cni0"}, False),
    ({"detect_local_mode": "InterfaceNamePrefix", "pod_interface_name_prefix": "veth"}, True),
    ({"detect_local_mode": "BridgeInterface", "pod_bridge_interface": "cbr0"}, True),  # not this lab's bridge
]


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_who_gets_masqueraded(lab_factory, mode):
    lab = lab_factory(f"det{mode[:3]}", mode=mode)
    client = lab.pod_ip("client")
    for options, masqueraded in CASES:
        if options:
            lab.set_mode(mode, **options)
        res = lab.curl("client", "web", n=4)
        assert res.ok == 4, (options, res.errors)
        sources = {a["client_ip"] for a in res.answers}
        assert (sources != {client}) == masqueraded, (mode, options, sources)
        if masqueraded:
            assert client not in sources
    # a typo: one readable error, and the lab keeps its last working configuration
    with pytest.raises(KplabError, match="--detect-local-mode 'NodeCidr': choose one of"):
        lab.set_mode(mode, detect_local_mode="NodeCidr")
    assert lab.curl("client", "web", n=2).ok == 2
