"""The userspace mode: kube-proxy as it was until 1.26, a real proxy process per node.

Historical: deprecated in 1.23 (PR #104631), removed in 1.26 (PR #112133).  Kept in the lab
because it shows why the other modes exist: every connection really passes through a process
(upstream pkg/proxy/userspace: proxier.go, roundrobin.go, proxysocket.go).

Each service port gets a "proxy port" from a range (upstream's --proxy-port-range; stable
across syncs here, recorded in the table).  iptables only steers traffic to that port; the
process in kplab.proxy.userspace.proxy accepts, picks an endpoint and relays.  The rules
upstream's iptablesInit()/openPortal()/openNodePort() installed:

    nat    PREROUTING (first)  -> KUBE-PORTALS-CONTAINER   ClusterIP, externalIP, LB IP from pods / off-node
    nat    OUTPUT (first)      -> KUBE-PORTALS-HOST        the same from the node's own processes
    nat    PREROUTING (last, dst-type LOCAL) -> KUBE-NODEPORT-CONTAINER   NodePorts from pods / off-node
    nat    OUTPUT (last, dst-type LOCAL)     -> KUBE-NODEPORT-HOST        NodePorts from the node
    filter INPUT (first)       -> KUBE-NODEPORT-NON-LOCAL  ACCEPT NEW connections to NodePorts' proxy ports

REDIRECT or DNAT, as upstream chose (its iptables*PortalArgs comments):

* traffic arriving from pods or off-node (the *-CONTAINER chains) is REDIRECTed to the proxy
  port when the proxy listens on 0.0.0.0: REDIRECT picks the primary address of the
  incoming interface (cni0 for pods, eth0 from outside), so replies leave through that same
  interface and conntrack un-NATs them; that matters for UDP, which has no connection.  DNAT
  to 127.0.0.1 would drop the packets (martians), DNAT to eth0's address gives replies from
  the bridge that break the NAT.  With a specific listen IP it is DNAT to that IP instead.
* traffic from the node itself (the *-HOST chains) is always DNATed to the node IP: REDIRECT
  on locally generated packets goes to 127.0.0.1, but the reply comes from eth0's address,
  which breaks UDP clients such as DNS resolvers.

Every sync writes the whole table (a handful of rules per service) with one
`iptables-restore --noflush`; the jumps from the built-in chains are added only when missing.
What the proxy never had: traffic policies, topology, terminating endpoints, SCTP, and the
client's source address (the proxy opens its own connection, so endpoints see the node).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from kplab.cluster.run import NETNS_DIR, run
from kplab.errors import ProxierError
from kplab.proxy import drift
from kplab.proxy.base import Availability, Memory, Plan, Proxier, RulesView, SyncResult
from kplab.proxy.core import ProxyState
from kplab.proxy.userspace.proxy import (
    CONTROL_SOCKET,
    LOG_FILE,
    TABLE_FILE,
    launch_argv,
    proxy_pid,
    stop_proxies_under,
    stop_proxy,
)
from kplab.proxy.userspace.rules import (
    JUMPS,
    Table,
    _ours,
    _served,
    build_table,
    owned,
    proxy_input,
    render_restore,
    table_from_input,
    table_text,
)
from kplab.proxy.xtables import Xtables, missing_jumps

__all__ = ["UserspaceProxier", "build_table", "render_restore", "stop_proxies_under", "stop_proxy"]

class UserspaceProxier(Proxier):
    mode = "userspace"
    status_note = "historical: deprecated in 1.23, removed upstream in 1.26"

    @property
    def dir(self) -> Path:
        return Path(self.ctx.state_dir)

    @classmethod
    def preview(cls, state: ProxyState, **options: Any) -> str:
        table = build_table(state, options.get("proxy_ports"), **options)
        return (
            f"# kube-proxy userspace mode ({cls.status_note})\n" + render_restore(table) + table_text(table)
        )

    def _xt(self) -> Xtables:
        return Xtables(self.ctx.netns, override=self.ctx.options.get("iptables_backend"))

    def _previous(self) -> Table | None:
        try:
            return table_from_input(json.loads((self.dir / TABLE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def observe(self, state: ProxyState, full: bool = False) -> Memory:
        """The table the proxy serves now (its proxy ports stay) and the jumps already in the kernel."""
        dump = self._xt().dump()
        present = [(t, b, c) for t, b, _, _, c in JUMPS if not missing_jumps(dump, [(t, b, c, "", "")])]
        return Memory({"previous": self._previous()}, {"jumps": present}, full=True)

    def render(self, state: ProxyState, memory: Memory) -> Plan:
        """Every sync writes the whole table: a handful of rules per service, and the proxy's table."""
        before = memory.data["previous"]
        old = {p.key: p for p in before.portals} if before else {}
        table = build_table(state, {k: p.proxy_port for k, p in old.items()}, **self.ctx.options)
        missing = {(t, b, c) for t, b, _, _, c in JUMPS} - set(memory.facts["jumps"])
        text = render_restore(table, missing)
        new = {p.key: p for p in table.portals}
        changed = sum(1 for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        gone_udp = {p.cluster_ip for k, p in old.items() if p.protocol == "UDP" and k not in new}
        return Plan(self.mode, True, text, changed, proxy_input(table), payload=gone_udp)

    def apply(self, plan: Plan) -> SyncResult:
        """The proxy's table first (its sockets open before rules point at them), then the rules."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / (TABLE_FILE + ".tmp")
        tmp.write_text(json.dumps(plan.memory, indent=1))
        os.replace(tmp, self.dir / TABLE_FILE)
        errors = self._load_proxy()  # sockets first, so the rules never point at a closed port
        xt = self._xt()
        xt.note_tables(self.ctx.state_dir)
        xt.restore(plan.text)
        self._clear_udp_conntrack(plan.payload)
        if errors:
            raise ProxierError(f"userspace proxy on {self.ctx.node}: {errors[0]}", errors)
        return SyncResult(full=True, changed_services=plan.changed, seconds=0.0, size=plan.size)

    def _load_proxy(self) -> list[str]:
        """Hand the table to the running proxy, starting it first if needed; its error lines."""
        if proxy_pid(self.dir) is not None:
            try:
                return list(control(self.dir, {"op": "load"})["errors"])
            except ProxierError:
                stop_proxy(self.dir)  # wedged or half-dead: replace it
        if len(str(self.dir / CONTROL_SOCKET)) >= 108:
            raise ProxierError(f"state directory path too long for the proxy's control socket: {self.dir}")
        res = run(launch_argv(self.dir), self.ctx.netns)
        return [line for line in res.stderr.splitlines() if line.strip()]

    def _clear_udp_conntrack(self, ips: set[str]) -> None:
        """UDP flows to a removed portal would keep going to a closed proxy port (upstream did the same)."""
        for ip in sorted(i for i in ips if i and i != "None"):
            run(["conntrack", "-D", "-p", "udp", "--orig-dst", ip], self.ctx.netns, check=False)

    def cleanup(self) -> None:
        stop_proxy(self.dir)
        previous = self._previous()
        if os.path.exists(f"{NETNS_DIR}/{self.ctx.netns}"):
            self._xt().cleanup(owned)
            self._xt().drop_created_tables(self.ctx.state_dir)
            if previous:
                self._clear_udp_conntrack({p.cluster_ip for p in previous.portals if p.protocol == "UDP"})
        (self.dir / TABLE_FILE).unlink(missing_ok=True)

    def read_back(self) -> RulesView:
        saved = self._xt().save(counters=True)
        ours = _ours(saved)
        pid = proxy_pid(self.dir)
        stats: dict[str, Any] = {}
        if pid is not None:
            try:
                stats = control(self.dir, {"op": "stats"})
            except ProxierError as e:
                stats = {"error": str(e)}
        table = self._previous()
        head = f"# userspace mode on {self.ctx.node} ({self.status_note})\n"
        head += f"# proxy process pid {pid}\n" if pid else "# proxy process: not running\n"
        rules_text = "".join(f"*{t}\n" + "\n".join(lines) + "\nCOMMIT\n" for t, lines in ours.items())
        text = head + rules_text + (table_text(table, stats) if table else "# no table loaded\n")
        objects = {
            "status_note": self.status_note,
            "iptables": ours,
            "proxy": {"pid": pid, "running": pid is not None, **stats},
            "table": proxy_input(table) if table else None,
        }
        notes = {f"{p.name}/{p.protocol}": f"proxy port {p.proxy_port}" for p in (table.portals if table else ())}
        return RulesView(self.mode, self.ctx.node, text, objects, notes)

    def expected_lines(self, state: ProxyState) -> list[str]:
        memory = self.observe(state)
        memory.facts["jumps"] = []  # as into an empty kernel: every jump
        plan = self.render(state, memory)
        text = plan.text
        with drift.scratch(self.ctx.netns) as ns:
            xt = Xtables(ns, self._xt().backend)
            xt.restore(text)
            return drift.xtables_lines(xt.save(), owned) + _served(table_from_input(plan.memory))

    def held_lines(self) -> list[str]:
        return drift.xtables_lines(self._xt().save(), owned) + _served(self._previous())

    @classmethod
    def doctor(cls) -> Availability:
        missing = [
            t for t in ("iptables-save", "iptables-restore", "nsenter", "conntrack") if not shutil.which(t)
        ]
        if missing:
            return Availability(
                cls.mode,
                False,
                f"missing: {', '.join(missing)}",
                fix="apt-get install iptables util-linux conntrack (or `make setup`)",
                note=cls.status_note,
            )
        version = run(["iptables", "-V"], check=False).stdout.strip()
        return Availability(
            cls.mode,
            True,
            f"{version}; proxy process: Python {sys.version.split()[0]}, splice(2)",
            note=cls.status_note,
        )


def control(state_dir: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request to the proxy's control socket, one reply."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(state_dir / CONTROL_SOCKET))
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
    except (OSError, ValueError) as e:
        raise ProxierError(
            f"userspace proxy in {state_dir} did not answer: {e}; see {state_dir / LOG_FILE}"
        ) from None
    if not reply.get("ok"):
        raise ProxierError(f"userspace proxy: {reply.get('error')}")
    return dict(reply)
