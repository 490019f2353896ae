"""Run the `ipvs` tests for real where the host kernel has no IPVS: in a throwaway VM.

    host: pytest (kernel without IP_VS)             guest: Debian's linux-image-amd64 under qemu (TCG)
      test_ipvs_suite_in_vm                           the host's own filesystem, read-only (9p)
        vng --run /boot/vmlinuz-*-amd64 ... ───────►  python kplab/testing/vm.py --inner RESULTS
                                                        modprobe ip_vs ... dummy br_netfilter
                                                        pytest -m ipvs <the ipvs tests> --junitxml
        reads rc, junit.xml, output.txt  ◄─────────── RESULTS: a host temp dir, the guest's only
        removes RESULTS; kills the VM on timeout        writable window (--rwdir)

virtme-ng (`vng`) boots the distribution kernel over the running system, so the guest runs
the very same tree and `.venv` as the host; nothing is copied.  One boot serves the whole
suite.  The VM is bounded by a timeout and killed with its whole session when it expires; its
temporary directory (results, and virtme's own files via TMPDIR) is removed in every case.
`python -m kplab.testing.vm [--collect DIR] -- ARGV` runs any `python ARGV` the same way
(bench/sync.py --mode ipvs ...: a benchmark's JSON goes to the guest's results window and back
into DIR).  What the VM path needs (qemu, the kernel, a
static busybox for virtme's initramfs, virtme-ng) is installed on first use: `ensure_tools()`.

KVM is not used unless KPLAB_VM_KVM=1: on the machines we measured, KVM guests hang at boot
(with -cpu host, qemu aborts on MSR 0x10a), so the guest runs under TCG, 20-50x slower.

This module imports nothing from kplab at import time: the guest runs it as a plain script,
and every import costs seconds under emulation.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VM_DEBS = ("qemu-system-x86", "linux-image-amd64", "busybox-static")
VNG_REQUIREMENT = "virtme-ng>=1.30"
# Loaded up front in the guest: IPVS and its schedulers, and what the lab's topology uses.
GUEST_MODULES = (
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_sh",
    "ip_vs_dh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_mh",
    "xt_ipvs",
    "dummy",
    "veth",
    "bridge",
    "br_netfilter",
)
DEFAULT_TIMEOUT = 2400.0  # seconds for boot + suite (the ipvs suite took 1353 s in CI); KPLAB_VM_TIMEOUT overrides
PROJECT_ROOT = Path(__file__).resolve().parents[2]
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def ipvs_available() -> bool:
    """Whether this kernel has IPVS: /proc/net/ip_vs, after trying to load the module."""
    if Path("/proc/net/ip_vs").exists():
        return True
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, check=False, timeout=30)
    return Path("/proc/net/ip_vs").exists()


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name))


def find_kernel() -> Path | None:
    """The newest Debian generic kernel in /boot (the -cloud flavour has no 9p: it cannot boot here)."""
    found = [p for p in Path("/boot").glob("vmlinuz-*-amd64") if "-cloud-" not in p.name]
    return max(found, key=_version_key) if found else None


def _missing_debs() -> list[str]:
    if not shutil.which("dpkg"):
        return list(VM_DEBS)
    return [
        d
        for d in VM_DEBS
        if subprocess.run(["dpkg", "-s", d], capture_output=True, check=False).returncode != 0
    ]


def ensure_tools() -> tuple[Path, Path]:
    """(vng, kernel image), installing what is missing: Debian packages and virtme-ng (in this venv)."""
    from kplab.errors import EnvironmentProblem

    missing = _missing_debs()
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise EnvironmentProblem(f"the IPVS VM needs {' '.join(missing)}: apt-get install them (as root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            cp = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800, check=False)
            if cp.returncode != 0:
                last = (cp.stderr.strip() or cp.stdout.strip()).splitlines()[-1:]
                raise EnvironmentProblem(f"{' '.join(argv[:3])} failed: {last[0] if last else cp.returncode}")
    vng = Path(sys.executable).parent / "vng"
    if not vng.exists():
        cp = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", VNG_REQUIREMENT],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if cp.returncode != 0 or not vng.exists():
            raise EnvironmentProblem(
                f"could not install {VNG_REQUIREMENT} into {sys.prefix}: {cp.stderr.strip()[-200:]}"
            )
    kernel = find_kernel()
    if kernel is None:
        raise EnvironmentProblem("no /boot/vmlinuz-*-amd64 after installing linux-image-amd64")
    return vng, kernel


@dataclass
class VmRun:
    """What came back from one VM: pytest's exit code, its junit counts and output, timings."""

    returncode: int  # the guest pytest's exit code; -1 if it never reported one
    output: str  # the guest pytest's output (or, if it never started, the VM console)
    counts: dict[str, int] = field(default_factory=dict)  # tests, failures, errors, skipped
    failed: list[str] = field(default_factory=list)  # "nodeid: first line of the message"
    boot_seconds: float = 0.0  # guest uptime when the suite started
    seconds: float = 0.0  # wall time of the whole VM, boot to power-off
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.counts.get("tests", 0) > 0

    def summary(self) -> str:
        c = self.counts
        passed = c.get("tests", 0) - c.get("failures", 0) - c.get("errors", 0) - c.get("skipped", 0)
        head = (
            f"{passed} passed, {c.get('failures', 0)} failed, {c.get('errors', 0)} errors, "
            f"{c.get('skipped', 0)} skipped in the VM (boot {self.boot_seconds:.0f}s, "
            f"total {self.seconds:.0f}s, pytest exit {self.returncode})"
        )
        if self.timed_out:
            head = f"VM killed after its timeout ({self.seconds:.0f}s): " + head
        return "\n".join([head, *(f"  FAILED {f}" for f in self.failed)])


def _read_junit(path: Path) -> tuple[dict[str, int], list[str]]:
    if not path.exists():
        return {}, []
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        for bad in (case.find("failure"), case.find("error")):
            if bad is not None:
                msg = (bad.get("message") or "").strip().splitlines()
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                failed.append(f"{name}: {msg[0][:200] if msg else bad.tag}")
    return counts, failed


def _session_pids(sid: int) -> list[int]:
    """Processes of session `sid` (the VM we started: vng, virtme-run, qemu)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
            pids.append(int(stat.parent.name))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every process left in the session we started (by id, nothing else)."""
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def vng_argv(vng: Path, kernel: Path, results: Path, memory: str, cpus: int) -> list[str]:
    inner = shlex.join([sys.executable, str(Path(__file__).resolve()), "--inner", str(results)])
    argv = [
        str(vng),
        "--run",
        str(kernel),
        "--memory",
        memory,
        "--cpus",
        str(cpus),
        "--rwdir",
        str(results),
        "--cwd",
        str(PROJECT_ROOT),
        "--exec",
        inner,
    ]
    if os.environ.get("KPLAB_VM_KVM") != "1":
        argv.insert(3, "--disable-kvm")
    return argv


def run_in_vm(
    argv: list[str],
    timeout: float | None = None,
    memory: str = "3G",
    cpus: int = 2,
    collect: Path | None = None,
    nice: int = 0,
    started: Callable[[int], None] | None = None,
) -> VmRun:
    """Boot one VM and run `python *argv` in it from the project root; "{results}" in argv names the
    guest's writable results directory.  With `collect`, the *.json files left there are copied to it.
    `nice` lowers the VM's CPU priority (a VM beside other work takes only what that leaves);
    `started` gets the VM's session id as soon as it runs (to kill it from elsewhere: kill_session)."""
    vng, kernel = ensure_tools()
    timeout = float(os.environ.get("KPLAB_VM_TIMEOUT", timeout or DEFAULT_TIMEOUT))
    work = Path(tempfile.mkdtemp(prefix="kplab-vm-"))
    results, host_tmp = work / "results", work / "tmp"  # the guest's window; virtme's own temporary files
    try:
        results.mkdir()
        host_tmp.mkdir()
        (results / "args.json").write_text(json.dumps([a.replace("{results}", str(results)) for a in argv]))
        # virtme keeps its temporary files in TMPDIR and removes them at exit: here they go with `work`
        # even when the VM is killed at its timeout
        env = dict(
            os.environ, TMPDIR=str(host_tmp), PATH=f"{vng.parent}:{os.environ.get('PATH', GUEST_PATH)}"
        )
        start = time.monotonic()
        proc = subprocess.Popen(
            ["nice", "-n", str(nice), *vng_argv(vng, kernel, results, memory, cpus)] if nice else
            vng_argv(vng, kernel, results, memory, cpus),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        if started is not None:
            started(proc.pid)
        timed_out = False
        try:
            console, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_session(proc.pid)
            console, _ = proc.communicate(timeout=30)
        finally:
            kill_session(proc.pid)  # nothing of the VM outlives this call, whatever happened
            proc.wait(timeout=30)
        seconds = time.monotonic() - start
        rc_file, out_file, boot_file = results / "rc", results / "output.txt", results / "boot"
        rc = int(rc_file.read_text()) if rc_file.exists() else -1
        output = out_file.read_text(errors="replace") if out_file.exists() else console
        counts, failed = _read_junit(results / "junit.xml")
        boot = float(boot_file.read_text()) if boot_file.exists() else 0.0
        if collect is not None:
            for f in results.glob("*.json"):
                if f.name != "args.json":
                    collect.mkdir(parents=True, exist_ok=True)
                    shutil.copy(f, collect / f.name)
        return VmRun(rc, output, counts, failed, boot, seconds, timed_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_pytest_in_vm(pytest_args: list[str], timeout: float | None = None, **how: Any) -> VmRun:
    """One VM for a pytest run (e.g. `-m ipvs` and node ids); junit counts come back in VmRun.
    `how`: run_in_vm's nice and started."""
    argv = [
        "-m",
        "pytest",
        "-q",
        "-rfE",
        "--durations=12",
        "-p",
        "no:cacheprovider",
        "--junitxml={results}/junit.xml",
        *pytest_args,
    ]
    return run_in_vm(argv, timeout=timeout, **how)


def _inner(results: Path) -> int:
    """In the guest: load the modules, run the host's argv, leave rc and output in `results`."""
    (results / "boot").write_text(Path("/proc/uptime").read_text().split()[0])
    args = json.loads((results / "args.json").read_text())
    env = dict(
        os.environ,
        PYTHONDONTWRITEBYTECODE="1",
        KPLAB_IN_VM="1",
        KPLAB_BENCH_RESULTS=str(results),  # a benchmark's JSON lands where --collect picks it up
        KPLAB_START_TIMEOUT="300",  # under TCG the lab's processes take tens of seconds to import
        TMPDIR="/tmp",
        PATH=f"{Path(sys.executable).parent}:{GUEST_PATH}",
    )
    with open(results / "output.txt", "w") as out:
        mods = subprocess.run(
            ["modprobe", "-a", *GUEST_MODULES], capture_output=True, text=True, env=env, check=False
        )
        if mods.returncode != 0:
            out.write(f"modprobe: {mods.stderr.strip()}\n")
        out.flush()
        rc = subprocess.run(
            [sys.executable, *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    (results / "rc").write_text(str(rc))
    return rc


def main(argv: list[str]) -> int:
    """`vm.py --inner RESULTS` in the guest; on the host `python -m kplab.testing.vm [--collect DIR] -- ARGV`
    runs `python ARGV` in a throwaway VM (e.g. bench/sync.py --mode ipvs --json {results}/sync-ipvs.json)."""
    if len(argv) == 2 and argv[0] == "--inner":
        return _inner(Path(argv[1]))
    collect = None
    if argv[:1] == ["--collect"] and len(argv) > 1:
        collect, argv = Path(argv[1]).resolve(), argv[2:]
    if argv[:1] != ["--"] or len(argv) < 2:
        print("usage: python -m kplab.testing.vm [--collect DIR] -- SCRIPT_OR_-m ARGS...", file=sys.stderr)
        return 2
    run = run_in_vm(argv[1:], collect=collect)
    print(run.output, end="")
    print(
        f"(VM: boot {run.boot_seconds:.0f}s, total {run.seconds:.0f}s, exit {run.returncode}"
        + (", killed at its timeout" if run.timed_out else "")
        + ")"
    )
    return 0 if run.returncode == 0 and not run.timed_out else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
