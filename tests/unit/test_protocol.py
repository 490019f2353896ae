"""Every mode meets the one protocol (kplab.proxy.base), and the shared pieces behave: no root needed."""

from __future__ import annotations

import inspect
import json

import pytest

from kplab.cluster.run import run
from kplab.errors import CommandError, KplabError, ProxierError
from kplab.formats.iptables_save import Dump
from kplab.proxy import drift, xtables
from kplab.proxy.base import MODES, Memory, Plan, Proxier, RulesView, SyncResult, proxier_class
from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName
from kplab.proxy.tracker import MemoryStore, changed_services, service_digests


def small_state(endpoints: int = 2) -> ProxyState:
    name = ServicePortName("default", "web", "http")
    s = ProxyState(node_name="node-1", node_ips=("172.18.0.11",), cluster_cidr="10.244.0.0/16")
    s.services[name] = ServicePort(name, "10.96.0.10", 80, node_port=30080)
    s.endpoints[name] = [Endpoint(f"10.244.1.{i + 2}", 8080, "node-1", is_local=True) for i in range(endpoints)]
    return s


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_meets_the_protocol(mode):
    cls = proxier_class(mode)
    assert issubclass(cls, Proxier) and cls.mode == mode
    assert not cls.__abstractmethods__, f"{mode} leaves {sorted(cls.__abstractmethods__)} unimplemented"
    assert list(inspect.signature(cls.render).parameters) == ["self", "state", "memory"]
    assert list(inspect.signature(cls.apply).parameters) == ["self", "plan"]
    assert "sync" not in vars(cls) or mode == "nftables", "the sync loop and its fallback are written once, in base"
    text = cls.preview(small_state())
    assert isinstance(text, str) and "10.96.0.10" in text and "10.244.1.3" in text


def test_render_is_pure_and_partial_when_memory_allows():
    """The iptables render from a Memory built by hand: no kernel, no root."""
    cls = proxier_class("iptables")
    p = cls.__new__(cls)
    facts = {"backend": "legacy", "now": 0.0, "dump": Dump(), "existing": [], "route_localnet": "0",
             "liberal": False, "nfacct": False, "nfacct_missing": [], "nfacct_created": [], "addresses": []}
    full = p.render(small_state(), Memory({}, facts, full=True))
    assert full.full and "KUBE-PROXY-CANARY" in full.text and full.changed == 1
    again = p.render(small_state(), Memory(full.memory, {"backend": "legacy"}, full=False))
    assert not again.full and again.changed == 0 and "10.244.1.3" not in again.text
    grown = p.render(small_state(3), Memory(full.memory, {"backend": "legacy"}, full=False))
    assert grown.changed == 1 and "10.244.1.4" in grown.text


def test_rules_view_is_one_json_shape():
    v = RulesView("iptables", "node-1", "text", {"tables": {}}, {"KUBE-SVC-X": "default/web:http"})
    assert v["text"] == v.text == "text" and v.mode == "iptables" and v["tables"] == {}
    assert json.loads(json.dumps(v))["annotations"] == {"KUBE-SVC-X": "default/web:http"}


def test_memory_store_marks_an_unfinished_load_dirty(tmp_path):
    store = MemoryStore(tmp_path)
    assert store.needs_full(store.load())
    with store.pending():
        store.save({"last_full": 1e12, "x": 1})
    assert store.load()["x"] == 1 and not store.needs_full(store.load(), now=1e12)
    with pytest.raises(RuntimeError), store.pending():
        raise RuntimeError("the kernel refused")
    assert store.needs_full(store.load(), now=1e12), "a load that never finished forces a full sync"


def test_change_tracker_names_only_changed_services():
    a, b = service_digests(small_state()), service_digests(small_state(3))
    assert changed_services(a, a) == set() and changed_services(a, b) == {"default/web"}


def test_drift_compares_line_multisets():
    assert drift.compare(["a", "b", "b"], ["b", "c"]) == (["a", "b"], ["c"])


def test_nft_lines_are_comparable_whatever_the_layout_and_counters():
    listing = """table ip kube-proxy {
\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.1 . tcp . 443 : goto service-X,
\t\t\t     10.96.0.2 . udp . 53 : goto service-Y }
\t}
\tchain service-X {
\t\tip saddr 1.2.3.4 counter packets 3 bytes 4 jump mark # handle 7
\t}
}"""
    lines = drift.nft_lines(listing)
    assert "service-ips element 10.96.0.2 . udp . 53 : goto service-Y" in lines
    assert "service-X: ip saddr 1.2.3.4 counter jump mark" in lines


def test_xtables_cleanup_removes_only_owned_chains_and_jumps_to_them():
    from kplab.formats.iptables_save import parse

    dump = parse("*nat\n:PREROUTING ACCEPT [0:0]\n:MINE - [0:0]\n:KUBE-X - [0:0]\n"
                 "-A PREROUTING -j MINE\n-A PREROUTING -j KUBE-X\nCOMMIT\n")  # fmt: skip
    text = xtables.cleanup_input(dump, lambda table, chain: chain == "MINE")
    assert "-D PREROUTING -j MINE" in text and "-X MINE" in text and "KUBE-X" not in text
    assert "-X KUBE-X" in xtables.cleanup_input(dump)
    saved = ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-X - [0:0]\n-A PREROUTING -j KUBE-X\n-A PREROUTING -j OTHER\n"
             "-A KUBE-X -j DNAT --to-destination 10.244.1.2:80\nCOMMIT\n")  # fmt: skip
    assert sorted(drift.xtables_lines(saved, xtables.kube_owned)) == [
        "*nat -A KUBE-X -j DNAT --to-destination 10.244.1.2:80", "*nat -A PREROUTING -j KUBE-X", "*nat :KUBE-X"]


def test_a_failed_command_is_not_the_proxys_error():
    """`lab.exec` and the tools kplab runs fail as CommandError; only a mode's sync says ProxierError."""
    with pytest.raises(CommandError, match="false") as failed:
        run(["false"])
    assert not isinstance(failed.value, ProxierError)
    with pytest.raises(CommandError, match="did not finish") as hung:
        run(["sleep", "5"], timeout=0.2)
    assert not isinstance(hung.value, ProxierError)


def test_a_loader_failing_in_a_sync_is_retried_full_then_the_modes_error(monkeypatch):
    cls = proxier_class("iptables")
    p = cls.__new__(cls)
    applied = []

    def apply(plan):
        applied.append(plan.full)
        run(["sh", "-c", "echo 'line 3: bad rule' >&2; exit 1"])
        return SyncResult(full=plan.full, changed_services=0, seconds=0.0)

    monkeypatch.setattr(p, "observe", lambda state, full=False: full, raising=False)
    monkeypatch.setattr(p, "render", lambda state, full: Plan("iptables", bool(full), ""), raising=False)
    monkeypatch.setattr(p, "apply", apply, raising=False)
    with pytest.raises(ProxierError, match="failed: line 3: bad rule") as e:
        p.sync(small_state())
    assert applied == [False, True] and e.value.lines == ["line 3: bad rule"]


def test_a_program_killed_by_the_oom_killer_is_one_readable_line():
    """In a learner's 1 GiB container, 10,000 Services got nft SIGKILLed: it said `failed: -9`."""
    from kplab.cluster.run import run
    from kplab.errors import CommandError

    with pytest.raises(CommandError) as e:
        run(["sh", "-c", "kill -9 $$"])
    assert str(e.value).startswith("sh was killed by SIGKILL: most likely out of memory"), str(e.value)
    with pytest.raises(CommandError, match="sh was killed by SIGTERM$"):
        run(["sh", "-c", "kill -15 $$"])


def test_a_misspelt_mode_is_one_line_with_the_near_one():
    with pytest.raises(KplabError, match=r"unknown mode 'ebpff' \(did you mean ebpf\?\): choose one of iptables"):
        proxier_class("ebpff")
