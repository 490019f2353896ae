# %% [markdown]
# # 07 · Traffic policies and source IPs
#
# **Goals**
# - See which client address a pod sees, for each way into a Service.
# - Understand why NodePort traffic is masqueraded by default, and what
#   `externalTrafficPolicy: Local` trades for keeping the source IP.
# - Keep in-cluster traffic on the node with `internalTrafficPolicy: Local`.
#
# The lab runs iptables mode; nftables mode implements the policies the same way. IPVS mode does
# not quite: when a node has no local endpoint for an `externalTrafficPolicy: Local` Service,
# IPVS falls back to the cluster-wide endpoints instead of dropping
# ([kubernetes#97081](https://github.com/kubernetes/kubernetes/pull/97081)). The userspace
# proxy never had policies.
#
# These *traffic* policies are kube-proxy's. **NetworkPolicy** (which pods may talk to which) is
# not: kube-proxy never reads it; the CNI plugin (Calico, Cilium, ...) enforces it.

# %% [markdown]
# **Before you start.** Prerequisites: 03. Time: about 30 minutes.
# Previous: [06 · the modes compared](06-modes-compared.ipynb). Next: [08 · troubleshooting](08-troubleshooting.ipynb).
# The first code cell puts the lab in this notebook's starting state (run it again to start
# over). After a kernel restart, do not re-run it: `from kplab.notebook import resume; resume()`
# gives you its names back and the lab as you left it.
#
# What this notebook does from Python, and the same from a terminal and on a real cluster:
#
# | in the notebook | from a terminal | on a real cluster |
# |---|---|---|
# | `lab.curl("client", "web:80", n=10)` | `kplab curl client web:80 -n 10` | `kubectl exec client -- curl -s web` |
# | `lab.apply(FILE)` | `kplab apply -f FILE` | `kubectl apply -f FILE` |
# | `lab.trace("client", "web")` | `kplab trace client web` | on the node: `iptables -t raw -I PREROUTING ... -j TRACE` + `xtables-monitor --trace`, or `nft monitor trace` |

# %%
from kplab.course import answer
from kplab.grading import check, start
from kplab.grading.probes import node_of, pods_of
from kplab.widgets import path_picture, topology

lab = start("07-policies")  # run again to start over
for pod in pods_of(lab, "web"):
    print(f"{pod:24} on {node_of(lab, pod)}  {lab.pod_ip(pod)}")
topology(lab)


# %%
def who_saw_what(frm, target, n=12):
    """Which pod answered, on which node, and which client address it saw."""
    res = lab.curl(frm, target, n=n)
    seen = sorted({(a["pod"], node_of(lab, a["pod"]), a["client_ip"]) for a in res.answers})
    for pod, node, ip in seen:
        print(f"  {pod:24} ({node}) saw {ip}")
    return res


# %% [markdown]
# ## From a pod to the ClusterIP: the source is kept
#
# Traffic from inside the pod network is only DNATed: the pod sees `client`'s own IP.

# %%
who_saw_what("client", "web:80");

# %% [markdown]
# ## From outside to a NodePort: the source is replaced
#
# `outside` (172.18.0.100) connects to node-1's NodePort. node-1 may pick a pod on node-2. If it
# only DNATed, that pod would answer `outside` directly, from its own IP, through node-2, and
# `outside` would drop a reply it never asked for. So node-1 also **masquerades**: the pod sees
# node-1 as the client, and replies come back through node-1 to be un-NATed. The cost: the pod
# never learns who the real client was.

# %%
who_saw_what("outside", "node-1:web:http");

# %% [markdown]
# ## Exercise 1 · keep the client's address
#
# Change the Service so that pods behind node-1's NodePort see `outside`'s real address. (There
# is a manifest ready in `labs/manifests/`.) What happens to the pods on node-2?

# %% tags=["solution"]
lab.apply("manifests/web-external-local.yaml")
who_saw_what("outside", "node-1:web:http");

# %% tags=["check"]
check("07-policies/source-ip-kept")

# %% [markdown]
# With `Local`, node-1 only uses its own endpoints, so it never has to hand the packet to
# another node and has no reason to SNAT. The trade-offs: load is spread per *node*, not per
# pod, and a node with no local endpoint drops the traffic. That is why load balancers probe a
# `healthCheckNodePort`, which answers 200 only on nodes that have local endpoints.
# In iptables mode, this is the `KUBE-EXT-…` chain jumping to `KUBE-SVL-…` (local endpoints only):

# %%
!ip netns exec {lab.netns("node-1")} iptables -t nat -S | grep -E "KUBE-(EXT|SVL)-" | head -12

# %% [markdown]
# One connection from `outside` to node-1's NodePort, traced: in nat PREROUTING the packet
# goes `KUBE-SERVICES` → `KUBE-NODEPORTS` → `KUBE-EXT-…` → `KUBE-SVL-…` → a `KUBE-SEP-…` of a
# pod on node-1, and nat POSTROUTING's `KUBE-POSTROUTING` finds no masquerade mark.

# %%
t = lab.trace("outside", "node-1:web:http")
path_picture(lab, t)

# %% [markdown]
# ## Exercise 2 · which local endpoint?
#
# Which `KUBE-SEP-…` chain took that connection from `outside`? Answer with its name (or the
# endpoint's `ip:port`, or the pod). The check holds it against the kernel's trace of this
# connection, and checks that the trace went through `KUBE-SVL-…` and ended on a pod of node-1.

# %% tags=["solution"]
answer("07-policies/which-endpoint", next(h.chain for h in t.hops if h.nat.startswith("DNAT")))

# %% tags=["check"]
check("07-policies/which-endpoint")

# %% [markdown]
# ## Exercise 3 · stay on the node
#
# `client` runs on node-1. Make its requests to `web:80` stay on node-1 (useful for node-local
# caches or agents; it also saves a hop).

# %% tags=["solution"]
lab.apply("manifests/web-internal-local.yaml")
who_saw_what("client", "web:80");

# %% tags=["check"]
check("07-policies/stay-on-node")

# %% [markdown]
# ## What you saw
#
# - From a pod to a ClusterIP, only the destination is rewritten: pods see the real client.
# - From outside to a NodePort (or a LoadBalancer IP) with the default `Cluster` policy, the
#   node also masquerades, so replies return through it; the pod sees the node as the client.
# - `externalTrafficPolicy: Local` keeps the source IP by using only the node's own endpoints;
#   nodes without one drop the traffic, and health checks steer load balancers away from them.
# - `internalTrafficPolicy: Local` does the same for traffic from pods to the ClusterIP.
