"""Ledger group commit: 32 concurrent writers, one transaction (one fsync) per row vs shared commits.

Each round writes ROWS served rows from WRITERS concurrent writers into a fresh WAL ledger with
`synchronous=FULL` on the real disk of the benchmark's temporary directory (an fsync per commit
is the cost measured: on a tmpfs it would be free and the numbers meaningless).

* `ours: record_async, 32 tasks`: the request path -- 32 asyncio tasks on one loop awaiting
  `Ledger.record_async` (the writer thread commits what arrived meanwhile in one transaction).
* `ours: record, 32 threads`: 32 threads calling the blocking `Ledger.record`.
* `per-row transactions, 32 threads` (the reference, and the ledger before group commit): the same
  schema and the same statements, one `BEGIN IMMEDIATE ... COMMIT` per row under a lock, called
  from 32 threads as the server did through `asyncio.to_thread`.

`extra_info` holds rows/s and commits/s of the last round; `python benches/bench_ledger.py`
prints them as a table (rows per second, commits = fsyncs per second, rows per commit).

    PYTHONPATH=python pytest benches/bench_ledger.py --benchmark-only -q
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lloom_executor.ledger import STATUS_SERVED, Ledger, LedgerEntry
from lloom_executor.ledger.schema import INSERT_ROW, SELECT_REVENUE, UPSERT_TOTALS, create_or_migrate

WRITERS = 32
ROWS = 3200


def entry(i: int) -> LedgerEntry:
    return LedgerEntry(
        STATUS_SERVED,
        "m",
        client_address="0x" + "ab" * 20,
        peer_id=f"peer-{i % WRITERS}",
        inbound_tokens=12,
        outbound_tokens=34,
        inbound_price="1000000000000",
        outbound_price="2000000000000",
        total_cost=str(12 * 10**12 + 34 * 2 * 10**12),
        request_digest=i.to_bytes(32, "big"),
        receipt_digest=b"\x01" * 32,
        receipt_signature=b"\x02" * 65,
        queued_ms=0.1,
        backend_ms=1.0,
        total_ms=1.5,
    )


class PerRowLedger:
    """The reference: what `Ledger.record` did before group commit -- a shared connection under a
    lock, one write transaction (one fsync) per row, model_totals updated in it."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("BEGIN IMMEDIATE")
        create_or_migrate(self.conn)
        self.conn.execute("COMMIT")
        self.lock = threading.Lock()
        self.commits = 0

    def record(self, e: LedgerEntry) -> None:
        row = e.row()
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(INSERT_ROW, row)
            found = self.conn.execute(SELECT_REVENUE, ("m",)).fetchone()
            total = (int(found[0]) if found else 0) + int(e.total_cost)
            self.conn.execute(UPSERT_TOTALS, ("m", 1, 0, e.inbound_tokens, e.outbound_tokens, str(total)))
            self.conn.execute("COMMIT")
            self.commits += 1

    def close(self) -> None:
        self.conn.close()


def per_row_threads(path: Path) -> tuple[int, float]:
    ledger = PerRowLedger(path)
    with ThreadPoolExecutor(WRITERS) as pool:
        started = time.perf_counter()
        list(pool.map(ledger.record, (entry(i) for i in range(ROWS))))
        seconds = time.perf_counter() - started
    ledger.close()
    return ledger.commits, seconds


def ours_threads(path: Path) -> tuple[int, float]:
    with Ledger(path) as ledger, ThreadPoolExecutor(WRITERS) as pool:
        before = ledger.status().commits
        started = time.perf_counter()
        list(pool.map(ledger.record, (entry(i) for i in range(ROWS))))
        seconds = time.perf_counter() - started
        return ledger.status().commits - before, seconds


def ours_async(path: Path) -> tuple[int, float]:
    with Ledger(path) as ledger:

        async def writer(k: int) -> None:
            for i in range(k, ROWS, WRITERS):
                await ledger.record_async(entry(i))

        async def main() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(writer(k) for k in range(WRITERS)))
            return time.perf_counter() - started

        before = ledger.status().commits
        seconds = asyncio.run(main())
        return ledger.status().commits - before, seconds


IMPLS: list[tuple[str, Callable[[Path], tuple[int, float]]]] = [
    ("ours: record_async, 32 tasks", ours_async),
    ("ours: record, 32 threads", ours_threads),
    ("per-row transactions, 32 threads", per_row_threads),
]


def one_round(run: Callable[[Path], tuple[int, float]], directory: Path, n: list[int]) -> dict[str, float]:
    """One fresh ledger; only the writing is timed (not opening or closing it)."""
    n[0] += 1
    commits, seconds = run(directory / f"ledger-{n[0]}.sqlite3")
    return {"rows_per_s": ROWS / seconds, "commits_per_s": commits / seconds, "rows_per_commit": ROWS / max(commits, 1)}


@pytest.mark.parametrize("name,run", IMPLS, ids=[name for name, _ in IMPLS])
def test_concurrent_writers(benchmark: Any, tmp_path: Path, name: str, run: Callable[[Path], tuple[int, float]]) -> None:
    benchmark.group = f"ledger: {ROWS} rows from {WRITERS} concurrent writers"
    n = [0]
    result: dict[str, float] = {}

    def go() -> None:
        result.update(one_round(run, tmp_path, n))

    benchmark.pedantic(go, rounds=3, iterations=1)
    benchmark.extra_info.update({k: round(v, 1) for k, v in result.items()})


def main() -> None:
    print(f"{ROWS} served rows, {WRITERS} concurrent writers, WAL + synchronous=FULL on {tempfile.gettempdir()}")
    print(f"{'writer':36} {'rows/s':>9} {'commits/s':>10} {'rows/commit':>12}")
    with tempfile.TemporaryDirectory() as directory:
        n = [0]
        for name, run in IMPLS:
            best = max((one_round(run, Path(directory), n) for _ in range(3)), key=lambda r: r["rows_per_s"])
            print(f"{name:36} {best['rows_per_s']:9.0f} {best['commits_per_s']:10.0f} {best['rows_per_commit']:12.1f}")


if __name__ == "__main__":
    sys.exit(main())
