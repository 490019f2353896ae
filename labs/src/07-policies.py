# %% [markdown]
# # 07 · Traffic policies and source IPs
#
# **Goals**
# - See which client address a pod sees, for each way into a Service.
# - Understand why NodePort traffic is masqueraded by default, and what
#   `externalTrafficPolicy: Local` trades for keeping the source IP.
# - Keep in-cluster traffic on the node with `internalTrafficPolicy: Local`.
#
# The lab runs iptables mode; the policies work the same way in nftables and IPVS mode (the
# userspace proxy never had them).

# %%
from kplab.grading import check, start
from kplab.grading.probes import node_of, pods_of
from kplab.widgets import topology

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
# ## Exercise 2 · stay on the node
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
