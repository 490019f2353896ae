"""IPVS partial syncs, pure: the delta from the last full sync's ledger (kplab.proxy.ipvs.delta).

Applying a partial delta to what the last sync programmed must give exactly what a full plan of
the new state programs, and it must name only the changed Services' objects (the bench's add-one
Service at 10k was 75 s in the VM while the plain tools took 0.6 s: every sync rebuilt the plan).
"""

from __future__ import annotations

import dataclasses

from kplab.bench.sync import add_service, synthetic_state
from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName
from kplab.proxy.ipvs import delta
from kplab.proxy.ipvs import rules as R

LOCAL = ("172.18.0.11",)


def full(state: ProxyState) -> tuple[R.IpvsPlan, dict]:
    """A full render's plan and the memory its sync leaves."""
    parts = R.plan_parts(state, state.sorted_services(), "rr", LOCAL, frozenset(LOCAL))
    plan = R.merge_parts(state, parts)
    memory = delta.ledger(state, parts, delta.config_digest(state, "rr", LOCAL, LOCAL), plan.iptables)
    return plan, {**memory, "servers": delta.servers_memory(plan)}


def applied(plan: R.IpvsPlan, d: delta.Delta) -> tuple[dict[str, set[str]], dict[str, tuple], set[str]]:
    """(sets, virtual servers with reals, bound addresses) after `d` is written over `plan`."""
    sets = {n: set(m) for n, m in plan.ipsets.items()}
    for n, ms in d.deleted.items():
        sets[n] -= set(ms)
    for n, ms in d.added.items():
        sets.setdefault(n, set()).update(ms)
    servers = {sp.vs.key: (sp.vs, sorted(sp.reals)) for sp in plan.servers}
    for vs in d.gone:
        del servers[vs.key]
    servers.update({sp.vs.key: (sp.vs, sorted(sp.reals)) for sp in d.servers})
    return sets, servers, (set(plan.bind_addrs) | set(d.bind)) - set(d.unbind)


def expect_same(before: ProxyState, after: ProxyState) -> delta.Delta:
    old, memory = full(before)
    d = delta.partial(after, memory, "rr", LOCAL, LOCAL)
    assert d is not None
    new, _ = full(after)
    sets, servers, bound = applied(old, d)
    assert {n: m for n, m in sets.items() if m} == {n: m for n, m in new.ipsets.items() if m}
    assert servers == {sp.vs.key: (sp.vs, sorted(sp.reals)) for sp in new.servers}
    assert bound == set(new.bind_addrs)
    assert bool(d.iptables) == (new.iptables != old.iptables)
    if d.iptables:
        assert d.iptables == new.iptables
    return d


def test_add_one_service_touches_only_its_objects():
    before = synthetic_state(300, 2)
    after = dataclasses.replace(before, services=dict(before.services), endpoints=dict(before.endpoints))
    add_service(after, 301, 2)  # odd: a NodePort Service, so a cluster-ip and a node-port virtual server
    d = expect_same(before, after)
    assert d.services == ["ns10/svc301"]
    assert [sp.kind for sp in d.servers] == ["cluster-ip", "node-port"] and not d.gone
    assert d.bind == ["10.96.1.52"] and not d.unbind and not d.iptables
    assert sorted(d.added) == ["KUBE-CLUSTER-IP", "KUBE-IPVS-IPS", "KUBE-LOOP-BACK", "KUBE-NODE-PORT-TCP"]
    assert sum(len(m) for m in d.added.values()) == 4 and not d.deleted  # one member each


def test_nothing_changed_is_an_empty_delta():
    st = synthetic_state(50, 2)
    d = expect_same(st, st)
    assert d.services == [] and not d.servers and not d.added and not d.deleted and not d.iptables
    assert d.text().count("\n") == 1


def port(name: str, ip: str, p: int, **kw) -> ServicePort:
    return ServicePort(ServicePortName("default", name, f"p{p}"), ip, p, **kw)


def two_port_state(*, with_https: bool = True, lb_ranges: tuple[str, ...] = ()) -> ProxyState:
    st = ProxyState(node_name="node-1", node_ips=LOCAL)
    eps = [Endpoint("10.244.0.5", 8080, "node-1", True)]
    ports = [port("web", "10.96.0.10", 80, load_balancer_ips=("192.0.2.1",), load_balancer_source_ranges=lb_ranges)]
    if with_https:
        ports.append(port("web", "10.96.0.10", 443))
    ports.append(port("api", "10.96.0.11", 80))  # the same endpoint: a KUBE-LOOP-BACK member owned twice
    for sp in ports:
        st.services[sp.name], st.endpoints[sp.name] = sp, eps
    return st


def test_a_shared_address_and_member_stay_while_another_owner_needs_them():
    d = expect_same(two_port_state(), two_port_state(with_https=False))
    assert not d.unbind  # 10.96.0.10 is still web:p80's ClusterIP
    assert d.deleted == {"KUBE-CLUSTER-IP": ["10.96.0.10,tcp:443"]}
    d = expect_same(two_port_state(), ProxyState(node_name="node-1", node_ips=LOCAL))
    assert sorted(d.unbind) == ["10.96.0.10", "10.96.0.11", "192.0.2.1"] and len(d.gone) == 4


def test_constant_rules_are_rewritten_only_when_a_set_becomes_empty_or_not():
    d = expect_same(two_port_state(), two_port_state(lb_ranges=("203.0.113.0/24",)))
    assert "KUBE-LOAD-BALANCER-FW" in d.iptables and "KUBE-IPVS-OUT-FILTER -s 192.0.2.1" in d.iptables


def test_a_node_wide_change_needs_a_full_sync():
    st = synthetic_state(20, 2)
    _, memory = full(st)
    assert delta.partial(dataclasses.replace(st, masquerade_all=True), memory, "rr", LOCAL, LOCAL) is None
    assert delta.partial(st, memory, "wrr", LOCAL, LOCAL) is None
    assert delta.partial(st, {}, "rr", LOCAL, LOCAL) is None
