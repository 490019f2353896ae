"""`kplab explain`: a real node's kube-proxy rules, organised by Service.  Pure: no root, no lab.

Give it what a node prints: `iptables-save`, `nft list ruleset` (or kube-proxy's `nft -f`
transaction), `ipvsadm -Ln`, or, where no kube-proxy runs, `cilium-dbg bpf lb list` (kplab's
eBPF mode prints the same); the format is detected.  Out comes an `Explanation`: per
service port, the hashed chains and which `namespace/name:port` they are, the ClusterIP /
NodePort / external entries, the endpoints with each one's real share of new connections
(iptables' probability cascade worked out), affinity, traffic policies, and anomalies
(no endpoints, chains nothing jumps to, uneven weights, SEPs no SVC reaches).

Names come from the rules themselves (comments, nft chain names), checked by recomputing
upstream's hashes (`kplab.formats.naming`).  With `services` (the output of `kubectl get
svc,endpointslices -A -o yaml`) they come from the hashes of the listed Service ports, and
the dump is compared with the listing (ports without rules, endpoints not in any slice).

    >>> ex = explain(open("/work/shared/real-dumps/helowd-k8s129-flannel-centos7.iptables.txt").read())
    >>> ex.service("kube-system/kube-dns:dns").endpoints[0].share
    50.0
"""

from __future__ import annotations

import re
from pathlib import Path

from kplab.errors import KplabError
from kplab.formats import iptables_save, nft_text
from kplab.inspect import explain_ebpf, explain_iptables, explain_ipvs, explain_nft
from kplab.inspect.catalog import Catalog
from kplab.inspect.views import Explanation
from kplab.proxy.core import build_state
from kplab.proxy.ebpf.view import looks_like as lb_list_looks_like


class DumpError(KplabError):
    """A file given to `kplab explain` is not a dump it can read."""


def load_catalog(source: str | Path) -> Catalog:
    """Service ports and endpoints from `kubectl get svc,endpointslices -A -o yaml` (a v1 List)."""
    from kplab.cluster import manifests

    docs = manifests.load(
        [Path(source)] if not str(source).lstrip().startswith(("{", "apiVersion")) else [str(source)]
    )
    services = [manifests.model(d) for d in docs if d.kind == "Service"]
    slices = [manifests.model(d) for d in docs if d.kind == "EndpointSlice"]
    if not services:
        raise DumpError(
            f"{source}: no Service objects (expected `kubectl get svc,endpointslices -A -o yaml`)"
        )
    return catalog_of(services, slices)


def catalog_of(services: list, slices: list) -> Catalog:
    """The catalog of Service and EndpointSlice models (a lab's `services()`, `endpoint_slices()`)."""
    state = build_state(services, slices, node_name="")
    cat = Catalog()
    for spn, sp in sorted(state.services.items()):
        cat.add(sp, state.endpoints_of(spn))
    return cat


def detect(text: str) -> str:
    """ "iptables", "nftables" or "ipvs"; DumpError when it is none of them."""
    if explain_ipvs.looks_like(text):
        if re.search(r"^Prot LocalAddress:Port\s+(Conns\s+InPkts|CPS\s+InPPS)", text, re.MULTILINE):
            raise DumpError(
                "this is `ipvsadm -Ln --stats` (or --rate): counters without schedulers or weights; "
                "give `ipvsadm -Ln` to explain, and read the counts beside it"
            )
        return "ipvs"
    if nft_text.looks_like(text):
        if "xt target" in text or "# xt_" in text or "xt match" in text:
            raise DumpError("this is iptables-nft listed by nft: give `iptables-save` output instead")
        return "nftables"
    if iptables_save.looks_like(text):
        return "iptables"
    if lb_list_looks_like(text):
        return "ebpf"
    raise DumpError("not an iptables-save, nft list ruleset, ipvsadm -Ln or cilium-dbg bpf lb list dump")


def explain(text: str, catalog: Catalog | None = None, fmt: str | None = None) -> Explanation:
    """Read one dump (format detected unless `fmt` is given) into an Explanation."""
    fmt = fmt or detect(text)
    if fmt == "iptables":
        ex = explain_iptables.read(iptables_save.parse(text), catalog)
    elif fmt == "nftables":
        ex = explain_nft.read(nft_text.parse(text), catalog)
    elif fmt == "ipvs":
        ex = explain_ipvs.read(explain_ipvs.parse(text), catalog)
    elif fmt == "ebpf":
        ex = explain_ebpf.read(text, catalog)
    else:
        raise DumpError(f"unknown dump format {fmt!r}: iptables, nftables, ipvs or ebpf")
    if not ex.services:
        ex.notes.append(no_services_hint(fmt, text))
    if catalog:
        _compare(ex, catalog)
    elif fmt not in ("ipvs", "ebpf") and ex.services:
        checked = sum("hash checked" in s.name_from for s in ex.services)
        ex.notes.append(
            f"names from the rules; {checked} of {len(ex.services)} checked against upstream's hashes"
        )
    return ex


def no_services_hint(fmt: str, text: str) -> str:
    """Where a node's Services are when its dump shows none (an SRE pasted the other mode's tables)."""
    if fmt == "iptables" and "KUBE-CLUSTER-IP" in text:
        return ("no Service here: the rules match ipset KUBE-CLUSTER-IP, so this node's kube-proxy runs in "
                "ipvs mode; explain `ipvsadm -Ln` (names: --services FILE of `kubectl get svc,endpointslices -A -o yaml`)")
    if fmt == "iptables":
        return ("no Service here: no KUBE-SVC/KUBE-SEP chains; in iptables mode they are in the nat table "
                "(`iptables-save -t nat`); other modes: `nft list table ip kube-proxy`, `ipvsadm -Ln`, "
                "or a Cilium node's `cilium-dbg bpf lb list`")
    return (f"no Service in this {fmt} dump; a node's Services are in `iptables-save -t nat`, "
            "`nft list table ip kube-proxy`, `ipvsadm -Ln` or `cilium-dbg bpf lb list`, by its mode")


def explain_file(path: str | Path, services: str | Path | None = None) -> Explanation:
    """`kplab explain DUMP [--services FILE]` (DUMP `-`: standard input); errors are one readable line."""
    try:
        if str(path) == "-":
            import sys

            text, path = sys.stdin.read(), "<stdin>"
        else:
            text = Path(path).read_text(errors="replace")
    except OSError as e:
        raise DumpError(f"cannot read {path}: {e.strerror}") from None
    if not text.strip():
        raise DumpError(f"{path}: empty: give the output of iptables-save, nft list ruleset or ipvsadm -Ln")
    catalog = load_catalog(services) if services else None
    try:
        return explain(text, catalog)
    except DumpError as e:
        raise DumpError(f"{path}: {e}") from None


def _compare(ex: Explanation, catalog: Catalog) -> None:
    """What the listing says should be there against what the dump holds."""
    seen = {(s.name, s.protocol) for s in ex.services}
    for k in catalog.ports:
        if (k.name, k.protocol) not in seen:
            ex.anomalies.append(f"{k.name} ({k.protocol}) is in --services but has no rules in this dump")
    for v in ex.services:
        known = catalog.get(v.name, v.protocol)
        if not known:
            continue
        by_addr = {e.address: e for e in known.endpoints}
        for ep in v.endpoints + v.local_endpoints:
            if ep.address in by_addr:
                ep.pod = by_addr[ep.address].pod_name
            elif ep.address != "?":
                v.anomalies.append(
                    f"endpoint {ep.address} is in the rules but in no EndpointSlice (stale rules?)"
                )
        if v.endpoints and ("svc" in v.chains or ex.format == "ipvs"):
            have = {e.address for e in v.endpoints}
            for e in known.endpoints:
                if e.ready and e.address not in have:
                    v.anomalies.append(f"ready endpoint {e.address} ({e.pod_name or 'no pod'}) has no rule")
    ex.notes.append(f"names from --services: {len(catalog.ports)} Service ports listed")


__all__ = [
    "Catalog",
    "DumpError",
    "Explanation",
    "catalog_of",
    "detect",
    "explain",
    "explain_file",
    "load_catalog",
]
