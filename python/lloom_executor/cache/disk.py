"""On-disk response cache: one file per entry, a SQLite index for LRU order and size.

Layout under `[cache] path`:

    index.sqlite3          entries(key, size, stored_at, last_used) + totals(size, entries, tick), WAL mode
    entries/ab/abcd….json  the encoded Completion, named by the key's hex

Why it is safe with several processes (workers, or `maintenance clean-cache` next to
a running node) on one directory: every change to the files happens while holding
SQLite's write lock (`BEGIN IMMEDIATE`), and every file is written to a temporary name
and renamed into place, so a reader sees a whole old file, a whole new one or none;
a row whose file is missing or unreadable is a miss and is dropped. The LRU order is
a counter kept in the index (`tick`), not a clock, so processes agree on it.

A crash between renaming a file in and committing its row leaves an orphan file;
`clean()` removes those. SQLite work runs on one private thread so the event loop
never waits on disk; a request waits at most `op_timeout` for it, then it's a miss.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..backends.base import Completion
from .base import CacheStats, Counters, KeyedCache, decode_completion, encode_completion

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key       BLOB PRIMARY KEY,
    size      INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    last_used INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_use ON entries(last_used);
CREATE INDEX IF NOT EXISTS entries_by_age ON entries(stored_at);
CREATE TABLE IF NOT EXISTS totals (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    size    INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    tick    INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0, 0);
"""


@dataclass(frozen=True)
class _Outcome:
    """What one operation did, reported back to the event-loop thread."""

    completion: Completion | None = None
    hit: bool = False
    expired: int = 0
    evicted: int = 0
    stored: bool = False
    size: int = 0
    entries: int = 0


class DiskCache(KeyedCache):
    """LRU + TTL over a directory; survives restarts and may be shared by processes."""

    backend = "disk"

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        ttl_seconds: float,
        *,
        deterministic_only: bool = True,
        clock: Callable[[], float] = time.time,
        op_timeout: float = 1.0,
        purge_batch: int = 256,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.deterministic_only = deterministic_only
        self.op_timeout = op_timeout
        self.purge_batch = purge_batch
        self._clock = clock
        self._entries_dir = self.path / "entries"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lloom-disk-cache")
        self._conn: sqlite3.Connection | None = None  # only touched on the executor thread
        self._counters = Counters()
        self._failing = False

    # -- event-loop side ---------------------------------------------------------------
    @property
    def available(self) -> bool:
        return not self._failing

    async def _run(self, fn: Callable[..., T], *args: Any, timeout: float | None) -> T | None:
        loop = asyncio.get_running_loop()
        try:
            result = await asyncio.wait_for(loop.run_in_executor(self._executor, fn, *args), timeout)
        except TimeoutError:
            self._counters.errors += 1
            log.debug("disk cache %s: operation took over %.3g s; treated as a miss", self.path, timeout)
            return None
        except (sqlite3.Error, OSError) as exc:
            self._counters.errors += 1
            if not self._failing:
                self._failing = True
                log.warning("disk cache at %s is failing (%s); serving without it until it recovers", self.path, exc)
            return None
        if self._failing:
            self._failing = False
            log.info("disk cache at %s works again", self.path)
        return result

    def _account(self, outcome: _Outcome) -> None:
        c = self._counters
        c.expirations += outcome.expired
        c.evictions += outcome.evicted
        c.stores += int(outcome.stored)
        c.size_bytes, c.entries = outcome.size, outcome.entries

    async def get(self, key: bytes) -> Completion | None:
        outcome = await self._run(self._get_sync, key, self._clock(), timeout=self.op_timeout)
        if outcome is None or not outcome.hit:
            self._counters.misses += 1
            if outcome is not None:
                self._account(outcome)
            return None
        self._account(outcome)
        self._counters.hits += 1
        return outcome.completion

    async def put(self, key: bytes, completion: Completion) -> None:
        data = encode_completion(completion)
        outcome = await self._run(self._put_sync, key, data, self._clock(), timeout=self.op_timeout)
        if outcome is not None:
            self._account(outcome)

    async def clean(self, older_than_secs: float) -> int:
        """Removes entries stored at least `older_than_secs` ago, and orphan files; returns
        the number of index entries removed. Not bounded by `op_timeout` (maintenance)."""
        cutoff = self._clock() - older_than_secs
        loop = asyncio.get_running_loop()
        removed, outcome = await loop.run_in_executor(self._executor, self._clean_sync, cutoff)
        self._account(outcome)
        return removed

    def stats(self) -> CacheStats:
        return self._counters.snapshot(self.backend, self.available, self.max_bytes)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    # -- executor thread ---------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._entries_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path / "index.sqlite3", timeout=self.op_timeout, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _file(self, key: bytes) -> Path:
        name = key.hex()
        return self._entries_dir / name[:2] / f"{name}.json"

    def _forget(self, conn: sqlite3.Connection, key: bytes, stored_at: float | None = None) -> bool:
        """Drops one entry (only the one stored at `stored_at`, when given). Write lock held."""
        if stored_at is None:
            row = conn.execute("DELETE FROM entries WHERE key = ? RETURNING size", (key,)).fetchone()
        else:
            row = conn.execute("DELETE FROM entries WHERE key = ? AND stored_at = ? RETURNING size", (key, stored_at)).fetchone()
        if row is None:
            return False
        conn.execute("UPDATE totals SET size = size - ?, entries = entries - 1 WHERE id = 1", (row[0],))
        self._file(key).unlink(missing_ok=True)
        return True

    def _totals(self, conn: sqlite3.Connection, **fields: Any) -> _Outcome:
        size, entries = conn.execute("SELECT size, entries FROM totals WHERE id = 1").fetchone()
        return _Outcome(size=size, entries=entries, **fields)

    def _get_sync(self, key: bytes, now: float) -> _Outcome:
        conn = self._db()
        row = conn.execute("SELECT stored_at FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return self._totals(conn)
        stored_at = row[0]
        if now - stored_at >= self.ttl_seconds:
            with self._write(conn):
                gone = self._forget(conn, key, stored_at)
            return self._totals(conn, expired=int(gone))
        try:
            completion = decode_completion(self._file(key).read_bytes())
        except (FileNotFoundError, ValueError) as exc:
            log.debug("disk cache entry %s unreadable (%s); dropped", key.hex(), exc)
            with self._write(conn):
                self._forget(conn, key, stored_at)
            return self._totals(conn)
        try:  # LRU touch: best effort, a busy index must not turn a hit into a miss
            with self._write(conn):
                (tick,) = conn.execute("UPDATE totals SET tick = tick + 1 WHERE id = 1 RETURNING tick").fetchone()
                conn.execute("UPDATE entries SET last_used = ? WHERE key = ?", (tick, key))
        except sqlite3.OperationalError as exc:
            log.debug("disk cache LRU touch skipped: %s", exc)
        return self._totals(conn, completion=completion, hit=True)

    def _put_sync(self, key: bytes, data: bytes, now: float) -> _Outcome:
        conn = self._db()
        size = len(key) + len(data)
        with self._write(conn):
            self._forget(conn, key)
            expired = conn.execute(
                "SELECT key, stored_at FROM entries WHERE stored_at <= ? ORDER BY stored_at LIMIT ?",
                (now - self.ttl_seconds, self.purge_batch),
            ).fetchall()
            for old_key, stored_at in expired:
                self._forget(conn, old_key, stored_at)
            if size > self.max_bytes:
                return self._totals(conn, expired=len(expired))
            self._write_file(self._file(key), data)
            (tick,) = conn.execute("UPDATE totals SET tick = tick + 1 WHERE id = 1 RETURNING tick").fetchone()
            conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?)", (key, size, now, tick))
            (total,) = conn.execute(
                "UPDATE totals SET size = size + ?, entries = entries + 1 WHERE id = 1 RETURNING size", (size,)
            ).fetchone()
            evicted = 0
            while total > self.max_bytes:
                victim = conn.execute("SELECT key, size FROM entries ORDER BY last_used LIMIT 1").fetchone()
                if victim is None or victim[0] == key:
                    break
                self._forget(conn, victim[0])
                total -= victim[1]
                evicted += 1
            return self._totals(conn, expired=len(expired), evicted=evicted, stored=True)

    def _write_file(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _clean_sync(self, cutoff: float) -> tuple[int, _Outcome]:
        conn = self._db()
        conn.execute("PRAGMA busy_timeout = 30000")
        try:
            with self._write(conn):
                old = conn.execute("SELECT key, stored_at FROM entries WHERE stored_at <= ?", (cutoff,)).fetchall()
                removed = sum(self._forget(conn, key, stored_at) for key, stored_at in old)
                orphans = self._sweep_orphans(conn)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.op_timeout * 1000)}")
        if orphans:
            log.info("disk cache %s: removed %d orphan file(s)", self.path, orphans)
        return removed, self._totals(conn)

    def _sweep_orphans(self, conn: sqlite3.Connection) -> int:
        """Files with no index row (a crash mid-put) and leftover temporaries. Write lock
        held, so no put is between its rename and its commit right now."""
        count = 0
        if not self._entries_dir.is_dir():
            return 0
        for shard in self._entries_dir.iterdir():
            if not shard.is_dir():
                continue
            for file in shard.iterdir():
                name = file.name
                orphan = name.endswith(".tmp")
                if not orphan:
                    try:
                        key = bytes.fromhex(name.removesuffix(".json"))
                    except ValueError:
                        continue  # not ours: leave it
                    orphan = conn.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone() is None
                if orphan:
                    file.unlink(missing_ok=True)
                    count += 1
        return count
