"""State the workers of one node share exactly: a SQLite file in the data directory.

Why SQLite (measured, docs/workers.md "Numbers"): the replay guard's atomic
step is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE expired` statement and
a rate-limit decision is one `BEGIN IMMEDIATE` transaction; both cost tens of
microseconds against the ~1 ms of CPU py-libp2p spends per request, need no
new native code, survive a worker killed mid-request (a committed row is in the
WAL before the call returns; the lock dies with the process), and map one to
one onto the Redis commands the `[clustering]` work will use across machines
(`SET key 1 NX EXAT t`; a Lua script per bucket decision).

`synchronous = NORMAL` in WAL mode: a commit reaches the OS before the call
returns (so a killed worker loses nothing), but is not fsynced: after a power
loss the node may forget replay digests and partly spent buckets of the last
moments, which is the same as a single process restarting with empty memory.

One `NodeState` per worker process, used from its event loop only (the calls
are short and synchronous on purpose: the replay step must be atomic with
respect to the request it admits).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

from ..pipeline.replay import DEFAULT_MAX_HOLD_SECS, DEFAULT_WINDOW_SECS

BUSY_TIMEOUT_SECS = 10.0
SWEEP_EVERY = 512  # writes between two expiry sweeps
SWEEP_BATCH = 2048  # rows one sweep deletes at most (bounds the time the write lock is held)
FILE_NAME = "node-state.sqlite3"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS replay (key BLOB PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS replay_expires ON replay (expires)",
    "CREATE TABLE IF NOT EXISTS buckets (rule INTEGER NOT NULL, key TEXT NOT NULL, requests REAL NOT NULL,"
    " tokens REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (rule, key)) WITHOUT ROWID",
    # per-backend limits (shared_limits.py): money as decimal text, rows per worker index
    "CREATE TABLE IF NOT EXISTS spend (scope TEXT PRIMARY KEY, day INTEGER NOT NULL, spent TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS reserved (scope TEXT NOT NULL, worker INTEGER NOT NULL, amount TEXT NOT NULL,"
    " PRIMARY KEY (scope, worker)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS slots (scope TEXT NOT NULL, worker INTEGER NOT NULL, held INTEGER NOT NULL,"
    " PRIMARY KEY (scope, worker)) WITHOUT ROWID",
)


class NodeState:
    """The shared SQLite file: one connection per worker, WAL, writers serialised by SQLite."""

    def __init__(self, path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT_SECS) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        deadline = time.monotonic() + busy_timeout
        while True:  # switching to WAL takes an exclusive lock without the busy handler: workers start together
            try:
                self.conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if time.monotonic() >= deadline or "locked" not in str(exc):
                    raise
                time.sleep(0.01)
        self.conn.execute("PRAGMA synchronous = NORMAL")
        with self.transaction():
            for statement in _SCHEMA:
                self.conn.execute(statement)

    @classmethod
    def in_directory(cls, data_dir: str | Path) -> NodeState:
        return cls(Path(data_dir) / FILE_NAME)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The write lock up front (`BEGIN IMMEDIATE`: no lock upgrade to deadlock on), committed on exit."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def forget_worker(self, worker: int, day: int) -> None:
        """What an earlier process of worker index `worker` held and could not return (it was
        killed): its backend slots are freed, its budget reservations count as `day`'s spend
        (the provider may have billed the abandoned calls). Called when a worker starts."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM slots WHERE worker = ?", (worker,))
            for scope, amount in conn.execute("SELECT scope, amount FROM reserved WHERE worker = ?", (worker,)).fetchall():
                self.add_spend(scope, day, Decimal(amount))
            conn.execute("DELETE FROM reserved WHERE worker = ?", (worker,))

    def spent(self, scope: str, day: int) -> Decimal:
        """`scope`'s spend on UTC day `day` (a row of an earlier day is a day that has ended)."""
        row = self.conn.execute("SELECT day, spent FROM spend WHERE scope = ?", (scope,)).fetchone()
        return Decimal(row[1]) if row is not None and row[0] == day else Decimal(0)

    def add_spend(self, scope: str, day: int, cost: Decimal) -> None:
        """Add `cost` to `scope`'s spend of `day`. Inside `transaction()`."""
        total = self.spent(scope, day) + cost
        self.conn.execute("INSERT OR REPLACE INTO spend (scope, day, spent) VALUES (?, ?, ?)", (scope, day, str(total)))

    def close(self) -> None:
        self.conn.close()


class SharedReplayStore:
    """`pipeline.replay.ReplayStore` over `NodeState`: a digest is admitted by exactly one worker.

    Same retention as `ReplayGuard` (window, deadline, cap).  No forced eviction: the table is on
    disk, bounded by the arrival rate x retention, and expired rows are swept in batches.
    """

    def __init__(
        self,
        state: NodeState,
        window_secs: float = DEFAULT_WINDOW_SECS,
        *,
        max_hold_secs: float = DEFAULT_MAX_HOLD_SECS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.window_secs = float(window_secs)
        self.max_hold_secs = float(max_hold_secs)
        self._clock = clock
        self._writes = 0
        self.replays = 0
        self.forced_evictions = 0  # never: kept for the metrics' shape
        self.max_entries = 0  # unbounded in memory (on disk); metrics show 0 capacity

    def check_and_remember(self, digest: bytes, now: float | None = None, deadline: int = 0) -> bool:
        now = self._clock() if now is None else now
        keep_until = now + self.window_secs
        if deadline:
            keep_until = max(keep_until, min(float(deadline), now + self.max_hold_secs))
        cursor = self.state.conn.execute(
            "INSERT INTO replay (key, expires) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET expires = excluded.expires WHERE replay.expires <= ?",
            (digest, keep_until, now),
        )
        self._writes += 1
        if self._writes % SWEEP_EVERY == 0:
            self.sweep(now)
        if cursor.rowcount == 1:
            return True
        self.replays += 1
        return False

    def seen(self, digest: bytes, now: float | None = None) -> bool:
        now = self._clock() if now is None else now
        row = self.state.conn.execute("SELECT expires FROM replay WHERE key = ?", (digest,)).fetchone()
        return row is not None and row[0] > now

    def forget(self, digest: bytes) -> bool:
        return self.state.conn.execute("DELETE FROM replay WHERE key = ?", (digest,)).rowcount == 1

    def sweep(self, now: float | None = None) -> int:
        """Delete up to SWEEP_BATCH expired digests (any worker may; the index finds them)."""
        now = self._clock() if now is None else now
        return self.state.conn.execute(
            "DELETE FROM replay WHERE key IN (SELECT key FROM replay WHERE expires <= ? LIMIT ?)", (now, SWEEP_BATCH)
        ).rowcount

    def __len__(self) -> int:
        return int(self.state.conn.execute("SELECT count(*) FROM replay").fetchone()[0])


class SharedBucket:
    """One `[[rate_limiting.rules]]` entry's token buckets in `NodeState`, with the methods
    `RateLimitRules` calls on the Cython `RateLimiter` (same model: see `_fast/ratelimit.pyx`).

    Time is wall-clock seconds (`time.time`): the table outlives a reboot, the monotonic clock
    does not.  A `now` before a bucket's last update counts as no time passed.
    """

    def __init__(
        self,
        state: NodeState,
        rule: int,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        burst: int | None = None,
    ) -> None:
        self.state = state
        self.rule = rule
        self.req_cap = float(burst or requests_per_minute or 0)
        self.req_rate = (requests_per_minute or 0) / 60.0
        self.tok_cap = float(tokens_per_minute or 0)
        self.tok_rate = (tokens_per_minute or 0) / 60.0
        # a bucket idle this long is full again: its row can go
        self.idle_secs = max(self.req_cap / self.req_rate if self.req_rate else 0.0, 60.0 if self.tok_rate else 0.0, 1.0)
        self._writes = 0

    def _levels(self, key: str, now: float) -> tuple[float, float]:
        row = self.state.conn.execute(
            "SELECT requests, tokens, updated FROM buckets WHERE rule = ? AND key = ?", (self.rule, key)
        ).fetchone()
        if row is None:
            return self.req_cap, self.tok_cap
        requests, tokens, updated = row
        elapsed = max(0.0, now - updated)
        return min(self.req_cap, requests + elapsed * self.req_rate), min(self.tok_cap, tokens + elapsed * self.tok_rate)

    def _wait(self, levels: tuple[float, float], requests: int, tokens: int) -> float:
        wait = 0.0
        if self.req_rate:
            if requests > self.req_cap:
                return math.inf
            wait = max(wait, (requests - levels[0]) / self.req_rate)
        if self.tok_rate:
            if tokens > self.tok_cap:
                return math.inf
            wait = max(wait, (tokens - levels[1]) / self.tok_rate)
        return max(0.0, wait)

    def retry_after(self, key: str, requests: int, tokens: int, now: float) -> float:
        return self._wait(self._levels(key, now), requests, tokens)

    def try_acquire(self, key: str, requests: int, tokens: int, now: float) -> float:
        """Debit when both buckets hold enough (0.0); else the wait and no debit. Call inside
        `NodeState.transaction()` when several rules must agree (`RateLimitRules` does)."""
        if not (self.req_rate or self.tok_rate):
            return 0.0
        levels = self._levels(key, now)
        wait = self._wait(levels, requests, tokens)
        if wait > 0.0:
            return wait
        self.state.conn.execute(
            "INSERT OR REPLACE INTO buckets (rule, key, requests, tokens, updated) VALUES (?, ?, ?, ?, ?)",
            (self.rule, key, levels[0] - (requests if self.req_rate else 0), levels[1] - (tokens if self.tok_rate else 0), now),
        )
        self._writes += 1
        if self._writes % SWEEP_EVERY == 0:
            self.state.conn.execute("DELETE FROM buckets WHERE rule = ? AND updated < ?", (self.rule, now - self.idle_secs))
        return 0.0

    def available(self, key: str, now: float) -> tuple[float, float]:
        requests, tokens = self._levels(key, now)
        return (requests if self.req_rate else math.inf), (tokens if self.tok_rate else math.inf)
