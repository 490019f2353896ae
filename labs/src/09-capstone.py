# %% [markdown]
# # 09 · Capstone: an unfamiliar node
#
# **Prerequisites:** notebooks 03 (iptables), 05 (nftables) and 08 (troubleshooting).
# **Time:** about 45 minutes. **Previous:** [08 · troubleshooting](08-troubleshooting.ipynb).
# **Next:** [10 · eBPF](10-ebpf.ipynb), a look beyond kube-proxy.
#
# You are handed a node of a cluster you have never seen: a shop of four apps (`frontend`,
# `catalog`, `orders`, `payments`), each behind its Service, and `client` as a pod beside them.
# Customers say part of the shop is broken. Your job, as an SRE would do it:
#
# 1. read the node's rules with `kplab explain` and find which Service is broken, and why;
# 2. fix it;
# 3. migrate the node from iptables to nftables mode;
# 4. prove, with counters and a trace, that every Service behaves as before.
#
# Every step is graded on the live kernel. No solution is shown in the learner's edition:
# use what notebooks 01 to 08 taught.
#
# | in the notebook | from a terminal | on a real cluster |
# |---|---|---|
# | `lab.exec("node-1", ["iptables-save"])` | `kplab exec node-1 -- iptables-save` | `iptables-save` on the node |
# | `explain(text)` | `kplab explain node-1.txt` | the same, on a copied dump (no root) |
# | `lab.curl("client", "catalog:80", n=10)` | `kplab curl client catalog -n 10` | `kubectl exec client -- curl catalog` |
# | `lab.set_mode(MODE)` | `kplab mode MODE` | `mode: nftables` in the kube-proxy ConfigMap, then restart its pods |
# | `counting(lab, "frontend")` | `kplab counters frontend --from client -n 60` | `nft monitor trace` (upstream's rules carry no counters) |
# | `lab.trace(FROM, TARGET)` | `kplab trace FROM TARGET` | `nft monitor trace` with `meta nftrace set 1` for the flow |

# %%
from kplab.course import answer
from kplab.grading import check, start
from kplab.inspect.counters import counting
from kplab.inspect.explain import explain
from kplab.widgets import path_picture

lab = start("09-capstone")  # run again to start over
N1 = lab.netns("node-1")
APPS = ("frontend", "catalog", "orders", "payments")
lab.mode

# %% [markdown]
# ## The node, as its rules tell it
#
# Take node-1's rules, exactly as you would copy them off a real node (`iptables-save >
# node-1.txt`), and let `kplab explain` organise them by Service: which chains are whose, each
# endpoint's real share, affinity, and anomalies. (On a file: `kplab explain node-1.txt`, in a
# terminal, anywhere, without root.)

# %%
dump = lab.exec("node-1", ["iptables-save"]).stdout
print(explain(dump).text())

# %% [markdown]
# And what a customer sees, from `client`:

# %%
for app in APPS:
    res = lab.curl("client", f"{app}:80", n=4, timeout=0.5)
    print(f"{app:9} {res.ok} answered, {res.failed} failed  {sorted(res.backends)}")

# %% [markdown]
# ## Exercise 1 · which Service is broken?
#
# Name it: `answer("09-capstone/broken-service", "<name>")`. The check reads node-1's rules again
# and holds your answer against them.

# %% tags=["solution"]
broken = next(s.name.split("/")[1].split(":")[0] for s in explain(dump).services
              if not s.endpoints and s.name.split("/")[1].split(":")[0] in APPS)
answer("09-capstone/broken-service", broken)

# %% tags=["check"]
check("09-capstone/broken-service")

# %% [markdown]
# ## Exercise 2 · fix it
#
# Find *why* it has no endpoints (compare what the Service selects with the pods' labels:
# `lab.get("svc", ...)`, `lab.describe(...)`, `kplab describe svc NAME`), then fix it so that
# every app answers from `client` and every ready pod of each app gets traffic.

# %% tags=["solution"]
lab.apply("""
apiVersion: v1
kind: Service
metadata: {name: catalog}
spec:
  selector: {app: catalog, tier: back-end}
  ports: [{name: http, port: 80, targetPort: 8080}]
""")

# %% tags=["check"]
check("09-capstone/all-answer")

# %% [markdown]
# ## Exercise 3 · migrate to nftables, and prove nothing changed
#
# Before you switch, measure: for each app, how the kernel spreads 60 new connections from
# `client` (the counters), and whether `orders` keeps each client on one pod (it has
# `sessionAffinity: ClientIP`). Then switch node-1 and node-2 to nftables mode and measure
# again. The check verifies the migration on the kernel: no iptables rules of kube-proxy left
# behind, every app answering, every ready endpoint chosen, affinity kept.

# %%
def spread(app, n=60):
    with counting(lab, app, "http") as kernel:
        lab.curl("client", f"{app}:80", n=n)
    return dict(sorted(kernel.per_pod.items()))


before = {app: spread(app) for app in APPS}
before

# %% tags=["solution"]
lab.set_mode("nftables")
after = {app: spread(app) for app in APPS}
for app in APPS:
    print(f"{app:9} before {before[app]}\n{'':9} after  {after[app]}")

# %% tags=["check"]
check("09-capstone/migrated")

# %% [markdown]
# ## Exercise 4 · one connection, traced
#
# Trace one connection from `client` to `catalog` (the Service you repaired) in nftables mode,
# read its path, and answer which endpoint chain took it:
# `answer("09-capstone/traced-after-migration", "endpoint-...")`. The check holds it against the
# kernel's trace of that connection.

# %% tags=["solution"]
t = lab.trace("client", "catalog")
answer("09-capstone/traced-after-migration", next(h.chain for h in t.hops if h.nat.startswith("DNAT")))
path_picture(lab, t)

# %% tags=["check"]
check("09-capstone/traced-after-migration")

# %% [markdown]
# ## What you did
#
# - Read an unfamiliar node from its rules alone, found the Service with no endpoints and why
#   (a selector that matched no pod's labels), and fixed the cause.
# - Migrated kube-proxy's mode and proved, on the kernel, that the Services behave the same:
#   the same endpoints chosen, the same affinity, nothing left of the old mode.
# - That is the whole course: a Service is data; kube-proxy turns it into kernel state, in one
#   of several ways; and the kernel itself (rules, counters, conntrack, traces) is where you look.
