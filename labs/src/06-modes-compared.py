# %% [markdown]
# # 06 · The modes compared, measured here
#
# **Goals**
# - Put the modes side by side on the same lab: speed of a request, size of the rule set as
#   Services grow, how endpoints are chosen, what runs in the kernel.
# - Fill in a "which mode should I use?" table with numbers from *this* machine.
# - Switch modes live and see what each one leaves on the nodes.
#
# Where things stand upstream (Kubernetes 1.35): **iptables** is the default; **nftables** is GA
# (since 1.33) and the recommended choice for large clusters; **IPVS** is deprecated (since
# 1.35; its gate is planned to go off by default in 1.40); **userspace** was removed in 1.26.

# %% [markdown]
# **Before you start.** Prerequisites: 02 to 05. Time: about 30 minutes, plus a few minutes per mode if you run the benchmarks.
# Previous: [05 · nftables mode](05-nftables.ipynb). Next: [07 · traffic policies](07-policies.ipynb).
# The first code cell puts the lab in this notebook's starting state (run it again to start
# over). After a kernel restart, do not re-run it: `from kplab.notebook import resume; resume()`
# gives you its names back and the lab as you left it.
#
# What this notebook does from Python, and the same from a terminal and on a real cluster:
#
# | in the notebook | from a terminal | on a real cluster |
# |---|---|---|
# | `lab.set_mode(MODE)` | `kplab mode MODE` | `kubectl edit cm kube-proxy -n kube-system` (`mode:`), then restart the kube-proxy pods |
# | `lab.curl("client", "web:80", n=10)` | `kplab curl client web:80 -n 10` | `kubectl exec client -- curl -s web` |

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown

from kplab.grading import check, start
from kplab.grading.probes import pods_of, ready_endpoints
from kplab.proxy.base import available_modes, proxier_class
from kplab.widgets import ModeSwitcher

lab = start("06-modes-compared")  # run again to start over
modes = [m for m in ("userspace", "iptables", "nftables", "ipvs") if m in available_modes()
         and proxier_class(m).doctor().available]
modes

# %% [markdown]
# ## A quick measurement: time per request
#
# 300 fresh TCP connections from `client` through the ClusterIP, in each mode, against the
# same 300 straight to a pod (no Service at all). This is small and noisy but honest: same
# machine, same minute, same pods.

# %%
direct_target = f"{lab.pod_ip(pods_of(lab, 'web')[0])}:8080"
rows = []
for mode in modes:
    lab.set_mode(mode)
    lab.curl("client", "web:80", n=20)  # warm up
    via = lab.curl("client", "web:80", n=300)
    direct = lab.curl("client", direct_target, n=300)
    rows.append({"mode": mode, "ms_per_request": via.seconds / 300 * 1000,
                 "ratio_to_pod_ip": via.seconds / direct.seconds, "backends": len(via.backends)})
lab.set_mode("iptables")  # back to where this notebook starts
for r in rows:
    print(f"{r['mode']:10} {r['ms_per_request']:6.2f} ms/request   x{r['ratio_to_pod_ip']:.2f} of the pod IP   "
          f"{r['backends']} backends used")

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar([r["mode"] for r in rows], [r["ratio_to_pod_ip"] for r in rows], color="#1a73e8")
ax.axhline(1.0, color="#5f6368", linestyle="--", linewidth=1)
ax.set_ylabel("time per request / pod IP")
ax.set_title("cost of going through the Service, this machine")
plt.show()

# %% [markdown]
# ## How the rule set grows
#
# Each mode's `render()` produces exactly what it would load into a node, without touching one.
# Rendering for 10, 100 and 500 Services (3 endpoints each) shows the shapes: iptables adds
# rules to the chain every packet walks; nftables adds map elements and chains that are only
# reached through a lookup; userspace adds a few rules and a socket per Service port.

# %%
from kplab.bench import workload

sizes = (10, 100, 500)
DISPATCH = {"iptables": "-A KUBE-SERVICES ", "nftables": "add rule ip kube-proxy services ",
            "userspace": "-A KUBE-PORTALS-CONTAINER "}  # where a new connection looks for its Service
for mode in modes:
    texts = [proxier_class(mode).preview(workload.state(lab, "node-1", n, 3)) for n in sizes]
    walk = [sum(ln.startswith(DISPATCH.get(mode, "?")) for ln in t.splitlines()) for t in texts]
    print(f"{mode:10} lines loaded: {[len(t.splitlines()) for t in texts]}   "
          f"rules a new connection may try to find its Service: {walk}")

# %% [markdown]
# ## The full benchmark, and the table
#
# `kplab bench` measures properly: first-packet latency to the first and the *last* of up to
# 10,000 Services, sync times, throughput and the spread of load, each against a baseline from
# the same run. It takes minutes, so it does not run here unless you set `RUN_FULL_BENCH`.
# The cell after it fills the table from whatever results exist (`bench/results/`). If you have
# not run them, it shows the table and plots measured for `docs/BENCHMARKS.md` instead (on a
# 2-core virtual machine; that page says how), so you still see the shapes.

# %%
RUN_FULL_BENCH = False  # set to True to measure now (several minutes)
if RUN_FULL_BENCH:
    !kplab bench latency
    !kplab bench sync
    !kplab bench throughput

# %%
from pathlib import Path

from IPython.display import Image, display

import kplab
from kplab.bench import compare, report

if any(report.results_dir().glob("*.json")):
    display(Markdown("**Measured here** (`bench/results/`):\n\n" + compare.markdown(compare.table())))
else:
    docs = Path(kplab.__file__).resolve().parents[1] / "docs"
    page = (docs / "BENCHMARKS.md").read_text()
    section = page.split("## Which mode should you use?", 1)[1].split("\n## ", 1)[0]
    display(Markdown("**Not measured here yet: the table from `docs/BENCHMARKS.md`** (its machine, its "
                     "date)\n\n## Which mode should you use?" + section))
    for plot in ("bench-latency.png", "bench-sync.png"):
        display(Image(filename=str(docs / plot), width=720))

# %% [markdown]
# ## Exercise 1 · switch to nftables
#
# Move the whole lab to nftables mode (the switcher below, `lab.set_mode`, or `kplab mode`),
# then confirm on a node that nothing of iptables mode is left behind.

# %%
ModeSwitcher(lab, modes)

# %% tags=["solution"]
lab.set_mode("nftables")
!ip netns exec {lab.netns("node-1")} iptables-save | grep -c KUBE-
!ip netns exec {lab.netns("node-1")} nft list tables

# %% tags=["check"]
check("06-modes-compared/nftables-live")

# %% [markdown]
# ## Exercise 2 · the one thing the old design did better
#
# The next cell stops the server in one `web` pod without marking it unready (as when a process
# hangs and no readiness probe is configured). In kernel modes, every connection the dice send
# to that pod fails. Find the mode in which TCP clients do not notice, and switch to it.
# Leave the broken pod as it is.

# %%
dead = pods_of(lab, "web")[0]
lab.echo_stop(dead)
res = lab.curl("client", "web:80", n=30, timeout=1.0)
print(f"{lab.mode}: {res.ok} answered, {res.failed} failed; {dead} is still ready: {dead in ready_endpoints(lab, 'web')}")

# %% tags=["solution"]
lab.set_mode("userspace")
res = lab.curl("client", "web:80", n=30, timeout=1.0)
print(f"{lab.mode}: {res.ok} answered, {res.failed} failed")

# %% tags=["check"]
check("06-modes-compared/retries-hide-a-dead-backend")

# %% [markdown]
# (The real fix is a readiness probe, in every mode; retrying in the proxy only hid the problem
# and cost a process hop on every connection.)
#
# ## What you saw
#
# | | userspace | iptables (default) | IPVS | nftables |
# |---|---|---|---|---|
# | where packets are handled | a proxy process per node | kernel, nat rules | kernel, IPVS tables | kernel, nf_tables maps |
# | kube-proxy itself | a process per node, in the data path | a process per node that writes rules | the same | the same |
# | finding the Service | walk one `KUBE-PORTALS` rule per Service port, then its socket | walk one rule per Service port | hash lookup | one verdict-map lookup |
# | where the DNAT happens | none: the process opens a new connection | nat PREROUTING / OUTPUT | LOCAL_IN (INPUT), after routing via `kube-ipvs0` | nat-prerouting / nat-output chains |
# | choosing the endpoint | round robin | random (probability cascade) | scheduler: rr, lc, sh, mh... | random (`numgen`) |
# | rule updates | small | top-level chains every sync; other chains only when changed (default since 1.27) | per-object netlink | only the changes |
# | status | removed in 1.26 | default | deprecated since 1.35 | GA since 1.33 |
#
# - Every kernel mode costs little per request compared with a pod IP; the userspace proxy
#   costs a process hop on every connection.
# - iptables' cost grows with the number of Service ports (the walk, and the ruleset to
#   rewrite); nftables and IPVS look Services up in hash tables. That, more than anything,
#   is why nftables is where kube-proxy is heading.
# - The table above holds the numbers measured on this machine by `kplab bench`.
