"""The ledger's one writer: a thread that owns the write connection and commits in groups.

Group commit: rows handed over while a transaction is being committed wait for it to
finish and then all go into the next transaction together, so N answers finishing at
once cost one fsync, not N (`synchronous=FULL`: each commit fsyncs the WAL). There is
no timer while idle: a lone row is committed at once, so it waits for exactly one
fsync, as before.

Each submitter learns of its commit only after the transaction holding its rows has
committed (and synced): a thread blocks on a `concurrent.futures.Future`; an asyncio
caller awaits an asyncio future, and the writer settles all the futures of one loop
with one `loop.call_soon_threadsafe` per transaction, not a thread-pool hop per row.
A failed transaction fails every submission in it (all or none: validation happened
on the submitters' threads, so what fails here is the file: a full disk, an I/O
error, a lock held past `busy_timeout`).

Refusals (`refusals.py`) are never waited for: they ride in the next transaction, or
are committed on their own at most once per `flush_secs`.

When a transaction fails the ledger is "not writable" (health and metrics say so).
Every new submission still tries, so service resumes with the first request that
finds space again; with none arriving, the writer retries what it holds (or a
one-page probe write) every `retry_secs`, so health recovers without traffic too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from .entries import (
    COL_COST,
    COL_INBOUND,
    COL_MODEL,
    COL_OUTBOUND,
    COL_STATUS,
    STATUS_SERVED,
    LedgerError,
    LedgerStatus,
)
from .refusals import RefusalBatch, RefusalBook
from .schema import INSERT_COUNT, INSERT_ROW, PROBE, SELECT_REVENUE, UPSERT_TOTALS

log = logging.getLogger(__name__)

DEFAULT_RETRY_SECS = 1.0

_Future = asyncio.Future[list[int]] | concurrent.futures.Future[list[int]]


class _Submission:
    """Rows handed over together (all or none), and who is told once they are committed."""

    __slots__ = ("rows", "loop", "future", "everything")

    def __init__(
        self, rows: list[tuple[Any, ...]], loop: asyncio.AbstractEventLoop | None, future: _Future, everything: bool = False
    ) -> None:
        self.rows = rows
        self.loop = loop  # None: a thread blocks on a concurrent future
        self.future = future
        self.everything = everything  # also write every refusal held (a flush)


def _settle(outcomes: list[tuple[asyncio.Future[list[int]], list[int] | BaseException]]) -> None:
    """On the submitters' loop: resolve every future of one transaction (skipping cancelled ones)."""
    for future, outcome in outcomes:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class LedgerWriter:
    """Owns `conn` (a connection in autocommit mode, WAL, synchronous=FULL) from its own thread."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        book: RefusalBook,
        *,
        retry_secs: float = DEFAULT_RETRY_SECS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conn = conn
        self._path = path
        self._book = book
        self._retry_secs = retry_secs
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Submission] = []
        self._closing = False
        self._writable = True
        self._failed_at = -math.inf  # monotonic time of the last failed transaction
        self._commits = 0
        self._errors = 0
        self._last_error: str | None = None
        self._rows = 0
        self._counted = 0
        self._thread = threading.Thread(target=self._run, name="lloom-ledger-writer", daemon=True)
        self._thread.start()

    # -- what submitters call (any thread) ---------------------------------------------
    def write(self, rows: list[tuple[Any, ...]]) -> list[int]:
        """Block until `rows` are committed; their ids. Raises LedgerError."""
        future: concurrent.futures.Future[list[int]] = concurrent.futures.Future()
        self._enqueue(_Submission(rows, None, future))
        return future.result()

    def write_async(self, rows: list[tuple[Any, ...]]) -> asyncio.Future[list[int]]:
        """A future of the running loop, resolved once `rows` are committed (or with LedgerError)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._enqueue(_Submission(rows, loop, future))
        return future

    def _enqueue(self, submission: _Submission) -> None:
        with self._cond:
            if self._closing:
                raise LedgerError(f"the ledger {self._path} is closed")
            self._queue.append(submission)
            if len(self._queue) == 1:  # else the writer was already woken for the first one
                self._cond.notify()

    def refuse(self, row: tuple[Any, ...]) -> None:
        """Hold a refusal's row for a later transaction (never waits for a write)."""
        with self._cond:
            if self._closing:
                return  # the node has stopped answering; nothing is refused after this
            before = self._book.due()
            self._book.add(row, self._clock())
            if self._book.due() < before:  # the writer may be sleeping past the new deadline
                self._cond.notify()

    def flush(self) -> None:
        """Commit the refusals held now and wait for it (readers call it to see everything
        handed over). Nothing to do when none is held; a failure is left to `status()`."""
        with self._cond:
            if not self._book or self._closing:
                return
        future: concurrent.futures.Future[list[int]] = concurrent.futures.Future()
        try:
            self._enqueue(_Submission([], None, future, everything=True))
            future.result()
        except LedgerError:
            pass

    def status(self) -> LedgerStatus:
        with self._cond:
            return LedgerStatus(
                writable=self._writable,
                commits=self._commits,
                write_errors=self._errors,
                last_error=self._last_error,
                rows=self._rows,
                refusals_counted=self._counted,
                refusals_pending=len(self._book),
            )

    def close(self) -> None:
        """Commit what is held (one last try), then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug of ours: fail every submitter, refuse new ones, never hang them
            log.exception("ledger writer stopped")
            with self._cond:
                self._closing, self._writable = True, False
                self._last_error = f"the ledger writer stopped: {type(exc).__name__}"
                waiting, self._queue = self._queue, []
            self._tell(waiting, None, RuntimeError(self._last_error))

    def _loop(self) -> None:
        held = 0
        while True:
            with self._cond:
                while True:
                    now = self._clock()
                    if self._queue or self._closing:
                        break
                    wake = self._book.due() if self._writable else self._failed_at + self._retry_secs
                    if wake <= now:
                        break
                    self._cond.wait(None if wake == math.inf else wake - now)
                submissions, self._queue = self._queue, []
                closing = self._closing
                everything = closing or any(s.everything for s in submissions)
                refusals = self._book.take(now, ride=bool(submissions), everything=everything)
                probe = not (submissions or refusals or self._writable or closing)
            if submissions or refusals or probe:
                self._commit(submissions, refusals)
            if closing:
                with self._cond:
                    if not self._queue:
                        held = len(self._book)
                        break
        if held:
            log.warning("ledger %s closed with %d refusal(s) that could not be written", self._path, held)

    def _commit(self, submissions: list[_Submission], refusals: RefusalBatch) -> None:
        rows = [row for s in submissions for row in s.rows]
        try:
            ids = self._transaction(refusals.rows + rows, refusals)[len(refusals.rows) :]  # the older rows first
        except Exception as exc:  # sqlite3.Error, or a bug of ours: never leave a submitter waiting
            if not isinstance(exc, sqlite3.Error):
                log.exception("ledger writer failed")
            self._failed(exc, submissions, refusals)
            return
        with self._cond:
            self._commits += 1
            self._rows += len(ids) + len(refusals.rows)
            self._counted += refusals.counted
            if not self._writable:
                log.warning("ledger %s is writable again", self._path)
            self._writable, self._last_error = True, None
        self._tell(submissions, ids)

    def _transaction(self, rows: Sequence[tuple[Any, ...]], refusals: RefusalBatch) -> list[int]:
        """One transaction for everything; returns the ids of `rows`. Raises on any failure (rolled back)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now (waits up to busy_timeout)
        try:
            ids = [cast(int, conn.execute(INSERT_ROW, row).lastrowid) for row in rows]
            if refusals.counts:
                conn.executemany(INSERT_COUNT, refusals.count_rows())
            self._add_to_totals(rows, refusals)
            if not rows and not refusals.counts:
                conn.execute(PROBE)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return ids

    def _add_to_totals(self, rows: Sequence[tuple[Any, ...]], refusals: RefusalBatch) -> None:
        """`model_totals` in the same transaction as the rows: one upsert per model."""
        deltas: dict[str, list[int]] = {}  # model -> [served, refused, inbound, outbound, revenue]
        for row in rows:
            d = deltas.setdefault(row[COL_MODEL], [0, 0, 0, 0, 0])
            if row[COL_STATUS] == STATUS_SERVED:
                d[0] += 1
                d[2] += row[COL_INBOUND]
                d[3] += row[COL_OUTBOUND]
                d[4] += int(row[COL_COST])
            else:
                d[1] += 1
        for (_, _, model), count in refusals.counts.items():
            deltas.setdefault(model, [0, 0, 0, 0, 0])[1] += count.count
        for model, (served, refused, tin, tout, revenue) in deltas.items():
            found = self._conn.execute(SELECT_REVENUE, (model,)).fetchone()
            total = (int(found[0]) if found else 0) + revenue  # exact: decimal text, any size
            self._conn.execute(UPSERT_TOTALS, (model, served, refused, tin, tout, str(total)))

    def _failed(self, exc: Exception, submissions: list[_Submission], refusals: RefusalBatch) -> None:
        with self._cond:
            now = self._clock()
            self._book.put_back(refusals, now)
            self._errors += 1
            self._last_error = str(exc)
            self._failed_at = now
            if self._writable:
                log.error("ledger %s is not writable: %s (requests are refused until it is)", self._path, exc)
            self._writable = False
        self._tell(submissions, None, exc)

    def _tell(self, submissions: list[_Submission], ids: list[int] | None, exc: Exception | None = None) -> None:
        """Resolve each submission: threads directly, each asyncio loop with one call."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[list[int]], list[int] | BaseException]]] = {}
        start = 0
        for s in submissions:
            outcome: list[int] | BaseException
            if ids is None:
                outcome = LedgerError(f"ledger write to {self._path} failed: {exc}")  # one each: tracebacks differ
            else:
                outcome, start = ids[start : start + len(s.rows)], start + len(s.rows)
            if s.loop is None:
                future = cast(concurrent.futures.Future[list[int]], s.future)
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            else:
                by_loop.setdefault(s.loop, []).append((cast(asyncio.Future[list[int]], s.future), outcome))
        for loop, outcomes in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, outcomes)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass
