"""sync: a mode's sync time against loading the very same input with the plain tool.

    kplab bench sync --mode iptables --services 1000,5000,10000 --endpoints 2 [--rounds 3]

For N Services x K endpoints (a synthetic ProxyState, one node of a 2-node lab), in throwaway
namespaces `kplab-<lab>-<mode>-{kp,raw}` (lab `bench` by default) made and removed here:

* full sync: kplab's `sync()` (render, node checks, ensure, load) in a fresh netns, against
  the raw loader given exactly the input kplab loaded, in another fresh netns;
* add one Service: kplab's (partial) sync of N+1 Services on top of that, against the raw
  loader given exactly the input kplab loaded for it, on top of the raw full load.

A mode takes part by keeping its last kernel input in `state_dir/last-input.txt` when
`ctx.options["keep_input"]` is set, and by an entry in RAW_LOADERS (mode -> an untimed
preparation of the raw netns and the timed plain load of that text into it).  Each size is
measured `rounds` times in fresh namespaces; figures are medians, ratios are paired within a
round, then the median is taken.  (Measuring logic by the iptables and nftables modes'
authors, moved here from bench/sync.py.)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kplab.bench import report
from kplab.bench.report import Column
from kplab.cluster.run import NETNS_DIR, netns_argv
from kplab.errors import EnvironmentProblem, KplabError, LabError
from kplab.proxy.base import NodeContext, proxier_class
from kplab.proxy.core import Endpoint, ProxyState, ServicePort, ServicePortName

BENCH_LAB = "bench"  # namespaces kplab-bench-*: a state dir marked "up" keeps `kplab clean` off them
MAX_SERVICES = 50_000
PURPOSE = "bench/sync namespaces"

COLUMNS = [
    Column("mode", "mode"),
    Column("services", "Services", "{:,}"),
    Column("endpoints", "eps"),
    Column("full_lines", "lines"),
    Column("full_kplab", "full kplab s", "{:.3f}"),
    Column("full_raw", "full raw s", "{:.3f}"),
    Column("full_ratio", "ratio", "{:.2f}"),
    Column("add_one_kplab", "add-1 kplab s", "{:.3f}"),
    Column("add_one_raw", "add-1 raw s", "{:.3f}"),
    Column("add_one_ratio", "ratio", "{:.2f}"),
    Column("add_one_lines", "add-1 lines"),
]


def prepare_iptables(text: str, netns: str, options: dict[str, str]) -> None:
    """Untimed: what the input relies on that kplab set up on its node (the nfacct counters)."""
    from kplab.proxy.iptables.rules import NFACCT_INVALID, NFACCT_LOCALHOST_NP

    for name in (NFACCT_INVALID, NFACCT_LOCALHOST_NP):
        if name in text:
            subprocess.run(netns_argv(netns, ["nfacct", "add", name]), check=False)


def load_iptables(text: str, netns: str, options: dict[str, str]) -> None:
    from kplab.proxy.iptables.proxier import TOOLS, detect_backend

    restore = TOOLS[detect_backend(options.get("iptables_backend"))][2]
    argv = netns_argv(netns, [restore, "-w", "5", "--noflush", "--counters"])
    subprocess.run(argv, input=text, text=True, check=True)


def prepare_nothing(text: str, netns: str, options: dict[str, str]) -> None:
    """The nftables input needs nothing from the node beyond the netns."""


def load_nftables(text: str, netns: str, options: dict[str, str]) -> None:
    subprocess.run(netns_argv(netns, ["nft", "-f", "-"]), input=text, text=True, check=True)


def prepare_ipvs(text: str, netns: str, options: dict[str, str]) -> None:
    """Untimed: the kube-ipvs0 dummy kplab's IPVS mode creates on its node (the addresses go on it)."""
    subprocess.run(netns_argv(netns, ["ip", "link", "add", "kube-ipvs0", "type", "dummy"]),
                   check=True)  # fmt: skip


def load_sections(text: str, netns: str, options: dict[str, str]) -> None:
    """Each `### TOOL ARGS` section of the input fed to that plain tool (the IPVS mode's input: ip -batch,
    ipset restore, iptables-restore --noflush, ipvsadm --restore)."""
    for block in text.split("### ")[1:]:
        tool, _, body = block.partition("\n")
        if body.strip():
            argv = netns_argv(netns, tool.split())
            subprocess.run(argv, input=body, text=True, check=True, capture_output=True)


Loader = Callable[[str, str, dict[str, str]], None]
# mode -> (untimed preparation of the raw netns, timed raw load of kplab's exact input)
RAW_LOADERS: dict[str, tuple[Loader, Loader]] = {
    "iptables": (prepare_iptables, load_iptables),
    "nftables": (prepare_nothing, load_nftables),
    "ipvs": (prepare_ipvs, load_sections),
}


def synthetic_state(services: int, endpoints: int) -> ProxyState:
    """N ClusterIP Services (half of them also NodePort) with K endpoints spread over 2 nodes."""
    state = ProxyState(node_name="node-1", node_ips=("172.18.0.11",))
    for i in range(services):
        add_service(state, i, endpoints)
    return state


def add_service(state: ProxyState, i: int, endpoints: int) -> None:
    name = ServicePortName(f"ns{i % 97}", f"svc{i}", "http", "TCP")
    state.services[name] = ServicePort(
        name, f"10.96.{i // 250}.{i % 250 + 1}", 80, node_port=30000 + i % 2700 if i % 2 else 0,
        service_type="NodePort" if i % 2 else "ClusterIP",
    )  # fmt: skip
    eps = []
    for k in range(endpoints):
        n = i * endpoints + k
        node = f"node-{k % 2 + 1}"
        eps.append(Endpoint(f"10.{244 + k % 2}.{n // 250 % 250}.{n % 250 + 1}", 8080, node, node == "node-1"))
    state.endpoints[name] = eps


def netns_add(name: str) -> None:
    if os.path.exists(f"{NETNS_DIR}/{name}"):
        raise LabError(f"namespace {name} exists: another sync benchmark runs under that name (try --name), "
                       f"or a crashed one left it (`ip netns del {name}`)")
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(netns_argv(name, ["ip", "link", "set", "lo", "up"]), check=True)


def netns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def timed(fn: Callable[[], object]) -> float:
    """Seconds `fn` took; a plain loader that failed is one line, not a traceback."""
    t = time.perf_counter()
    try:
        fn()
    except subprocess.CalledProcessError as e:
        tool = e.cmd[e.cmd.index("--") + 1] if "--" in e.cmd[:-1] else e.cmd[0]  # past nsenter's argv
        lock = "; another program may have held /run/xtables.lock" if "iptables" in tool else ""
        raise KplabError(f"the plain loader {tool} failed (exit {e.returncode}; its message is above){lock}: "
                         "run the benchmark alone") from None
    return time.perf_counter() - t


def bench_one(mode: str, services: int, endpoints: int, options: dict[str, str],
              lab: str = BENCH_LAB) -> dict[str, Any]:
    cls = proxier_class(mode)
    kp, raw = f"kplab-{lab}-{mode[:4]}-kp", f"kplab-{lab}-{mode[:4]}-raw"
    state = synthetic_state(services, endpoints)
    with tempfile.TemporaryDirectory(prefix=f"kplab-{lab}-") as tmp:
        ctx = NodeContext(lab, "node-1", kp, Path(tmp), {**options, "keep_input": True})
        proxier = cls(ctx)
        last = Path(tmp) / "last-input.txt"
        made: list[str] = []  # only what this run created is removed
        try:
            for ns in (kp, raw):
                netns_add(ns)
                made.append(ns)
            full = timed(lambda: proxier.sync(state))
            full_input = last.read_text()
            prepare, load = RAW_LOADERS[mode]
            prepare(full_input, raw, options)
            full_raw = timed(lambda: load(full_input, raw, options))
            add_service(state, services, endpoints)
            add = timed(lambda: proxier.sync(state))
            add_input = last.read_text()
            add_raw = timed(lambda: load(add_input, raw, options))
        finally:
            for ns in made:
                netns_del(ns)
    return {
        "services": services,
        "endpoints": endpoints,
        "full_kplab": full,
        "full_raw": full_raw,
        "full_ratio": full / full_raw,
        "full_lines": full_input.count("\n"),
        "add_one_kplab": add,
        "add_one_raw": add_raw,
        "add_one_ratio": add / add_raw,
        "add_one_lines": add_input.count("\n"),
    }


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of every figure (ratios: the median of the per-round ratios)."""
    out = dict(rounds[0])
    for key, value in rounds[0].items():
        if isinstance(value, float):
            out[key] = statistics.median(r[key] for r in rounds)
    out["rounds"] = len(rounds)
    return out


def parse_sizes(text: str | Sequence[int]) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()] if isinstance(text, str) else [int(x) for x in text]
    except ValueError:
        raise KplabError(f"--services {text!r}: give numbers separated by commas, e.g. 1000,5000,10000") from None
    if not sizes or any(not 1 <= n <= MAX_SERVICES for n in sizes):
        raise KplabError(f"--services {text!r}: each size must be 1..{MAX_SERVICES:,}")
    return sizes


def run_sync(mode: str = "iptables", sizes: Sequence[int] | str = (1000, 5000, 10000), endpoints: int = 2,
             rounds: int = 3, options: dict[str, str] | None = None, lab: str = BENCH_LAB,
             show_progress: bool = True) -> dict[str, Any]:
    """Full and add-one sync of `mode` against its raw loader, per size; a result for report.save()."""
    from kplab.cluster.store import Store, check_lab_name

    if mode not in RAW_LOADERS:
        raise KplabError(f"sync --mode {mode!r}: a raw loader exists for {', '.join(sorted(RAW_LOADERS))}")
    if os.geteuid() != 0:
        raise EnvironmentProblem("kplab bench sync needs root (network namespaces)")
    sizes = parse_sizes(sizes)
    if not 1 <= endpoints <= 100:
        raise KplabError(f"--endpoints {endpoints}: choose 1..100")
    if not 1 <= rounds <= 20:
        raise KplabError(f"--rounds {rounds}: choose 1..20")
    options = dict(options or {})
    result = report.new_result("sync", {"mode": mode, "services": sizes, "endpoints": endpoints,
                                        "rounds": rounds, "options": options})
    result["bench"] = f"sync-{mode}"
    check_lab_name(lab)
    store = Store(lab)
    if store.exists and (store.dir / "lab.json").exists() and store.load().get("purpose") != PURPOSE:
        raise LabError(f"lab {lab!r} is a real lab: the sync benchmark needs a name of its own (--lab)")
    store.dir.mkdir(parents=True, exist_ok=True)
    store.save({"status": "up", "purpose": PURPOSE})
    try:
        with report.progress(show_progress) as bar:
            task = bar.add_task(f"sync {mode}", total=len(sizes) * rounds)
            for n in sizes:
                got = []
                for _ in range(rounds):
                    got.append(bench_one(mode, n, endpoints, options, lab))
                    bar.advance(task)
                result["rows"].append({"mode": mode, **median_of(got), "loadavg": report.loadavg()})
    finally:
        if not any(n.startswith(f"kplab-{lab}-") for n in os.listdir(NETNS_DIR)):
            shutil.rmtree(store.dir, ignore_errors=True)
    result["notes"].append("seconds; raw = the plain tool loading exactly the input kplab loaded, same run; "
                           "medians over rounds, ratios paired per round")
    return result
