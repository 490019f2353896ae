# %% [markdown]
# # 03 · iptables mode: a walk through chains
#
# **Goals**
# - Follow a new connection through `KUBE-SERVICES`, a `KUBE-SVC-…` chain and a `KUBE-SEP-…` chain.
# - Understand the probabilities that make a random choice fair.
# - Watch rule counters move, send a single SYN with scapy, and see conntrack undo the DNAT.
# - See hairpin traffic and session affinity as rules.
#
# **Status today:** iptables mode has been the default on Linux since Kubernetes 1.2 and still is.
# Partial syncs (KEP-3453) were alpha in 1.26, on by default (beta) in 1.27 and GA in 1.28: each
# sync rewrites only the `KUBE-SVC/SEP/...` chains of Services that changed, but the top-level
# chains (`KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES`, `KUBE-NODEPORTS`) are still written in full
# every time.

# %% [markdown]
# **Before you start.** Prerequisites: 01 (02 helps for contrast). Time: about 45 minutes.
# Previous: [02 · userspace mode](02-userspace.ipynb). Next: [04 · IPVS mode](04-ipvs.ipynb).
# The first code cell puts the lab in this notebook's starting state (run it again to start
# over). After a kernel restart, do not re-run it: `from kplab.notebook import resume; resume()`
# gives you its names back and the lab as you left it.
#
# What this notebook does from Python, and the same from a terminal and on a real cluster:
#
# | in the notebook | from a terminal | on a real cluster |
# |---|---|---|
# | `lab.exec("node-1", ["iptables-save"])` | `kplab exec node-1 -- iptables-save` | `iptables-save` on the node (ssh, or `kubectl debug node/...`) |
# | `lab.trace("client", "web")` | `kplab trace client web` | on the node: `iptables -t raw -I PREROUTING ... -j TRACE` + `xtables-monitor --trace`, or `nft monitor trace` |
# | `lab.capture(pod, filter="tcp port 8080")` | `kplab capture POD -f 'tcp port 8080'` | `tcpdump -i <the pod's veth>` on its node |
# | `counting(lab, "web")` | `kplab counters web --from client -n 60` | `iptables -t nat -L KUBE-SEP-... -v -x` on the node |
# | `lab.packets("client").syn("web:80")` | `kplab send client web:80` | `kubectl debug` with scapy/hping3 in the pod |
# | `lab.conntrack("node-1", "web")` | `kplab conntrack node-1 -s web` | `conntrack -L -d <ClusterIP>` on the node |
# | `lab.scale(NAME, N)` | `kplab scale deployment NAME --replicas N` | `kubectl scale deployment NAME --replicas N` |
# | `lab.apply(FILE)` | `kplab apply -f FILE` | `kubectl apply -f FILE` |

# %%
from kplab.course import answer
from kplab.grading import check, start
from kplab.grading.probes import pods_of
from kplab.inspect.counters import counting
from kplab.widgets import ReplicasSlider, RulesViewer, Traffic, path_picture

lab = start("03-iptables")  # run again to start over
N1 = lab.netns("node-1")
svc_ip = lab.service_ip("web")
lab.mode, svc_ip

# %% [markdown]
# ## Step 1: `KUBE-SERVICES`, one rule per Service port
#
# kube-proxy hooks `KUBE-SERVICES` into nat `PREROUTING` (packets arriving from pods and other
# machines) and `OUTPUT` (packets the node itself sends). It holds one rule per ClusterIP and
# port, each with a comment naming the Service port; the last rule catches NodePorts. A new
# connection is compared with these rules **one after the other** until one matches.
#
# The classic way to look is `iptables -t nat -L -n -v | grep <service>`; `-S` prints the same
# rules in the form they were written in.

# %%
!ip netns exec {N1} iptables -t nat -S KUBE-SERVICES

# %% [markdown]
# ## Step 2: `KUBE-SVC-…`, choosing an endpoint
#
# The chain name is a hash of `default/web:http` and the protocol (iptables limits chain names
# to 28 characters). First, traffic from outside the pod network is marked for masquerading.
# Then one rule per endpoint, each jumping to that endpoint's `KUBE-SEP-…` chain.

# %%
out = lab.exec("node-1", ["iptables", "-t", "nat", "-S", "KUBE-SERVICES"]).stdout
svc_chain = next(ln.split("-j ")[-1] for ln in out.splitlines() if "default/web:http cluster IP" in ln)
!ip netns exec {N1} iptables -t nat -S {svc_chain}

# %% [markdown]
# ## Exercise 1 · predict, then measure
#
# Before reading on: the second rule is written `--probability 0.5000000000`. What share of
# **all** new connections to `web:80` will it send to its endpoint? Answer with a fraction
# (`answer("03-iptables/predict-share", 0.4)` or `"2/5"`). The check does not compare your answer
# with a stored one: it sends 300 connections from `client` and reads, from node-1's counters,
# what that rule actually took, and accepts your number if it is within the statistical noise
# of the measurement.

# %% tags=["solution"]
answer("03-iptables/predict-share", "1/3")

# %% tags=["check"]
check("03-iptables/predict-share")

# %% [markdown]
# With three endpoints the rules say: take the first with probability 1/3; of what is left, take
# the second with probability 1/2; the last takes everything that remains. Each endpoint ends
# up with exactly 1/3:
#
# | rule | probability written | share of all new connections |
# |---|---|---|
# | 1 | 0.3333333333 | 1/3 |
# | 2 | 0.5000000000 | 2/3 × 1/2 = 1/3 |
# | 3 | (none) | 2/3 × 1/2 = 1/3 |
#
# kube-proxy writes the probabilities with 10 decimals; `iptables` turns each into an integer,
# p × 2^31 rounded (xt_statistic compares it with a random 31-bit number), and prints it back
# as that integer / 2^31, which is why 0.3333333333 reads back as 0.33333333349. Reading 0.33 / 0.5 / 1 as "unequal"
# is a classic misunderstanding: the cascade is uniform.
# It is random, though, not round robin: over a few requests the counts differ.

# %% [markdown]
# ## Step 3: `KUBE-SEP-…`, the DNAT
#
# Each endpoint chain does two things: mark the packet for masquerading if it comes *from* that
# very endpoint (hairpin, below), and DNAT to the pod's IP and port.

# %%
sep = next(ln.split("-j ")[-1] for ln in lab.exec("node-1", ["iptables", "-t", "nat", "-S", svc_chain]).stdout.splitlines()
           if "KUBE-SEP-" in ln)
!ip netns exec {N1} iptables -t nat -S {sep}

# %% [markdown]
# ## The path of one connection, drawn from the kernel
#
# `lab.trace` sends one connection from `client` and has the kernel trace its SYN on every node
# (a temporary `-j TRACE` rule for this one flow, read with `xtables-monitor --trace`). The
# picture is node-1's packet path: the five hooks, and in each the chains hooked there in
# priority order, read from node-1's kernel (`nft -j list ruleset`: iptables-nft's tables are
# nftables tables). The hooks this SYN went through are lit and numbered; below, the rules
# that matched: `KUBE-SERVICES` → `KUBE-SVC-…` → `KUBE-SEP-…` → DNAT, all in nat PREROUTING,
# before routing, so that routing already sees the pod's address.

# %%
t = lab.trace("client", "web")
path_picture(lab, t)

# %% [markdown]
# ## Exercise 2 · which endpoint took it?
#
# `t` is the kernel's record of one connection. Print it (`t`, or `kplab trace client web` in a
# terminal) and read the path: which `KUBE-SEP-…` chain did node-1 send this connection to?
# Answer with the chain's name (or the endpoint's `ip:port`, or the pod that answered). The check
# compares your answer with the trace of *this* connection, and checks that the chain still
# DNATs there on node-1. (Trace again and you may well get another endpoint: answer about the
# newest trace.)

# %%
print(t)

# %% tags=["solution"]
answer("03-iptables/which-endpoint", next(h.chain for h in t.hops if h.nat.startswith("DNAT")))

# %% tags=["check"]
check("03-iptables/which-endpoint")

# %% [markdown]
# ## What the pod saw: a capture at the backend
#
# The trace names the endpoint; a capture inside that pod's namespace shows the packets as they
# arrive there: destination already rewritten to the pod's own `ip:8080`, source still the
# client's address (DNAT only changes the destination). `kplab capture POD --filter ...` does
# the same from a terminal; on a real node, `tcpdump -i <the pod's veth>`.

# %%
with lab.capture(t.backend, filter="tcp port 8080 and tcp[tcpflags] & tcp-syn != 0", count=2, timeout=3) as cap:
    lab.curl("client", "web:80", n=12)
cap

# %% [markdown]
# ## Counters
#
# Each rule counts the packets that matched it. In the nat table only the *first* packet of a
# connection is evaluated; the rest follow conntrack. Send traffic, then refresh the viewer: the
# lines whose counters moved are highlighted.

# %%
viewer = RulesViewer(lab, "node-1", grep="web")
viewer

# %%
Traffic(lab, "client", "web:80", n=30).send(wait=True).join()
print(viewer.refresh(), "rules' counters moved")

# %% [markdown]
# The same, as numbers: the DNAT counter of each `KUBE-SEP-…` chain during 60 requests (what the
# kernel decided), beside which pods answered (what curl saw). They agree, and they are uneven:
# random, not round robin. (`kplab counters web --from client -n 60` in a terminal.)

# %%
with counting(lab, "web", "http") as kernel:
    res = lab.curl("client", "web:80", n=60)
print(kernel.text())
print("curl saw:", dict(sorted(res.backends.items())))

# %% [markdown]
# ## One SYN, by hand
#
# scapy (in a helper process inside the `client` pod's namespace) sends a single TCP SYN to the
# ClusterIP. The answer comes back **from the ClusterIP**, though a pod sent it: conntrack on
# node-1 remembers the DNAT and rewrites the reply's source. The conntrack entry shows both
# directions: the original one to the ClusterIP, the reply one from the pod.

# %%
reply = lab.packets("client").syn("web:80")
print(reply.summary)
lab.conntrack("node-1", "web")

# %% [markdown]
# ## Hairpin: a pod reaching itself through its Service
#
# When a `web` pod calls `web:80` and the dice pick that same pod, the packet would come back
# into the pod with its own address as source, and the pod's reply would never pass through the
# node to be un-NATed. That is why `KUBE-SEP` marks traffic from its own endpoint for
# masquerading: the pod then sees the node's bridge address as its client.

# %%
me = pods_of(lab, "web")[0]
res = lab.curl(me, "web:80", n=20)
for a in res.answers[:6]:
    print(f"{me} -> {a['pod']:24} seen from {a['client_ip']}" + ("   (itself: masqueraded)" if a["pod"] == me else ""))

# %% [markdown]
# ## Exercise 3 · four endpoints
#
# Scale `web` to 4 replicas (slider or `lab.scale`) and predict the probabilities that node-1
# will write before you look.

# %%
ReplicasSlider(lab, "web", replicas=3)

# %% tags=["solution"]
lab.scale("web", 4)
!ip netns exec {N1} iptables -t nat -S {svc_chain}

# %% tags=["check"]
check("03-iptables/four-way-cascade")

# %% [markdown]
# ## Exercise 4 · session affinity
#
# Make each client stick to one `web` pod (`labs/manifests/web-affinity.yaml`), then find the
# rules that do it. Hint: iptables has no memory of its own; the `recent` match keeps a list of
# source addresses per endpoint.

# %% tags=["solution"]
lab.apply("manifests/web-affinity.yaml")
!ip netns exec {N1} iptables -t nat -S {svc_chain}

# %% tags=["check"]
check("03-iptables/affinity")

# %% [markdown]
# ## What you saw
#
# - iptables mode's data path is pure kernel NAT: `KUBE-SERVICES` → `KUBE-SVC-…` → `KUBE-SEP-…` →
#   DNAT, with conntrack keeping the choice for the connection and rewriting replies. kube-proxy
#   is still a process on every node (in every mode): it watches Services and EndpointSlices and
#   rewrites the rules; it just no longer carries the packets.
# - The endpoint is picked by a cascade of `statistic` rules whose probabilities 1/n, 1/(n-1), …
#   give each endpoint an equal share: random, not round robin.
# - Finding the Service is a walk: every new connection is compared with the rules of
#   `KUBE-SERVICES` in order, so the cost grows with the number of Service ports (notebook 06
#   measures it). A large rule set is also slow to rewrite and hard to read.
# - Hairpin traffic is masqueraded; ClientIP affinity is `-m recent` lists, one per endpoint.
