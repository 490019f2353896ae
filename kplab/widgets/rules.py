"""A rules viewer that highlights the counters that moved since the last look.

Works for every mode: it compares the mode's own text view (`lab.rules(node)["text"]`) line by
line, treating a line whose only change is in its numbers as "the same rule, counters moved".
Such lines are highlighted and the numbers that changed are shown in bold.
"""

from __future__ import annotations

import re
from collections import Counter
from html import escape
from typing import TYPE_CHECKING, Any

import ipywidgets as w

if TYPE_CHECKING:
    from kplab import Lab

NUMBER = re.compile(r"\d+")


def _shape(line: str) -> str:
    """A line with its numbers (and the padding around them) blanked: same shape = same rule."""
    return " ".join(NUMBER.sub("#", line).split())


def highlight_moved(old: str, new: str, grep: str = "") -> tuple[str, int]:
    """HTML of `new` with lines whose numbers changed since `old` highlighted; and how many moved."""
    before: dict[tuple[str, int], str] = {}
    seen: Counter[str] = Counter()
    for line in old.splitlines():
        key = _shape(line)
        before[(key, seen[key])] = line
        seen[key] += 1
    seen.clear()
    out, moved = [], 0
    for line in new.splitlines():
        key = _shape(line)
        prev = before.get((key, seen[key]))
        seen[key] += 1
        if grep and grep not in line:
            continue
        if prev is None or prev == line:
            out.append(escape(line))
            continue
        moved += 1
        old_nums = NUMBER.findall(prev)
        pieces, last = [], 0
        for i, m in enumerate(NUMBER.finditer(line)):
            pieces.append(escape(line[last:m.start()]))
            changed = i < len(old_nums) and old_nums[i] != m.group()
            pieces.append(f"<b>{m.group()}</b>" if changed else m.group())
            last = m.end()
        pieces.append(escape(line[last:]))
        out.append(f"<mark class='moved'>{''.join(pieces)}</mark>")
    return "\n".join(out), moved


class RulesViewer(w.VBox):
    """One node's rules as its mode reports them; `refresh` marks what moved since the last one."""

    def __init__(self, lab: Lab, node: str = "node-1", grep: str = "") -> None:
        self.lab = lab
        self.previous: dict[str, str] = {}
        self.node = w.Dropdown(options=list(lab.nodes), value=node, description="node")
        self.grep = w.Text(value=grep, description="only lines with", layout=w.Layout(width="320px"),
                           style={"description_width": "initial"})
        self.button = w.Button(description="refresh", icon="refresh")
        self.summary = w.HTML()
        self.view = w.HTML()
        self.button.on_click(lambda _: self.refresh())
        self.node.observe(lambda _: self.refresh(), names="value")
        self.grep.observe(lambda _: self.refresh(remember=False), names="value")
        super().__init__([w.HBox([self.node, self.grep, self.button]), self.summary, self.view])
        self.refresh()

    def refresh(self, remember: bool = True) -> int:
        """Read the rules again; returns how many lines' counters moved since the previous read."""
        node = self.node.value
        rules: dict[str, Any] = self.lab.rules(node)
        text = str(rules.get("text", ""))
        old = self.previous.get(node, text)
        body, moved = highlight_moved(old, text, self.grep.value)
        if remember:
            self.previous[node] = text
        self.summary.value = (f"<b>{node}</b>: {len(text.splitlines())} lines, "
                              f"<mark>{moved} with counters that moved</mark> since the last refresh")
        self.view.value = f"<pre style='font-size:11px;line-height:1.3'>{body}</pre>"
        return moved
