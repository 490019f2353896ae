"""The userspace proxy process: kube-proxy's historical data path, one process per lab node.

Until 1.26 kube-proxy had a `userspace` mode (upstream pkg/proxy/userspace: proxier.go,
roundrobin.go, proxysocket.go): iptables only sent Service traffic to a local "proxy port",
and kube-proxy itself accepted every connection, picked an endpoint and copied the bytes.
This module is that process for one node of a lab; kplab.proxy.userspace.proxier programs the
iptables portals and hands this process its table:

    sync()  --writes table.json, sends {"op": "load"} on control.sock-->  this process
    client --REDIRECT/DNAT--> 0.0.0.0:<proxy port> --new connection--> endpoint ip:port

Balancing, dialling and relaying live in kplab.proxy.userspace.relay (round robin over a
shuffled list, ClientIP affinity, retries on the next endpoint after 250 ms, 500 ms, 1 s,
2 s, splice(2) relaying, UDP clients with an idle timeout).  This module is the process
around it: the table reconciled on each load (a listening socket per service port on its
proxy port; NodePorts held open, bound and listening but never served, so nothing else on
the node can take them, as upstream's claimNodePort), a control socket answering "load" and
"stats", and the lifecycle.

Lifecycle: started inside the node's netns (nsenter --net) with --daemon, it binds its
sockets, then forks: the foreground process exits 0 once the table is loaded (or 1 with the
error), the daemon writes proxy.pid, logs to proxy.log and exits on SIGTERM or by itself
when its state directory disappears (checked every 2 s), so it never outlives its lab.

Run as: python -m kplab.proxy.userspace.proxy --state-dir DIR [--daemon]
(sync() runs this file by its path instead: then only the standard library and the sibling
relay.py are imported, so each node's proxy starts in tens of milliseconds.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__:
    from kplab.proxy.userspace.relay import PipePool, Service, bind_socket, log
else:  # run as a file, as sync() starts it: the kplab package (pyroute2, kubernetes) stays out
    from relay import PipePool, Service, bind_socket, log  # type: ignore[no-redef]

TABLE_FILE = "table.json"  # written by sync(): what to serve
PID_FILE = "proxy.pid"
CONTROL_SOCKET = "control.sock"
LOG_FILE = "proxy.log"
PROGRAM = "kplab.proxy.userspace.proxy"
MARKER = "userspace/proxy.py"  # a proxy's cmdline must hold this (and its --state-dir) before anyone signals it
WATCH_INTERVAL = 2.0  # how often the state directory's presence is checked


class Proxy:
    """Every service port of one node, reconciled from table.json on each load."""

    def __init__(self, state_dir: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.state_dir = state_dir
        self.loop = loop
        self.listen_ip = "0.0.0.0"
        self.services: dict[str, Service] = {}  # "name/PROTO" -> Service
        self.held: dict[str, socket.socket] = {}  # "PROTO/port" -> NodePort socket kept open
        self.pipes = PipePool()
        self.errors: list[str] = []
        self.started = time.time()
        self.loads = 0

    def load(self) -> list[str]:
        """Reconcile with table.json; returns one line per socket that could not be opened."""
        table = json.loads((self.state_dir / TABLE_FILE).read_text())
        errors: list[str] = []
        listen_ip = table.get("listen_ip", "0.0.0.0")
        if listen_ip != self.listen_ip:
            for svc in self.services.values():
                svc.close()
            self.services.clear()
            self.listen_ip = listen_ip
        wanted = {f"{s['name']}/{s['protocol']}": s for s in table.get("services", [])}
        for key in [k for k in self.services if k not in wanted or self.services[k].port != wanted[k]["proxy_port"]]:
            self.services.pop(key).close()
        for key, spec in wanted.items():
            if key in self.services:
                self.services[key].update(spec)
                continue
            try:
                self.services[key] = Service(self.loop, self.pipes, self.listen_ip, spec)
            except OSError as e:
                errors.append(f"{spec['name']} {spec['protocol']}: cannot listen on proxy port {spec['proxy_port']}: "
                              f"{e.strerror}")
        holds = {f"{h['protocol']}/{h['port']}": h for h in table.get("hold", [])}
        for key in [k for k in self.held if k not in holds]:
            self.held.pop(key).close()
        for key, h in holds.items():
            if key not in self.held:
                try:
                    self.held[key] = bind_socket(h["protocol"], "0.0.0.0", h["port"])
                except OSError as e:
                    errors.append(f"{h['owner']}: cannot hold NodePort {key}: {e.strerror}")
        for svc in self.services.values():
            svc.balancer.reap()
        self.errors = errors
        self.loads += 1
        log(f"load {self.loads}: {len(self.services)} service ports, {len(self.held)} node ports held"
            + "".join(f"\n  error: {e}" for e in errors))
        return errors

    def stats(self) -> dict[str, Any]:
        services = []
        for key in sorted(self.services):
            svc = self.services[key]
            b = svc.balancer
            services.append({
                "name": svc.name, "protocol": svc.protocol, "proxy_port": svc.port,
                "order": list(b.endpoints), "next": b.endpoints[b.index] if b.endpoints else None,
                "affinity_seconds": b.affinity_seconds, "sticky_clients": len(b.sticky),
                "udp_clients": len(svc.clients),
                "endpoints": {ep: s.as_dict() for ep, s in sorted(svc.stats.items())},
            })
        return {"pid": os.getpid(), "started": self.started, "loads": self.loads, "listen_ip": self.listen_ip,
                "services": services, "held": sorted(self.held), "errors": self.errors}

    def close(self) -> None:
        for svc in self.services.values():
            svc.close()
        for s in self.held.values():
            s.close()

    async def handle_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One JSON request per line: {"op": "load"} or {"op": "stats"}; one JSON line back."""
        try:
            while line := await reader.readline():
                try:
                    op = json.loads(line).get("op")
                    if op == "load":
                        reply: dict[str, Any] = {"ok": True, "errors": self.load()}
                    elif op == "stats":
                        reply = {"ok": True, **self.stats()}
                    else:
                        reply = {"ok": False, "error": f"unknown op {op!r}"}
                except (ValueError, OSError, KeyError) as e:
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def serve(state_dir: Path, control: socket.socket, ready: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    proxy = Proxy(state_dir, loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    errors = proxy.load() if (state_dir / TABLE_FILE).exists() else []
    server = await asyncio.start_unix_server(proxy.handle_control, sock=control)
    ready("ok\n" + "".join(f"{e}\n" for e in errors))
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)
            except TimeoutError:
                if not state_dir.is_dir():
                    log("state directory gone: exiting")
                    break
    finally:
        server.close()
        proxy.close()
        log("stopped")


def control_path(state_dir: Path) -> Path:
    return state_dir / CONTROL_SOCKET


def raise_fd_limit(want: int = 64_000) -> None:
    """Six descriptors per relayed connection (two sockets, two pipes): lift the usual 1024, as upstream."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(soft, want), max(hard, want)), (max(soft, min(hard, want)), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return
        except (ValueError, OSError):
            continue


def launch_argv(state_dir: Path) -> list[str]:
    """How sync() starts a node's proxy: this file by path (standard library only), detached."""
    return [sys.executable, "-s", "-E", str(Path(__file__).resolve()), "--state-dir", str(state_dir), "--daemon"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m " + PROGRAM, description="kplab's userspace kube-proxy (historical mode)")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--daemon", action="store_true", help="detach once the table is loaded")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    path = control_path(state_dir)
    if len(str(path).encode()) >= 108:
        print(f"control socket path too long for AF_UNIX: {path}", file=sys.stderr)
        return 2
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.unlink(missing_ok=True)
        control.bind(str(path))
        control.listen(16)
    except OSError as e:
        print(f"cannot open control socket {path}: {e.strerror}", file=sys.stderr)
        return 2
    ready_fd = [-1]
    if args.daemon:
        ready_r, ready_w = os.pipe()
        if os.fork() > 0:  # foreground: wait for the daemon's first load, report it, exit
            os.close(ready_w)
            chunks = []
            while chunk := os.read(ready_r, 65536):
                chunks.append(chunk)
            status, _, errors = b"".join(chunks).decode().partition("\n")
            sys.stderr.write(errors)
            return 0 if status == "ok" else 1
        os.close(ready_r)
        ready_fd[0] = ready_w
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        logfd = os.open(state_dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(devnull, 0)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        os.close(devnull)
        os.close(logfd)
    raise_fd_limit()
    (state_dir / PID_FILE).write_text(f"{os.getpid()}\n")
    log(f"userspace proxy {os.getpid()} starting in {state_dir}")

    def ready(msg: str) -> None:
        """Tell the foreground process (once) how the first load went."""
        if ready_fd[0] >= 0:
            os.write(ready_fd[0], msg.encode())
            os.close(ready_fd[0])
            ready_fd[0] = -1

    try:
        asyncio.run(serve(state_dir, control, ready))
    except Exception as e:  # report a failed start to the foreground, then the log has it
        ready(f"error\n{type(e).__name__}: {e}\n")
        raise
    finally:
        path.unlink(missing_ok=True)
        pid_file = state_dir / PID_FILE
        try:
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
        except OSError:
            pass
    return 0


# ---------------------------------------------------------------------------------------------
# Finding and stopping a proxy by its pid file (used by cleanup() and by `kplab clean`).
# ---------------------------------------------------------------------------------------------


def proxy_pid(state_dir: Path) -> int | None:
    """The pid of the live proxy serving `state_dir`, checked against its cmdline; else None."""
    try:
        pid = int((state_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    args = [a.decode(errors="replace") for a in cmdline]
    if not any(MARKER in a for a in args) or "--state-dir" not in args:
        return None  # the pid was reused by something else: never signal it
    given = Path(args[args.index("--state-dir") + 1]) if args.index("--state-dir") + 1 < len(args) else None
    if given is None or given.resolve() != state_dir.resolve():
        return None
    return pid


def stop_proxy(state_dir: Path, timeout: float = 3.0) -> bool:
    """Stop the proxy recorded in `state_dir/proxy.pid` (SIGTERM, then SIGKILL); True if one ran.

    Safe on leftovers of crashed labs: the pid is signalled only if its cmdline is this
    program serving this very state directory.
    """
    pid = proxy_pid(state_dir)
    stopped = False
    if pid is not None:
        stopped = True
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 1.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if _wait_gone(pid, wait):
                break
    for name in (PID_FILE, CONTROL_SOCKET):
        (state_dir / name).unlink(missing_ok=True)
    return stopped


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass  # not our child (the usual case: the daemon was reparented)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def stop_proxies_under(root: Path) -> int:
    """Stop every proxy whose state directory lies under `root` (a lab's state dir); count them."""
    return sum(stop_proxy(pid_file.parent) for pid_file in sorted(root.glob(f"**/{PID_FILE}")))


if __name__ == "__main__":
    sys.exit(main())
