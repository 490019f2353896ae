# %% [markdown]
# # 08 · Troubleshooting Services
#
# **Goals**
# - Diagnose eight broken Services the way you would on a real node: symptom first, then
#   endpoints, then rules (and the kernel's trace of one connection), then conntrack.
# - Fix each one, and let the check confirm it from the live lab.
#
# A short method that covers most cases:
#
# | symptom from a client | usual cause | where to look |
# |---|---|---|
# | refused at once (or, after a burst, timeouts: see below) | no endpoints: kube-proxy REJECTs | EndpointSlices, selector, readiness, replicas |
# | refused by the pod | wrong `targetPort` | EndpointSlice ports vs the container's ports |
# | timeout | no rule matched (no proxy, or rules missing) | `iptables -t nat -S`, `nft list ruleset` |
# | works for new clients only | stale conntrack entry | `conntrack -L` on the client's node |

# %% [markdown]
# **Before you start.** Prerequisites: 03, 05 and 07. Time: about 60 minutes.
# Previous: [07 · traffic policies](07-policies.ipynb). Next: [09 · capstone](09-capstone.ipynb).
# The first code cell puts the lab in this notebook's starting state (run it again to start
# over). After a kernel restart, do not re-run it: `from kplab.notebook import resume; resume()`
# gives you its names back and the lab as you left it.
#
# What this notebook does from Python, and the same from a terminal and on a real cluster:
#
# | in the notebook | from a terminal | on a real cluster |
# |---|---|---|
# | `lab.curl("client", "web:80", n=10)` | `kplab curl client web:80 -n 10` | `kubectl exec client -- curl -s web` |
# | `lab.services()`, `lab.endpoint_slices()` | `kplab get svc,eps` | `kubectl get svc,endpointslices` |
# | `lab.scale(NAME, N)` | `kplab scale deployment NAME --replicas N` | `kubectl scale deployment NAME --replicas N` |
# | `lab.apply(FILE)` | `kplab apply -f FILE` | `kubectl apply -f FILE` |
# | `lab.sync()` | (every `kplab` change syncs) | kube-proxy's sync loop (and its restart for a full sync) |
# | `lab.set_mode(MODE)` | `kplab mode MODE` | `kubectl edit cm kube-proxy -n kube-system` (`mode:`), then restart the kube-proxy pods |
# | `lab.set_ready(POD, False)` | `kplab ready POD false` | a failing `readinessProbe` |
# | `lab.trace("client", "web")` | `kplab trace client web` | on the node: `iptables -t raw -I PREROUTING ... -j TRACE` + `xtables-monitor --trace`, or `nft monitor trace` |
# | `lab.conntrack("node-1", "web")` | `kplab conntrack node-1 -s web` | `conntrack -L -d <ClusterIP>` on the node |

# %%
from kplab.course import answer
from kplab.grading import check, start

lab = start("08-troubleshooting")  # with the broken apps of manifests/broken.yaml; run again to start over
N1 = lab.netns("node-1")


# %%
def probe(service, n=4):
    """Send a few requests from `client` and say what happened."""
    res = lab.curl("client", f"{service}:80", n=n, timeout=0.5)
    print(f"{service}: {res.ok} answered, {res.failed} failed {res.errors or ''} {res.backends or ''}")


for name in ("shop", "cart", "pay", "web"):
    probe(name)

# %% [markdown]
# Look at shop and cart: some requests were refused, the others **timed out**, although the
# cause is the same. A REJECT answers a SYN with an ICMP "port unreachable", and the kernel
# rate-limits the ICMP errors it sends (`net.ipv4.icmp_ratelimit`, in ms between errors per
# destination, with `icmp_msgs_per_sec` on top). In a burst, the REJECTs past the limit send
# nothing, and the client waits for its timeout. Real nodes do exactly the same, so "some
# refused, some timed out" from one Service is still the signature of a Service without endpoints.

# %%
!ip netns exec {N1} sysctl net.ipv4.icmp_ratelimit net.ipv4.icmp_msgs_per_sec

# %% [markdown]
# ## Case 1 · shop: refused at once
#
# An immediate "connection refused" from a ClusterIP is kube-proxy's doing: a Service without
# endpoints gets a REJECT rule in the filter table. So ask: why no endpoints?

# %%
print([s.endpoints for s in lab.endpoint_slices() if s.metadata.labels["kubernetes.io/service-name"] == "shop"])
!ip netns exec {N1} iptables -S KUBE-SERVICES | grep shop
shop = next(d for d in lab.objects("Deployment") if d["metadata"]["name"] == "shop")
print("shop replicas wanted:", shop["spec"]["replicas"])

# %% tags=["solution"]
lab.scale("shop", 2)
probe("shop")

# %% tags=["check"]
check("08-troubleshooting/shop-answers")

# %% [markdown]
# ## Case 2 · cart: refused at once, yet the pods are fine
#
# The cart pods run and are ready. The EndpointSlice is still empty.

# %%
print(lab.warnings())
cart = next(s for s in lab.services() if s.metadata.name == "cart")
print("selector:", cart.spec.selector)
print("pod labels:", {p.metadata.name: p.metadata.labels for p in lab.pods() if p.metadata.name.startswith("cart")})

# %% tags=["solution"]
lab.apply("""
apiVersion: v1
kind: Service
metadata: {name: cart}
spec:
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080}]
""")
probe("cart")

# %% tags=["check"]
check("08-troubleshooting/cart-answers")

# %% [markdown]
# ## Case 3 · pay: refused, but by whom?
#
# pay has endpoints, and kube-proxy DNATs to them. Look at *where* it DNATs to.

# %%
print([(s.ports, [e.addresses for e in s.endpoints]) for s in lab.endpoint_slices()
       if s.metadata.labels["kubernetes.io/service-name"] == "pay"])
!ip netns exec {N1} iptables -t nat -S | grep 'default/pay' | grep DNAT
pay_pod = next(p.metadata.name for p in lab.pods() if p.metadata.name.startswith("pay"))
!ip netns exec {lab.netns(pay_pod)} ss -ltn

# %% tags=["solution"]
lab.apply("""
apiVersion: v1
kind: Service
metadata: {name: pay}
spec:
  selector: {app: pay}
  ports: [{name: http, port: 80, targetPort: 8080}]
""")
probe("pay")

# %% tags=["check"]
check("08-troubleshooting/pay-answers")

# %% [markdown]
# ## Case 4 · web: a chain emptied by hand
#
# Someone "cleaned up" node-1's rules. (Run the next cell: it does the damage.)

# %%
out = lab.exec("node-1", ["iptables", "-t", "nat", "-S", "KUBE-SERVICES"]).stdout
web_chain = next(ln.split("-j ")[-1] for ln in out.splitlines() if "default/web:http cluster IP" in ln)
lab.exec("node-1", ["iptables", "-t", "nat", "-F", web_chain])
probe("web", n=6)

# %% [markdown]
# Requests from `client` (on node-1) now time out: KUBE-SERVICES still sends them to the
# Service's chain, which is empty, so the packet leaves it un-NATed and goes nowhere. Note that
# a normal sync does not repair it: kube-proxy only rewrites the chains of Services that changed.

# %%
!ip netns exec {N1} iptables -t nat -S {web_chain}
lab.sync()
probe("web", n=6)

# %% tags=["solution"]
lab.set_mode("iptables")  # a full resync, as when kube-proxy restarts
probe("web", n=6)

# %% tags=["check"]
check("08-troubleshooting/web-chain-restored")

# %% [markdown]
# ## Case 5 · a UDP flow that will not move
#
# A long-lived UDP client (think of a metrics agent, always from port 5353) talks to `web:dns`.
# Then its pod is taken out of service. New clients avoid that pod, but this flow does not.

# %%
packets = lab.packets("client")
pinned = packets.udp("web:dns", sport=5353).json()["pod"]
lab.set_ready(pinned, False)
print("taken out of service:", pinned)
print("a new client reaches:", lab.curl("client", "web:dns", n=6, proto="udp").backends)
print("the old flow reaches:", packets.udp("web:dns", sport=5353).json()["pod"])

# %%
!ip netns exec {N1} conntrack -L -p udp --orig-port-src 5353 2>/dev/null

# %% [markdown]
# The conntrack entry still carries the DNAT to the old pod. UDP has no close, so the entry
# only expires after a quiet period, and this client never goes quiet. Real kube-proxy deletes
# such entries after every sync (`conntrack.CleanStaleEntries`: UDP entries whose reply comes
# from an address that is no longer a serving endpoint). This notebook's lab runs kube-proxy
# with that cleanup **off** (the lab option `conntrack_cleanup: false`, set for 08 in
# `labs/manifest.yaml`) so that you can see the failure it prevents: this is what a node looked
# like before the cleanup existed (kubernetes#48370), and what it looks like whenever the
# cleanup is missed. Then you clear it yourself.

# %% tags=["solution"]
!ip netns exec {N1} conntrack -D -p udp --orig-port-src 5353
print("the old flow reaches:", packets.udp("web:dns", sport=5353).json()["pod"])

# %% tags=["check"]
check("08-troubleshooting/udp-flow-moved")

# %% [markdown]
# ## Case 6 · nftables: refused, with endpoints
#
# The lab now runs nftables mode, and someone removed one element from node-1's `service-ips`
# map. (Run the next cell: it does the damage.) `web` has endpoints, yet `client` is refused.

# %%
lab.set_mode("nftables")
cip = lab.service_ip("web")
lab.exec("node-1", ["nft", "delete", "element", "ip", "kube-proxy", "service-ips", "{", f"{cip} . tcp . 80", "}"])
probe("web")

# %% [markdown]
# Trace one connection and read where it ended. Answer with that chain's name
# (`answer("08-troubleshooting/nft-where", "...")`): the check holds it against the kernel's
# trace. Then repair the node. (Hint: as in case 4, a normal sync only sends what changed in
# the *objects*; nothing changed there.)

# %%
t = lab.trace("client", "web")
t

# %% tags=["solution"]
answer("08-troubleshooting/nft-where", next(h.chain for h in t.hops if h.verdict in ("DROP", "REJECT")))
lab.set_mode("nftables")  # a restart: the full sync writes every map element again
probe("web")

# %% tags=["check"]
check("08-troubleshooting/nft-where")

# %% tags=["check"]
check("08-troubleshooting/nft-element-restored")

# %% [markdown]
# In nftables mode a packet to a ClusterIP whose `ip . proto . port` is not in `service-ips`
# falls through to `cluster-ips-check`, which rejects anything addressed to the Service range:
# the same "refused at once" as a Service without endpoints, for another reason. The trace tells
# the two apart; the EndpointSlices alone cannot.
#
# ## Case 7 · `externalTrafficPolicy: Local`, and a node that drops
#
# A new app, `solo`, keeps its clients' addresses (eTP Local) and runs one pod. From `outside`,
# one node's NodePort answers, the other's times out.

# %%
lab.set_mode("iptables")
lab.apply("manifests/solo.yaml")
for node in lab.nodes:
    res = lab.curl("outside", f"{node}:solo", n=3, timeout=0.5)
    print(f"outside -> {node}:solo: {res.ok} answered, {res.failed} failed")

# %% [markdown]
# Trace a connection to the node that fails, and answer where the kernel dropped it
# (`answer("08-troubleshooting/blackhole-where", "<chain>")`). Then make that node answer too,
# **keeping** the clients' addresses. (A real load balancer would also stop sending to that
# node: its `healthCheckNodePort` answers 503 there. Here, fix the cause.)

# %%
bad = next(n for n in lab.nodes if not lab.curl("outside", f"{n}:solo", n=1, timeout=0.5).ok)
t = lab.trace("outside", f"{bad}:solo")
t

# %% tags=["solution"]
answer("08-troubleshooting/blackhole-where", next(h.chain for h in t.hops if h.verdict in ("DROP", "REJECT")))
lab.apply("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: solo}
spec:
  replicas: 2
  selector: {matchLabels: {app: solo}}
  template:
    metadata: {labels: {app: solo}}
    spec:
      containers:
        - {name: echo, image: kplab/echo, ports: [{name: http, containerPort: 8080}]}
""")
for node in lab.nodes:
    print(node, lab.curl("outside", f"{node}:solo", n=3, timeout=0.5).ok)

# %% tags=["check"]
check("08-troubleshooting/blackhole-where")

# %% tags=["check"]
check("08-troubleshooting/blackhole-fixed")

# %% [markdown]
# With `Local`, a node without a local endpoint has nothing to send NodePort traffic to, and
# kube-proxy drops it in `KUBE-EXTERNAL-SERVICES` ("has no local endpoints") rather than
# forwarding and masquerading. The fix is endpoints where the traffic lands (or a load balancer
# that follows the health checks), not `Cluster`, which would hide the client's address again.

# %% [markdown]
# ## Case 8 · "connection reset by peer", now and then
#
# Long-lived connections to `web` die at random, with a reset, and nothing in the Service changed.
# This node's kube-proxy behaves like one before 1.15 (the lab's option `drop_invalid: false`).
# `reset_probe` reproduces what happened on real clusters (kubernetes#74839) with real packets:
# client holds a connection to web:80, and its pod sends one segment far outside the TCP window
# (on a real node: a late retransmission, an overloaded middlebox). It lists every packet the
# client's namespace saw after that.

# %%
from kplab.course.invalid import reset_probe

p = reset_probe(lab)
p

# %% [markdown]
# Read it from the top: a packet reached client from the **pod's own address**, not from the
# ClusterIP. Conntrack found it out of window, marked it `INVALID`, and an INVALID packet is not
# translated back; nothing in `FORWARD` stopped it. The client has no socket for the pod's
# address, so it answered with a RST, which carried exactly the sequence number the pod expected:
# the pod dropped the real connection, and the client's next write was reset.
#
# Look at `KUBE-FORWARD` on the node, then make client's connections survive such a segment. Two
# fixes exist upstream: drop INVALID packets in `KUBE-FORWARD` (kube-proxy since 1.15; here
# `lab.set_mode("iptables", drop_invalid=True)`, as an upgrade would), or make conntrack
# liberal (`net.netfilter.nf_conntrack_tcp_be_liberal=1`, kube-proxy's
# `--conntrack-tcp-be-liberal`: the segment is then translated like any other and the client
# answers it with a duplicate ACK; kube-proxy leaves the DROP rule out on such a node).

# %%
!ip netns exec {N1} iptables -S KUBE-FORWARD

# %% tags=["solution"]
for node in lab.nodes:
    lab.exec(node, ["sysctl", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=1"])
lab.set_mode("iptables")  # a restart: kube-proxy reads the sysctl again (and leaves the DROP rule out)
reset_probe(lab)

# %% tags=["check"]
check("08-troubleshooting/invalid-survives")

# %% [markdown]
# ## What you saw
#
# - Refused at once from a ClusterIP means no endpoints: check replicas, readiness and whether
#   the selector matches any pod's labels. In a burst some of those REJECTs become timeouts:
#   the node rate-limits the ICMP errors that carry them.
# - Refused by the pod, with endpoints present, points at the port: `targetPort` must be a port
#   the container listens on.
# - Timeouts point at missing rules. kube-proxy only rewrites what changed, so hand edits can
#   stay broken until a full resync.
# - Conntrack outlives rule changes: established flows, UDP ones especially, keep their old
#   DNAT until the entry is deleted or expires (kube-proxy's own cleanup does it for UDP).
# - The same symptom can have different causes: a trace of one connection shows which rule
#   ended it (`cluster-ips-check` for a missing map element, `KUBE-EXTERNAL-SERVICES` for an
#   eTP Local node without endpoints).
# - A reset from nowhere can be conntrack: a segment it marks INVALID is not translated back and
#   reaches the client from the pod's own address. Drop INVALID in FORWARD, or make conntrack
#   liberal.
