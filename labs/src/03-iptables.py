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
# Since 1.26 (GA in 1.28) kube-proxy sends only the chains of Services that changed.

# %%
from kplab.grading import check, start
from kplab.grading.probes import pods_of
from kplab.widgets import ReplicasSlider, RulesViewer, Traffic

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
# kube-proxy writes the probabilities with 10 decimals; the kernel stores them as a 32-bit
# fraction, which is why they read back as 0.33333333349. Reading 0.33 / 0.5 / 1 as "unequal"
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
# ## Exercise 1 · four endpoints
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
# ## Exercise 2 · session affinity
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
# - iptables mode is pure kernel NAT: `KUBE-SERVICES` → `KUBE-SVC-…` → `KUBE-SEP-…` → DNAT, with
#   conntrack keeping the choice for the connection and rewriting replies.
# - The endpoint is picked by a cascade of `statistic` rules whose probabilities 1/n, 1/(n-1), …
#   give each endpoint an equal share: random, not round robin.
# - Finding the Service is a walk: every new connection is compared with the rules of
#   `KUBE-SERVICES` in order, so the cost grows with the number of Service ports (notebook 06
#   measures it). A large rule set is also slow to rewrite and hard to read.
# - Hairpin traffic is masqueraded; ClientIP affinity is `-m recent` lists, one per endpoint.
