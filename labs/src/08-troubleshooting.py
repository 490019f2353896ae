# %% [markdown]
# # 08 · Troubleshooting Services
#
# **Goals**
# - Diagnose five broken Services the way you would on a real node: symptom first, then
#   endpoints, then rules, then conntrack.
# - Fix each one, and let the check confirm it from the live lab.
#
# A short method that covers most cases:
#
# | symptom from a client | usual cause | where to look |
# |---|---|---|
# | refused at once | no endpoints: kube-proxy REJECTs | EndpointSlices, selector, readiness, replicas |
# | refused by the pod | wrong `targetPort` | EndpointSlice ports vs the container's ports |
# | timeout | no rule matched (no proxy, or rules missing) | `iptables -t nat -S`, `nft list ruleset` |
# | works for new clients only | stale conntrack entry | `conntrack -L` on the client's node |

# %%
from kplab.grading import check, start

lab = start("08-troubleshooting")  # run again to start over
N1 = lab.netns("node-1")
lab.apply("manifests/broken.yaml")


# %%
def probe(service, n=4):
    """Send a few requests from `client` and say what happened."""
    res = lab.curl("client", f"{service}:80", n=n, timeout=0.5)
    print(f"{service}: {res.ok} answered, {res.failed} failed {res.errors or ''} {res.backends or ''}")


for name in ("shop", "cart", "pay", "web"):
    probe(name)

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
# only expires after a quiet period, and this client never goes quiet. kube-proxy clears such
# entries when it notices endpoints going away; when that is missed, you clear it yourself.

# %% tags=["solution"]
!ip netns exec {N1} conntrack -D -p udp --orig-port-src 5353
print("the old flow reaches:", packets.udp("web:dns", sport=5353).json()["pod"])

# %% tags=["check"]
check("08-troubleshooting/udp-flow-moved")

# %% [markdown]
# ## What you saw
#
# - Refused at once from a ClusterIP means no endpoints: check replicas, readiness and whether
#   the selector matches any pod's labels.
# - Refused by the pod, with endpoints present, points at the port: `targetPort` must be a port
#   the container listens on.
# - Timeouts point at missing rules. kube-proxy only rewrites what changed, so hand edits can
#   stay broken until a full resync.
# - Conntrack outlives rule changes: established flows, UDP ones especially, keep their old
#   DNAT until the entry is deleted or expires.
