"""A lab handle's public lookups (kplab.cluster.handle): what they show while the lab is built,
changed, saved by another process, removed.  No root: the state directory is a temporary one.
"""

from __future__ import annotations

import json
import shutil

import pytest

from kplab.cluster import store, targets
from kplab.cluster.handle import LabHandle
from kplab.errors import LabError


def stored(nodes: int = 2, mode: str = "iptables") -> dict:
    pod = {"metadata": {"name": "client", "namespace": "default"}, "spec": {"nodeName": "node-1"},
           "status": {"podIP": "10.244.1.5"}}
    web = {"metadata": {"name": "web", "namespace": "default"},
           "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]}}
    return {"name": "t", "mode": mode, "status": "up", "nodes": [f"node-{i}" for i in range(1, nodes + 1)],
            "options": {"zones": ["a"]}, "network": {"node_cidr": "172.18.0.0/24", "cluster_cidr": "10.244.0.0/16"},
            "objects": {"Pod": {"default/client": pod}, "Service": {"default/web": web}}, "pids": {}, "created": 1.5,
            "syncs": {"node-1": {"at": 2.0, "full": True}}}


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A lab "t" whose lab.json says it is up (no namespaces: only its state is read here)."""
    monkeypatch.setattr(store, "STATE_ROOT", tmp_path)
    s = store.Store("t")
    s.create()
    s.save(stored())
    return s


def test_lookups_read_the_saved_state(saved):
    lab = LabHandle("t")
    assert (lab.mode, lab.nodes, lab.options, lab.created) == ("iptables", ["node-1", "node-2"], {"zones": ["a"]}, 1.5)
    assert lab.last_syncs == {"node-1": {"at": 2.0, "full": True}}
    assert list(lab.stored_objects()) == ["Pod", "Service"]
    assert lab.pod("client")["spec"]["nodeName"] == "node-1"
    with pytest.raises(LabError, match="no pod named 'web'"):
        lab.pod("web")


def test_another_process_save_is_seen_and_refresh_reads_at_once(saved):
    lab = LabHandle("t")
    assert lab.mode == "iptables"
    saved.save(stored(nodes=3, mode="nftables"))  # the CLI beside the notebook
    assert (lab.mode, lab.nodes) == ("nftables", ["node-1", "node-2", "node-3"])
    lab.refresh()
    assert lab.data["mode"] == "nftables"


def test_inside_a_change_the_lookups_see_the_change(saved):
    """`lab.mode` read the file again and lost what a change had set but not saved yet (set_mode
    feeding kube-proxy's servers); the lookups read what the handle holds."""
    lab = LabHandle("t")
    with lab._mutate():
        lab.data["mode"] = "ipvs"
        lab.record_pid("servers", 42)
        assert lab.mode == "ipvs"
    assert json.loads((saved.dir / "lab.json").read_text())["pids"] == {"servers": 42}
    assert LabHandle("t").mode == "ipvs"


def test_a_lab_being_built_is_read_from_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "STATE_ROOT", tmp_path)
    lab = LabHandle("t")
    lab.store.create()
    lab.data = {**stored(), "status": "building"}  # what `up` holds before its first save
    assert (lab.mode, lab.nodes) == ("iptables", ["node-1", "node-2"])


def test_a_removed_lab_is_not_shown(saved):
    """A notebook's handle after `kplab down` in a terminal: `lab.get("pods")` listed the gone pods
    and `lab.curl("client", "web")` resolved the gone Service (then a thread's traceback)."""
    lab = LabHandle("t")
    assert lab.nodes == ["node-1", "node-2"]
    assert targets.resolve(lab, "web") == ("10.96.0.10", 80, "tcp")
    shutil.rmtree(saved.dir)  # `kplab down` from another terminal
    for lookup in (lambda: lab.mode, lambda: lab.nodes, lab.stored_objects, lab.refresh,
                   lambda: targets.resolve(lab, "web")):
        with pytest.raises(LabError, match="no lab named 't'"):
            lookup()
