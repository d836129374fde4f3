"""`Ledger`: the SQLite request ledger of one node, opened once and shared by the whole process.

Durability: "written before the answer is counted as served; a crash loses no
acknowledged row". `record()` / `record_async()` return only after the transaction
holding the row has committed, and the caller sends the answer only after that. The
database runs in WAL mode with `synchronous=FULL`: every commit fsyncs the WAL, so a
committed row survives a process crash *and* an OS crash or power loss
(`synchronous=NORMAL` with WAL would survive a process crash only: the WAL is synced
at checkpoints, not at commits, so the last commits may vanish with the page cache).
The fsync is shared: one writer thread commits every row that arrived while the
previous commit was running in one transaction (`writer.py`).

Refusals: `record_refusal()` never waits; see `refusals.py` for exactly what is kept
of them (a row of its own for the first ones per sender and window, a count for the rest).

Several processes may share one ledger file (the executor, `maintenance` commands, a
metrics exporter): WAL lets readers run beside the single writer, writers take the
write lock up front (`BEGIN IMMEDIATE`, so no deadlocking lock upgrade) and wait for
each other up to `busy_timeout`. Within a process the writer thread owns the write
connection; reads use a second connection under a lock. Reads first let the writer
commit the refusals it holds, so a `Ledger` shows everything it was given.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .entries import COLUMNS, COUNT_COLUMNS, LedgerEntry, LedgerError, LedgerStatus, LedgerTotals, ModelTotals, wei
from .refusals import RefusalBook
from .schema import NewerSchema, create_or_migrate
from .writer import DEFAULT_RETRY_SECS, LedgerWriter

LEDGER_FILENAME = "ledger.sqlite3"
DEFAULT_BUSY_TIMEOUT_SECS = 10.0


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return conn


class Ledger:
    """`Ledger(path)`: open (creating) the SQLite ledger at `path`. Thread-safe; share it.

    `refusals`: the bounds on what is kept of refusals (a `RefusalBook`; tests shorten
    its windows). `retry_secs`: how often an unwritable ledger tries again on its own."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT_SECS,
        refusals: RefusalBook | None = None,
        retry_secs: float = DEFAULT_RETRY_SECS,
    ) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._read_lock = threading.Lock()
        created = not self.path.exists()
        try:
            conn = _connect(self.path, busy_timeout)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
        reader: sqlite3.Connection | None = None
        try:
            if created:
                os.chmod(self.path, 0o600)  # client addresses and revenue: the operator's business only
            mode = self._enable_wal(conn, busy_timeout)
            if str(mode).lower() != "wal":
                raise LedgerError(
                    f"{self.path}: SQLite refused WAL mode (journal_mode is {mode}); is it on a network file system?"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("BEGIN IMMEDIATE")
            try:
                create_or_migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            reader = _connect(self.path, busy_timeout)
        except NewerSchema as exc:
            conn.close()
            raise LedgerError(f"{self.path} has {exc}") from exc
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn  # the writer's, from now on
        self._reader = reader
        self._writer = LedgerWriter(conn, self.path, refusals or RefusalBook(), retry_secs=retry_secs)

    def _enable_wal(self, conn: sqlite3.Connection, busy_timeout: float) -> str:
        """WAL on (it is persistent: once set, every later open finds it). Switching a new file
        needs an exclusive lock and SQLite does not run the busy handler for it, so two processes
        creating the ledger at once would see "database is locked": retry up to busy_timeout."""
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
                if mode.lower() != "wal":
                    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
                return mode
            except sqlite3.OperationalError as exc:
                if time.monotonic() >= deadline or not any(w in str(exc) for w in ("locked", "busy")):
                    raise
                time.sleep(0.01)

    @classmethod
    def in_directory(cls, data_dir: str | os.PathLike[str], **kwargs: Any) -> Ledger:
        """The ledger of a data directory: `<data_dir>/ledger.sqlite3`."""
        return cls(Path(data_dir).expanduser() / LEDGER_FILENAME, **kwargs)

    # -- writing ----------------------------------------------------------------------
    def record(self, entry: LedgerEntry) -> int:
        """Write one row; returns its id once committed and synced (durable). Raises LedgerError."""
        return self.record_many([entry])[0]

    def record_many(self, entries: Sequence[LedgerEntry]) -> list[int]:
        """Write rows in one transaction (all or none); their ids once committed. Blocks the caller."""
        rows = [e.row() for e in entries]  # validation errors before touching the database
        return self._writer.write(rows) if rows else []

    async def record_async(self, entry: LedgerEntry) -> int:
        """`record` for the asyncio loop: awaits the commit without blocking the loop or a pool thread."""
        (rowid,) = await self._writer.write_async([entry.row()])
        return rowid

    def record_refusal(self, entry: LedgerEntry, code: str | None = None) -> None:
        """Keep a refusal (`code`: its RefusalCode string, else `entry.code`) without waiting for
        a write; what is kept of it is bounded (see `refusals.py`). ValueError for a bad entry."""
        self._writer.refuse(entry.row(code))  # validated here, on the caller's thread

    def status(self) -> LedgerStatus:
        """Writable or not, and what the writer has done (cheap: no I/O)."""
        return self._writer.status()

    # -- reading ----------------------------------------------------------------------
    def _read(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        self._writer.flush()
        with self._read_lock:
            try:
                return self._reader.execute(query, args).fetchall()
            except sqlite3.Error as exc:
                raise LedgerError(f"reading the ledger {self.path} failed: {exc}") from exc

    def totals(self) -> LedgerTotals:
        """Request counts, served tokens and revenue (wei) per model."""
        rows = self._read(
            "SELECT model, served, refused, inbound_tokens, outbound_tokens, revenue FROM model_totals ORDER BY model"
        )
        return LedgerTotals({r[0]: ModelTotals(r[1], r[2], r[3], r[4], wei(r[5], "revenue")) for r in rows})

    def entries(
        self, *, since: float | None = None, limit: int | None = None, with_commitment: bool = False
    ) -> list[dict[str, Any]]:
        """Rows of `requests` as dicts, oldest first (`since`: unix seconds; `limit`: the newest N).
        `with_commitment`: also the settlement column `client_commitment` (JSON text or None),
        which the request-row readers (exports, webhooks' consumers) have never had."""
        names = COLUMNS if with_commitment else tuple(c for c in COLUMNS if c != "client_commitment")
        return self._select("requests", ("id", *names), "time", since, limit)

    def refusal_counts(self, *, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows of `refusal_counts` as dicts, oldest first (`since`: unix seconds of their last refusal)."""
        return self._select("refusal_counts", ("id", *COUNT_COLUMNS), "last_time", since, limit)

    def _select(
        self, table: str, names: tuple[str, ...], time_column: str, since: float | None, limit: int | None
    ) -> list[dict[str, Any]]:
        query = f"SELECT {', '.join(names)} FROM {table}"
        args: list[Any] = []
        if since is not None:
            query += f" WHERE {time_column} >= ?"
            args.append(since)
        query += " ORDER BY id DESC"
        if limit is not None:
            query += " LIMIT ?"
            args.append(int(limit))
        return [dict(zip(names, r, strict=True)) for r in reversed(self._read(query, args))]

    def count(self) -> int:
        """Rows in `requests` (served, and refusals with a row of their own)."""
        return int(self._read("SELECT count(*) FROM requests")[0][0])

    def journal_mode(self) -> str:
        return str(self._read("PRAGMA journal_mode")[0][0])

    # -- maintenance ------------------------------------------------------------------
    def optimize(self, *, vacuum: bool = True) -> dict[str, Any]:
        """`maintenance optimize-db`: checkpoint and truncate the WAL, ANALYZE, VACUUM, `PRAGMA optimize`.

        Safe while the executor runs (it waits for the write lock like any
        writer); VACUUM rewrites the file, so it takes as long as the ledger is big.
        """

        def size() -> int:
            return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

        started = time.monotonic()
        before = size()
        self._writer.flush()
        with self._read_lock:
            try:
                self._reader.execute("ANALYZE")
                if vacuum:
                    self._reader.execute("VACUUM")
                self._reader.execute("PRAGMA optimize")
                busy, wal_frames, checkpointed = self._reader.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                raise LedgerError(f"optimizing {self.path} failed: {exc}") from exc
        return {
            "path": str(self.path),
            "bytes_before": before,
            "bytes_after": size(),
            "checkpoint_complete": busy == 0,
            "wal_frames": wal_frames,
            "checkpointed_frames": checkpointed,
            "seconds": round(time.monotonic() - started, 3),
        }

    def close(self) -> None:
        """Write what is held (refusals), stop the writer, close both connections. Idempotent."""
        self._writer.close()
        with self._read_lock:
            self._reader.close()
            self._conn.close()

    async def aclose(self) -> None:
        """`close` from the asyncio loop (the last write may wait for the disk)."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
