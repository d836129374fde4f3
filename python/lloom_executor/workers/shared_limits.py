"""Per-backend limits kept once for the node: `[openai_limits]` counts and `max_concurrent_requests` slots.

An account's rate limits and budget, and a server's capacity, belong to the
account and the server: with `--workers N` a per-worker share would refuse a
client whose connection landed on a busy worker while the account still had
room, and would let N workers each spend a share no single one can see.  So the
workers keep these in `NodeState` (the SQLite file that already holds the
replay guard and the rate-limit buckets), behind the two interfaces the
backends use in one process too (`backends.usage_book.UsageBook` and `Slots`).

Cost (docs/workers.md "Numbers"): one `BEGIN IMMEDIATE` transaction per
admission and one per settlement or slot release, tens of microseconds, on calls
that take a backend milliseconds to seconds.

A worker killed mid-call cannot return what it held.  Rows are therefore kept
per worker index, and a worker starting under an index clears that index's
rows (`NodeState.forget_worker`): the supervisor starts index i again only
after the process that had it is gone.  Its reservations count as spent (the
provider may have billed the abandoned calls, as a cancelled call is charged in
one process); its slots are freed.
"""

from __future__ import annotations

import time
from decimal import Decimal

from ..backends.usage_book import BUDGET, REQUESTS, TOKENS, BookRefusal, BookStatus, PolledSlots
from .shared_state import NodeState, SharedBucket

REQUESTS_RULE = -1  # SharedBucket rule ids of the backends' buckets (rate_limiting rules are 0..n)
TOKENS_RULE = -2


class SharedUsageBook:
    """`UsageBook` over `NodeState`: one admission is one transaction across every worker."""

    def __init__(
        self, state: NodeState, scope: str, worker: int, requests_per_minute: int | None, tokens_per_minute: int | None
    ) -> None:
        self.state = state
        self.scope = scope
        self.worker = worker
        self._requests = SharedBucket(state, REQUESTS_RULE, requests_per_minute, None) if requests_per_minute else None
        self._tokens = SharedBucket(state, TOKENS_RULE, None, tokens_per_minute) if tokens_per_minute else None

    def _reserved(self) -> Decimal:
        rows = self.state.conn.execute("SELECT amount FROM reserved WHERE scope = ?", (self.scope,)).fetchall()
        return sum((Decimal(r[0]) for r in rows), Decimal(0))

    def _add_reserved(self, amount: Decimal) -> None:
        """This worker's reservations of `scope` += `amount` (Decimal kept as text: no float rounding)."""
        if not amount:
            return
        key = (self.scope, self.worker)
        row = self.state.conn.execute("SELECT amount FROM reserved WHERE scope = ? AND worker = ?", key).fetchone()
        total = (Decimal(row[0]) if row is not None else Decimal(0)) + amount
        self.state.conn.execute("INSERT OR REPLACE INTO reserved (scope, worker, amount) VALUES (?, ?, ?)", (*key, str(total)))

    def admit(self, tokens: int, reserve: Decimal, budget: Decimal | None, day: int, budget_wait: float) -> BookRefusal | None:
        now = time.time()
        with self.state.transaction():
            if budget is not None:
                spent, reserved = self.state.spent(self.scope, day), self._reserved()
                if spent + reserved + reserve > budget:
                    return BookRefusal(BUDGET, budget_wait, spent, reserved)
            if self._requests is not None:
                wait = self._requests.retry_after(self.scope, 1, 0, now)
                if wait > 0:
                    return BookRefusal(REQUESTS, wait)
            if self._tokens is not None:
                wait = self._tokens.retry_after(self.scope, 0, tokens, now)
                if wait > 0:
                    return BookRefusal(TOKENS, wait)
            if self._requests is not None:
                self._requests.try_acquire(self.scope, 1, 0, now)
            if self._tokens is not None:
                self._tokens.try_acquire(self.scope, 0, tokens, now)
            self._add_reserved(reserve)
        return None

    def settle(self, reserved: Decimal, cost: Decimal, day: int) -> None:
        if not (reserved or cost):
            return
        with self.state.transaction():
            self._add_reserved(-reserved)
            if cost:
                self.state.add_spend(self.scope, day, cost)

    def status(self, day: int) -> BookStatus:
        now = time.time()
        return BookStatus(
            self._requests.available(self.scope, now)[0] if self._requests is not None else None,
            self._tokens.available(self.scope, now)[1] if self._tokens is not None else None,
            self.state.spent(self.scope, day),
            self._reserved(),
        )


class SharedSlots(PolledSlots):
    """`Slots` over `NodeState`: at most `limit` holders among all the workers of the node."""

    def __init__(self, state: NodeState, scope: str, limit: int, worker: int) -> None:
        super().__init__()
        self.state = state
        self.scope = scope
        self.limit = limit
        self.worker = worker

    def try_take(self) -> bool:
        with self.state.transaction() as conn:
            held = conn.execute("SELECT coalesce(sum(held), 0) FROM slots WHERE scope = ?", (self.scope,)).fetchone()[0]
            if held >= self.limit:
                return False
            conn.execute(
                "INSERT INTO slots (scope, worker, held) VALUES (?, ?, 1)"
                " ON CONFLICT (scope, worker) DO UPDATE SET held = held + 1",
                (self.scope, self.worker),
            )
        return True

    def _give_back(self) -> None:
        self.state.conn.execute(
            "UPDATE slots SET held = max(0, held - 1) WHERE scope = ? AND worker = ?", (self.scope, self.worker)
        )

    def held(self) -> int:
        """Slots held now by the whole node."""
        row = self.state.conn.execute("SELECT coalesce(sum(held), 0) FROM slots WHERE scope = ?", (self.scope,)).fetchone()
        return int(row[0])


class SharedNodeLimits:
    """`backends.usage_book.NodeLimits` of one worker: books and slots kept in the node's `NodeState`."""

    def __init__(self, state: NodeState, worker: int) -> None:
        self.state = state
        self.worker = worker

    def book(self, scope: str, requests_per_minute: int | None, tokens_per_minute: int | None) -> SharedUsageBook:
        return SharedUsageBook(self.state, scope, self.worker, requests_per_minute, tokens_per_minute)

    def slots(self, scope: str, limit: int) -> SharedSlots:
        return SharedSlots(self.state, scope, limit, self.worker)


__all__ = ["SharedNodeLimits", "SharedSlots", "SharedUsageBook"]
