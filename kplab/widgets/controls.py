"""Widgets that change the lab: a mode switcher and a replicas slider.

Each change runs in a background thread so the notebook stays responsive while the lab
reprograms every node; a status line says what happened (or the one-line error).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from kplab.errors import KplabError
from kplab.proxy.base import available_modes

if TYPE_CHECKING:
    from kplab import Lab


def in_background(work: Callable[[], str], status: w.HTML, controls: list[w.Widget],
                  wait: bool = False) -> threading.Thread:
    """Run `work` off the kernel's main thread; disable `controls` meanwhile; report in `status`."""

    def target() -> None:
        start = time.monotonic()
        for c in controls:
            c.disabled = True
        status.value = "<i>working...</i>"
        try:
            done = work()
            status.value = f"{done} <span style='color:#5f6368'>({time.monotonic() - start:.1f}s)</span>"
        except KplabError as e:
            status.value = f"<span style='color:#d93025'>{type(e).__name__}: {e}</span>"
        finally:
            for c in controls:
                c.disabled = False

    t = threading.Thread(target=target, name="kplab-widget", daemon=True)
    t.start()
    if wait:
        t.join(300)
    return t


class ModeSwitcher(w.VBox):
    """Pick a kube-proxy mode; the lab removes the old mode's rules and programs the new one."""

    def __init__(self, lab: Lab, modes: list[str] | None = None) -> None:
        self.lab = lab
        current = getattr(lab, "mode", None)
        options = modes or available_modes()
        if current and current not in options:
            options = [current, *options]
        self.buttons = w.ToggleButtons(options=options, value=current if current in options else None,
                                       description="mode")
        self.status = w.HTML()
        self.buttons.observe(self._changed, names="value")
        super().__init__([self.buttons, self.status])

    def _changed(self, change: dict[str, Any]) -> None:
        if change["new"] and change["new"] != change["old"]:
            self.switch(change["new"])

    def switch(self, mode: str, wait: bool = False) -> threading.Thread:
        def work() -> str:
            self.lab.set_mode(mode)
            return f"every node now runs <b>{mode}</b>"

        return in_background(work, self.status, [self.buttons], wait)


class ReplicasSlider(w.VBox):
    """Scale a Deployment; the endpoints controller and every node's proxy follow."""

    def __init__(self, lab: Lab, deployment: str = "web", replicas: int = 3, maximum: int = 10) -> None:
        self.lab, self.deployment = lab, deployment
        self.slider = w.IntSlider(value=replicas, min=0, max=maximum, description=deployment,
                                  continuous_update=False)
        self.status = w.HTML()
        self.slider.observe(lambda ch: self.scale(ch["new"]), names="value")
        super().__init__([self.slider, self.status])

    def scale(self, replicas: int, wait: bool = False) -> threading.Thread:
        def work() -> str:
            self.lab.scale(self.deployment, replicas)
            return f"{self.deployment}: {replicas} replicas"

        return in_background(work, self.status, [self.slider], wait)
