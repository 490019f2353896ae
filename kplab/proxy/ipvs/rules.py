"""What the IPVS mode programs, as pure data: upstream's pkg/proxy/ipvs syncProxyRules, no I/O.

From one node's ProxyState, `build_plan()` computes what upstream's IPVS proxier writes:

    kube-ipvs0 (dummy)   every ClusterIP, and external/LB IPs not already on another interface, as /32
    IPVS                 one virtual server per ClusterIP:port, externalIP:port, LB IP:port and
                         node IP:NodePort; one masquerading real server (weight 1) per endpoint
    ipsets               KUBE-CLUSTER-IP, KUBE-LOOP-BACK, KUBE-NODE-PORT-*, ... (ipset restore syntax)
    iptables             a constant set of rules matching those sets (iptables-restore syntax)

`render_text()` prints all four the way their own tools would load them (`ipvsadm --restore`,
`ipset restore`, `iptables-restore`), which is what `kplab render ipvs` shows.  The kernel side
(proxier.py) applies the same plan over netlink.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from kplab.errors import ProxierError
from kplab.formats import ipset
from kplab.formats.iptables_save import Dump
from kplab.proxy.core import MASQ_MARK, ProxyState, ServicePort, categorize_endpoints
from kplab.proxy.localdetect import detector
from kplab.proxy.xtables import ensure_lines, merge, owned_by

DUMMY_DEVICE = "kube-ipvs0"
DEFAULT_SCHEDULER = "rr"
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")
FLAG_PERSISTENT = 0x1  # IP_VS_SVC_F_PERSISTENT: ClientIP affinity
FLAG_HASHED = 0x2  # set by the kernel on every service it holds; not ours to compare
FLAG_SOURCE_HASH = 0x10  # IP_VS_SVC_F_SCHED2: mh-port (upstream sets it for "mh")
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
IPVSADM_PROTO = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}

# ipset name -> (type, comment), as upstream's ipsetInfo
IPSETS: dict[str, tuple[str, str]] = {
    "KUBE-LOOP-BACK": (
        "hash:ip,port,ip",
        "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
    ),
    "KUBE-CLUSTER-IP": ("hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    "KUBE-EXTERNAL-IP": (
        "hash:ip,port",
        "Kubernetes service external ip + port for masquerade and filter purpose",
    ),
    "KUBE-EXTERNAL-IP-LOCAL": (
        "hash:ip,port",
        "Kubernetes service external ip + port with externalTrafficPolicy=local",
    ),
    "KUBE-LOAD-BALANCER": ("hash:ip,port", "Kubernetes service lb portal"),
    "KUBE-LOAD-BALANCER-FW": (
        "hash:ip,port",
        "Kubernetes service load balancer ip + port for load balancer with sourceRange",
    ),
    "KUBE-LOAD-BALANCER-LOCAL": (
        "hash:ip,port",
        "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
    ),
    "KUBE-LOAD-BALANCER-SOURCE-IP": (
        "hash:ip,port,ip",
        "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
    ),
    "KUBE-LOAD-BALANCER-SOURCE-CIDR": (
        "hash:ip,port,net",
        "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
    ),
    "KUBE-NODE-PORT-TCP": ("bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    "KUBE-NODE-PORT-LOCAL-TCP": (
        "bitmap:port",
        "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
    ),
    "KUBE-NODE-PORT-UDP": ("bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    "KUBE-NODE-PORT-LOCAL-UDP": (
        "bitmap:port",
        "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
    ),
    "KUBE-NODE-PORT-SCTP-HASH": (
        "hash:ip,port",
        "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
    ),
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH": (
        "hash:ip,port",
        "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
    ),
    "KUBE-HEALTH-CHECK-NODE-PORT": ("bitmap:port", "Kubernetes health check node port"),
    "KUBE-IPVS-IPS": ("hash:ip", "Kubernetes service IP addresses bound to the IPVS dummy interface"),
}

CHAINS = {  # table -> the chains this mode declares and owns (cleanup removes these and the jumps to them)
    "nat": ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ"),
    "filter": ("KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL",
               "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER"),
}
owned = owned_by(CHAINS)
# (table, built-in chain, our chain, extra matches, comment): upstream's iptablesJumpChain, each
# prepended once (kplab.proxy.xtables' jump shape)
JUMPS = (
    ("nat", "OUTPUT", "KUBE-SERVICES", "", "kubernetes service portals"),
    ("nat", "PREROUTING", "KUBE-SERVICES", "", "kubernetes service portals"),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "", "kubernetes postrouting rules"),
    ("filter", "FORWARD", "KUBE-FORWARD", "", "kubernetes forwarding rules"),
    ("filter", "INPUT", "KUBE-NODE-PORT", "", "kubernetes health check rules"),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", "", "kube-proxy firewall rules"),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "", "kube-proxy firewall rules"),
    ("filter", "INPUT", "KUBE-IPVS-FILTER", "", "kubernetes ipvs access filter"),
    ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", "", "kubernetes ipvs access filter"),
)


# (set, table, from chain, target, match type, protocol): upstream's ipsetWithIptablesChain, in order
SET_RULES = (
    ("KUBE-LOOP-BACK", "nat", "KUBE-POSTROUTING", "MASQUERADE", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER", "nat", "KUBE-SERVICES", "KUBE-LOAD-BALANCER", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-LOCAL", "nat", "KUBE-LOAD-BALANCER", "RETURN", "dst,dst", ""),
    ("KUBE-NODE-PORT-LOCAL-TCP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "tcp"),
    ("KUBE-NODE-PORT-TCP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "tcp"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "udp"),
    ("KUBE-NODE-PORT-UDP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "udp"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "nat", "KUBE-NODE-PORT", "RETURN", "dst,dst", "sctp"),
    ("KUBE-NODE-PORT-SCTP-HASH", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst,dst", "sctp"),
    ("KUBE-LOAD-BALANCER-FW", "filter", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
)


@dataclass(frozen=True, order=True)
class VirtualServer:
    ip: str
    port: int
    protocol: str  # TCP, UDP, SCTP
    scheduler: str = DEFAULT_SCHEDULER
    flags: int = 0  # FLAG_PERSISTENT | FLAG_SOURCE_HASH
    timeout: int = 0  # persistence timeout (ClientIP affinity seconds)

    @property
    def key(self) -> str:
        """Upstream's VirtualServer.String(): "ip:port/PROTO"."""
        return f"{self.ip}:{self.port}/{self.protocol}"


@dataclass(frozen=True, order=True)
class RealServer:
    ip: str
    port: int
    weight: int = 1

    @property
    def key(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass
class ServerPlan:
    vs: VirtualServer
    reals: list[RealServer]
    service: str  # "default/web:http"
    kind: str  # cluster-ip, external-ip, load-balancer, node-port

    def fingerprint(self) -> str:
        """Digest of everything the kernel holds for this virtual server (for partial syncs)."""
        blob = repr((self.vs, sorted(self.reals)))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class IpvsPlan:
    servers: list[ServerPlan] = field(default_factory=list)
    bind_addrs: list[str] = field(default_factory=list)  # on kube-ipvs0, as /32
    ipsets: dict[str, set[str]] = field(default_factory=dict)  # every set in IPSETS, maybe empty
    no_node_access: list[tuple[str, str, int]] = field(default_factory=list)  # (LB IP, proto, port)
    iptables: str = ""  # the iptables-restore input, without the jumps from built-in chains


def check_scheduler(name: str) -> str:
    if name not in SCHEDULERS:
        raise ProxierError(f"unknown IPVS scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    return name


def _vs(svc: ServicePort, ip: str, port: int, scheduler: str) -> VirtualServer:
    flags, timeout = 0, 0
    if svc.session_affinity_seconds:
        flags, timeout = FLAG_PERSISTENT, svc.session_affinity_seconds
    if scheduler == "mh":
        flags |= FLAG_SOURCE_HASH
    return VirtualServer(ip, port, svc.protocol, scheduler, flags, timeout)


def _reals(state: ProxyState, svc: ServicePort, only_local: bool) -> list[RealServer]:
    """Upstream's syncEndpoint: local endpoints when the policy says Local, falling back to the
    cluster ones when there are none (PR #97081: reachable from local pods, replies from outside lost)."""
    cat = categorize_endpoints(state.endpoints_of(svc.name), svc)
    eps = (cat.local or cat.cluster) if only_local else cat.cluster
    return sorted({RealServer(e.ip, e.port) for e in eps})


def _entry(ip: str, proto: str, port: int, extra: str = "") -> str:
    """An ipset member as `ipset save` prints it: 10.96.0.10,tcp:80[,second]."""
    return f"{ip},{proto}:{port}" + (f",{extra}" if extra else "")


def _net(cidr: str) -> str:
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def build_plan(
    state: ProxyState,
    scheduler: str = DEFAULT_SCHEDULER,
    nodeport_ips: tuple[str, ...] | None = None,
    local_addrs: tuple[str, ...] | None = None,
) -> IpvsPlan:
    """The whole plan for one node.  `nodeport_ips`: addresses that get NodePort virtual servers
    (upstream: every local address but kube-ipvs0'; default state.node_ips); `local_addrs`: node
    addresses, which are never bound to kube-ipvs0 (default state.node_ips)."""
    check_scheduler(scheduler)
    nodeport_ips = tuple(state.node_ips if nodeport_ips is None else nodeport_ips)
    local = frozenset(state.node_ips if local_addrs is None else local_addrs)
    return merge_parts(state, plan_parts(state, state.sorted_services(), scheduler, nodeport_ips, local))


def plan_parts(state: ProxyState, services: Iterable[ServicePort], scheduler: str,
               nodeport_ips: tuple[str, ...], local: frozenset[str]) -> dict[str, IpvsPlan]:  # fmt: skip
    """Each Service's share of the plan (its ports' service_plan() merged), by namespace/name."""
    parts: dict[str, IpvsPlan] = {}
    for svc in services:
        _merge(parts.setdefault(svc.name.namespaced_name, IpvsPlan()),
               service_plan(state, svc, scheduler, nodeport_ips, local))  # fmt: skip
    return parts


def merge_parts(state: ProxyState, parts: dict[str, IpvsPlan]) -> IpvsPlan:
    """The whole plan from every Service's share, with the constant iptables rules over the sets."""
    plan = IpvsPlan(ipsets={name: set() for name in IPSETS})
    for part in parts.values():
        _merge(plan, part)
    plan.bind_addrs = sorted(plan.ipsets["KUBE-IPVS-IPS"], key=lambda a: ipaddress.ip_address(a))
    plan.iptables = iptables_restore(state, plan)
    return plan


def _merge(plan: IpvsPlan, part: IpvsPlan) -> None:
    plan.servers += part.servers
    plan.no_node_access += part.no_node_access
    for name, members in part.ipsets.items():
        plan.ipsets.setdefault(name, set()).update(members)


def service_plan(state: ProxyState, svc: ServicePort, scheduler: str, nodeport_ips: tuple[str, ...],
                 local: frozenset[str]) -> IpvsPlan:  # fmt: skip
    """One Service port's share of the plan: its virtual servers, the set members it adds (only the sets
    it has members in; KUBE-IPVS-IPS holds the addresses it binds) and its no-node-access LB ports.
    A partial sync builds only the changed ports' shares (kplab.proxy.ipvs.delta)."""
    plan = IpvsPlan()
    if svc.cluster_ip in ("", "None"):
        return plan
    sets: dict[str, set[str]] = defaultdict(set)
    bind = sets["KUBE-IPVS-IPS"]
    proto = svc.protocol.lower()
    name = str(svc.name)
    node_ip = state.node_ips[0] if state.node_ips else ""
    for e in state.endpoints_of(svc.name):
        if e.is_local:
            sets["KUBE-LOOP-BACK"].add(_entry(e.ip, proto, e.port, e.ip))
    sets["KUBE-CLUSTER-IP"].add(_entry(svc.cluster_ip, proto, svc.port))
    vs = _vs(svc, svc.cluster_ip, svc.port, scheduler)
    plan.servers.append(ServerPlan(vs, _reals(state, svc, svc.internal_policy_local), name, "cluster-ip"))
    bind.add(svc.cluster_ip)
    external = _reals(state, svc, svc.external_policy_local)
    for ip in svc.external_ips:
        sets["KUBE-EXTERNAL-IP-LOCAL" if svc.external_policy_local else "KUBE-EXTERNAL-IP"].add(
            _entry(ip, proto, svc.port)
        )
        plan.servers.append(ServerPlan(_vs(svc, ip, svc.port, scheduler), external, name, "external-ip"))
        if ip not in local:
            bind.add(ip)
    for ip in svc.load_balancer_ips:
        entry = _entry(ip, proto, svc.port)
        sets["KUBE-LOAD-BALANCER"].add(entry)
        if svc.external_policy_local:
            sets["KUBE-LOAD-BALANCER-LOCAL"].add(entry)
        if svc.load_balancer_source_ranges:
            sets["KUBE-LOAD-BALANCER-FW"].add(entry)
            for cidr in svc.load_balancer_source_ranges:
                sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"].add(_entry(ip, proto, svc.port, _net(cidr)))
            if node_ip and any(
                ipaddress.ip_address(node_ip) in ipaddress.ip_network(c, strict=False)
                for c in svc.load_balancer_source_ranges
            ):
                sets["KUBE-LOAD-BALANCER-SOURCE-IP"].add(_entry(ip, proto, svc.port, ip))
            else:
                plan.no_node_access.append((ip, proto, svc.port))
        plan.servers.append(ServerPlan(_vs(svc, ip, svc.port, scheduler), external, name, "load-balancer"))
        if ip not in local:
            bind.add(ip)
    if svc.node_port and nodeport_ips:
        suffix = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP-HASH"}[proto]
        if proto == "sctp":
            entries = {_entry(ip, proto, svc.node_port) for ip in nodeport_ips}
        else:
            entries = {str(svc.node_port)}
        sets[f"KUBE-NODE-PORT-{suffix}"] |= entries
        if svc.external_policy_local:
            sets[f"KUBE-NODE-PORT-LOCAL-{suffix}"] |= entries
        for ip in nodeport_ips:
            plan.servers.append(ServerPlan(_vs(svc, ip, svc.node_port, scheduler), external, name, "node-port"))
    if svc.health_check_node_port:
        sets["KUBE-HEALTH-CHECK-NODE-PORT"].add(str(svc.health_check_node_port))
    plan.ipsets = dict(sets)
    plan.bind_addrs = sorted(bind, key=lambda a: ipaddress.ip_address(a))
    return plan


def _c(name: str) -> str:
    """`-m comment` for a rule over one of our sets, with that set's comment (as upstream)."""
    return f'-m comment --comment "{IPSETS[name][1]}"'


def iptables_restore(state: ProxyState, plan: IpvsPlan) -> str:
    """Upstream's writeIptablesRules: constant rules over the ipsets (only non-empty sets get one)."""
    sets, mark = plan.ipsets, f"{MASQ_MARK}/{MASQ_MARK}"
    nat = ["-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN"]
    flt = []
    for name, table, chain, target, match, proto in SET_RULES:
        if sets[name]:
            p = f"-p {proto} " if proto else ""
            rule = f"-A {chain} {p}{_c(name)} -m set --match-set {name} {match} -j {target}"
            (nat if table == "nat" else flt).append(rule)
    if sets["KUBE-CLUSTER-IP"]:
        match = "KUBE-CLUSTER-IP dst,dst"
        local = detector(state)
        if not state.masquerade_all and local.implemented:
            match += " " + " ".join(local.if_not_local)  # off-cluster sources only (the local-traffic detector)
        elif not state.masquerade_all:
            match = "KUBE-CLUSTER-IP src,dst"
        nat.append(f"-A KUBE-SERVICES {_c('KUBE-CLUSTER-IP')} -m set --match-set {match} -j KUBE-MARK-MASQ")
    for name in ("KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        if sets[name]:
            base = f"-A KUBE-SERVICES {_c(name)} -m set --match-set {name} dst,dst"
            if name == "KUBE-EXTERNAL-IP":
                nat.append(f"{base} -j KUBE-MARK-MASQ")
            # from off the machine (not a bridge port, not a local source), or to an address that is local
            nat.append(f"{base} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
            nat.append(f"{base} -m addrtype --dst-type LOCAL -j ACCEPT")
    nat.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat.append("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ")
    flt.append("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP")
    for ip, proto, port in plan.no_node_access:
        flt.append(
            f"-A KUBE-IPVS-OUT-FILTER -s {ip} -m ipvs --vaddr {ip} --vproto {proto} --vport {port} -j DROP"
        )
    for name in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):  # accept what IPVS takes, whatever rules follow
        if sets[name]:
            nat.append(f"-A KUBE-SERVICES -m set --match-set {name} dst,dst -j ACCEPT")
    flt += [
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark} -j ACCEPT',
        (
            '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
            "RELATED,ESTABLISHED -j ACCEPT"
        ),
        (
            f"-A KUBE-NODE-PORT {_c('KUBE-HEALTH-CHECK-NODE-PORT')} -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT "
            "dst -j ACCEPT"
        ),
    ]
    for name in ("KUBE-LOAD-BALANCER", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        flt.append(f"-A KUBE-IPVS-FILTER -m set --match-set {name} dst,dst -j RETURN")
    flt += [
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
    ]
    nat += [
        f"-A KUBE-POSTROUTING -m mark ! --mark {mark} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        (
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE '
            "--random-fully"
        ),
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]
    lines = ["*nat", *(f":{c} - [0:0]" for c in CHAINS["nat"]), *nat, "COMMIT"]
    lines += ["*filter", *(f":{c} - [0:0]" for c in CHAINS["filter"]), *flt, "COMMIT"]
    return "\n".join(lines) + "\n"


def with_jumps(restore: str, dump: Dump) -> str:
    """`restore` with the jumps from built-in chains that `dump` lacks prepended (before each COMMIT)."""
    declared = {table: set(chains) for table, chains in CHAINS.items()}
    return merge(restore, ensure_lines(dump, declared, JUMPS, canary=False, position=""))


def ipset_restore(current: dict[str, set[str]], wanted: dict[str, set[str]]) -> str:
    """`ipset restore` input for our sets: create every one (-exist), then only the membership differences."""
    return ipset.restore_batch(current, wanted, {name: kind[0] for name, kind in IPSETS.items()})


def parse_ipset_save(text: str) -> dict[str, set[str]]:
    """Members per set from `ipset save` output (only our KUBE- sets)."""
    return ipset.parse_save(text, IPSETS)


def flags_text(vs: VirtualServer) -> str:
    parts = []
    if vs.flags & FLAG_PERSISTENT:
        parts.append(f"persistent {vs.timeout}")
    if vs.flags & FLAG_SOURCE_HASH:
        parts.append("mh-port")
    return " ".join(parts)


def ipvsadm_service(verb: str, vs: VirtualServer) -> str:
    """One `ipvsadm --restore` line for a virtual server: verb -A (add), -E (edit) or -D (delete)."""
    line = f"{verb} {IPVSADM_PROTO[vs.protocol]} {vs.ip}:{vs.port}"
    if verb == "-D":
        return line
    line += f" -s {vs.scheduler}"
    line += f" -p {vs.timeout}" if vs.flags & FLAG_PERSISTENT else ""
    return line + (" -b mh-port" if vs.flags & FLAG_SOURCE_HASH else "")


def ipvsadm_dest(verb: str, vs: VirtualServer, rs: RealServer, weight: int | None = None) -> str:
    """One `ipvsadm --restore` line for a real server: verb -a (add), -e (edit) or -d (delete); masquerade."""
    line = f"{verb} {IPVSADM_PROTO[vs.protocol]} {vs.ip}:{vs.port} -r {rs.key}"
    return line if verb == "-d" else f"{line} -m -w {rs.weight if weight is None else weight}"


def ipvsadm_lines(servers: list[ServerPlan]) -> list[str]:
    """The virtual and real servers in `ipvsadm --restore` syntax (-A service, -a real server)."""
    lines = []
    for sp in sorted(servers, key=lambda s: (s.vs.protocol, ipaddress.ip_address(s.vs.ip), s.vs.port)):
        lines.append(ipvsadm_service("-A", sp.vs))
        lines += [ipvsadm_dest("-a", sp.vs, rs) for rs in sp.reals]
    return lines


def render_text(state: ProxyState, plan: IpvsPlan) -> str:
    ips = ", ".join(state.node_ips) or "none"
    out = [f"# kube-ipvs0 (dummy): the addresses IPVS answers for, bound as /32 ({len(plan.bind_addrs)})"]
    out += [f"ip addr add {a}/32 dev {DUMMY_DEVICE}" for a in plan.bind_addrs]
    out += [
        "",
        f"# IPVS virtual and real servers ({len(plan.servers)} virtual servers), ipvsadm --restore syntax;",
        f"# NodePort virtual servers on {ips} (a node syncs every local address but kube-ipvs0's)",
    ]
    out += ipvsadm_lines(plan.servers)
    out += ["", "# ipsets, ipset restore syntax (sets created empty are listed too)"]
    out += [line.replace(" -exist", "") for line in ipset_restore({}, plan.ipsets).splitlines()]
    out += ["", "# iptables, iptables-restore --noflush syntax (the jumps are prepended once)"]
    out += with_jumps(plan.iptables, Dump()).splitlines()
    return "\n".join(out) + "\n"
