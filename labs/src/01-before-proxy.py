# %% [markdown]
# # 01 · A Service before any proxy
#
# **Goals**
# - See what a Service *is* to the API: a name, a virtual IP, ports and a list of endpoints.
# - Watch a request to that virtual IP go nowhere when no kube-proxy runs, and find out why.
# - Play kube-proxy yourself: make the virtual IP work with your own NAT rules.
#
# This lab runs with **no proxy at all** (`mode none`): pods, Services and EndpointSlices exist,
# but nothing has told any node's kernel about the Service.

# %% [markdown]
# **Before you start.** Prerequisites: 00; reading an `iptables` rule helps but is taught here. Time: about 30 minutes.
# Previous: [00 · welcome](00-welcome.ipynb). Next: [02 · userspace mode](02-userspace.ipynb).
# The first code cell puts the lab in this notebook's starting state (run it again to start
# over). After a kernel restart, do not re-run it: `from kplab.notebook import resume; resume()`
# gives you its names back and the lab as you left it.
#
# What this notebook does from Python, and the same from a terminal and on a real cluster:
#
# | in the notebook | from a terminal | on a real cluster |
# |---|---|---|
# | `lab.services()`, `lab.endpoint_slices()` | `kplab get svc,eps` | `kubectl get svc,endpointslices` |
# | `lab.curl("client", "web:80", n=10)` | `kplab curl client web:80 -n 10` | `kubectl exec client -- curl -s web` |
# | `lab.exec("node-1", ["iptables-save"])` | `kplab exec node-1 -- iptables-save` | `iptables-save` on the node (ssh, or `kubectl debug node/...`) |
# | `lab.trace("client", "web")` | `kplab trace client web` | on the node: `iptables -t raw -I PREROUTING ... -j TRACE` + `xtables-monitor --trace`, or `nft monitor trace` |
# | `lab.conntrack("node-1", "web")` | `kplab conntrack node-1 -s web` | `conntrack -L -d <ClusterIP>` on the node |

# %%
from kplab.grading import check, start
from kplab.grading.probes import pods_of, ready_endpoints
from kplab.widgets import path_picture, topology

lab = start("01-before-proxy")  # the lab as this notebook starts; run this cell again to start over
N1 = lab.netns("node-1")        # node-1's network namespace, for the shell commands below
topology(lab)

# %% [markdown]
# ## What the API knows
#
# The Service `web` got a ClusterIP from the service range (10.96.0.0/16). The endpoints
# controller found the pods matching its selector `app: web` and listed their IPs in an
# EndpointSlice. That is all a Service is: data. Nothing here has touched a network interface.

# %%
svc = next(s for s in lab.services() if s.metadata.name == "web")
print("ClusterIP:", svc.spec.cluster_ip)
for p in svc.spec.ports:
    print(f"  port {p.name}: {p.port}/{p.protocol} -> targetPort {p.target_port}, nodePort {p.node_port}")
print("ready endpoints:", ready_endpoints(lab, "web"))

# %% [markdown]
# ## Pods answer on their own IPs
#
# Every pod runs a small echo server: it answers with its name and the address it saw the
# request come from. Straight to a pod's IP, from the `client` pod, it works:

# %%
web = pods_of(lab, "web")
lab.curl("client", f"{lab.pod_ip(web[0])}:8080", n=3).backends

# %% [markdown]
# ## The ClusterIP goes nowhere
#
# The same request to the Service's virtual IP times out:

# %%
res = lab.curl("client", "web:80", n=3, timeout=0.5)
res.ok, res.failed, res.errors

# %% [markdown]
# Follow the packet. No interface anywhere owns 10.96.x.y, so the client's routing table sends
# it to its default gateway (its node's bridge `cni0`); node-1 sends it on to *its* default
# gateway, the node network, which forwards nothing. The packet is dropped there, silently.

# %%
!ip netns exec {lab.netns("client")} ip route get {svc.spec.cluster_ip}
!ip netns exec {N1} ip route get {svc.spec.cluster_ip}
!ip netns exec {N1} ip -brief address

# %% [markdown]
# ## Where a proxy would act
#
# This is node-1's packet path as its kernel has it now: the five netfilter hooks, and in each,
# what runs there in priority order (lowest first). With no proxy there is nothing but
# connection tracking, and even that is idle (dashed): no rule in this namespace needs it yet.
# A packet from `client` for the ClusterIP enters at PREROUTING, is routed (not to a local
# address, so to FORWARD), and leaves through POSTROUTING towards the default gateway.

# %%
path_picture(lab)

# %% [markdown]
# And no rule on node-1 mentions the Service (both listings are empty):

# %%
!ip netns exec {N1} iptables-save
!ip netns exec {N1} nft list ruleset

# %% [markdown]
# And the connection tracker? Ask it about the attempt: it prints **nothing**. Conntrack is
# loaded in the kernel, but a network namespace only tracks connections once something in it
# needs tracking (a nat table, a `ct state` match...). node-1 has no rule at all, so its tracker
# is idle: the dashed boxes in the picture above. (On a real node, with kube-proxy's rules or a
# firewall loaded, you would see the SYN as `[UNREPLIED]`.)

# %%
lab.curl("client", "web:80", n=1, timeout=0.3)
!ip netns exec {N1} conntrack -L -p tcp --orig-dst {svc.spec.cluster_ip} 2>/dev/null
print("entries for the ClusterIP:", len(lab.conntrack("node-1", "web")))

# %% [markdown]
# ## Exercise 1 · be kube-proxy for one Service port
#
# The whole trick of every kube-proxy mode is **DNAT**: rewrite the destination of a packet
# aimed at the ClusterIP into a real pod's IP and port, early enough (nat PREROUTING) that
# routing then sends it to that pod. Conntrack remembers the rewrite and undoes it on replies.
#
# Add one rule on node-1 (where `client` lives) that sends `ClusterIP:80/TCP` to one `web` pod on
# port 8080. Use `lab.exec("node-1", [...])` or `!ip netns exec {N1} iptables ...`.

# %% tags=["solution"]
cip, target = svc.spec.cluster_ip, lab.pod_ip(web[0])
!ip netns exec {N1} iptables -t nat -A PREROUTING -d {cip} -p tcp --dport 80 -j DNAT --to-destination {target}:8080

# %% tags=["check"]
check("01-before-proxy/dnat-by-hand")

# %% [markdown]
# ## Your rule, in the packet's path
#
# `lab.trace` sends **one** connection and asks the kernel to trace it (a temporary `-j TRACE`
# rule for just this flow, read with `xtables-monitor --trace`; on a real node the same works
# with `iptables -t raw -A PREROUTING ... -j TRACE`). The picture lights the hooks this SYN went
# through on node-1 and names the rule that matched: yours, in nat PREROUTING.

# %%
t = lab.trace("client", "web")
path_picture(lab, t)

# %% [markdown]
# Your nat rule woke conntrack up (the picture's conntrack boxes are solid now), so the tracker
# has entries: the original direction to the ClusterIP, and the reply direction from the pod.
# That pair is how replies get their source rewritten back to the ClusterIP.

# %%
lab.conntrack("node-1", "web")

# %% [markdown]
# Every request now lands on the same pod, and the pod sees the client's own address: DNAT
# changes only the destination.

# %%
res = lab.curl("client", "web:80", n=10, timeout=0.5)
res.backends, {a["client_ip"] for a in res.answers}

# %% [markdown]
# ## Exercise 2 · spread the load
#
# One rule sends everything to one pod. Write one DNAT rule per ready endpoint instead. A rule
# list is walked top to bottom, so the first rule must catch 1/3 of new connections, the second
# 1/2 of *what is left*, and the last one everything else. The `statistic` match with
# `--mode random --probability p` does the catching. (Flush PREROUTING first.)

# %% tags=["solution"]
ips = list(ready_endpoints(lab, "web").values())
!ip netns exec {N1} iptables -t nat -F PREROUTING
for i, ip in enumerate(ips):
    left = len(ips) - i
    match = ["-m", "statistic", "--mode", "random", "--probability", f"{1 / left:.10f}"] if left > 1 else []
    lab.exec("node-1", ["iptables", "-t", "nat", "-A", "PREROUTING", "-d", cip, "-p", "tcp", "--dport", "80",
                        *match, "-j", "DNAT", "--to-destination", f"{ip}:8080"])
!ip netns exec {N1} iptables -t nat -S PREROUTING

# %% tags=["check"]
check("01-before-proxy/spread-by-hand")

# %%
lab.curl("client", "web:80", n=60, timeout=0.5).backends  # before your rules: 60 half-second timeouts

# %% [markdown]
# ## What you saw
#
# - A Service is only data: a virtual IP and ports, plus EndpointSlices listing ready pods. No
#   interface holds the virtual IP, and without a proxy, packets to it follow the default route
#   and die.
# - Making it work takes one thing on the node the packet passes: a DNAT to a real endpoint,
#   chosen per new connection. Conntrack keeps the choice for the connection's life and rewrites
#   the replies.
# - Your rules only exist on node-1, only for port 80, and go stale as soon as a pod moves.
#   Writing them on every node, for every Service port, NodePort and policy, and rewriting them
#   whenever endpoints change: that is kube-proxy's job. The next notebooks look at how each mode
#   does it, beginning with the oldest.
