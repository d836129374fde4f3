"""The request ledger: one SQLite row per answered request (served or refused).

What a row holds: when, who (the request's signer address, the peer), what
(requested and served model, tokens, the request's prices, the exact total
cost as decimal text), the proofs (the request's signing digest, its EIP-712
commitment digest, the receipt digest and signature) and how long it took
(queued, backend, total milliseconds). Revenue and request counts per model
are kept in `model_totals`, updated in the same transaction as the row, so
`totals()` is one small read however long the ledger grows.

Durability — "written before the answer is counted as served; a crash loses
no acknowledged row": `record()` returns only after its transaction has
committed, and the caller sends the answer only after `record()` returned.
The database runs in WAL mode with `synchronous=FULL`: every commit fsyncs
the WAL, so a committed row survives a process crash *and* an OS crash or
power loss. (`synchronous=NORMAL` with WAL would survive a process crash only:
the WAL is synced at checkpoints, not at commits, so the last commits may
vanish with the page cache. The cost of FULL is one fsync per record;
`record_many` amortises it over a batch: one transaction, one fsync.)

Several processes may share one ledger file (the executor, `maintenance`
commands, a metrics exporter): WAL lets readers run beside the single
writer, writers take the write lock up front (`BEGIN IMMEDIATE`, so no
deadlocking lock upgrade) and wait for each other up to `busy_timeout`.
Within a process one connection is shared under a lock, so the object may
be used from any thread (the server calls it through `asyncio.to_thread`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

LEDGER_FILENAME = "ledger.sqlite3"
SCHEMA_VERSION = 1
DEFAULT_BUSY_TIMEOUT_SECS = 10.0

STATUS_SERVED = "served"
STATUS_REFUSED = "refused"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id                INTEGER PRIMARY KEY,
    time              REAL    NOT NULL,            -- unix seconds when the answer was ready
    status            TEXT    NOT NULL CHECK (status IN ('served', 'refused')),
    reason            TEXT,                        -- why it was refused (NULL when served)
    client_address    TEXT,                        -- lowercase 0x... signer of the request (NULL: unsigned)
    peer_id           TEXT,                        -- the libp2p peer that sent it
    model             TEXT    NOT NULL,            -- our model the request resolved to ('' when none: unknown name)
    requested_model   TEXT    NOT NULL,            -- the name in the request (may be an alias)
    inbound_tokens    INTEGER NOT NULL,
    outbound_tokens   INTEGER NOT NULL,
    inbound_price     TEXT    NOT NULL,            -- wei per token, decimal text, as the request carried it
    outbound_price    TEXT    NOT NULL,
    total_cost        TEXT    NOT NULL,            -- wei, decimal text (exact, any size)
    request_digest    TEXT,                        -- 0x keccak256 of the signed request payload
    request_hash      TEXT,                        -- 0x EIP-712 LlmRequestCommitment digest
    receipt_digest    TEXT,                        -- 0x EIP-712 LlmResponseCommitment digest
    receipt_signature TEXT,                        -- 0x r||s||v by the executor over receipt_digest
    receipt_timestamp INTEGER,                     -- the commitment's timestamp
    queued_ms         REAL,                        -- waiting for a backend slot
    backend_ms        REAL,                        -- the backend call
    total_ms          REAL                         -- frame received to answer ready
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time);
CREATE INDEX IF NOT EXISTS requests_client ON requests (client_address, time);
CREATE TABLE IF NOT EXISTS model_totals (
    model           TEXT    PRIMARY KEY,
    served          INTEGER NOT NULL DEFAULT 0,
    refused         INTEGER NOT NULL DEFAULT 0,
    inbound_tokens  INTEGER NOT NULL DEFAULT 0,    -- of served requests
    outbound_tokens INTEGER NOT NULL DEFAULT 0,
    revenue         TEXT    NOT NULL DEFAULT '0'   -- wei, decimal text: sum of served total_cost
);
"""

_COLUMNS = (
    "time",
    "status",
    "reason",
    "client_address",
    "peer_id",
    "model",
    "requested_model",
    "inbound_tokens",
    "outbound_tokens",
    "inbound_price",
    "outbound_price",
    "total_cost",
    "request_digest",
    "request_hash",
    "receipt_digest",
    "receipt_signature",
    "receipt_timestamp",
    "queued_ms",
    "backend_ms",
    "total_ms",
)
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


class LedgerError(RuntimeError):
    """The ledger cannot be opened or written (the row is NOT recorded)."""


def _hex(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return "0x" + bytes(value).hex()


def _wei(text: str, what: str) -> int:
    if not (isinstance(text, str) and text.isascii() and text.isdigit()):
        raise ValueError(f"{what} must be a decimal string of wei, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class LedgerEntry:
    """One answered request. Digests/signatures: bytes or 0x-hex text; stored as 0x-hex."""

    status: str  # STATUS_SERVED or STATUS_REFUSED
    model: str
    requested_model: str | None = None  # defaults to `model`
    client_address: str | None = None
    peer_id: str | None = None
    inbound_tokens: int = 0
    outbound_tokens: int = 0
    inbound_price: str = "0"
    outbound_price: str = "0"
    total_cost: str = "0"
    reason: str | None = None
    request_digest: bytes | str | None = None
    request_hash: bytes | str | None = None
    receipt_digest: bytes | str | None = None
    receipt_signature: bytes | str | None = None
    receipt_timestamp: int | None = None
    queued_ms: float | None = None
    backend_ms: float | None = None
    total_ms: float | None = None
    time: float = field(default_factory=time.time)

    def row(self) -> tuple[Any, ...]:
        if self.status not in (STATUS_SERVED, STATUS_REFUSED):
            raise ValueError(f"status must be {STATUS_SERVED!r} or {STATUS_REFUSED!r}, got {self.status!r}")
        _wei(self.total_cost, "total_cost")
        return (
            float(self.time),
            self.status,
            self.reason,
            self.client_address.lower() if self.client_address else None,
            self.peer_id,
            self.model,
            self.requested_model if self.requested_model is not None else self.model,
            int(self.inbound_tokens),
            int(self.outbound_tokens),
            str(self.inbound_price),
            str(self.outbound_price),
            self.total_cost,
            _hex(self.request_digest),
            _hex(self.request_hash),
            _hex(self.receipt_digest),
            _hex(self.receipt_signature),
            self.receipt_timestamp,
            self.queued_ms,
            self.backend_ms,
            self.total_ms,
        )


@dataclass(frozen=True)
class ModelTotals:
    served: int
    refused: int
    inbound_tokens: int
    outbound_tokens: int
    revenue: int  # wei


@dataclass(frozen=True)
class LedgerTotals:
    by_model: dict[str, ModelTotals]

    @property
    def served(self) -> int:
        return sum(t.served for t in self.by_model.values())

    @property
    def refused(self) -> int:
        return sum(t.refused for t in self.by_model.values())

    @property
    def revenue(self) -> int:
        return sum(t.revenue for t in self.by_model.values())

    def revenue_by_model(self) -> dict[str, int]:
        return {model: t.revenue for model, t in self.by_model.items()}


class Ledger:
    """`Ledger(path)`: open (creating) the SQLite ledger at `path`. Thread-safe; share it."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT_SECS) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        created = not self.path.exists()
        try:
            conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
        self._conn = conn
        try:
            if created:
                os.chmod(self.path, 0o600)  # client addresses and revenue: the operator's business only
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = self._enable_wal(busy_timeout)
            if str(mode).lower() != "wal":
                raise LedgerError(
                    f"{self.path}: SQLite refused WAL mode (journal_mode is {mode}); is it on a network file system?"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            with self._transaction():
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise LedgerError(f"{self.path} has ledger schema {version}; this version knows {SCHEMA_VERSION}")
                for statement in _SCHEMA.split(";"):  # not executescript(): it would COMMIT our transaction
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise

    def _enable_wal(self, busy_timeout: float) -> str:
        """WAL on (it is persistent: once set, every later open finds it). Switching a new file
        needs an exclusive lock and SQLite does not run the busy handler for it, so two processes
        creating the ledger at once would see "database is locked": retry up to busy_timeout."""
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                mode = str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])
                if mode.lower() != "wal":
                    mode = str(self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
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
    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")  # take the write lock now (waits up to busy_timeout)
            return self.conn

        def __exit__(self, exc_type: Any, *rest: Any) -> None:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                    return
                except BaseException:
                    self._rollback()
                    raise
            self._rollback()

        def _rollback(self) -> None:
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    def _transaction(self) -> Ledger._Tx:
        return Ledger._Tx(self._conn)

    def record(self, entry: LedgerEntry) -> int:
        """Write one row; returns its id once committed and synced (durable). Raises LedgerError."""
        return self.record_many([entry])[0]

    def record_many(self, entries: Sequence[LedgerEntry]) -> list[int]:
        """Write rows in one transaction (one fsync); all or none. Returns their ids."""
        rows = [e.row() for e in entries]  # validation errors before touching the database
        if not rows:
            return []
        deltas: dict[str, list[int]] = {}
        for e in entries:
            d = deltas.setdefault(e.model, [0, 0, 0, 0, 0])
            if e.status == STATUS_SERVED:
                d[0] += 1
                d[2] += int(e.inbound_tokens)
                d[3] += int(e.outbound_tokens)
                d[4] += _wei(e.total_cost, "total_cost")
            else:
                d[1] += 1
        ids: list[int] = []
        with self._lock:
            try:
                with self._transaction() as conn:
                    for row in rows:
                        ids.append(cast(int, conn.execute(_INSERT, row).lastrowid))  # None only when nothing was inserted
                    for model, (served, refused, tin, tout, revenue) in deltas.items():
                        found = conn.execute("SELECT revenue FROM model_totals WHERE model = ?", (model,)).fetchone()
                        before = int(found[0]) if found else 0
                        conn.execute(
                            "INSERT INTO model_totals (model, served, refused, inbound_tokens, outbound_tokens, revenue)"
                            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model) DO UPDATE SET"
                            " served = served + excluded.served, refused = refused + excluded.refused,"
                            " inbound_tokens = inbound_tokens + excluded.inbound_tokens,"
                            " outbound_tokens = outbound_tokens + excluded.outbound_tokens,"
                            " revenue = ?",
                            (model, served, refused, tin, tout, str(revenue), str(before + revenue)),
                        )
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger write to {self.path} failed: {exc}") from exc
        return ids

    # -- reading ----------------------------------------------------------------------
    def totals(self) -> LedgerTotals:
        """Request counts, served tokens and revenue (wei) per model."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT model, served, refused, inbound_tokens, outbound_tokens, revenue FROM model_totals ORDER BY model"
            ).fetchall()
        return LedgerTotals({r[0]: ModelTotals(r[1], r[2], r[3], r[4], int(r[5])) for r in rows})

    def entries(self, *, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows as dicts, oldest first (`since`: unix seconds; `limit`: the newest N)."""
        query = "SELECT id, " + ", ".join(_COLUMNS) + " FROM requests"
        args: list[Any] = []
        if since is not None:
            query += " WHERE time >= ?"
            args.append(since)
        query += " ORDER BY id DESC"
        if limit is not None:
            query += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self._conn.execute(query, args).fetchall()
        names = ("id", *_COLUMNS)
        return [dict(zip(names, r, strict=False)) for r in reversed(rows)]

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM requests").fetchone()[0]

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

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
        with self._lock:
            try:
                self._conn.execute("ANALYZE")
                if vacuum:
                    self._conn.execute("VACUUM")
                self._conn.execute("PRAGMA optimize")
                busy, wal_frames, checkpointed = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
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
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
