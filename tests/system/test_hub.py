"""The class on one server, for real: `docker compose --profile hub up` (containers/hub/) on the Docker
engine and lab image of conftest.py; learners sign in over HTTP, get a lab container each, run a check
in their own kernel, are graded together by the instructor's command, and idle servers are culled.

What a learner can reach: own container, network namespace and volume; no other learner's server
through the hub; and from a learner's kernel the known ways out of a container (cgroup v1
release_agent, the host's disk, another learner's volume, the engine's socket) all fail, because a
learner's root is an unprivileged host user (kplab-userns).  Faults: a missing lab image, a learner's
`kplab clean --all`.  Spawn times and per-learner memory and CPU are measured and written to
artifacts/hub.json (docs/WORKSHOP.md's sizing table).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from kplab.testing.docker import compose, host_snapshot, sh

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LEARNERS = ["ada", "bob", "cy"]
INSTRUCTOR = "instructor"
MEASURED: dict[str, Any] = {}


def hub_env(project: dict[str, Any], **extra: str) -> dict[str, Any]:
    return {**project, "env": {**project["env"], **extra}}


def inside(box: str, *argv: str, **kw: Any) -> str:
    """argv in the learner's own user namespace, as its root (what the learner's kernel sees)."""
    return sh(["docker", "exec", box, "kplab-userns", "--enter", *argv], **kw).stdout


def learner_volumes() -> list[str]:
    return sorted(sh(["docker", "volume", "ls", "-q", "--filter", "label=org.kplab.learner"]).stdout.split())


def learner_containers() -> list[str]:
    return sh(["docker", "ps", "-a", "-q", "--filter", "label=org.kplab.learner"]).stdout.split()


def wait_for(what: str, probe, limit: float, every: float = 2) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what}: not within {limit:.0f}s")


@pytest.fixture(scope="module")
def hub(project: dict[str, Any], image: str) -> dict[str, Any]:
    """The hub up and healthy; afterwards `down -v`, the learners' volumes removed, the host as found."""
    before = host_snapshot()
    creds = {"KPLAB_HUB_PASSWORD": secrets.token_hex(8), "KPLAB_HUB_ADMIN_PASSWORD": secrets.token_hex(20)}
    hp = hub_env(project, **creds, KPLAB_HUB_ACTIVITY_INTERVAL="10")
    t0 = time.monotonic()
    compose(hp, "--profile", "hub", "build", "hub", timeout=900)
    MEASURED["hub_build_s"] = round(time.monotonic() - t0, 1)
    url = f"http://127.0.0.1:{project['hub_port']}"
    try:
        compose(hp, "--profile", "hub", "up", "-d", "--no-deps", "hub")
        wait_for("the hub answering /hub/health", lambda: _answers(f"{url}/hub/health"), 180)
        yield {**hp, "url": url, "creds": creds}
    finally:
        compose(hp, "--profile", "hub", "down", "-v", "-t", "180", timeout=400, check=False)
        left = learner_containers()  # the hub's shutdown stops (and so removes) every learner container
        for cid in left:
            sh(["docker", "rm", "-f", "-v", cid], check=False)
        # `down -v` removes Compose's volumes; the learners' are DockerSpawner's, removed by label (WORKSHOP.md).
        vols = learner_volumes()
        if vols:
            sh(["docker", "volume", "rm", *vols], check=False)
        out = REPO / "artifacts" / "hub.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(MEASURED, indent=2) + "\n")
    after = host_snapshot()
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"the hub left the host's root namespace changed: {changed}"
    assert not left, f"stopping the hub left learner containers behind: {left}"
    assert all(v.startswith("kplab-learner-") for v in vols), f"volumes left that are not learners': {vols}"
    assert not learner_volumes(), "the documented removal left learner volumes"


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


class Learner:
    """A browser's worth of HTTP: the login form, then a token made with the session's cookie."""

    def __init__(self, url: str, name: str, password: str) -> None:
        self.url, self.name, self.http = url, name, requests.Session()
        self.http.get(f"{url}/hub/login", timeout=30).raise_for_status()
        r = self.http.post(f"{url}/hub/login", timeout=30, allow_redirects=False,
                           data={"username": name, "password": password, "_xsrf": self.http.cookies["_xsrf"]})
        assert r.status_code == 302, f"{name} could not sign in: {r.status_code} {r.text[:300]}"
        r = self.http.post(f"{url}/hub/api/users/{name}/tokens", json={"note": "test", "expires_in": 7200},
                           headers={"X-XSRFToken": self.http.cookies["_xsrf"]}, timeout=30)
        r.raise_for_status()
        self.token = r.json()["token"]
        self.auth = {"Authorization": f"token {self.token}"}

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", headers=self.auth, timeout=60, **kw)

    def server(self) -> dict[str, Any]:
        return self.api("GET", f"/hub/api/users/{self.name}").json().get("servers", {}).get("", {})

    def spawn(self) -> float:
        t0 = time.monotonic()
        r = self.api("POST", f"/hub/api/users/{self.name}/server")
        assert r.status_code in (201, 202), f"spawn {self.name}: {r.status_code} {r.text[:300]}"
        wait_for(f"{self.name}'s server ready", lambda: self.server().get("ready"), 360, every=1)
        return time.monotonic() - t0

    def run(self, code: str, limit: float = 300) -> str:
        """Run code in a new kernel of the learner's server (the Jupyter websocket protocol); its stdout."""
        k = self.api("POST", f"/user/{self.name}/api/kernels", json={"name": "python3"})
        assert k.status_code == 201, f"{self.name}: no kernel: {k.status_code} {k.text[:300]}"
        kid = k.json()["id"]
        ws = websocket.create_connection(f"{self.url.replace('http', 'ws')}/user/{self.name}/api/kernels/{kid}/channels",
                                         header=[f"Authorization: token {self.token}"], timeout=limit)
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": self.name,
                                       "session": uuid.uuid4().hex, "version": "5.3"},
                            "parent_header": {}, "metadata": {}, "channel": "shell",
                            "content": {"code": code, "silent": False, "store_history": False,
                                        "user_expressions": {}, "allow_stdin": False}}))
        out, deadline = [], time.monotonic() + limit
        try:
            while time.monotonic() < deadline:
                m = json.loads(ws.recv())
                if m.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if m["msg_type"] == "stream":
                    out.append(m["content"]["text"])
                elif m["msg_type"] == "error":
                    out.append("\n".join(m["content"]["traceback"]))
                elif m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                    break
        finally:
            ws.close()
            self.api("DELETE", f"/user/{self.name}/api/kernels/{kid}")
        return "".join(out)


def stats(container: str) -> dict[str, float]:
    """One `docker stats` sample: memory in MiB, CPU in % of one core."""
    s = json.loads(sh(["docker", "stats", "--no-stream", "--format", "{{json .}}", container]).stdout)
    used = s["MemUsage"].split("/")[0].strip()
    units = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "B": 1 / 2**20}
    unit = next(u for u in units if used.endswith(u))
    return {"mem_mib": round(float(used[: -len(unit)]) * units[unit], 1), "cpu_pct": float(s["CPUPerc"].rstrip("%"))}


@pytest.fixture(scope="module")
def learners(hub: dict[str, Any]) -> dict[str, Learner]:
    """Three learners signed in through the login form; their servers spawned one after the other."""
    signed = {n: Learner(hub["url"], n, hub["creds"]["KPLAB_HUB_PASSWORD"]) for n in LEARNERS}
    MEASURED["spawn_s"] = {n: round(signed[n].spawn(), 1) for n in LEARNERS}  # 0, 1, then 2 labs already up
    return signed


def test_each_learner_runs_a_check_in_their_own_kernel(learners: dict[str, Learner]) -> None:
    code = ("import subprocess\n"
            "print(subprocess.run(['kplab', 'scale', 'deployment', 'web', '--replicas', '4'],"
            " capture_output=True, text=True).stdout)\n"
            "cp = subprocess.run(['kplab', 'check', '00-welcome/four-replicas', '-o', 'json'],"
            " capture_output=True, text=True)\n"
            "print('RESULT', cp.returncode, cp.stdout, cp.stderr)\n")
    for name, learner in learners.items():
        out = learner.run(code)
        assert "RESULT 0" in out, f"{name}'s check did not pass in their kernel:\n{out[-2000:]}"


def test_learners_are_apart(hub: dict[str, Any], learners: dict[str, Learner]) -> None:
    """Own container, network namespace, volume; nothing of the host's; no way into another's server."""
    boxes = {n: f"kplab-learner-{n}" for n in learners}
    netns = {n: inside(b, "stat", "-L", "-c", "%i", "/run/netns/kplab-default-node-1") for n, b in boxes.items()}
    assert len(set(netns.values())) == len(boxes), f"learners share a lab node's network namespace: {netns}"
    for n, b in boxes.items():
        info = json.loads(sh(["docker", "inspect", b]).stdout)[0]
        mounts = [(m["Type"], m.get("Name") or m["Source"]) for m in info["Mounts"]]
        assert mounts == [("volume", f"kplab-learner-{n}")], f"{n} mounts {mounts}"
        host = info["HostConfig"]
        assert not host["Privileged"] and host["CapDrop"] == ["ALL"], n
        assert sorted(host["CapAdd"]) == sorted(["NET_ADMIN", "SYS_ADMIN", "NET_RAW", "SETUID", "SETGID", "CHOWN",
                                                 "KILL"]), host["CapAdd"]
        assert host["Memory"] > 0 and (host["NanoCpus"] > 0 or host["CpuQuota"] > 0), f"{n} has no limits"
    # As bob's own root: the container's real root has no CAP_DAC_OVERRIDE over bob's files (uid 100000).
    inside(boxes["bob"], "sh", "-c", "echo bob-only > /workspace/secret.txt")
    ada, bob = learners["ada"], learners["bob"]
    assert bob.api("GET", "/user/bob/api/contents/secret.txt").status_code == 200
    r = ada.api("GET", "/user/bob/api/contents/secret.txt", allow_redirects=False)
    assert r.status_code in (302, 403, 404) and "bob-only" not in r.text, f"ada read bob's file: {r.status_code}"
    assert "secret.txt" not in sh(["docker", "exec", boxes["ada"], "ls", "/workspace"]).stdout


def test_sizing_idle_and_busy(learners: dict[str, Learner]) -> None:
    box = "kplab-learner-ada"
    MEASURED["idle"] = stats(box)
    load = threading.Thread(target=sh, args=(["docker", "exec", box, "kplab-userns", "--enter", "kplab", "curl",
                                              "client", "web", "-n", "3000"],),
                            kwargs={"timeout": 300, "check": False})
    load.start()
    time.sleep(3)
    MEASURED["busy"] = stats(box)
    load.join(timeout=300)
    MEASURED["all_idle_mib"] = {n: stats(f"kplab-learner-{n}")["mem_mib"] for n in learners}


def test_instructor_grades_the_class(hub: dict[str, Any], learners: dict[str, Learner]) -> None:
    t0 = time.monotonic()
    # notebook 00 only: the whole course is minutes of replay per learner (test_grading.py replays it)
    out = compose(hub, "--profile", "hub", "exec", "-T", "hub", "kplab-class-grade", "--notebook", "00", "--out",
                  "/srv/jupyterhub/grades/test", timeout=900)
    MEASURED["class_grade_s"] = round(time.monotonic() - t0, 1)
    for n in LEARNERS:
        assert f"{n}: " in out and "checks passed" in out, out
    book = compose(hub, "--profile", "hub", "exec", "-T", "hub", "cat", "/srv/jupyterhub/grades/test/gradebook.csv")
    rows = [line.split(",")[0] for line in book.strip().splitlines()[1:]]
    assert rows == sorted(LEARNERS), book
    assert "no container" not in out and "not graded" not in out, out
    # The reports live on the hub's volume only: no learner container mounts it (test_learners_are_apart).


def host_pids(box: str, name: str) -> list[int]:
    """Host pids of the container's processes whose command line has name (docker top runs ps on the host);
    not tini, PID 1, which stays the host's root and only forwards signals and reaps."""
    rows = [r.split(None, 1) for r in sh(["docker", "top", box, "-eo", "pid,args"]).stdout.splitlines()[1:]]
    return [int(pid) for pid, args in rows if name in args and Path(args.split()[0]).name != "tini"]


def test_a_learners_root_is_an_unprivileged_host_user(learners: dict[str, Learner]) -> None:
    """Everything a learner's container runs (server, lab workloads) but tini has host uid 100000."""
    for n in learners:
        box = f"kplab-learner-{n}"
        assert host_pids(box, "jupyterhub-singleuser"), f"{n}: no jupyterhub-singleuser process"
        for pid in host_pids(box, ""):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:  # exited since docker top listed it
                continue
            uids = next(l for l in status.splitlines() if l.startswith("Uid:"))
            assert uids.split()[1:] == ["100000"] * 4, f"{n}'s process {pid} runs as host {uids}"
    assert inside("kplab-learner-ada", "cat", "/proc/self/uid_map").split() == ["0", "100000", "65536"]


# Run in ada's kernel.  Each attempt prints "ATTEMPT <name> <exit code> <last words>"; the payload of the
# release_agent attempt, if the host's kernel ever ran it, would create MARK on the host.
ESCAPES = r"""
import os, re, socket, subprocess
MARK = {mark!r}
def attempt(name, cmd):
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    print("ATTEMPT", name, p.returncode, (p.stdout + p.stderr).strip().replace(chr(10), " | ")[-160:])
root = next(l for l in open("/proc/self/mountinfo") if l.split()[4] == "/")
upper = re.search(r"upperdir=([^,\s]+)", root)
host_tmp = (upper.group(1) if upper else "/nonexistent") + "/tmp"   # this container's /tmp, seen from the host
with open("/tmp/payload", "w") as f:
    f.write("#!/bin/sh\ntouch " + MARK + "\n")
os.chmod("/tmp/payload", 0o755)
os.makedirs("/tmp/cg", exist_ok=True)
chain = ("mount -t cgroup -o {{opt}} cgroup /tmp/cg && echo " + host_tmp + "/payload > /tmp/cg/release_agent"
         " && mkdir -p /tmp/cg/x && echo 1 > /tmp/cg/x/notify_on_release && sh -c 'echo $$ > /tmp/cg/x/cgroup.procs'")
controllers = [l.split()[0] for l in open("/proc/cgroups") if not l.startswith("#")]
for opt in controllers + ["none,name=kplabx"]:
    attempt("release_agent/" + opt, chain.format(opt=opt) + "; rc=$?; umount /tmp/cg 2>/dev/null; exit $rc")
attempt("release_agent/own-cgroupns", "unshare --user --map-root-user --mount --cgroup bash -c \""
        + chain.format(opt="memory").replace('"', '\\"') + "\"")
attempt("release_agent/existing", "for f in /sys/fs/cgroup/*/release_agent; do echo " + host_tmp
        + "/payload > $f || exit 1; done; ls /sys/fs/cgroup/*/release_agent")
hosts = next(l for l in open("/proc/self/mountinfo") if l.split()[4] == "/etc/hosts")
major, minor = hosts.split()[2].split(":")
attempt("host-disk/mknod", "mknod /tmp/hostdisk b %s %s && mount /tmp/hostdisk /mnt" % (major, minor))
attempt("host-disk/mount", "for d in /dev/vda /dev/sda /dev/nvme0n1 /dev/xvda; do mount $d /mnt && exit 0; done; exit 1")
attempt("other-learner/volume-path", "cat /var/lib/docker/volumes/kplab-learner-bob/_data/secret.txt")
attempt("other-learner/via-pid1", "cat /proc/1/root/var/lib/docker/volumes/kplab-learner-bob/_data/secret.txt")
attempt("other-learner/mounts", "grep kplab-learner-bob /proc/self/mountinfo")
for path in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"):
    attempt("engine-socket" + path, "python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect(\"%s\")'" % path)
attempt("engine-socket/tcp", "python3 -c 'import socket; socket.create_connection((\"hub\", 2375), timeout=3)'")
"""


def test_escape_paths_fail_from_a_learners_kernel(hub: dict[str, Any], learners: dict[str, Learner]) -> None:
    mark = Path(f"/tmp/kplab-escaped-{uuid.uuid4().hex[:8]}")
    try:
        out = learners["ada"].run(ESCAPES.format(mark=str(mark)))
        tried = [line.split(" ", 3) for line in out.splitlines() if line.startswith("ATTEMPT ")]
        assert len(tried) >= 12, f"the attempts did not all run:\n{out[-3000:]}"
        worked = [t for t in tried if t[2] == "0"]
        assert not worked, f"escape paths that worked from ada's kernel: {worked}"
        for _ in range(5):  # a release agent runs asynchronously, when its cgroup empties
            assert not mark.exists(), "the release_agent payload ran on the host"
            time.sleep(1)
    finally:
        mark.unlink(missing_ok=True)


def test_clean_all_in_one_learners_lab_leaves_the_others(learners: dict[str, Learner]) -> None:
    ada, bob = learners["ada"], learners["bob"]
    out = ada.run("import subprocess\n"
                  "print(subprocess.run('kplab clean --all; echo CLEAN $?; ip netns list | grep -c kplab-',"
                  " shell=True, capture_output=True, text=True).stdout)")
    assert "CLEAN 0" in out and out.strip().endswith("0"), f"ada's clean --all:\n{out}"
    out = bob.run("import subprocess\n"
                  "cp = subprocess.run(['kplab', 'curl', 'client', 'web', '-n', '5'], capture_output=True, text=True)\n"
                  "print('CURL', cp.returncode, cp.stdout[-500:], cp.stderr[-500:])")
    assert "CURL 0" in out, f"bob's lab after ada's clean --all:\n{out}"
    assert "kplab-default-node-1" in inside("kplab-learner-cy", "ip", "netns", "list")


MANY = 10_000
# In ada's kernel, first: her lab again (clean --all took it), in nftables mode, and 10,000 Services
# generated there.  Then, in a cell that runs while the test drives bob: `kplab apply -f`, bounded.
# (A cell's subprocess.Popen does not outlive its kernel: ipykernel ends its children at shutdown.)
FILL = r"""
import pathlib, subprocess
up = subprocess.run(["kplab", "up", "--mode", "nftables"], capture_output=True, text=True)
print("UP", up.returncode, up.stderr[-300:])
pathlib.Path("/workspace/many.yaml").write_text("---\n".join(
    "apiVersion: v1\nkind: Service\nmetadata: {{name: many-%05d}}\n"
    "spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}\n" % i for i in range({n})))
"""
APPLY = r"""
import subprocess, time
t = time.monotonic()
try:
    cp = subprocess.run(["kplab", "apply", "-f", "/workspace/many.yaml"], capture_output=True, text=True,
                        timeout={limit})
    rc, err, lines = cp.returncode, cp.stderr.strip(), cp.stdout.count("\n")
except subprocess.TimeoutExpired:
    rc, err, lines = "timeout", "", 0
print("APPLY", rc, round(time.monotonic() - t, 1), lines)
print("ERR", err[-500:])
"""
BOB = r"""
import subprocess, time
t = time.monotonic(); cu = subprocess.run(["kplab", "curl", "client", "web", "-n", "5"], capture_output=True, text=True)
tc = time.monotonic() - t
t = time.monotonic(); ck = subprocess.run(["kplab", "check", "00-welcome/four-replicas", "-o", "json"],
                                          capture_output=True, text=True)
print("BOB", cu.returncode, ck.returncode, round(tc, 3), round(time.monotonic() - t, 3))
print(cu.stdout[-300:], cu.stderr[-300:], ck.stdout[-300:], ck.stderr[-300:])
"""


def memory_cgroup(box: str) -> dict[str, int]:
    """The container's memory cgroup as the kernel counts it: limit, peak, failures, OOM kills (v1 or v2)."""
    pid = sh(["docker", "inspect", "-f", "{{.State.Pid}}", box]).stdout.strip()
    lines = [l.split(":", 2) for l in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    v1 = next((p for _, c, p in lines if "memory" in c.split(",")), None)
    if v1 is not None:
        d = Path("/sys/fs/cgroup/memory") / v1.lstrip("/")
        oom = dict(l.split() for l in (d / "memory.oom_control").read_text().splitlines())
        return {"limit": int((d / "memory.limit_in_bytes").read_text()),
                "peak": int((d / "memory.max_usage_in_bytes").read_text()),
                "failcnt": int((d / "memory.failcnt").read_text()), "oom_kill": int(oom.get("oom_kill", 0))}
    d = Path("/sys/fs/cgroup") / next(p for h, _, p in lines if h == "0").lstrip("/")
    events = dict(l.split() for l in (d / "memory.events").read_text().splitlines())
    return {"limit": int((d / "memory.max").read_text()), "peak": int((d / "memory.peak").read_text()),
            "failcnt": int(events.get("max", 0)), "oom_kill": int(events.get("oom_kill", 0))}


def bob_round(bob: Learner, hub_url: str) -> dict[str, float]:
    """bob's curl and notebook-00 check in his kernel (their times inside it, and the whole round trip
    with a new kernel), and the hub's API answering him."""
    t0 = time.monotonic()
    out = bob.run(BOB, limit=240)
    trip = time.monotonic() - t0
    line = next((l.split() for l in out.splitlines() if l.startswith("BOB ")), None)
    assert line and line[1:3] == ["0", "0"], f"bob's curl/check while ada's lab fills (curl rc, check rc):\n{out}"
    t0 = time.monotonic()
    assert bob.api("GET", "/hub/api/users/bob").status_code == 200 and _answers(f"{hub_url}/hub/health")
    return {"curl_s": float(line[3]), "check_s": float(line[4]), "trip_s": round(trip, 2),
            "hub_api_s": round(time.monotonic() - t0, 3)}


def test_ten_thousand_services_in_one_learners_lab_leave_the_others(hub: dict[str, Any],
                                                                    learners: dict[str, Learner]) -> None:
    """ada applies 10,000 Services from her kernel; while it runs and after, bob's curl and check pass, the
    hub answers, and ada's container stays within its limits.  Times and ada's peak memory: artifacts/hub.json."""
    ada, bob, box = learners["ada"], learners["bob"], "kplab-learner-ada"
    limit = 600  # ada's cell ends the apply by then; measured: well under it (docs/WORKSHOP.md)
    before = [bob_round(bob, hub["url"]) for _ in range(2)]
    out = ada.run(FILL.format(n=MANY), limit=300)
    assert "UP 0" in out, f"ada's lab did not come up again:\n{out[-2000:]}"
    got: dict[str, str] = {}
    load = threading.Thread(target=lambda: got.update(out=ada.run(APPLY.format(limit=limit), limit=limit + 60)),
                            daemon=True)
    t0, during, samples = time.monotonic(), [], []
    load.start()
    while load.is_alive() and time.monotonic() - t0 < limit + 90 and len(during) < 30:
        samples.append(stats(box))
        during.append(bob_round(bob, hub["url"]))
    load.join(timeout=max(1.0, limit + 120 - (time.monotonic() - t0)))
    assert not load.is_alive(), f"ada's cell did not end within {limit + 120} s"
    samples.append(stats(box))
    mem = memory_cgroup(box)
    after = bob_round(bob, hub["url"])
    said = got.get("out", "")
    line = next((l.split() for l in said.splitlines() if l.startswith("APPLY ")), None)
    assert line, f"ada's apply cell said:\n{said[-2000:]}"
    rc, took, err = line[1], float(line[2]), said.split("ERR", 1)[-1].strip()
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)
    MEASURED["many_services"] = {
        "services": MANY, "ada_apply_rc": rc, "ada_apply_s": took, "ada_apply_lines": int(line[3]),
        "ada_apply_said": err[-400:],
        "ada_peak_mib": round(mem["peak"] / 2**20, 1), "ada_limit_mib": round(mem["limit"] / 2**20, 1),
        "ada_memory_failcnt": mem["failcnt"], "ada_oom_kills": mem["oom_kill"],
        "ada_cpu_pct_max": max(s["cpu_pct"] for s in samples),
        "ada_mem_mib_max_sampled": max(s["mem_mib"] for s in samples),
        "bob_before": before, "bob_during": during, "bob_after": after,
        "ratios_during_vs_before": {k: round(mean(during, k) / mean(before, k), 2) if during else None
                                    for k in ("curl_s", "check_s", "trip_s", "hub_api_s")},
    }
    print("\n10,000 Services in ada's lab:", json.dumps(MEASURED["many_services"], indent=1))
    assert during, "ada's apply ended before bob's first check: nothing was measured while it ran"
    assert mem["peak"] <= mem["limit"]
    if rc == "0":  # the Services are ada's, and her datapath has them
        out = ada.run("import subprocess\n"
                      "from kplab.lab import Lab\n"
                      "print('COUNT', sum(s['metadata']['name'].startswith('many-') for s in"
                      " Lab.attach().objects('Service')))\n"
                      f"cp = subprocess.run(['kplab', 'curl', 'client', 'many-{MANY - 1:05d}', '-n', '2'],"
                      " capture_output=True, text=True)\n"
                      "print('CURL', cp.returncode, cp.stderr[-300:])\n", limit=300)
        assert f"COUNT {MANY}" in out and "CURL 0" in out, f"ada's lab after her apply:\n{out[-2000:]}"
        assert "many-" not in inside("kplab-learner-bob", "kplab", "get", "services")
    else:  # ended by her own limits: one readable line, not a traceback
        assert err and "Traceback" not in err, f"ada's apply ended with {rc} and said: {err!r}"
        # what it said before nftables loads split a batch the user namespace cannot send whole
        assert "Message too long" not in err, f"ada's apply: {err!r}"


def test_missing_image_is_one_readable_line_and_the_hub_serves_the_others(hub: dict[str, Any],
                                                                          learners: dict[str, Learner]) -> None:
    cy, bob = learners["cy"], learners["bob"]
    image, keep = hub["env"]["KPLAB_IMAGE"], f"kplab/keep:t{uuid.uuid4().hex[:8]}"
    assert cy.api("DELETE", "/hub/api/users/cy/server").status_code in (202, 204)
    wait_for("cy's server stopped", lambda: not cy.server(), 240, every=2)
    sh(["docker", "tag", image, keep])
    sh(["docker", "rmi", image])  # untags only: keep holds the layers, bob's and ada's containers run on
    try:
        r = cy.api("POST", "/hub/api/users/cy/server")
        said = r.text
        if r.status_code in (201, 202):
            wait_for("cy's spawn to fail", lambda: not cy.server().get("pending"), 240, every=2)
            said += cy.api("GET", "/hub/api/users/cy/server/progress", stream=True).text
        assert not cy.server().get("ready"), "a server started without its image"
        assert f"the lab image {image} is not on this server" in said, f"cy was told: {said[-1500:]}"
        assert _answers(f"{hub['url']}/hub/health")
        assert bob.api("GET", "/user/bob/api/contents/labs").status_code == 200, "bob's server after cy's failure"
    finally:
        sh(["docker", "tag", keep, image])
        sh(["docker", "rmi", keep])
    cy.spawn()  # the image back: cy's next start works


def test_workshop_password_admits_any_learner_name_but_not_the_instructor(hub: dict[str, Any],
                                                                          learners: dict[str, Learner]) -> None:
    """Shared password's known limit, said loudly at startup; the instructor needs the admin password."""
    assert "lets anyone who knows it sign in as any learner" in compose(hub, "--profile", "hub", "logs", "hub")
    url, pw = hub["url"], hub["creds"]["KPLAB_HUB_PASSWORD"]
    Learner(url, "bob", pw)  # anyone with the room's password can be bob: documented, not prevented
    http = requests.Session()
    http.get(f"{url}/hub/login", timeout=30)
    r = http.post(f"{url}/hub/login", timeout=30, allow_redirects=False,
                  data={"username": INSTRUCTOR, "password": pw, "_xsrf": http.cookies["_xsrf"]})
    assert r.status_code != 302, "the workshop password signed in as the instructor"


def test_idle_server_is_culled_and_stopping_the_hub_stops_learners(hub: dict[str, Any],
                                                                   learners: dict[str, Learner]) -> None:
    """The hub restarted with a short idle timeout: its shutdown stops every learner container, and a
    server spawned afterwards that nobody uses is stopped by the culler."""
    short = hub_env(hub, KPLAB_HUB_IDLE_TIMEOUT="30", KPLAB_HUB_CULL_EVERY="10")
    compose(short, "--profile", "hub", "up", "-d", "--no-deps", "hub", timeout=400)
    wait_for("the restarted hub", lambda: _answers(f"{hub['url']}/hub/health"), 180)
    assert not learner_containers(), "the old hub's shutdown left learner containers running"
    ada = learners["ada"]  # her token survives the restart (the hub's database is on its volume)
    MEASURED["respawn_s"] = round(ada.spawn(), 1)
    assert ada.api("GET", "/user/ada/api/contents/labs").status_code == 200
    t0 = time.monotonic()
    wait_for("the culler stopping ada's idle server", lambda: not ada.server(), 240, every=3)
    MEASURED["culled_after_s"] = round(time.monotonic() - t0, 1)
    wait_for("ada's container gone", lambda: not learner_containers(), 120)
