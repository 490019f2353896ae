"""The iptables mode: upstream kube-proxy's iptables proxier, programming a lab node's netns.

    render(state)   pure: the iptables-restore input upstream would load (iptables_rules.build)
    sync(state)     one `iptables-restore -w 5 --noflush --counters` in the node's netns
    cleanup()       removes every KUBE-* chain and jump, the nfacct counters and sysctls it set
    rules()         `iptables-save -c` read back, hashed chains annotated with their service

Syncs follow upstream's syncProxyRules: a full sync (first sync, after a failed restore, when
the KUBE-PROXY-CANARY chain vanished, or an hour after the last full one) ensures the jump
rules from the built-in chains and rewrites everything; otherwise a partial sync (KEP-3453)
rewrites only the chains of Services whose spec or endpoints changed.  Where upstream runs
`iptables -C`/`-I` once per missing jump (EnsureRule(Prepend)), a full sync here reads the
tables once with iptables-save and adds the missing jumps and canary chains to the same
restore as `-I CHAIN 1` lines, in upstream's order: the same rules in the same places, one
process instead of ~30.  What a partial sync
needs from the previous one (digests per Service, the nat chains it left, annotations) lives
in `ctx.state_dir/iptables.json`, since every CLI call or notebook cell is a new process.

The backend is the one the node's `iptables` is (`iptables --version`: "(nf_tables)" or
"(legacy)"); `ctx.options["iptables_backend"]` ("nft"/"legacy") overrides it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from kplab.cluster.run import run
from kplab.errors import EnvironmentProblem, ProxierError
from kplab.inspect.iptables_save import Dump, parse
from kplab.proxy import iptables_jumps as jumps
from kplab.proxy.base import Availability, Proxier, SyncResult
from kplab.proxy.core import ProxyState
from kplab.proxy.iptables_rules import (
    NFACCT_INVALID,
    NFACCT_LOCALHOST_NP,
    SERVICE_CHAIN_PREFIXES,
    RenderOptions,
    build,
    changed_services,
    service_digests,
)

FULL_SYNC_PERIOD = 3600.0  # upstream's proxyutil.FullSyncPeriod
RESTORE_TIMEOUT = 900.0  # iptables-nft needs minutes for ~100k rules
TOOLS = {
    "nf_tables": ("iptables-nft", "iptables-nft-save", "iptables-nft-restore"),
    "legacy": ("iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore"),
}
ROUTE_LOCALNET = "net.ipv4.conf.all.route_localnet"
TCP_LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"


def detect_backend(override: str | None = None) -> str:
    """Which backend: "nf_tables" or "legacy", as `iptables --version` reports, unless overridden."""
    if override:
        return {"nft": "nf_tables", "nf_tables": "nf_tables", "legacy": "legacy"}[override]
    out = run(["iptables", "--version"]).stdout
    m = re.search(r"\((nf_tables|legacy)\)", out)
    return m.group(1) if m else "legacy"  # iptables < 1.8 prints no backend: legacy


class IptablesProxier(Proxier):
    mode = "iptables"

    # ------------------------------------------------------------------ pure
    @classmethod
    def render(cls, state: ProxyState, **options: Any) -> str:
        """Options (RenderOptions): random_fully, nfacct, conntrack_liberal, local_addresses."""
        return build(state, RenderOptions(**options)).text

    # ------------------------------------------------------------------ kernel
    @property
    def _state_file(self) -> Path:
        return Path(self.ctx.state_dir) / "iptables.json"

    @property
    def _dirty(self) -> Path:
        """Exists from just before a restore until it succeeded: the next sync must be full."""
        return Path(self.ctx.state_dir) / "iptables.dirty"

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self, data: dict[str, Any]) -> None:
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, self._state_file)

    def _tools(self, data: dict[str, Any]) -> tuple[str, str, str]:
        backend = data.get("backend") or detect_backend(self.ctx.options.get("iptables_backend"))
        data["backend"] = backend
        return TOOLS[backend]

    def _run(self, argv: list[str], **kw: Any) -> Any:
        return run(argv, netns=self.ctx.netns, **kw)

    def _node_facts(self, data: dict[str, Any], state: ProxyState) -> None:
        """What upstream's NewProxier sets or reads on the node, done on each full sync."""
        localhost = state.localhost_nodeports and _contains_loopback(state.nodeport_addresses)
        if localhost:
            before = self._run(["sysctl", "-n", ROUTE_LOCALNET]).stdout.strip()
            data.setdefault("route_localnet_before", before)
            if before != "1":
                self._run(["sysctl", "-q", "-w", f"{ROUTE_LOCALNET}=1"])
        liberal = self._run(["sysctl", "-n", TCP_LIBERAL], check=False)
        data["liberal"] = liberal.ok and liberal.stdout.strip() not in ("", "0")
        data["nfacct"] = self._ensure_nfacct(data)
        data["addresses"] = self._addresses() if state.nodeport_addresses else None

    def _ensure_nfacct(self, data: dict[str, Any]) -> bool:
        """Upstream creates two nfacct counters; without them it writes the rules without nfacct."""
        listed = self._run(["nfacct", "list"], check=False) if _has("nfacct") else None
        if listed is None or not listed.ok:
            return False
        created = set(data.get("nfacct_created", []))
        for name in (NFACCT_INVALID, NFACCT_LOCALHOST_NP):
            if f"name = {name};" not in listed.stdout:
                if not self._run(["nfacct", "add", name], check=False).ok:
                    return False
                created.add(name)
        data["nfacct_created"] = sorted(created)
        return True

    def _addresses(self) -> list[str]:
        out = self._run(["ip", "-4", "-o", "addr", "show"]).stdout
        return re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)

    def _canary_present(self, tools: tuple[str, str, str]) -> bool:
        return bool(self._run([tools[0], "-w", "5", "-t", "mangle", "-S", jumps.CANARY], check=False).ok)

    def sync(self, state: ProxyState) -> SyncResult:
        start = time.monotonic()
        data = self._load()
        tools = self._tools(data)
        full = (
            "annotations" not in data
            or self._dirty.exists()
            or time.time() - float(data.get("last_full", 0)) > FULL_SYNC_PERIOD
            or not self._canary_present(tools)
        )
        try:
            result = self._sync(state, data, tools, full)
        except ProxierError:
            if full:
                raise
            result = self._sync(state, data, tools, True)  # upstream retries with a full sync
        result.seconds = time.monotonic() - start
        return result

    def _sync(
        self, state: ProxyState, data: dict[str, Any], tools: tuple[str, str, str], full: bool
    ) -> SyncResult:
        existing: set[str]
        current = Dump()
        if full:
            current = parse(self._run([tools[1]]).stdout)
            existing = {c for c in current.chains("nat") if c.startswith(SERVICE_CHAIN_PREFIXES)}
            self._node_facts(data, state)
        else:
            existing = set(data.get("annotations", {}))
        digests = service_digests(state)
        options = RenderOptions(
            random_fully=True,
            nfacct=bool(data.get("nfacct")),
            conntrack_liberal=bool(data.get("liberal")),
            local_addresses=tuple(data["addresses"]) if data.get("addresses") else None,
            changed=None if full else changed_services(data.get("digests", {}), digests),
            existing_chains=existing,
            previous=None if full else data.get("annotations"),
        )
        ruleset = build(state, options)
        text = ruleset.text
        if full:
            declared = {"filter": {"KUBE-FIREWALL"} if "-A KUBE-FIREWALL " in text else set()}
            text = jumps.merge(text, jumps.ensure_lines(current, declared))
        self._dirty.parent.mkdir(parents=True, exist_ok=True)
        self._dirty.touch()
        if self.ctx.options.get("keep_input"):  # the exact kernel input, for bench/ and curious readers
            (Path(self.ctx.state_dir) / "last-input.txt").write_text(text)
        res = self._run([tools[2], "-w", "5", "--noflush", "--counters"], input=text, check=False,
                        timeout=RESTORE_TIMEOUT)  # fmt: skip
        if not res.ok:
            lines = jumps.failing_lines(text, res.stderr)
            first = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[0]
            raise ProxierError(f"iptables-restore in {self.ctx.netns} failed: {first}", lines)
        data.update(digests=digests, annotations=ruleset.annotations, last_size=text.count("\n"))
        if full:
            data["last_full"] = time.time()
        self._save(data)
        self._dirty.unlink(missing_ok=True)
        return SyncResult(full=full, changed_services=ruleset.rewritten, seconds=0.0, size=text.count("\n"))

    def cleanup(self) -> None:
        data = self._load()
        if not Path(f"/run/netns/{self.ctx.netns}").exists():
            self._state_file.unlink(missing_ok=True)
            self._dirty.unlink(missing_ok=True)
            return
        tools = self._tools(data)
        text = jumps.cleanup_input(parse(self._run([tools[1]]).stdout))
        if text:
            self._run([tools[2], "-w", "5", "--noflush"], input=text)
        for name in data.get("nfacct_created", []):
            self._run(["nfacct", "delete", name], check=False)
        before = data.get("route_localnet_before")
        if before not in (None, "1"):
            self._run(["sysctl", "-q", "-w", f"{ROUTE_LOCALNET}={before}"], check=False)
        self._state_file.unlink(missing_ok=True)
        self._dirty.unlink(missing_ok=True)

    def rules(self) -> dict[str, Any]:
        from kplab.proxy.iptables_view import rules_view

        data = self._load()
        tools = self._tools(data)
        dump = parse(self._run([tools[1], "-c"]).stdout)
        return rules_view(dump, data.get("annotations", {}), backend=data["backend"], node=self.ctx.node)

    @classmethod
    def doctor(cls) -> Availability:
        missing = [t for t in ("iptables", "iptables-save", "iptables-restore") if not _has(t)]
        if missing:
            return Availability(
                "iptables", False, f"missing: {', '.join(missing)}", fix="apt-get install iptables"
            )
        try:
            version = run(["iptables", "--version"]).stdout.strip()
        except (EnvironmentProblem, ProxierError) as e:
            return Availability("iptables", False, str(e), fix="apt-get install iptables")
        backend = detect_backend()
        if not all(_has(t) for t in TOOLS[backend]):
            return Availability("iptables", False, f"{version}: {TOOLS[backend][2]} missing",
                                fix="apt-get install iptables")  # fmt: skip
        extra = "" if _has("nfacct") else "; nfacct missing (metrics rules left out, as upstream does)"
        return Availability("iptables", True, f"{version}, using {TOOLS[backend][2]}{extra}",
                            note="upstream's default mode on Linux")  # fmt: skip


def _has(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None


def _contains_loopback(cidrs: tuple[str, ...]) -> bool:
    from kplab.proxy.iptables_rules import nodeport_addresses

    return nodeport_addresses(cidrs).contains_loopback
