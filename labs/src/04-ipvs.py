# %% [markdown]
# # 04 · IPVS mode: the kernel's load balancer
#
# **Goals**
# - See a Service as IPVS sees it: a *virtual server* (ClusterIP:port) with *real servers* (pods).
# - Meet the schedulers (round robin, least connection, source hashing...) and the helpers
#   IPVS mode needs: the `kube-ipvs0` dummy interface and ipsets.
# - Know how a cluster was switched to IPVS mode, and why you would not do it today.
#
# **Status today:** IPVS mode was GA in 1.11 and is **deprecated since 1.35**: kube-proxy warns
# at startup, and the plan is to turn it off by default around 1.40 and remove it later. The
# reasons given upstream: the IPVS API fits Kubernetes Services poorly, and too few people
# maintain it. nftables mode (notebook 05) gives the same hash-table lookups and is the
# recommended replacement.

# %%
from kplab.grading import check, start
from kplab.proxy.base import proxier_class

lab = start("04-ipvs")  # run again to start over
N1 = lab.netns("node-1")
found = proxier_class("ipvs").doctor()
HAVE_IPVS = found.available
print("IPVS here:", found.detail)

# %% [markdown]
# ## Does this kernel have IPVS?
#
# IPVS is a kernel module (`ip_vs`, plus one module per scheduler: `ip_vs_rr`, `ip_vs_lc`...).
# On a node you would check with `lsmod | grep ip_vs`, or look for `/proc/net/ip_vs`.
#
# If it is missing, here is what to do. On a normal Linux host: `modprobe ip_vs ip_vs_rr` (the
# kernel must be built with `CONFIG_IP_VS`). In a container: load the modules on the host, or
# mount `/lib/modules` read-only and grant `SYS_MODULE`. In this repository, `make test-ipvs`
# runs the IPVS tests in a throwaway VM with Debian's stock kernel, which has IPVS. Without it,
# this notebook's cells say "skipped" and its checks are skipped too; read on, the rest of the
# course does not depend on it.

# %%
if not HAVE_IPVS:
    print("No IPVS in this kernel. What would fix it:")
    print(found.fix)
else:
    !ls /proc/net/ip_vs

# %% [markdown]
# ## Exercise 1 · switch the lab to IPVS
#
# On a real cluster the mode lives in kube-proxy's configuration: edit the `kube-proxy`
# ConfigMap in `kube-system`, set `mode: "ipvs"`, then delete the kube-proxy pods so their
# DaemonSet restarts them with the new setting. In the lab it is one call.

# %% tags=["solution"]
if HAVE_IPVS:
    lab.set_mode("ipvs")
else:
    print("skipped: no IPVS in this kernel")

# %% tags=["check"]
check("04-ipvs/virtual-servers")

# %% [markdown]
# With IPVS on, `ipvsadm -Ln` lists every virtual server and its real servers, and every
# ClusterIP is an address of the dummy interface `kube-ipvs0`: the node treats Service IPs as
# its own, and IPVS intercepts them on input. iptables is still there, but with a constant
# number of rules matching ipsets (masquerading, NodePorts, hairpin).

# %%
if HAVE_IPVS:
    !ip netns exec {N1} ipvsadm -Ln
    !ip netns exec {N1} ip -brief address show kube-ipvs0
    !ip netns exec {N1} ipset list -name
else:
    print("skipped: no IPVS in this kernel")

# %% [markdown]
# ## Exercise 2 · another scheduler
#
# IPVS schedulers are chosen per kube-proxy (`--ipvs-scheduler`), for every Service at once:
# `rr` (the default), `wrr`, `lc` (least connections), `sh` (source hashing), `mh` (Maglev) and
# more. Switch the lab to least connections.

# %% tags=["solution"]
if HAVE_IPVS:
    lab.set_mode("ipvs", scheduler="lc")
    !ip netns exec {N1} ipvsadm -Ln
else:
    print("skipped: no IPVS in this kernel")

# %% tags=["check"]
check("04-ipvs/scheduler-lc")

# %% [markdown]
# ## What you saw (or would have)
#
# - IPVS mode maps each Service address and port to an IPVS virtual server whose real servers
#   are the endpoints; lookups are hash-table lookups, so the cost does not grow with the
#   number of Services.
# - It offers schedulers beyond random choice, ClientIP affinity as "persistence", and a
#   graceful drain (weight 0) for endpoints going away.
# - It needs kernel modules, binds every Service IP to `kube-ipvs0`, and still needs iptables
#   and ipsets around it. Deprecated since 1.35: for the same scaling, use nftables mode.
