# %% [markdown]
# # 02 · userspace mode: a real proxy in the middle
#
# **Goals**
# - See how the first kube-proxy worked: iptables only *steers* packets to a local port, where a
#   proxy process accepts the connection and opens a second one to a pod.
# - Observe its properties: strict round robin, retries on a failed connect, lost source IPs.
# - Understand why it was slow, and why retries did not save UDP.
#
# **Status today:** this mode was deprecated in Kubernetes 1.23 and **removed in 1.26**. It is in
# the lab because it makes the later designs easy to understand, not because anyone should run it.

# %% [markdown]
# **Before you start.** Prerequisites: 01. Time: about 25 minutes.
# Previous: [01 · a Service before any proxy](01-before-proxy.ipynb). Next: [03 · iptables mode](03-iptables.ipynb).
# The first code cell puts the lab in this notebook's starting state (run it again to start
# over). After a kernel restart, do not re-run it: `from kplab.notebook import resume; resume()`
# gives you its names back and the lab as you left it.
#
# What this notebook does from Python, and the same from a terminal and on a real cluster:
#
# | in the notebook | from a terminal | on a real cluster |
# |---|---|---|
# | `lab.trace("client", "web")` | `kplab trace client web` | on the node: `iptables -t raw -I PREROUTING ... -j TRACE` + `xtables-monitor --trace`, or `nft monitor trace` |
# | `lab.curl("client", "web:80", n=10)` | `kplab curl client web:80 -n 10` | `kubectl exec client -- curl -s web` |
# | `lab.set_ready(POD, False)` | `kplab ready POD false` | a failing `readinessProbe` |
# | `lab.apply(FILE)` | `kplab apply -f FILE` | `kubectl apply -f FILE` |

# %%
from kplab.grading import check, start
from kplab.grading.probes import pods_of
from kplab.widgets import RulesViewer, Traffic, path_picture

lab = start("02-userspace")  # run again to start over
N1 = lab.netns("node-1")
web = pods_of(lab, "web")
lab.mode

# %% [markdown]
# ## A process that listens for the Service
#
# On every node the proxy opened one socket per Service port, on a "proxy port" it chose
# itself (here from 20000 up). The NodePorts are plain listening sockets too:

# %%
!ip netns exec {N1} ss -ltnup

# %% [markdown]
# The rules only bend packets towards those sockets. In `KUBE-PORTALS-CONTAINER` (traffic from
# pods and from other machines) a packet for `ClusterIP:80` is **REDIRECT**ed to the proxy port;
# `KUBE-PORTALS-HOST` does the same for the node's own processes with a DNAT to the node IP.
# So the Service was found the iptables way: every new connection walked the `KUBE-PORTALS-…`
# rules, one per Service port, until one matched; only then did the socket come into play.
# There is no rule per endpoint at all: the endpoints live in the process.

# %%
RulesViewer(lab, "node-1")

# %% [markdown]
# ## The path, drawn
#
# One connection from `client`, traced by the kernel. On node-1 the SYN meets the REDIRECT in
# nat PREROUTING; its new destination is a local address, so routing hands it to INPUT and
# then to the proxy *process*. That connection ends there: what reaches the pod is a second
# connection the process opened itself, leaving through OUTPUT and POSTROUTING.

# %%
path_picture(lab, lab.trace("client", "web"))

# %% [markdown]
# ## Round robin, and who the pod thinks you are
#
# The proxy picks endpoints strictly in turn. And because it opens its *own* connection to the
# pod, the pod sees the node as its client, never the real one:

# %%
res = lab.curl("client", "web:80", n=6)
for a in res.answers:
    print(f"{a['pod']:24} saw the client as {a['client_ip']}")

# %% [markdown]
# Send more and watch the histogram fill evenly (press the button again to repeat):

# %%
traffic = Traffic(lab, "client", "web:80", n=60)
traffic

# %% [markdown]
# ## Retries: the one thing it did that later modes do not
#
# Stop the server inside one web pod. The pod stays *Ready* (nothing probes it here), so it is
# still an endpoint. A TCP connection to it fails at once; the userspace proxy notices and tries
# the next endpoint, so the client never sees the failure. UDP has no connection that could
# fail: the proxy sends the datagram and simply never gets an answer.

# %%
broken = web[0]
lab.echo_stop(broken)
tcp = lab.curl("client", "web:80", n=12, timeout=1.0)
udp = lab.curl("client", "web:dns", n=12, timeout=0.5)
print(f"TCP: {tcp.ok} answered, {tcp.failed} failed; UDP: {udp.ok} answered, {udp.failed} lost")

# %% [markdown]
# ## Exercise 1 · every UDP request answered
#
# Make all UDP requests to `web:dns` succeed again **without** restarting the stopped server.
# Think about what Kubernetes does when a pod stops answering its readiness probe.

# %% tags=["solution"]
lab.set_ready(broken, False)  # a failing readiness probe: the pod leaves the EndpointSlice
lab.curl("client", "web:dns", n=12, timeout=0.5).failed

# %% tags=["check"]
check("02-userspace/udp-all-answered")

# %% [markdown]
# ## Exercise 2 · stick to one pod
#
# Round robin sends each new connection somewhere else. Some applications keep per-client state
# in memory and want the same client to come back to the same pod. Make the `web` Service do
# that for `client`. (`labs/manifests/web-affinity.yaml` is ready to use.)

# %% tags=["solution"]
lab.apply("manifests/web-affinity.yaml")

# %% tags=["check"]
check("02-userspace/sticky")

# %% [markdown]
# ## The price: every byte crosses the process twice
#
# Compare 200 requests through the ClusterIP with 200 requests straight to a pod. Each proxied
# request costs an extra accept, connect and copy in user space (notebook 06 measures all the
# modes the same way).

# %%
ready = [p for p in web if p != broken]
via_proxy = lab.curl("client", "web:80", n=200)
direct = lab.curl("client", f"{lab.pod_ip(ready[0])}:8080", n=200)
print(f"through the proxy: {via_proxy.seconds / 200 * 1000:.2f} ms per request")
print(f"straight to a pod: {direct.seconds / 200 * 1000:.2f} ms per request")

# %% [markdown]
# ## What you saw
#
# - userspace kube-proxy was a real proxy: iptables REDIRECT to a local port, and a process that
#   accepts, chooses an endpoint in round robin and copies bytes both ways.
# - Because it terminates connections, it can retry a failed TCP connect on another endpoint,
#   something no later mode does. It could not help UDP, and the pod never sees the real client.
# - Everything passes through one process per node: added latency and a throughput ceiling,
#   which is why iptables mode replaced it as the default in 1.2 and the mode was removed in
#   1.26. Session affinity and readiness still worked, because they are about choosing the
#   endpoint, and the process chose it.
