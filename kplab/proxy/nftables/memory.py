"""What one nftables sync leaves for the next (upstream keeps it in its Proxier struct).

An SQLite file in the node's state directory: per service port its digest and the objects it
owns, the map elements with how many service ports want each, and the stale chains.  A partial
sync reads the digests and only the rows of what changed, so its cost follows the change, not
the table (the other modes keep a JSON document: kplab.proxy.tracker.MemoryStore).
"""

from __future__ import annotations

import marshal
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kplab.proxy.nftables.services import ServiceEntry

MEMORY_FILE = "nftables.sqlite"
MEMORY_VERSION = 3
Key = str  # "ns/name:port/PROTO" (port may be empty), one service port
ElementKey = str  # "<set or map>\t<element key>"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS services (key TEXT PRIMARY KEY, namespaced TEXT, digest BLOB, data BLOB);
CREATE TABLE IF NOT EXISTS elements (ck TEXT PRIMARY KEY, value TEXT, comment TEXT, refs INTEGER);
CREATE TABLE IF NOT EXISTS stale (chain TEXT PRIMARY KEY, since REAL);
"""


@dataclass
class Delta:
    """How a sync changes the Memory once its transaction has been loaded."""

    config: str
    full: bool
    entries: dict[Key, ServiceEntry] = field(default_factory=dict)
    removed: list[Key] = field(default_factory=list)
    elements: dict[ElementKey, tuple[str, str, int] | None] = field(default_factory=dict)
    stale: dict[str, float] = field(default_factory=dict)  # the whole stale list after this sync


class Memory:
    """An SQLite file in ctx.state_dir: per service port its digest and what it owns, the map
    elements with how many service ports want each, and the stale chains. A partial sync reads
    the digests and only the rows of what changed, so its cost follows the change, not the table."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.executescript("PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF;" + SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def config(self) -> str | None:
        return self._meta("config") if self._meta("version") == str(MEMORY_VERSION) else None

    def last_full(self) -> float:
        """When the last full sync was loaded (0: never, or a memory from before this was kept)."""
        return float(self._meta("last_full") or 0)

    def digests(self) -> dict[Key, bytes]:
        return dict(self.db.execute("SELECT key, digest FROM services"))

    def entries(self, keys: Iterable[Key] | None = None) -> dict[Key, ServiceEntry]:
        if keys is None:
            rows = list(self.db.execute("SELECT key, namespaced, digest, data FROM services"))
        else:
            rows = []
            wanted = list(keys)
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows += self.db.execute(
                    f"SELECT key, namespaced, digest, data FROM services WHERE key IN ({marks})", chunk
                ).fetchall()
        return {k: ServiceEntry(ns, d, *marshal.loads(blob)) for k, ns, d, blob in rows}

    def elements(self, cks: Iterable[ElementKey]) -> dict[ElementKey, tuple[str, str, int]]:
        out: dict[ElementKey, tuple[str, str, int]] = {}
        wanted = list(cks)
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for ck, v, c, r in self.db.execute(f"SELECT * FROM elements WHERE ck IN ({marks})", chunk):
                out[ck] = (v, c, r)
        return out

    def all_elements(self) -> dict[ElementKey, tuple[str, str]]:
        return {ck: (v, c) for ck, v, c, _ in self.db.execute("SELECT * FROM elements")}

    def stale(self) -> dict[str, float]:
        return dict(self.db.execute("SELECT chain, since FROM stale"))

    def commit(self, delta: Delta) -> None:
        db = self.db
        db.execute("BEGIN")
        if delta.full:
            db.execute("DELETE FROM services")
            db.execute("DELETE FROM elements")
        db.executemany("DELETE FROM services WHERE key = ?", [(k,) for k in delta.removed])
        db.executemany(
            "INSERT OR REPLACE INTO services VALUES (?, ?, ?, ?)",
            [
                (k, e.namespaced, e.digest, marshal.dumps((e.chains, e.affinity_sets, e.elements, e.pods)))
                for k, e in delta.entries.items()
            ],
        )
        db.executemany(
            "DELETE FROM elements WHERE ck = ?", [(ck,) for ck, v in delta.elements.items() if v is None]
        )
        db.executemany(
            "INSERT OR REPLACE INTO elements VALUES (?, ?, ?, ?)",
            [(ck, *v) for ck, v in delta.elements.items() if v is not None],
        )
        db.execute("DELETE FROM stale")
        db.executemany("INSERT INTO stale VALUES (?, ?)", delta.stale.items())
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("version", str(MEMORY_VERSION)), ("config", delta.config)]
            + ([("last_full", repr(time.time()))] if delta.full else []),
        )
        db.execute("COMMIT")
