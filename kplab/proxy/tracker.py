"""What one sync leaves for the next, kept one way for every mode, and the change tracker.

Upstream keeps this in its Proxier struct; here every CLI call or notebook cell is a new
process, so it lives in `ctx.state_dir/memory.json`:

* `MemoryStore.load()` / `save()`: one JSON document per node and mode, written atomically;
* `MemoryStore.pending()`: marks the store dirty from just before a kernel load until it
  succeeded, so a sync interrupted half-way is followed by a full one;
* `needs_full(data)`: the one place that decides a full sync from memory (none, dirty,
  older than upstream's FullSyncPeriod);
* `service_digests` / `changed_services`: upstream's ServiceChangeTracker and
  EndpointsChangeTracker reduced to what a partial sync needs, the namespaced names of the
  Services whose spec or endpoints changed since the last sync.

The nftables mode keeps its per-element reference counts in an SQLite file beside this one
(kplab.proxy.nftables.proxier.Memory): a partial sync there reads only the rows of what changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kplab.proxy.core import ProxyState

FULL_SYNC_PERIOD = 3600.0  # upstream's proxyutil.FullSyncPeriod
MEMORY_FILE = "memory.json"
DIRTY_FILE = "memory.dirty"


class MemoryStore:
    """One JSON document in a node's state directory, with a dirty marker around kernel loads."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / MEMORY_FILE
        self.dirty = self.dir / DIRTY_FILE

    def load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return {}

    def save(self, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def pending(self) -> Iterator[None]:
        """Dirty while the body runs; left dirty when it raised, so the next sync is a full one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dirty.touch()
        yield
        self.dirty.unlink(missing_ok=True)

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)
        self.dirty.unlink(missing_ok=True)

    def needs_full(self, data: dict[str, Any], now: float | None = None) -> bool:
        """No memory, a load that never finished, or the last full sync over an hour ago."""
        now = time.time() if now is None else now
        return not data or self.dirty.exists() or now - float(data.get("last_full", 0)) > FULL_SYNC_PERIOD


def service_digests(state: ProxyState) -> dict[str, str]:
    """A digest per Service (namespace/name) over its ports' specs and endpoints.

    Upstream rewrites a service's chains when its Service or EndpointSlices changed
    (UpdatedServices, keyed by namespaced name); comparing these digests between two syncs
    gives that set.  repr() of the frozen dataclasses is deterministic and ~20x faster than
    core.fingerprints() (which matters at 10k services).
    """
    parts: dict[str, list[tuple[str, str, str]]] = {}
    for key, svc in state.services.items():  # grouped, then each Service's few ports sorted: no 10k-key sort
        parts.setdefault(key.namespaced_name, []).append(
            (key.port, key.protocol, repr(svc) + repr(state.endpoints_of(key)))
        )
    return {k: hashlib.blake2b("".join(x[2] for x in sorted(v)).encode(), digest_size=12).hexdigest()
            for k, v in parts.items()}  # fmt: skip


def changed_services(previous: dict[str, str], current: dict[str, str]) -> set[str]:
    """Services added or changed since `previous` (removed ones are the caller's to clean up)."""
    return {k for k in current if previous.get(k) != current[k]}
