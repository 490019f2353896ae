"""bench/startup: how fast a lab comes up, against a plain `ip` script building the same topology.

    .venv/bin/python bench/startup.py [--pods 100] [--rounds 3] [--json bench/results/startup.json]

Both sides build the same namespaces, bridges, veths, addresses, routes and sysctls, measured in
the same run on the same machine.  kplab also starts its echo workload (the baseline has none),
so the ratio is, if anything, unfair to kplab.  `kplab up` is timed as a learner runs it: the
whole CLI process, interpreter start included.  Every lab and namespace made here is removed.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KPLAB = [sys.executable, "-m", "kplab.cli"]
LAB = "bstart"
BASE = "kplab-bstartip"


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
    for n in sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []:
        if n.startswith(BASE + "-"):
            subprocess.run(["ip", "netns", "del", n], check=False)


def timed(argv: list[str], **kw) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def measure(pods: int, rounds: int, mode: str) -> dict:
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
    up, bup = statistics.median(ups), statistics.median(base_up)
    return {"pods": pods, "mode": mode, "rounds": rounds, "kplab_up_s": up, "kplab_down_s": statistics.median(downs),
            "ip_script_up_s": bup, "ip_script_down_s": statistics.median(base_down), "ratio_up": up / bup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, nargs="*", default=[4, 100], help="4 = the default lab")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", default="iptables")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "startup.json"))
    args = ap.parse_args()
    rows = [measure(p, args.rounds, m) for p in args.pods for m in ("none", args.mode)]
    print(f"{'pods':>5} {'mode':>9} {'kplab up':>9} {'ip script':>10} {'ratio':>6} {'kplab down':>11}")
    for r in rows:
        print(f"{r['pods']:>5} {r['mode']:>9} {r['kplab_up_s']:>8.2f}s {r['ip_script_up_s']:>9.2f}s "
              f"{r['ratio_up']:>6.2f} {r['kplab_down_s']:>10.2f}s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
