"""A "send N requests" button with a live histogram of which pod answered.

The requests go out in small batches from a background thread (`lab.curl`), and the bars are
redrawn after each batch, so a learner sees the distribution form.  The bars are plain
ipywidgets (a label, a bar and a count per pod), cheap to update and readable in a test.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

import ipywidgets as w

from kplab.widgets.controls import in_background

if TYPE_CHECKING:
    from kplab import Lab

BATCHES = 10


class Traffic(w.VBox):
    """Send requests from a pod (or `outside`) to a target; a bar per backend that answered."""

    def __init__(self, lab: Lab, frm: str = "client", target: str = "web", n: int = 100,
                 proto: str = "tcp") -> None:
        self.lab, self.proto = lab, proto
        self.counts: Counter[str] = Counter()
        self.frm = w.Text(value=frm, description="from", layout=w.Layout(width="220px"))
        self.target = w.Text(value=target, description="to", layout=w.Layout(width="260px"))
        self.n = w.BoundedIntText(value=n, min=1, max=2000, description="requests", layout=w.Layout(width="180px"))
        self.button = w.Button(description=f"send {n} requests", button_style="primary", icon="paper-plane",
                               layout=w.Layout(width="190px"))
        self.n.observe(lambda ch: setattr(self.button, "description", f"send {ch['new']} requests"), names="value")
        self.button.on_click(lambda _: self.send())
        self.bars = w.VBox()
        self.status = w.HTML()
        self.add_class("kplab-traffic")
        super().__init__([w.HBox([self.frm, self.target, self.n, self.button]), self.bars, self.status])

    def send(self, n: int | None = None, wait: bool = False) -> threading.Thread:
        """Send n requests (default: the box's value), updating the bars after each batch."""
        total = n or self.n.value
        self.counts.clear()
        self._draw()

        def work() -> str:
            ok = failed = 0
            for i in range(BATCHES):
                size = total // BATCHES + (1 if i < total % BATCHES else 0)
                if size == 0:
                    continue
                res = self.lab.curl(self.frm.value, self.target.value, n=size, proto=self.proto, timeout=1.0)
                self.counts.update(res.backends)
                ok, failed = ok + res.ok, failed + res.failed
                if res.failed:
                    self.counts["(failed)"] += res.failed
                self._draw()
            return f"{ok} answered, {failed} failed, {len(self.counts) - (1 if failed else 0)} backends"

        return in_background(work, self.status, [self.button], wait)

    def _draw(self) -> None:
        top = max(self.counts.values(), default=1)
        rows = []
        for pod, count in sorted(self.counts.items()):
            bar = w.FloatProgress(value=count, min=0, max=top, layout=w.Layout(width="300px"),
                                  bar_style="danger" if pod == "(failed)" else "info")
            rows.append(w.HBox([w.Label(pod, layout=w.Layout(width="200px")), bar,
                                w.Label(str(count), layout=w.Layout(width="60px"))]))
        self.bars.children = rows
