"""The lab's side of the echo workload (kplab.cluster.echo is the agent): what it should serve.

The lab writes every pod's sockets to `<state>/echo.json` with a new generation, signals the
agent (SIGHUP), and waits until `<state>/echo.ready` reports that generation: a change returns
only once the pods answer as the objects say.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from kplab.cluster import netns
from kplab.cluster.offloop import off_loop
from kplab.cluster.store import START_TIMEOUT, spawn_detached
from kplab.errors import LabError

ECHO_MARKER = "kplab.cluster.echo"


class EchoWorkload:
    """Mixed into kplab.lab.Lab: start the agent, keep it serving the stored pods, stop or start one pod's."""

    name: str
    data: dict[str, Any]
    if TYPE_CHECKING:  # provided by LabHandle
        from kplab.cluster.store import Store

        store: Store

        def _mutate(self) -> Any: ...
        def pod(self, name: str) -> dict[str, Any]: ...

    @off_loop
    def echo_stop(self, pod: str) -> None:
        """Stop the pod's echo server (its ports refuse connections); the pod stays Ready."""
        with self._mutate():
            self.pod(pod)["metadata"].setdefault("annotations", {})["kplab.io/echo"] = "stopped"
            self._update_echo()

    @off_loop
    def echo_start(self, pod: str) -> None:
        with self._mutate():
            self.pod(pod)["metadata"].setdefault("annotations", {}).pop("kplab.io/echo", None)
            self._update_echo()

    def _echo_spec(self) -> dict[str, Any]:
        pods, built = [], self.data.get("podnet", {})
        for pod in self.data["objects"].get("Pod", {}).values():
            ports = sorted({(int(p["containerPort"]), p.get("protocol", "TCP"))
                            for c in pod["spec"].get("containers") or [] for p in c.get("ports") or []})
            ns = netns.ns_name(self.name, pod["metadata"]["name"])
            pods.append({"name": pod["metadata"]["name"], "netns": ns, "ino": built.get(ns, {}).get("ino"),
                         "ip": pod["status"]["podIP"], "node": pod["spec"]["nodeName"], "ports": ports,
                         "stopped": (pod["metadata"].get("annotations") or {}).get("kplab.io/echo") == "stopped"})
        self.data["generation"] = self.data.get("generation", 0) + 1
        return {"generation": self.data["generation"], "pods": pods}

    def _write_echo_spec(self) -> int:
        spec = self._echo_spec()
        tmp = self.store.dir / "echo.json.tmp"
        tmp.write_text(json.dumps(spec))
        os.replace(tmp, self.store.dir / "echo.json")
        return int(spec["generation"])

    def _wait_echo(self, generation: int, timeout: float | None = None) -> None:
        end = time.monotonic() + (START_TIMEOUT if timeout is None else timeout)
        ready = self.store.dir / "echo.ready"
        while time.monotonic() < end:
            try:
                if int(ready.read_text() or 0) >= generation:
                    return
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.01)
        raise LabError("the echo workload did not start: see /run/kplab/<lab>/echo.log")

    def _start_echo(self) -> None:
        gen = self._write_echo_spec()
        pid = spawn_detached([sys.executable, "-m", ECHO_MARKER, str(self.store.dir)], self.store.dir / "echo.log")
        (self.store.dir / "echo.pid").write_text(str(pid))
        self.data["pids"]["echo"] = pid
        self._wait_echo(gen)

    def _update_echo(self) -> None:
        gen = self._write_echo_spec()
        pid = self.data["pids"].get("echo")
        try:
            os.kill(int(pid), 1)  # SIGHUP: reconcile
        except (ProcessLookupError, TypeError):
            raise LabError("the lab's echo workload is not running: `kplab down` and `kplab up` again") from None
        self._wait_echo(gen)
