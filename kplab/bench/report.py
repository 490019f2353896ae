"""What every benchmark shares: percentiles, ratios, the machine, tables, JSON files, progress bars.

A benchmark returns one plain dict (JSON-ready), so the CLI, notebook 06 and the plots read
the same thing:

    {"bench": "latency", "machine": machine(), "params": {...}, "rows": [{...}, ...], "notes": [...]}

`rows` are flat dicts; `show(result, COLUMNS)` prints them as a table, `save(result)` writes
them to `bench/results/<bench>.json` (or `--json FILE`).  Every figure a row carries comes
with the baseline it was measured against in the same run, and its ratio to it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Column:
    """One table column: the row key, its header, and how to print the value."""

    key: str
    header: str
    fmt: str = "{}"
    left: bool = False  # text columns; numbers are right-aligned

    def cell(self, row: dict[str, Any]) -> str:
        value = row.get(self.key)
        return "-" if value is None else self.fmt.format(value)


# ------------------------------------------------------------------ numbers
def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None when there are none."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return value / baseline


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


# ------------------------------------------------------------------ the machine
def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    cp = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    return (cp.stdout or cp.stderr).strip().splitlines()[0] if (cp.stdout or cp.stderr).strip() else ""


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPUs, kernel, tool versions, and how busy the machine was."""
    cpu = ""
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = m.group(1).strip() if m else platform.processor()
    mem = ""
    with contextlib.suppress(OSError):
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        mem = f"{int(m.group(1)) / 1024 / 1024:.1f} GiB" if m else ""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "iptables": _first_line(["iptables", "--version"]),
        "nft": _first_line(["nft", "--version"]),
        "loadavg": list(os.getloadavg()),
        "in_vm": os.environ.get("KPLAB_IN_VM") == "1",  # the throwaway IPVS VM (kplab.testing.vm), emulated
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def loadavg() -> float:
    return os.getloadavg()[0]


# ------------------------------------------------------------------ files
def results_dir() -> Path:
    """$KPLAB_BENCH_RESULTS (the throwaway VM's writable window: its source tree is read-only), else
    bench/results of the source tree when kplab runs from one, else ./bench/results."""
    if os.environ.get("KPLAB_BENCH_RESULTS"):
        return Path(os.environ["KPLAB_BENCH_RESULTS"])
    if (PROJECT_ROOT / "bench").is_dir() and (PROJECT_ROOT / "kplab").is_dir():
        return PROJECT_ROOT / "bench" / "results"
    return Path.cwd() / "bench" / "results"


def save(result: dict[str, Any], path: str | Path | None = None) -> Path:
    """Write the result as JSON (default bench/results/<bench>.json); returns the path."""
    out = Path(path) if path else results_dir() / f"{result['bench']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, out)
    return out


def load(bench: str, path: str | Path | None = None) -> dict[str, Any] | None:
    p = Path(path) if path else results_dir() / f"{bench}.json"
    try:
        return dict(json.loads(p.read_text()))
    except (OSError, ValueError):
        return None


def command_line() -> str:
    """The command that produced a result, to write beside it."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("kplab", "__main__.py")):
        argv[0] = "kplab"
    return " ".join(argv)


def new_result(bench: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"bench": bench, "command": command_line(), "machine": machine(), "params": params,
            "rows": [], "notes": []}


# ------------------------------------------------------------------ output
def table(title: str, columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(c.header, justify="left" if i == 0 or c.left else "right")
    for r in rows:
        t.add_row(*(c.cell(r) for c in columns))
    return t


def show(result: dict[str, Any], columns: Sequence[Column], title: str = "",
         console: Console | None = None) -> None:
    """Print the result's rows as a table, then its notes and the machine load."""
    if console is None:
        console = Console()
        if not console.is_terminal and not console.is_jupyter:
            console = Console(width=200)  # piped or logged: do not fold the table to 80 columns
    m = result.get("machine", {})
    head = title or result["bench"]
    console.print(table(head, columns, result["rows"]))
    for note in result.get("notes", []):
        console.print(f"  note: {note}", highlight=False)
    if m:
        load1 = m.get("loadavg", [0])[0]
        console.print(f"  machine: {m.get('nproc')} CPUs ({m.get('cpu')}), kernel {m.get('kernel')}, "
                      f"load {load1:.2f} at start", highlight=False)


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[Progress]:
    """A rich progress display on stderr (nothing when disabled, e.g. under tests)."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), disable=not enabled, transient=False)
    with bar:
        yield bar
