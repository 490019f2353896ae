// SPDX-License-Identifier: GPL-2.0
/* kplab's eBPF Service load balancer: a small, readable cousin of Cilium's kube-proxy replacement.
 *
 * One object, loaded once per lab node (its own maps), attached only inside the lab:
 *   sock4_connect / sock4_sendmsg / sock4_recvmsg  cgroup/{connect4,sendmsg4,recvmsg4} on the
 *       node's lab-owned cgroup v2 directory: the backend is chosen at connect()/sendmsg(), so the
 *       packets leave the pod already addressed to the backend (Cilium's bpf_sock.c);
 *   from_pod     tc ingress of each pod's node-side veth: per-packet DNAT of ClusterIP traffic and
 *       reverse NAT of replies (Cilium's bpf_lxc.c when socket LB is off);
 *   from_netdev  tc ingress of the node's eth0: NodePort, externalIP and LoadBalancer traffic
 *       arriving from outside, DNAT (+ SNAT to the node IP when the backend is on another node)
 *       (Cilium's bpf_host.c / nodeport.h).
 *
 * The maps follow Cilium's lb4 layout (bpf/lib/lb.h): a service key with slot 0 = the frontend
 * ("master": count, flags, rev-NAT id) and slots 1..count = backend ids; backends by id; rev-NAT
 * by id.  Addresses and ports are in network byte order, every other field in host order.
 * Connections the tc programs translate are kept in kplab_ct4: both directions of each
 * connection, keyed by the tuple seen on the wire, valued by the tuple to write.
 * Every load-balancing decision is also written to kplab_log (a ring of 256 slots) for `kplab trace`,
 * and counted per frontend and backend in kplab_counts for `kplab counters`.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define ECONNREFUSED 111

#define SCOPE_EXT 0 /* NodePort/externalIP/LB from outside; every frontend has it */
#define SCOPE_INT 1 /* in-cluster clients, written only when it differs (Cilium's "/i") */

/* lb4_service.flags (Cilium's values) */
#define SVC_EXTERNAL_IP 1
#define SVC_NODEPORT 2
#define SVC_EXT_LOCAL 4
#define SVC_AFFINITY 16
#define SVC_LOADBALANCER 32
#define SVC_ROUTABLE 64
#define SVC_SOURCE_RANGE 128
/* lb4_service.flags2 */
#define SVC2_INT_LOCAL 16
#define SVC2_TWO_SCOPES 32

#define BE_LOCAL 1 /* lb4_backend.flags: the backend runs on this node */

#define CT_FORWARD 1 /* kplab_ct4 value flags: client->frontend, rewritten to ->backend */
#define CT_REPLY 2
/* The rewritten packet has the node's own address as its source: the stack would drop it as a
 * martian, so it is sent on from here (as Cilium does): out of eth0 with the neighbour's MAC, or
 * (CT_L2) straight back to the client pod's veth with the MACs of the first packet swapped. */
#define CT_L2 4

#define HOOK_CONNECT 1
#define HOOK_SENDMSG 2
#define HOOK_RECVMSG 3
#define HOOK_FROM_POD 4
#define HOOK_FROM_NETDEV 5

#define LOG_SIZE 256
#define HAIRPIN_IP 0x012afea9 /* 169.254.42.1 in network order: a pod reaching itself via its Service */

struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};

struct lb4_service {
	__u32 backend_id; /* slot > 0: the backend; slot 0: the affinity timeout in seconds */
	__u16 count;
	__u16 rev_nat_index;
	__u8 flags;
	__u8 flags2;
	__u16 pad;
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb4_affinity_key {
	__u64 client_id; /* client IP (tc) or the pod's netns cookie (socket) */
	__u16 rev_nat_id;
	__u8 netns_cookie;
	__u8 pad[5];
};

struct lb4_affinity_val {
	__u64 last_used;
	__u32 backend_id;
	__u32 pad;
};

struct lb_affinity_match {
	__u32 backend_id;
	__u16 rev_nat_id;
	__u16 pad;
};

struct lb4_src_range_key {
	__u32 prefixlen; /* 32 (rev_nat_id + pad) + the CIDR's bits */
	__u16 rev_nat_id;
	__u16 pad;
	__be32 address;
};

struct tuple4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct ct4_val {
	struct tuple4 to; /* the tuple to write */
	__u16 rev_nat_index;
	__u8 flags;
	__u8 pad;
	__u32 backend_id;
	__u32 ifindex; /* non-zero: send it out of this device after the rewrite (see CT_L2) */
	__u8 eth[12]; /* CT_L2: the destination and source MAC to write first */
};

struct revsk_key {
	__u64 cookie;
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct config {
	__be32 node_ip;
	__u32 log_on;
	__u32 log_next;
	__u32 pad;
};

struct log_entry {
	__u64 ktime;
	__u32 hook;
	__be32 saddr;
	__be32 frontend;
	__be32 backend;
	__be16 sport;
	__be16 fport;
	__be16 bport;
	__u8 proto;
	__u8 scope;
	__u16 slot;
	__u16 rev_nat_index;
	__u32 backend_id;
	__s32 verdict; /* 0 translated, -ECONNREFUSED no backend, -1 denied by source range */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
} lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lb4_backend);
} lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
} lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb4_affinity_val);
} lb4_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_affinity_match);
	__type(value, __u8);
} lb_aff_match SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb4_src_range_key);
	__type(value, __u8);
} lb4_src_range SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct revsk_key);
	__type(value, struct lb4_reverse_nat);
} lb4_reverse_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct tuple4);
	__type(value, struct ct4_val);
} kplab_ct4 SEC(".maps");

struct lb_count_key {
	__u32 backend_id;
	__u16 rev_nat_index;
	__u16 pad;
};

/* New connections per (frontend, backend): what `kplab counters` reads (iptables' rule counters). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_count_key);
	__type(value, __u64);
} kplab_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} kplab_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LOG_SIZE);
	__type(key, __u32);
	__type(value, struct log_entry);
} kplab_log SEC(".maps");

/* ------------------------------------------------------------------ choosing a backend */

/* The frontend as an in-cluster (east_west) or outside client sees it: Cilium's lb4_lookup_service. */
static __always_inline struct lb4_service *lookup_service(struct lb4_key *key, int east_west)
{
	struct lb4_service *svc;

	key->backend_slot = 0;
	key->scope = SCOPE_EXT;
	svc = bpf_map_lookup_elem(&lb4_services, key);
	if (svc && east_west && (svc->flags2 & SVC2_TWO_SCOPES)) {
		key->scope = SCOPE_INT;
		svc = bpf_map_lookup_elem(&lb4_services, key);
	}
	return svc;
}

static __always_inline int source_allowed(const struct lb4_service *svc, __be32 saddr)
{
	struct lb4_src_range_key k = {.prefixlen = 64, .rev_nat_id = svc->rev_nat_index, .address = saddr};

	if (!(svc->flags & SVC_SOURCE_RANGE))
		return 1;
	return bpf_map_lookup_elem(&lb4_src_range, &k) != NULL;
}

/* Slot 1..count, or the backend this client had within the affinity timeout. Returns the backend id. */
static __always_inline __u32 select_backend(struct lb4_key *key, const struct lb4_service *svc,
					    __u64 client_id, __u8 is_cookie, __u32 hash, __u16 *slot_out)
{
	struct lb4_affinity_key ak = {.client_id = client_id, .rev_nat_id = svc->rev_nat_index,
				      .netns_cookie = is_cookie};
	struct lb4_affinity_val av = {};
	struct lb4_service *slot;
	__u64 now = bpf_ktime_get_ns();
	__u32 id = 0;

	if (svc->flags & SVC_AFFINITY) {
		struct lb4_affinity_val *old = bpf_map_lookup_elem(&lb4_affinity, &ak);

		if (old && old->last_used + (__u64)svc->backend_id * 1000000000ULL > now) {
			struct lb_affinity_match m = {.backend_id = old->backend_id,
						      .rev_nat_id = svc->rev_nat_index};

			if (bpf_map_lookup_elem(&lb_aff_match, &m)) {
				id = old->backend_id;
				*slot_out = 0;
			}
		}
	}
	if (!id) {
		key->backend_slot = (hash % svc->count) + 1;
		*slot_out = key->backend_slot;
		slot = bpf_map_lookup_elem(&lb4_services, key);
		key->backend_slot = 0;
		if (!slot)
			return 0;
		id = slot->backend_id;
	}
	if (svc->flags & SVC_AFFINITY) {
		av.last_used = now;
		av.backend_id = id;
		bpf_map_update_elem(&lb4_affinity, &ak, &av, BPF_ANY);
	}
	return id;
}

static __always_inline void count_backend(__u32 backend_id, __u16 rev_nat_index)
{
	struct lb_count_key k = {.backend_id = backend_id, .rev_nat_index = rev_nat_index};
	__u64 one = 1, *n = bpf_map_lookup_elem(&kplab_counts, &k);

	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&kplab_counts, &k, &one, BPF_NOEXIST);
}

static __always_inline void log_decision(__u32 hook, __be32 saddr, __be16 sport, const struct lb4_key *key,
					 const struct lb4_service *svc, __u16 slot, __u32 backend_id,
					 const struct lb4_backend *be, __s32 verdict)
{
	__u32 zero = 0, idx;
	struct config *cfg = bpf_map_lookup_elem(&kplab_config, &zero);
	struct log_entry *e;

	if (!cfg || !cfg->log_on)
		return;
	idx = __sync_fetch_and_add(&cfg->log_next, 1) % LOG_SIZE;
	e = bpf_map_lookup_elem(&kplab_log, &idx);
	if (!e)
		return;
	e->ktime = bpf_ktime_get_ns();
	e->hook = hook;
	e->saddr = saddr;
	e->sport = sport;
	e->frontend = key->address;
	e->fport = key->dport;
	e->proto = key->proto;
	e->scope = key->scope;
	e->slot = slot;
	e->rev_nat_index = svc ? svc->rev_nat_index : 0;
	e->backend_id = backend_id;
	e->backend = be ? be->address : 0;
	e->bport = be ? be->port : 0;
	e->verdict = verdict;
}

/* ------------------------------------------------------------------ socket LB (cgroup hooks) */

static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, __u32 hook)
{
	struct lb4_key key = {.address = ctx->user_ip4, .dport = (__be16)ctx->user_port,
			      .proto = (__u8)ctx->protocol};
	struct lb4_service *svc;
	struct lb4_backend *be;
	__u64 cookie;
	__u16 slot = 0;
	__u32 id, hash;

	if (key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP)
		return 1;
	svc = lookup_service(&key, 1);
	if (!svc || (svc->flags & SVC_SOURCE_RANGE)) /* source ranges need the client IP: the tc program decides */
		return 1;
	if (svc->count == 0) {
		log_decision(hook, 0, 0, &key, svc, 0, 0, NULL, -ECONNREFUSED);
		bpf_set_retval(-ECONNREFUSED); /* kube-proxy's REJECT, seen by connect() at once */
		return 0;
	}
	cookie = bpf_get_socket_cookie(ctx);
	/* TCP: random; UDP: by socket, so one socket keeps its backend (as Cilium does) */
	hash = key.proto == IPPROTO_UDP ? (__u32)(cookie ^ (cookie >> 32)) : bpf_get_prandom_u32();
	id = select_backend(&key, svc, bpf_get_netns_cookie(ctx), 1, hash, &slot);
	be = id ? bpf_map_lookup_elem(&lb4_backends, &id) : NULL;
	if (!be)
		return 1;
	if (key.proto == IPPROTO_UDP) {
		struct revsk_key rk = {.cookie = cookie, .address = be->address, .port = be->port};
		struct lb4_reverse_nat rv = {.address = key.address, .port = key.dport};

		bpf_map_update_elem(&lb4_reverse_sk, &rk, &rv, BPF_ANY);
	}
	log_decision(hook, 0, 0, &key, svc, slot, id, be, 0);
	count_backend(id, svc->rev_nat_index);
	ctx->user_ip4 = be->address;
	ctx->user_port = (__u32)be->port;
	return 1;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx, HOOK_CONNECT);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx, HOOK_SENDMSG);
}

/* An unconnected UDP client must see the answer come from the address it asked. */
SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	struct revsk_key rk = {.cookie = bpf_get_socket_cookie(ctx), .address = ctx->user_ip4,
			       .port = (__be16)ctx->user_port};
	struct lb4_reverse_nat *rv = bpf_map_lookup_elem(&lb4_reverse_sk, &rk);

	if (rv) {
		ctx->user_ip4 = rv->address;
		ctx->user_port = (__u32)rv->port;
	}
	return 1;
}

/* ------------------------------------------------------------------ per-packet LB (tc) */

#define IP_OFF ETH_HLEN

static __always_inline int parse(struct __sk_buff *skb, struct tuple4 *t, __u32 *l4off, __u8 *tcp_flags)
{
	struct iphdr ip;
	__be16 ports[2];

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return -1;
	if (ip.frag_off & bpf_htons(0x1fff)) /* a later fragment has no ports */
		return -1;
	*l4off = IP_OFF + ip.ihl * 4;
	if (bpf_skb_load_bytes(skb, *l4off, ports, sizeof(ports)) < 0)
		return -1;
	*tcp_flags = 0;
	if (ip.protocol == IPPROTO_TCP && bpf_skb_load_bytes(skb, *l4off + 13, tcp_flags, 1) < 0)
		return -1;
	t->saddr = ip.saddr;
	t->daddr = ip.daddr;
	t->sport = ports[0];
	t->dport = ports[1];
	t->proto = ip.protocol;
	return 0;
}

/* Write `to` over the packet's tuple `from`, fixing the IP and L4 checksums incrementally. */
static __always_inline int rewrite(struct __sk_buff *skb, __u32 l4off, const struct tuple4 *from,
				   const struct tuple4 *to)
{
	__u32 csum = l4off + (from->proto == IPPROTO_TCP ? 16 : 6);
	__u64 l4flags = from->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (from->saddr != to->saddr) {
		bpf_l4_csum_replace(skb, csum, from->saddr, to->saddr, l4flags | BPF_F_PSEUDO_HDR | 4);
		bpf_l3_csum_replace(skb, IP_OFF + 10, from->saddr, to->saddr, 4);
		if (bpf_skb_store_bytes(skb, IP_OFF + 12, &to->saddr, 4, 0) < 0)
			return -1;
	}
	if (from->daddr != to->daddr) {
		bpf_l4_csum_replace(skb, csum, from->daddr, to->daddr, l4flags | BPF_F_PSEUDO_HDR | 4);
		bpf_l3_csum_replace(skb, IP_OFF + 10, from->daddr, to->daddr, 4);
		if (bpf_skb_store_bytes(skb, IP_OFF + 16, &to->daddr, 4, 0) < 0)
			return -1;
	}
	if (from->sport != to->sport) {
		bpf_l4_csum_replace(skb, csum, from->sport, to->sport, l4flags | 2);
		if (bpf_skb_store_bytes(skb, l4off, &to->sport, 2, 0) < 0)
			return -1;
	}
	if (from->dport != to->dport) {
		bpf_l4_csum_replace(skb, csum, from->dport, to->dport, l4flags | 2);
		if (bpf_skb_store_bytes(skb, l4off + 2, &to->dport, 2, 0) < 0)
			return -1;
	}
	return 0;
}

/* A packet of a connection already translated: rewrite it as its entry says.
 * Returns a tc verdict, or -1 when the packet belongs to no known connection. */
static __always_inline int ct_apply(struct __sk_buff *skb, __u32 l4off, const struct tuple4 *t, __u8 tcp_flags)
{
	struct ct4_val *v = bpf_map_lookup_elem(&kplab_ct4, t);
	struct tuple4 to;
	__u8 eth[12];

	if (!v)
		return -1;
	/* a new TCP connection reusing an old tuple chooses again (its old backend may be gone) */
	if ((v->flags & CT_FORWARD) && (tcp_flags & 0x12) == 0x02)
		return -1;
	to = v->to;
	if (rewrite(skb, l4off, t, &to) < 0)
		return TC_ACT_SHOT;
	if (!v->ifindex)
		return TC_ACT_OK;
	if (!(v->flags & CT_L2))
		return bpf_redirect_neigh(v->ifindex, NULL, 0, 0);
	__builtin_memcpy(eth, v->eth, sizeof(eth));
	if (bpf_skb_store_bytes(skb, 0, eth, sizeof(eth), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(v->ifindex, 0);
}

/* A new connection to a frontend: choose, remember both directions, rewrite. */
static __always_inline int lb4_xlate(struct __sk_buff *skb, __u32 l4off, struct tuple4 *t, int east_west,
				     __u32 hook)
{
	struct lb4_key key = {.address = t->daddr, .dport = t->dport, .proto = t->proto};
	struct ct4_val fwd = {.flags = CT_FORWARD}, rev = {.flags = CT_REPLY};
	struct tuple4 reply = {};
	struct lb4_service *svc;
	struct lb4_backend *be;
	__u32 zero = 0, id;
	__u16 slot = 0;

	svc = lookup_service(&key, east_west);
	if (!svc)
		return TC_ACT_OK;
	if (!east_west && !(svc->flags & SVC_ROUTABLE))
		return TC_ACT_OK; /* a ClusterIP is not reachable from outside the cluster */
	if (!source_allowed(svc, t->saddr)) {
		log_decision(hook, t->saddr, t->sport, &key, svc, 0, 0, NULL, -1);
		return TC_ACT_SHOT;
	}
	if (svc->count == 0) {
		log_decision(hook, t->saddr, t->sport, &key, svc, 0, 0, NULL, -ECONNREFUSED);
		return TC_ACT_SHOT;
	}
	id = select_backend(&key, svc, t->saddr, 0, bpf_get_prandom_u32(), &slot);
	be = id ? bpf_map_lookup_elem(&lb4_backends, &id) : NULL;
	if (!be)
		return TC_ACT_SHOT;

	fwd.to = *t;
	fwd.to.daddr = be->address;
	fwd.to.dport = be->port;
	if (east_west && be->address == t->saddr)
		fwd.to.saddr = HAIRPIN_IP; /* the pod reaches itself: its reply must come back through here */
	if (!east_west && !(be->flags & BE_LOCAL)) {
		struct config *cfg = bpf_map_lookup_elem(&kplab_config, &zero);

		if (!cfg)
			return TC_ACT_SHOT;
		fwd.to.saddr = cfg->node_ip; /* SNAT: the other node's backend answers through this node */
		fwd.ifindex = skb->ifindex;
	}
	if (!east_west)
		rev.ifindex = skb->ifindex; /* replies leave by the device the client came in on */
	if (east_west && (svc->flags & SVC_NODEPORT)) { /* a pod to its own node's address */
		rev.ifindex = skb->ifindex;
		rev.flags |= CT_L2;
		if (bpf_skb_load_bytes(skb, 6, rev.eth, 6) < 0 || bpf_skb_load_bytes(skb, 0, rev.eth + 6, 6) < 0)
			return TC_ACT_SHOT;
	}
	fwd.rev_nat_index = rev.rev_nat_index = svc->rev_nat_index;
	fwd.backend_id = rev.backend_id = id;
	reply.saddr = fwd.to.daddr;
	reply.daddr = fwd.to.saddr;
	reply.sport = fwd.to.dport;
	reply.dport = fwd.to.sport;
	reply.proto = t->proto;
	rev.to.saddr = t->daddr;
	rev.to.daddr = t->saddr;
	rev.to.sport = t->dport;
	rev.to.dport = t->sport;
	rev.to.proto = t->proto;
	bpf_map_update_elem(&kplab_ct4, &reply, &rev, BPF_ANY);
	bpf_map_update_elem(&kplab_ct4, t, &fwd, BPF_ANY);
	log_decision(hook, t->saddr, t->sport, &key, svc, slot, id, be, 0);
	count_backend(id, svc->rev_nat_index);
	if (rewrite(skb, l4off, t, &fwd.to) < 0)
		return TC_ACT_SHOT;
	if (fwd.ifindex)
		return bpf_redirect_neigh(fwd.ifindex, NULL, 0, 0);
	return TC_ACT_OK;
}

static __always_inline int handle(struct __sk_buff *skb, int east_west, __u32 hook)
{
	struct tuple4 t = {};
	__u32 l4off;
	__u8 tcp_flags;
	int done;

	if (parse(skb, &t, &l4off, &tcp_flags) < 0)
		return TC_ACT_OK;
	done = ct_apply(skb, l4off, &t, tcp_flags);
	if (done >= 0)
		return done;
	return lb4_xlate(skb, l4off, &t, east_west, hook);
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	return handle(skb, 1, HOOK_FROM_POD);
}

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	return handle(skb, 0, HOOK_FROM_NETDEV);
}

char LICENSE[] SEC("license") = "GPL";
