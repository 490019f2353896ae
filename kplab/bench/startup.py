"""startup: how fast a lab comes up, against a plain `ip` script building the same topology.

    kplab bench startup [--pods 4,100] [--rounds 3] [--mode iptables]

Both sides build the same namespaces, bridges, veths, addresses, routes and sysctls, measured in
the same run on the same machine.  kplab also starts its echo workload (the baseline has none),
so the ratio is, if anything, unfair to kplab.  `kplab up` is timed as a learner runs it: the
whole CLI process, interpreter start included.  Every lab and namespace made here is removed.
(Measuring logic by the lab core's author, moved here from bench/startup.py unchanged.)
"""

from __future__ import annotations

import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kplab.bench import report
from kplab.bench.report import Column
from kplab.cluster.run import NETNS_DIR
from kplab.errors import KplabError

KPLAB = [sys.executable, "-m", "kplab.cli"]
LAB = "bstart"
BASE = "kplab-bstartip"
ROOT = report.PROJECT_ROOT

COLUMNS = [
    Column("pods", "pods"),
    Column("mode", "mode", left=True),
    Column("kplab_up_s", "kplab up s", "{:.2f}"),
    Column("ip_script_up_s", "ip script s", "{:.2f}"),
    Column("ratio_up", "up ratio", "{:.2f}"),
    Column("kplab_down_s", "kplab down s", "{:.2f}"),
    Column("ip_script_down_s", "ip netns del s", "{:.2f}"),
    Column("ratio_down", "down ratio", "{:.2f}"),
]


def deployment(replicas: int) -> str:
    return f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: echo, ports: [{{containerPort: 8080}}]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{type: NodePort, selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}
"""


def ip_script(n_nodes: int, pods: list[tuple[str, int]]) -> str:
    """One `ip` command per object, as a hand-written lab script would do it."""
    p = BASE
    lines = ["set -e", f"ip netns add {p}-net", f"ip -n {p}-net link set lo up",
             f"ip -n {p}-net link add br0 type bridge", f"ip -n {p}-net addr add 172.18.0.1/24 dev br0",
             f"ip -n {p}-net link set br0 up"]
    for i in range(1, n_nodes + 1):
        ns = f"{p}-node-{i}"
        lines += [f"ip netns add {ns}", f"ip -n {ns} link set lo up",
                  f"ip -n {p}-net link add node-{i} type veth peer name eth0 netns {ns}",
                  f"ip -n {p}-net link set node-{i} master br0 up",
                  f"ip -n {ns} addr add 172.18.0.{10 + i}/24 dev eth0", f"ip -n {ns} link set eth0 up",
                  f"ip -n {ns} route add default via 172.18.0.1",
                  f"ip -n {ns} link add cni0 type bridge", f"ip -n {ns} addr add 10.244.{i}.1/24 dev cni0",
                  f"ip -n {ns} link set cni0 up"]
        lines += [f"ip -n {ns} route add 10.244.{j}.0/24 via 172.18.0.{10 + j}" for j in range(1, n_nodes + 1) if j != i]
        lines += [f"ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1"]
    lines += [f"ip netns add {p}-outside", f"ip -n {p}-outside link set lo up",
              f"ip -n {p}-net link add outside type veth peer name eth0 netns {p}-outside",
              f"ip -n {p}-net link set outside master br0 up",
              f"ip -n {p}-outside addr add 172.18.0.100/24 dev eth0", f"ip -n {p}-outside link set eth0 up",
              f"ip -n {p}-outside route add default via 172.18.0.1"]
    for k, (name, node) in enumerate(pods):
        ns, node_ns = f"{p}-{name}", f"{p}-node-{node}"
        ip = ipaddress.ip_address(f"10.244.{node}.0") + 2 + k // n_nodes
        lines += [f"ip netns add {ns}", f"ip -n {ns} link set lo up",
                  f"ip -n {node_ns} link add vp{k} type veth peer name eth0 netns {ns}",
                  f"ip -n {node_ns} link set vp{k} master cni0 up",
                  f"bridge -n {node_ns} link set dev vp{k} hairpin on",
                  f"ip -n {ns} addr add {ip}/24 dev eth0", f"ip -n {ns} link set eth0 up",
                  f"ip -n {ns} route add default via 10.244.{node}.1"]
    return "\n".join(lines) + "\n"


def remove_baseline() -> None:
    for n in sorted(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else []:
        if n.startswith(BASE + "-"):
            subprocess.run(["ip", "netns", "del", n], check=False)


def timed(argv: list[str], **kw: Any) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def measure(pods: int, rounds: int, mode: str, bar: Any = None, task: Any = None) -> dict[str, Any]:
    n_nodes = 2
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "lab.yaml"
        manifest.write_text(deployment(pods - 1) + "---\n" + "apiVersion: v1\nkind: Pod\nmetadata: {name: client}\n"
                            "spec: {nodeName: node-1, containers: [{name: shell}]}\n")
        script = Path(tmp) / "baseline.sh"
        script.write_text(ip_script(n_nodes, [(f"pod{k}", 1 + k % n_nodes) for k in range(pods)]))
        ups, downs, base_up, base_down = [], [], [], []
        for _ in range(rounds):
            subprocess.run([*KPLAB, "clean", "--lab", LAB], stdout=subprocess.DEVNULL, check=False)
            remove_baseline()
            args = [] if pods == 4 else ["-f", str(manifest)]
            ups.append(timed([*KPLAB, "up", "--lab", LAB, "--mode", mode, *args], cwd=ROOT))
            downs.append(timed([*KPLAB, "down", "--lab", LAB], cwd=ROOT))
            base_up.append(timed(["bash", str(script)]))
            t = time.perf_counter()
            remove_baseline()
            base_down.append(time.perf_counter() - t)
            if bar is not None:
                bar.advance(task)
    up, bup = statistics.median(ups), statistics.median(base_up)
    down, bdown = statistics.median(downs), statistics.median(base_down)
    return {"pods": pods, "mode": mode, "rounds": rounds, "kplab_up_s": up, "kplab_down_s": down,
            "ip_script_up_s": bup, "ip_script_down_s": bdown, "ratio_up": up / bup,
            "ratio_down": report.ratio(down, bdown)}


def run_startup(pods: Sequence[int] = (4, 100), rounds: int = 3, mode: str = "iptables",
                show_progress: bool = True) -> dict[str, Any]:
    """Lab up/down with no proxy and with `mode`, for each pod count; medians over rounds."""
    if not 1 <= rounds <= 20:
        raise KplabError(f"--rounds {rounds}: choose 1..20")
    if any(not 2 <= p <= 201 for p in pods):
        raise KplabError(f"--pods {list(pods)}: each count must be 2..201 (a client and up to 200 replicas)")
    if mode != "none":
        from kplab.proxy.base import proxier_class

        proxier_class(mode)
    result = report.new_result("startup", {"pods": list(pods), "rounds": rounds, "mode": mode, "nodes": 2})
    with report.progress(show_progress) as bar:
        for p in pods:
            for m in dict.fromkeys(("none", mode)):
                task = bar.add_task(f"startup {p} pods, mode {m}", total=rounds)
                result["rows"].append(measure(p, rounds, m, bar, task))
    result["notes"].append("kplab up/down: the whole `kplab` CLI process (interpreter start included), with the "
                           "echo workload; ip script: one `ip` command per object, no workload; medians of rounds")
    return result
