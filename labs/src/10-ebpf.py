# %% [markdown]
# # 10 · No kube-proxy at all: Services in eBPF
#
# **Goals**
# - See a node with Services that work and not one netfilter rule.
# - Read the Services as BPF maps, the way `cilium-dbg bpf lb list` shows them.
# - See *where* the backend is chosen: at `connect()` (socket LB) or per packet at the pod's
#   interface (tc), and what changes for the packets.
#
# **Status today:** this is not a kube-proxy mode. Clusters running Cilium's kube-proxy
# replacement (or Calico's eBPF data plane) run no kube-proxy; BPF programs do its job. kplab's
# `ebpf` mode is a small version of Cilium's design (`bpf/kplab_lb.c`, `docs/EBPF.md`).

# %%
from kplab.grading import check, start

lab = start("10-ebpf")  # run again to start over
N1 = lab.netns("node-1")
lab.mode

# %% [markdown]
# ## Nothing in netfilter
#
# Every mode so far wrote rules: iptables chains, an nftables table, IPVS virtual servers. Look
# at node-1 now:

# %%
!ip netns exec {N1} iptables-save | grep -c KUBE
!ip netns exec {N1} nft list ruleset | wc -l
lab.curl("client", "web", n=30).backends

# %% [markdown]
# The Services still work. They live in **BPF maps**: hash tables in the kernel that small
# programs read. `kplab rules` prints them as Cilium prints its own: one row per *slot*. Slot 0 is
# the frontend (how many backends, its flags, a "rev-NAT id"); slots 1..N name the backends.

# %%
print(lab.rules("node-1")["text"])

# %% [markdown]
# The same map, raw, with the standard tool (`bpftool` prints the fields because the program
# was compiled with type information, BTF):

# %%
maps = lab.rules("node-1")["maps"]
!bpftool map dump pinned {maps}/lb4_services | head -40

# %% [markdown]
# ## Where is the backend chosen?
#
# `kplab trace` asks the programs: each decision is written to a small log map.

# %%
lab.trace("client", "web")

# %% [markdown]
# `cgroup/connect4`: the program ran **inside `connect()`**, before any packet existed, and
# changed the address the socket connects to. The pod's packets carry the backend's IP from the
# first SYN: no NAT anywhere, nothing to undo for the replies. Such programs attach to a
# *cgroup*; the lab's client processes run in one cgroup per node:

# %%
cg = lab.rules("node-1")["cgroup"]
!bpftool cgroup show {cg}

# %% [markdown]
# From outside the cluster there is no socket of ours to hook: a NodePort is handled by a tc
# program on the node's `eth0`, which rewrites each packet (DNAT, and SNAT when the backend is
# on another node):

# %%
lab.trace("outside", "node-1:web")

# %% [markdown]
# ## Exercise 1 · per-packet load balancing
#
# Cilium can also work without socket LB (its default without `kubeProxyReplacement`): a tc
# program on each pod's veth translates every packet, like a DNAT, and translates the replies
# back. Switch the lab to the eBPF mode **without socket LB** (`lab.set_mode("ebpf",
# socket_lb=False)`, or `kplab mode ebpf --no-socket-lb`), then trace `client -> web` again: which
# program decided now?

# %% tags=["solution"]
lab.set_mode("ebpf", socket_lb=False)
lab.trace("client", "web")

# %% tags=["check"]
check("10-ebpf/tc-decides")

# %% [markdown]
# The node's connection table for this is a BPF map too (`kplab_ct4`): both directions of each
# translated connection, keyed by the tuple on the wire. `conntrack -L` knows nothing of it.

# %%
!bpftool map dump pinned {maps}/kplab_ct4 | head -30

# %% [markdown]
# ## Exercise 2 · a backend leaves
#
# Mark one `web` pod not ready (`lab.set_ready(pod, False)`). Before you look: which map entries
# change on node-1, and in what order would you write them so that a program reading the map
# at any moment never picks a slot that is not filled?

# %% tags=["solution"]
pod = sorted(p.metadata.name for p in lab.pods() if (p.metadata.labels or {}).get("app") == "web")[0]
lab.set_ready(pod, False)
print(lab.rules("node-1")["text"])

# %% tags=["check"]
check("10-ebpf/two-slots")

# %% [markdown]
# The frontend's count went from 3 to 2 first, and only then were slot 3 and the unused
# backend deleted: the order Cilium's reconciler uses too.

# %% [markdown]
# ## What you saw
#
# - Without kube-proxy, Services are BPF maps: a frontend (slot 0, with the count) and one slot
#   per backend, backends by id, and a reverse-NAT entry per frontend.
# - Socket LB decides inside `connect()`: no packet ever carries the ClusterIP, no NAT, no
#   conntrack entry for the Service. It only sees processes in the cgroup it is attached to.
# - Per-packet LB (tc) rewrites packets at the pod's veth and keeps its own connection table;
#   traffic from outside (NodePort, LoadBalancer) always takes this path, at the node's eth0.
# - Endpoint choice is the same as every kube-proxy mode's (ready, else terminating; traffic
#   policies): only the place where it is applied moved.
