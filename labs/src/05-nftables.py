# %% [markdown]
# # 05 · nftables mode: one lookup instead of a walk
#
# **Goals**
# - Read the `kube-proxy` nftables table: base chains, verdict maps, per-service and
#   per-endpoint chains.
# - See how an endpoint is picked: `numgen random mod N` indexes a map, no probability cascade.
# - See why the cost of finding a Service does not grow with the number of Services.
#
# **Status today:** nftables mode was alpha in 1.29, beta in 1.31 and is **GA since 1.33**.
# iptables is still the default; a proposal to make nftables the default is under discussion.
# It needs kernel 5.13 or newer.

# %% [markdown]
# **Before you start.** Prerequisites: 03. Time: about 35 minutes.
# Previous: [04 · IPVS mode](04-ipvs.ipynb). Next: [06 · the modes compared](06-modes-compared.ipynb).
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
# | `counting(lab, "web")` | `kplab counters web --from client -n 60` | `iptables -t nat -L KUBE-SEP-... -v -x` on the node |
# | `lab.scale(NAME, N)` | `kplab scale deployment NAME --replicas N` | `kubectl scale deployment NAME --replicas N` |
# | `lab.apply(FILE)` | `kplab apply -f FILE` | `kubectl apply -f FILE` |

# %%
from kplab.course import answer
from kplab.grading import check, start
from kplab.widgets import ReplicasSlider, RulesViewer, Traffic, path_picture

lab = start("05-nftables")  # run again to start over
N1 = lab.netns("node-1")
lab.mode

# %% [markdown]
# ## One table, a few fixed chains
#
# Everything kube-proxy owns is in **one table**, `ip kube-proxy`; removing the mode is one
# `nft delete table`. The chains hooked into netfilter are fixed (`nat-prerouting`,
# `nat-output`, `filter-forward`...). The interesting one is `services`:

# %%
!ip netns exec {N1} nft list chain ip kube-proxy services

# %% [markdown]
# Two rules, whatever the number of Services. `ip daddr . meta l4proto . th dport vmap
# @service-ips` builds a key such as `10.96.x.y . tcp . 80` and looks it up in a **verdict map**:
# a hash table whose values are "go to this chain". The second rule does the same for NodePorts,
# for packets addressed to the node itself.

# %%
!ip netns exec {N1} nft list map ip kube-proxy service-ips

# %% [markdown]
# ## Choosing an endpoint
#
# The Service's chain marks traffic that needs masquerading, then draws a random number 0..N-1
# and looks *that* up in an anonymous map of endpoint chains. Each endpoint chain DNATs to one
# pod (and marks hairpin traffic, a pod reaching itself through its Service).

# %%
RulesViewer(lab, "node-1", grep="web/tcp/http")

# %% [markdown]
# Send some traffic, then refresh: the counters of the rules the packets took are highlighted.
# Those `counter` statements are **the lab's addition**: upstream kube-proxy puts no counters in
# its nftables rules (the lab adds them so you can watch). On a real node, follow a packet with
# `nft monitor trace` instead (set `meta nftrace set 1` for the flow in a chain of your own),
# which is what `lab.trace` does.

# %%
viewer = RulesViewer(lab, "node-1", grep="pkts")
Traffic(lab, "client", "web:80", n=30).send(wait=True).join()
print(viewer.refresh(), "rules' counters moved")
viewer

# %% [markdown]
# ## The path, drawn
#
# kube-proxy's base chains are nftables chains with a hook and a priority of their own
# (`nat-prerouting` at `dstnat`, -100; `filter-prerouting` at `dstnat - 10`, and so on), listed
# here beside iptables-nft's tables, which are nftables tables too. One traced connection
# (`nft monitor trace`, for a `meta nftrace set 1` kplab sets on this flow only):

# %%
t = lab.trace("client", "web")
path_picture(lab, t)

# %% [markdown]
# ## Exercise 1 · which element, which endpoint?
#
# Read the trace: in `services`, the packet's `daddr . proto . dport` was looked up in
# `service-ips` and the element sent it on to the Service's chain; there, `numgen random mod N`
# picked an element of the anonymous endpoint map. Which endpoint chain (`endpoint-…`) did it
# pick for this connection? Answer with the chain's name (or its `ip:port`, or the pod). The
# check holds your answer against the kernel's trace of this very connection.

# %%
print(t)

# %% tags=["solution"]
answer("05-nftables/which-endpoint", next(h.chain for h in t.hops if h.nat.startswith("DNAT")))

# %% tags=["check"]
check("05-nftables/which-endpoint")

# %% [markdown]
# ## Exercise 2 · five endpoints
#
# Scale `web` to five replicas (the slider below, or `lab.scale`). Then look at the Service's
# chain on node-1 again: what changed, and what did not have to?

# %%
ReplicasSlider(lab, "web", replicas=3)

# %% tags=["solution"]
lab.scale("web", 5)
!ip netns exec {N1} nft list table ip kube-proxy | grep -A2 'chain service-.*web/tcp/http'

# %% tags=["check"]
check("05-nftables/five-way-numgen")

# %% [markdown]
# With iptables, five endpoints means five rules with probabilities 1/5, 1/4, 1/3, 1/2 and
# "the rest", walked in order (notebook 03). Here it is one random number and one map lookup.

# %% [markdown]
# ## Exercise 3 · another Service is one more map element
#
# Add the app in `labs/manifests/api.yaml` (a Deployment and a Service `api`). Before you look:
# how many rules will the `services` chain have afterwards? Record your prediction with
# `answer("05-nftables/predict-services-rules", n)`; the second check counts them on node-1.

# %% tags=["solution"]
answer("05-nftables/predict-services-rules", 2)
lab.apply("manifests/api.yaml")
!ip netns exec {N1} nft list chain ip kube-proxy services
!ip netns exec {N1} nft list map ip kube-proxy service-ips

# %% tags=["check"]
check("05-nftables/one-more-element")

# %% tags=["check"]
check("05-nftables/predict-services-rules")

# %% [markdown]
# ## Thirty more Services
#
# Thirty extra Services (all selecting the `web` pods) make thirty more map elements and their
# own chains, but the path of a packet still starts with the same single lookup. iptables would
# have added a rule per Service port to `KUBE-SERVICES`, which every new connection walks.

# %%
extra = "\n---\n".join(
    f"apiVersion: v1\nkind: Service\nmetadata: {{name: extra{i}}}\n"
    f"spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}"
    for i in range(30)
)
lab.apply(extra)
rules = lab.exec("node-1", ["nft", "list", "chain", "ip", "kube-proxy", "services"]).stdout
elements = lab.exec("node-1", ["nft", "list", "map", "ip", "kube-proxy", "service-ips"]).stdout
print("rules in `services`:", sum("vmap" in ln for ln in rules.splitlines()))
print("elements in service-ips:", sum(" : goto " in ln for ln in elements.splitlines()))

# %% [markdown]
# ## Affinity without xt_recent
#
# ClientIP affinity is one timeout set per endpoint: the endpoint chain adds the client's
# address, and the Service chain first checks every set before drawing a random number.

# %%
lab.apply("manifests/web-affinity.yaml")
lab.curl("client", "web:80", n=5).backends

# %%
!ip netns exec {N1} nft list sets ip | grep -A5 'set affinity' | head -24

# %% [markdown]
# ## What you saw
#
# - nftables mode keeps all its state in one table: fixed hook chains, a handful of maps and
#   sets, and a chain per Service and per endpoint.
# - Finding the Service is one hash lookup in `service-ips` (and `service-nodeports`), however
#   many Services exist; iptables compares the packet with one rule per Service port in turn.
# - Picking an endpoint is `numgen random mod N` into a map: uniform, with no probabilities to
#   compute. Adding a Service or an endpoint changes map elements and one chain, and kube-proxy
#   sends only those changes to the kernel.
# - Differences from iptables mode worth knowing: NodePorts only on the node's primary IP by
#   default, and no NodePorts on 127.0.0.1.
