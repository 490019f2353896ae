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

# %% [markdown]
# **Before you start.** Prerequisites: 03. Time: about 25 minutes without IPVS in the kernel, 50 with it.
# Previous: [03 · iptables mode](03-iptables.ipynb). Next: [05 · nftables mode](05-nftables.ipynb).
# The first code cell puts the lab in this notebook's starting state (run it again to start
# over). After a kernel restart, do not re-run it: `from kplab.notebook import resume; resume()`
# gives you its names back and the lab as you left it.
#
# What this notebook does from Python, and the same from a terminal and on a real cluster:
#
# | in the notebook | from a terminal | on a real cluster |
# |---|---|---|
# | `lab.set_mode(MODE)` | `kplab mode MODE` | `kubectl edit cm kube-proxy -n kube-system` (`mode:`), then restart the kube-proxy pods |
# | `lab.exec("node-1", ["iptables-save"])` | `kplab exec node-1 -- iptables-save` | `iptables-save` on the node (ssh, or `kubectl debug node/...`) |

# %%
from kplab.course import answer
from kplab.grading import check, start
from kplab.inspect.explain import explain
from kplab.proxy.base import proxier_class
from kplab.widgets import PathPicture, path_picture
from kplab.widgets.path import read_layout

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
# If it is missing, here is what to do. On a normal Linux host: `modprobe -a ip_vs ip_vs_rr` (the
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
# ## Where IPVS acts
#
# IPVS is not a netfilter *table*: it registers its own functions on the netfilter hooks, and
# the one that schedules new connections sits at **LOCAL_IN** (INPUT, priority 99, after the
# filter table), not in PREROUTING. A packet for a ClusterIP reaches INPUT only because
# `kube-ipvs0` holds that address, so routing decides "local". IPVS then rewrites the
# destination to a real server and sends the packet out through POSTROUTING, where
# `KUBE-POSTROUTING` masquerades what needs it. (iptables and nftables modes DNAT in nat
# PREROUTING instead, before routing.) With IPVS here, one traced connection (read from
# conntrack: IPVS is not netfilter rules, so there is nothing for `-j TRACE` to report);
# without it, IPVS's hooks drawn where they would be on this node.

# %%
if HAVE_IPVS and lab.mode == "ipvs":
    picture = path_picture(lab, lab.trace("client", "web"))
else:
    picture = PathPicture({**read_layout(lab), "mode": "ipvs (where its hooks would be)", "ipvs": True})
picture

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
# ## Exercise 3 · least connection, with connections that stay open
#
# `lab.curl` opens and closes its connections, so every real server looks idle to `lc`. Held
# connections show what it does: below, six connections from `client` stay open, and `ipvsadm`
# counts them per real server (`ActiveConn`; a closed one lingers a while as `InActConn`).
# `lc` gives a new connection to the real server with the least `256 × ActiveConn + InActConn`.
#
# Close every connection to one pod (`held.close(POD)`), keep the others open, read `ipvsadm`
# again, and predict which pod the **next** new connection goes to:
# `answer("04-ipvs/lc-next", "<pod>")`. The check reads the kernel's counts and opens one
# connection itself.

# %%
from kplab.course.held import hold

if HAVE_IPVS and lab.mode == "ipvs":
    held = hold(lab, "client", "web:80", n=6)
    print(held)
    !ip netns exec {N1} ipvsadm -Ln -t {lab.service_ip("web")}:80
else:
    print("skipped: the lab is not in IPVS mode (no IPVS in this kernel, or exercise 1 not done)")

# %% tags=["solution"]
if HAVE_IPVS:
    quiet = min(held.by_pod())
    held.close(quiet)
    !ip netns exec {N1} ipvsadm -Ln -t {lab.service_ip("web")}:80
    answer("04-ipvs/lc-next", quiet)
else:
    print("skipped: no IPVS in this kernel")

# %% tags=["check"]
check("04-ipvs/lc-next")

# %% [markdown]
# ## Exercise 4 · a terminating endpoint drains
#
# When a pod terminates, its endpoint leaves the ready set. iptables and nftables modes simply
# stop sending new connections there (conntrack keeps the open ones); IPVS mode must do it
# itself: kube-proxy sets the real server's **weight to 0** (no new connections, the open ones
# keep working) and deletes it only when its connections are gone.
#
# Keep one connection open to a pod, then make that pod terminate
# (`lab.set_ready(POD, False, terminating=True)`, what `kubectl delete pod` starts). Read its real
# server in `ipvsadm` and check that the open connection still answers (`one.ask()`).

# %%
if HAVE_IPVS and lab.mode == "ipvs":
    held.close()
    one = hold(lab, "client", "web:80")
    pod = one.conns[0][1]
    print("held open to", pod)
else:
    print("skipped: the lab is not in IPVS mode")

# %% tags=["solution"]
if HAVE_IPVS:
    lab.set_ready(pod, False, terminating=True)
    !ip netns exec {N1} ipvsadm -Ln -t {lab.service_ip("web")}:80
    print("the open connection answers from", one.ask())
else:
    print("skipped: no IPVS in this kernel")

# %% tags=["check"]
check("04-ipvs/drain")

# %% [markdown]
# ## Exercise 5 · ClientIP affinity is persistence
#
# iptables mode builds affinity from `-m recent` lists, nftables from a map with timeouts; IPVS
# has it built in: a *persistent* virtual server remembers each client address for a timeout
# (`-p SECONDS`, shown as `persistent N` by `ipvsadm -Ln`). Give `web` ClientIP affinity
# (`manifests/web-affinity.yaml`), find its persistence in `ipvsadm`, and see that `client`'s new
# connections all reach one pod.

# %% tags=["solution"]
if HAVE_IPVS:
    lab.apply("manifests/web-affinity.yaml")
    !ip netns exec {N1} ipvsadm -Ln -t {lab.service_ip("web")}:80
    print(lab.curl("client", "web:80", n=10).backends)
else:
    print("skipped: no IPVS in this kernel")

# %% tags=["check"]
check("04-ipvs/persistence")

# %% [markdown]
# ## Exercise 6 · IPVS on any kernel: what node-1 would be given
#
# IPVS mode can be *rendered* without IPVS in the kernel: the exact virtual servers, real
# servers, ipsets and iptables rules kube-proxy would load on node-1 for the Services the lab has
# right now (`kplab render ipvs -f FILES` does it for manifests, without root). Below, the IPVS
# part of it, in `ipvsadm -Sn` syntax (`-A` a virtual server, `-a` one of its real servers).
#
# Before you count: how many **virtual servers** will node-1 have for the Service `web`?
# (Think of what a Service is made of: its ClusterIP ports, and each NodePort on every address
# of the node that kube-proxy uses.) Record it with `answer("04-ipvs/web-virtual-servers", n)`;
# the check renders node-1 from the live objects and counts.

# %%
rendered = proxier_class("ipvs").preview(lab.state("node-1"))
ipvs_dump = "\n".join(ln for ln in rendered.splitlines() if ln.split()[:2] in (["-A", "-t"], ["-A", "-u"],
                                                                                 ["-a", "-t"], ["-a", "-u"]))
print(ipvs_dump)

# %% tags=["solution"]
web_ports = {f"{lab.service_ip('web')}:{p.port}" for s in lab.services() if s.metadata.name == "web"
             for p in s.spec.ports}
web_nodeports = {str(p.node_port) for s in lab.services() if s.metadata.name == "web" for p in s.spec.ports}
answer("04-ipvs/web-virtual-servers", sum(1 for ln in ipvs_dump.splitlines() if ln.startswith("-A ") and
                                          (ln.split()[2] in web_ports or ln.split()[2].rsplit(":", 1)[1] in web_nodeports)))

# %% tags=["check"]
check("04-ipvs/web-virtual-servers")

# %% [markdown]
# `kplab explain` reads such a dump (or a real node's `ipvsadm -Ln`) and organises it: virtual
# servers grouped into Service ports, real servers with their share under the scheduler. IPVS
# carries no names, so without `--services` (a `kubectl get svc,endpointslices -o yaml`) it can
# only group NodePorts by port and real servers. On a real node: `ipvsadm -Ln > dump.txt`, then
# `kplab explain dump.txt` anywhere (no root, no lab).

# %%
print(explain(ipvs_dump).text())

# %% [markdown]
# ## The schedulers, on paper
#
# | scheduler | picks | good for | beware |
# |---|---|---|---|
# | `rr` round robin (default) | each real server in turn | equal servers, short requests | ignores load |
# | `wrr` weighted round robin | in turn, in proportion to weight | unequal servers | weights are static |
# | `lc` least connection | the server with fewest active (+ inactive/256) connections | long-lived connections | a new server gets a burst |
# | `sh` source hashing | hash of the client IP | stickiness without state | uneven when clients are few |
# | `mh` Maglev hashing | consistent hash, small disruption on change | stickiness across changes | needs a recent kernel |
#
# kube-proxy sets one scheduler for all Services (`--ipvs-scheduler`); ClientIP affinity is IPVS
# *persistence* (`-p <timeout>`), and an endpoint going away first gets **weight 0** (no new
# connections, existing ones drain) before kube-proxy removes it.

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
