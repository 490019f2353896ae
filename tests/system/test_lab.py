"""The lab core on real namespaces: topology, lifecycle guarantees, the host left as found."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kplab import Lab, LabError, ManifestError, clean
from kplab.cluster.netns import lab_namespaces
from kplab.cluster.store import STATE_ROOT
from kplab.testing.host import assert_same, host_snapshot

pytestmark = [pytest.mark.root]
KPLAB = [sys.executable, "-m", "kplab.cli"]


def test_topology_and_echo(lab_factory):
    lab = lab_factory("core1", mode="none")
    pods = {p.metadata.name: p for p in lab.pods()}
    webs = sorted(n for n in pods if n.startswith("web-"))
    assert {pods[w].spec.node_name for w in webs} == {"node-1", "node-2"}, "pods are spread over nodes"
    for w in webs:  # pod -> pod on the same node and across nodes; the answer names pod and client
        res = lab.curl("client", f"{lab.pod_ip(w)}:8080", n=2)
        assert res.backends == {w: 2}, res.errors
        a = res.answers[0]
        assert (a["pod_ip"], a["node"], a["client_ip"]) == (lab.pod_ip(w), pods[w].spec.node_name, lab.pod_ip("client"))
        assert lab.curl("client", f"{lab.pod_ip(w)}:8080", proto="udp").backends == {w: 1}
    assert lab.exec("client", ["ping", "-c1", "-W2", lab.node_ip("node-2")]).ok, "pod -> node"
    assert lab.exec("outside", ["ping", "-c1", "-W2", lab.node_ip("node-1")]).ok, "outside -> node IP"
    assert lab.exec("outside", ["ping", "-c1", "-W1", lab.pod_ip(webs[0])]).returncode != 0, "pods are not on the node network"
    names = lab_namespaces("core1")
    assert {"kplab-core1-net", "kplab-core1-node-1", "kplab-core1-node-2", "kplab-core1-outside"} <= set(names)
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("kplab-core1-") == len(names)


def test_service_without_proxy_goes_nowhere(lab_factory):
    lab = lab_factory("core2", mode="none")
    assert lab.curl("client", "web", n=1, timeout=0.5).ok == 0, "no kube-proxy: nothing answers on a ClusterIP"
    lab.scale("web", 5)
    assert len([p for p in lab.pods() if p.metadata.name.startswith("web-")]) == 5
    lab.set_ready(lab.pods()[1].metadata.name, False)
    ready = [e for s in lab.endpoint_slices() for e in s.endpoints if e.conditions.ready]
    assert len(ready) == 4


def test_host_untouched_by_up_and_down():
    before = host_snapshot()
    lab = Lab.up("core3", mode="none")
    echo = int((STATE_ROOT / "core3" / "echo.pid").read_text())
    assert b"kplab.cluster.echo" in Path(f"/proc/{echo}/cmdline").read_bytes(), "watch an echo that ran"
    lab.down()
    assert not Path(f"/proc/{echo}").exists(), "every process the lab started is stopped by down"
    assert not (STATE_ROOT / "core3").exists()
    assert_same(before, host_snapshot())


def test_host_untouched_after_kill_9_in_the_middle_of_up():
    before = host_snapshot()
    big = Path(__file__).with_name("manifests_matrix.yaml")
    proc = subprocess.Popen([*KPLAB, "up", "--lab", "core4", "--mode", "none", "--nodes", "6", "-f", str(big)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 120  # under load the CLI alone can take 20 s to start
    while time.monotonic() < end and len(lab_namespaces("core4")) < 4:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert lab_namespaces("core4"), "the kill should land while up is building"
    # status and up name the crashed lab and what removes it (issue 20 item 11: "no lab" / "exists already")
    for verb in (["status"], ["up", "--mode", "none"]):
        out = subprocess.run([*KPLAB, *verb, "--lab", "core4"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, (verb, out.stderr)
        assert "lab 'core4' crashed" in out.stderr and "`kplab clean --lab core4`" in out.stderr, (verb, out.stderr)
    out = subprocess.run([*KPLAB, "clean"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "core4" in out.stdout
    assert not lab_namespaces("core4")
    assert_same(before, host_snapshot())


def test_clean_keeps_a_lab_that_is_up_even_when_named(lab_factory):
    """Issue 20 item 11: `kplab clean` with KPLAB_LAB set (every JupyterLab terminal) removed the running lab."""
    lab_factory("core12", mode="none")
    env = {**os.environ, "KPLAB_LAB": "core12"}
    for argv in (["clean"], ["clean", "--lab", "core12"]):
        out = subprocess.run([*KPLAB, *argv], capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0 and out.stdout.strip() == "removed: nothing", out
        assert "kept lab 'core12': it is up" in out.stderr
        assert Lab.attach("core12").status()["name"] == "core12"
    assert (STATE_ROOT / "core12").is_dir()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_processes_stopped_by_another_process_are_reaped_by_their_parent():
    """Issue 20 item 14: a lab brought down from a terminal, then reset from the notebook kernel that
    started it, left the old echo (and servers) process `<defunct>` under the kernel."""
    lab = Lab.up("core13", mode="iptables")
    try:
        pids = [int((STATE_ROOT / "core13" / f).read_text()) for f in ("echo.pid", "servers.pid")]
        assert all(_state(p) in "RSD" for p in pids), [_state(p) for p in pids]
        out = subprocess.run([*KPLAB, "down", "--lab", "core13"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lab = Lab.up("core13", mode="iptables")  # the reset, in this process
        assert [_state(p) for p in pids] == ["gone", "gone"]
    finally:
        clean(lab="core13")


def test_two_labs_side_by_side():
    before = host_snapshot()
    a = Lab.up("core5", mode="none")
    b = Lab.up("core6", mode="none")
    try:
        for lab in (a, b):  # the same addresses in both, isolated from each other
            web = next(p.metadata.name for p in lab.pods() if p.metadata.name.startswith("web-"))
            assert lab.curl("client", f"{lab.pod_ip(web)}:8080").backends == {web: 1}
        a.down()
        web = next(p.metadata.name for p in b.pods() if p.metadata.name.startswith("web-"))
        assert b.curl("client", f"{b.pod_ip(web)}:8080").backends == {web: 1}, "down of one lab leaves the other"
    finally:
        clean(lab="core5")
        clean(lab="core6")
    assert_same(before, host_snapshot())


def test_second_up_of_the_same_lab_says_it_exists(lab_factory):
    lab_factory("core7", mode="none")
    with pytest.raises(LabError, match="exists already"):
        Lab.up("core7", mode="none")
    assert Lab.attach("core7").curl("client", "web", n=1, timeout=0.2) is not None


SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {spec}
"""

BAD = {
    "unknown kind": ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "unknown kind v1/ConfigMap"),
    "port out of range": (SVC.format(name="p", spec="{ports: [{port: 70000}]}"), "spec.ports[0].port: 70000 is out of range"),
    "nodeport outside range": (SVC.format(name="n", spec="{type: NodePort, ports: [{port: 80, nodePort: 80}]}"),
                               "spec.ports[0].nodePort: 80 is outside the NodePort range"),
    "clusterIP outside cidr": (SVC.format(name="c", spec="{clusterIP: 192.0.2.1, ports: [{port: 80}]}"),
                               "spec.clusterIP: 192.0.2.1 is outside the service CIDR"),
    "name too long": (SVC.format(name="a" * 70, spec="{ports: [{port: 80}]}"), "metadata.name: name 'aaaa"),
    "not yaml": ("kind: [\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_builds_nothing(case, tmp_path):
    text, expected = BAD[case]
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    out = subprocess.run([*KPLAB, "up", "--lab", "core8", "--mode", "none", "-f", str(f)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert expected in out.stderr and str(f) in out.stderr or case == "not yaml" and expected in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not lab_namespaces("core8") and not (STATE_ROOT / "core8").exists(), "nothing half-built"


def test_duplicate_cluster_ip_and_taken_nodeport(lab_factory, tmp_path):
    lab = lab_factory("core9", mode="none")
    ip, port = lab.service_ip("web"), lab.node_port("web", "http")
    dup = tmp_path / "dup.yaml"
    dup.write_text(SVC.format(name="dup", spec=f"{{clusterIP: {ip}, ports: [{{port: 80}}]}}"))
    with pytest.raises(ManifestError, match=f"spec.clusterIP: {ip} is already allocated to Service default/web"):
        lab.apply(dup)
    taken = tmp_path / "taken.yaml"
    taken.write_text(SVC.format(name="taken", spec=f"{{type: NodePort, ports: [{{port: 80, nodePort: {port}}}]}}"))
    with pytest.raises(ManifestError, match=f"nodePort: {port} is already allocated"):
        lab.apply(taken)
    assert [s.metadata.name for s in lab.services()] == ["web"], "a refused apply changes nothing"


def test_cidr_overlap_and_bad_lab_name():
    with pytest.raises(ManifestError, match="CIDR overlap"):
        Lab.up("core10", mode="none", service_cidr="10.244.0.0/16")
    with pytest.raises(LabError, match="1-12 characters"):
        Lab.up("a-very-long-lab-name", mode="none")
    assert not lab_namespaces("core10")


def test_not_root_is_told_what_to_do():
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *KPLAB, "up",
                          "--lab", "core11"], capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 1
    assert out.stderr.strip() == "kplab: kplab needs root to create network namespaces: run it with sudo (or as root)"


def test_missing_kernel_link_kind_is_one_line():
    """This kernel has no dummy interfaces: the refusal becomes a line that says what to do."""
    from kplab.cluster import netns
    from kplab.errors import EnvironmentProblem

    b = netns.Builder()
    b.create_netns("kplab-core12-x")
    try:
        try:
            with netns.kernel_feature("dummy", "CONFIG_DUMMY"):
                b.ipr("kplab-core12-x").link("add", ifname="d0", kind="dummy")
        except EnvironmentProblem as e:
            assert str(e) == ("this kernel cannot create dummy interfaces: load the module (modprobe dummy) "
                              "or use a kernel built with CONFIG_DUMMY")
        else:
            pytest.skip("this kernel has dummy interfaces")
    finally:
        b.close()
        netns.remove_netns("kplab-core12-x")


def test_a_refused_mode_switch_keeps_the_old_mode(lab_factory):
    from kplab.errors import KplabError

    lab = lab_factory("core13", mode="iptables")
    with pytest.raises(KplabError, match="bad proxy_port_range"):
        lab.set_mode("userspace", proxy_port_range="bogus")
    assert Lab.attach("core13").mode == "iptables"
    assert lab.curl("client", "web", n=3).ok == 3, "the old mode is programmed again"
