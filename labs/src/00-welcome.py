# %% [markdown]
# # 00 · Welcome to kplab
#
# Kubernetes gives every Service a virtual IP that no machine owns. Something on each node has
# to turn a packet for that IP into a packet for a real pod: that something is **kube-proxy**,
# and how it does it has changed several times. In this course you build that understanding on
# a real, tiny cluster: every node and pod is a Linux network namespace on this machine, and
# kube-proxy's rules are programmed into their kernels the way upstream kube-proxy does it.
#
# **Goals of this notebook**
# - Meet the lab: its nodes, pods, Services and the outside client.
# - Send requests and see who answers.
# - Learn how exercises are checked, and how to start over.
#
# **The course**
#
# | notebook | what it shows |
# |---|---|
# | 01 before any proxy | a Service is only data; you write the first NAT rule yourself |
# | 02 userspace | the original design: a proxy process per node (removed in Kubernetes 1.26) |
# | 03 iptables | the default mode: chains, probabilities, counters, a SYN, hairpin, affinity |
# | 04 IPVS | the kernel load balancer (deprecated since 1.35), and how to get it if your kernel lacks it |
# | 05 nftables | verdict maps and `numgen` (GA since 1.33) |
# | 06 modes compared | the same measurements for every mode, on your machine |
# | 07 traffic policies | who sees which source IP, and `Local` policies |
# | 08 troubleshooting | broken Services to diagnose and repair, with the kernel's trace |
# | 09 capstone | an unfamiliar node: explain, repair, migrate to nftables, prove it (graded) |
# | 10 eBPF | no kube-proxy at all: Services as BPF maps, Cilium-style |

# %% [markdown]
# **Before you start.** Prerequisites: none: a Linux machine where you are root (`make lab`). Time: about 15 minutes.
# Previous: none, this is the first. Next: [01 · a Service before any proxy](01-before-proxy.ipynb).
# The first code cell puts the lab in this notebook's starting state (run it again to start
# over). After a kernel restart, do not re-run it: `from kplab.notebook import resume; resume()`
# gives you its names back and the lab as you left it.
#
# What this notebook does from Python, and the same from a terminal and on a real cluster:
#
# | in the notebook | from a terminal | on a real cluster |
# |---|---|---|
# | `lab.curl("client", "web:80", n=10)` | `kplab curl client web:80 -n 10` | `kubectl exec client -- curl -s web` |
# | `lab.scale(NAME, N)` | `kplab scale deployment NAME --replicas N` | `kubectl scale deployment NAME --replicas N` |
# | `lab.apply(FILE)` | `kplab apply -f FILE` | `kubectl apply -f FILE` |
# | `lab.set_mode(MODE)` | `kplab mode MODE` | `kubectl edit cm kube-proxy -n kube-system` (`mode:`), then restart the kube-proxy pods |
# | `check("03-iptables")` | `kplab check 03-iptables` | (the course's own) |

# %%
from kplab.grading import check, start
from kplab.widgets import ModeSwitcher, Traffic, topology

lab = start("00-welcome")  # builds the lab as this notebook starts; run it again to start over
topology(lab)

# %% [markdown]
# ## The lab
#
# Two nodes (`node-1`, `node-2`) share a node network 172.18.0.0/24. Each node has a bridge for
# its pods (10.244.1.0/24, 10.244.2.0/24). A Deployment `web` runs three pods, each answering
# on port 8080 with a line of JSON: its own name, and the address the request came from. The
# pod `client` on node-1 is where you send requests from; `outside` is a machine on the node
# network that is not part of the cluster. The Service `web` has a ClusterIP for port 80 (TCP)
# and 53 (UDP), and NodePorts 30080 and 30053.
#
# Press the button: it sends requests from `client` to the Service and draws which pod answered.

# %%
traffic = Traffic(lab, "client", "web:80", n=100)
traffic

# %% [markdown]
# Everything the widgets do is a plain call you can make yourself, and every namespace is a
# real one: `ip netns list` on the host shows them, and the usual tools work inside.

# %%
res = lab.curl("client", "web:80", n=10)
print(res.ok, "answers from", res.backends)
print(res.answers[0])
!ip netns list | grep -c "kplab-{lab.name}-"

# %% [markdown]
# kube-proxy's mode can be switched live; each switch removes the previous mode's rules from
# every node and programs the new one. The later notebooks each start in their own mode.

# %%
ModeSwitcher(lab)

# %% [markdown]
# ## How exercises are checked
#
# Each exercise ends with a cell like `check("00-welcome/four-replicas")`. It runs a small
# test, in a separate process, against the **live lab**: it reads the kernel's rules and sends
# real packets. It never looks at what you typed, so any way of getting there counts. A failed
# check shows a hint. Write your answer in the empty cell above each check. Every check you run
# is recorded in your progress (the first cell of each notebook shows where you stand).
#
# From a terminal: `kplab check 00-welcome` runs this notebook's checks, `kplab progress` shows
# your progress, `kplab reset 03` puts the lab back to notebook 03's starting state, and
# `kplab grade` replays your saved notebooks, each from its starting state, into a report for
# your instructor.
#
# ## Exercise 1 · four replicas
#
# Scale the Deployment `web` to four pods, and make sure requests reach all of them.

# %% tags=["solution"]
lab.scale("web", 4)

# %% tags=["check"]
check("00-welcome/four-replicas")

# %% [markdown]
# ## Exercise 2 · a second app
#
# `labs/manifests/api.yaml` describes a Deployment and a Service called `api`. Add them to the
# lab, then reach `api:80` from `client`.

# %% tags=["solution"]
lab.apply("manifests/api.yaml")
lab.curl("client", "api:80", n=10).backends

# %% tags=["check"]
check("00-welcome/api-answers")

# %% [markdown]
# ## What you saw
#
# - The lab is a real network: namespaces, veths, bridges and routes, with pods answering real
#   connections. A Service is reachable only because the nodes' kernels were programmed for it.
# - Scaling or adding an app changes objects; the lab then reprograms every node, just as
#   kube-proxy reacts to changes of Services and EndpointSlices.
# - Checks look at the live lab. `start(...)` at the top of a notebook (or `kplab reset`) puts
#   the lab back where that notebook begins.
