"""Refusals kept in memory until written: bounded, so a flood of refusals is not a flood of writes.

A refusal costs its sender almost nothing (a rate-limited, replayed or unsigned
frame), so the ledger must not pay an fsync for each. What is kept:

* Served requests are not here: each has its own row, committed before its answer
  leaves (`writer.py`).
* Within each window (`window_secs`, default 60 s, starting at the first refusal
  after the previous window was written) the first `rows_per_sender` refusals of each
  (peer, code) (default 10), and at most `rows_per_window` in all (default 1,000), get
  a row of their own in `requests`, as detailed as a served row (status `refused`,
  `code`, the public `reason`, the receipt of a refusal after admission). Their answer
  does not wait for them: they ride in the next transaction, a served row's group
  commit or, failing one, at most `flush_secs` (default 1 s) after the oldest of them.
* Every other refusal is counted in a `refusal_counts` row per (peer, code, model):
  count, first and last time, the last signer and public sentence. They are written
  when the window ends. At most `max_senders` distinct senders (default 4,096) are
  counted one by one in a window; refusals of further senders are counted under peer
  `*`, per (code, model).
* `model_totals.refused` counts all of them.

So per window at most `rows_per_window` refusal rows and `max_senders` plus (codes x
models) count rows are written, and at most one transaction per `flush_secs` is spent
on refusals however many arrive; memory holds at most `2 x rows_per_window` rows (the
same again while the disk cannot take them) and that many counts. A crash loses the
refusal rows of the last `flush_secs` and the counts of the current window (their
senders were refused, nothing was charged); never a served row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .entries import COL_CLIENT, COL_CODE, COL_MODEL, COL_PEER, COL_REASON, COL_STATUS, COL_TIME, STATUS_REFUSED

ANY_SENDER = "*"
DEFAULT_WINDOW_SECS = 60.0
DEFAULT_FLUSH_SECS = 1.0
DEFAULT_ROWS_PER_SENDER = 10
DEFAULT_ROWS_PER_WINDOW = 1_000
DEFAULT_MAX_SENDERS = 4_096


@dataclass
class _Count:
    first: float  # unix seconds
    last: float
    count: int
    client: str | None
    reason: str | None

    def merge(self, other: _Count) -> None:
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)
        self.count += other.count
        self.client, self.reason = other.client or self.client, other.reason or self.reason


CountKey = tuple[str, str, str]  # (peer or ANY_SENDER, code, model)


@dataclass
class RefusalBatch:
    """What one transaction takes out of the book: rows for `requests`, rows for `refusal_counts`."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    counts: dict[CountKey, _Count] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rows or self.counts)

    def count_rows(self) -> list[tuple[Any, ...]]:
        """`refusal_counts` rows in COUNT_COLUMNS order."""
        return [
            (c.first, c.last, peer, code, model, c.count, c.client, c.reason) for (peer, code, model), c in self.counts.items()
        ]

    @property
    def counted(self) -> int:
        return sum(c.count for c in self.counts.values())


class RefusalBook:
    """The refusals not written yet. Not thread-safe: the ledger writer's lock guards it.
    Times: `now` is monotonic (deadlines), `entry.time` wall clock (what is stored)."""

    def __init__(
        self,
        *,
        window_secs: float = DEFAULT_WINDOW_SECS,
        flush_secs: float = DEFAULT_FLUSH_SECS,
        rows_per_sender: int = DEFAULT_ROWS_PER_SENDER,
        rows_per_window: int = DEFAULT_ROWS_PER_WINDOW,
        max_senders: int = DEFAULT_MAX_SENDERS,
    ) -> None:
        if window_secs <= 0 or flush_secs <= 0 or rows_per_sender < 0 or rows_per_window < 0 or max_senders < 1:
            raise ValueError("window_secs and flush_secs must be > 0, row budgets >= 0, max_senders >= 1")
        self.window_secs = window_secs
        self.flush_secs = flush_secs
        self.rows_per_sender = rows_per_sender
        self.rows_per_window = rows_per_window
        self.max_senders = max_senders
        self._rows: list[tuple[Any, ...]] = []
        self._rows_since = math.inf  # monotonic time of the oldest pending row
        self._counts: dict[CountKey, _Count] = {}
        self._window_end: float | None = None  # monotonic; None: no window open
        self._budget: dict[tuple[str, str], int] = {}  # (peer, code) -> rows taken this window
        self._rows_this_window = 0

    def __bool__(self) -> bool:
        return bool(self._rows or self._counts)

    def __len__(self) -> int:
        """Refusals held (rows plus counted)."""
        return len(self._rows) + sum(c.count for c in self._counts.values())

    def add(self, row: tuple[Any, ...], now: float) -> None:
        """One refusal: its `requests` row (`LedgerEntry.row(code)`), kept as it is or counted."""
        if row[COL_STATUS] != STATUS_REFUSED:
            raise ValueError(f"a refusal must have status {STATUS_REFUSED!r}, got {row[COL_STATUS]!r}")
        if self._window_end is None or (now >= self._window_end and not self._counts):
            self._open_window(now)
        peer, code = row[COL_PEER] or ANY_SENDER, row[COL_CODE] or ""
        taken = self._budget.get((peer, code))
        if taken is None:  # no room to track another sender's budget: count it
            taken = 0 if len(self._budget) < self.max_senders else self.rows_per_sender
        if (
            taken < self.rows_per_sender
            and self._rows_this_window < self.rows_per_window
            and len(self._rows) < 2 * self.rows_per_window
        ):
            self._budget[(peer, code)] = taken + 1
            self._rows_this_window += 1
            if not self._rows:
                self._rows_since = now
            self._rows.append(row)
            return
        self._count(peer, code, row[COL_MODEL], _Count(*_count_of(row)))

    def _open_window(self, now: float) -> None:
        self._window_end = now + self.window_secs
        self._budget.clear()
        self._rows_this_window = 0

    def due(self) -> float:
        """When (monotonic) something here must be written; inf when nothing is held."""
        rows_due = self._rows_since + self.flush_secs if self._rows else math.inf
        counts_due = self._window_end if self._counts and self._window_end is not None else math.inf
        return min(rows_due, counts_due)

    def take(self, now: float, *, ride: bool, everything: bool = False) -> RefusalBatch:
        """What is to be written now: the rows when they `ride` along with served rows or are
        due, the counts when their window is over (all of it when `everything`: closing)."""
        batch = RefusalBatch()
        if self._rows and (ride or everything or now >= self._rows_since + self.flush_secs):
            batch.rows, self._rows, self._rows_since = self._rows, [], math.inf
        if self._counts and (everything or self._window_end is None or now >= self._window_end):
            batch.counts, self._counts = self._counts, {}
            self._window_end = None  # the next refusal opens a new window, with fresh budgets
        return batch

    def put_back(self, batch: RefusalBatch, now: float) -> None:
        """A batch whose transaction failed: hold it again (its rows first in line, counts
        merged). What the bounds have no room for any more is folded into counts."""
        rows = batch.rows + self._rows
        self._rows = rows[: 2 * self.rows_per_window]
        self._rows_since = min(self._rows_since, now) if self._rows else math.inf
        for row in rows[2 * self.rows_per_window :]:
            self._count(row[COL_PEER] or ANY_SENDER, row[COL_CODE] or "", row[COL_MODEL], _Count(*_count_of(row)))
        for (peer, code, model), count in batch.counts.items():
            self._count(peer, code, model, count)
        if self._counts and self._window_end is None:
            self._window_end = now  # due again at once (the writer spaces its retries)

    def _count(self, peer: str, code: str, model: str, count: _Count) -> None:
        if (peer, code, model) not in self._counts and len(self._counts) >= self.max_senders:
            peer = ANY_SENDER
        found = self._counts.get((peer, code, model))
        if found is None:
            self._counts[(peer, code, model)] = count
        else:
            found.merge(count)


def _count_of(row: tuple[Any, ...]) -> tuple[float, float, int, str | None, str | None]:
    """A `requests` row as the fields of a count of one."""
    return row[COL_TIME], row[COL_TIME], 1, row[COL_CLIENT], row[COL_REASON]
