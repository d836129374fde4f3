"""Where `[openai_limits]` keeps its counts: the request and token buckets and the day's spend.

`LimitedBackend` (limits.py) decides what a request costs and words the
refusals; a `UsageBook` holds the state those decisions read and change, and
makes one admission -- every limit asked, then every limit debited, or none --
a single step.  One process keeps it in memory (`LocalUsageBook`).  The workers
of one node share one book (`workers.shared_limits.SharedUsageBook`, a SQLite
file), because an account's limits belong to the account, not to a worker: a
per-worker share would refuse a client whose connection landed on a busy
worker while the account still had room.

Money is `Decimal` USD throughout; `day` is the UTC day number (epoch seconds
// 86400) the caller computed, so the book needs no clock of its own for it.
"""

from __future__ import annotations

import asyncio
import collections
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from .._fast.ratelimit import RateLimiter

POLL_FIRST_SECS = 0.002  # a slot freed in another process is noticed by polling: first after this
POLL_MAX_SECS = 0.05  # ... then backing off to this
BUCKET_KEY = "backend"  # one bucket for the whole backend account

REQUESTS = "max_requests_per_minute"
TOKENS = "max_tokens_per_minute"
BUDGET = "max_cost_per_day_usd"


@dataclass(frozen=True)
class BookRefusal:
    """Which limit refused, the seconds until it frees up (inf: never, for this request), and the
    day's figures at the moment of the decision (for the budget's message)."""

    limit: str
    wait: float
    spent: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)


@dataclass(frozen=True)
class BookStatus:
    """What is left now, for status pages (None: that limit is not set)."""

    requests_available: float | None
    tokens_available: float | None
    spent_today: Decimal
    reserved: Decimal


class UsageBook(Protocol):
    """The state behind one backend's `[openai_limits]`."""

    def admit(self, tokens: int, reserve: Decimal, budget: Decimal | None, day: int, budget_wait: float) -> BookRefusal | None:
        """Check the budget (spent + reserved + `reserve` <= `budget`), one request and `tokens`
        tokens against the buckets; debit all and return None, or debit nothing and say why.
        `budget_wait` is what a budget refusal waits (seconds to the next UTC day)."""

    def settle(self, reserved: Decimal, cost: Decimal, day: int) -> None:
        """A request admitted with `reserved` finished: release it and add `cost` to `day`'s spend."""

    def status(self, day: int) -> BookStatus: ...


class Slots(Protocol):
    """A counting semaphore: `asyncio.Semaphore` in one process, a node-wide one across workers."""

    async def acquire(self) -> object: ...

    def release(self) -> None: ...


class PolledSlots(ABC):
    """A counting semaphore whose count lives outside this process (a shared file, Redis):
    `try_take` asks the store, `_give_back` returns one there. This process's waiters queue
    here in order; the first takes a slot when one of this process's holders releases
    (woken at once) or when a poll finds one another process freed (polled from
    `POLL_FIRST_SECS`, backing off to `POLL_MAX_SECS`)."""

    def __init__(self) -> None:
        self._waiters: collections.deque[asyncio.Event] = collections.deque()

    @abstractmethod
    def try_take(self) -> bool:
        """Take a slot now if the store has one free."""

    @abstractmethod
    def _give_back(self) -> None:
        """Return one slot to the store (never raises: it runs in `finally`)."""

    async def acquire(self) -> bool:
        if not self._waiters and self.try_take():
            return True
        wake = asyncio.Event()
        self._waiters.append(wake)
        poll = POLL_FIRST_SECS
        try:
            while True:
                if self._waiters[0] is wake and self.try_take():
                    return True
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), poll)
                    poll = POLL_FIRST_SECS
                except TimeoutError:
                    poll = min(POLL_MAX_SECS, poll * 2)
        finally:
            self._waiters.remove(wake)
            if self._waiters:
                self._waiters[0].set()

    def release(self) -> None:
        self._give_back()
        if self._waiters:
            self._waiters[0].set()


class NodeLimits(Protocol):
    """Where a backend's limits are kept when they must hold for the whole node (all workers):
    what `service.py` hands `build_backends` with `--workers N`.  `scope` names the backend."""

    def book(self, scope: str, requests_per_minute: int | None, tokens_per_minute: int | None) -> UsageBook: ...

    def slots(self, scope: str, limit: int) -> Slots: ...


class LocalUsageBook:
    """One process's book: the Cython buckets and two Decimals. One event loop only."""

    def __init__(
        self, requests_per_minute: int | None, tokens_per_minute: int | None, clock: Callable[[], float] | None = None
    ) -> None:
        self._requests = RateLimiter(requests_per_minute, None, clock=clock) if requests_per_minute else None
        self._tokens = RateLimiter(None, tokens_per_minute, clock=clock) if tokens_per_minute else None
        self._day = -1
        self.spent = Decimal(0)  # settled cost of `_day`
        self.reserved = Decimal(0)  # worst-case cost of the requests in flight

    def _roll(self, day: int) -> None:
        if day != self._day:  # a new UTC day: the budget starts over (requests in flight stay reserved)
            self._day = day
            self.spent = Decimal(0)

    def admit(self, tokens: int, reserve: Decimal, budget: Decimal | None, day: int, budget_wait: float) -> BookRefusal | None:
        self._roll(day)
        if budget is not None and self.spent + self.reserved + reserve > budget:
            return BookRefusal(BUDGET, budget_wait, self.spent, self.reserved)
        if self._requests is not None:
            wait = self._requests.retry_after(BUCKET_KEY, 1, 0)
            if wait > 0:
                return BookRefusal(REQUESTS, wait)
        if self._tokens is not None:
            wait = self._tokens.retry_after(BUCKET_KEY, 0, tokens)
            if wait > 0:
                return BookRefusal(TOKENS, wait)
        if self._requests is not None:
            self._requests.try_acquire(BUCKET_KEY, 1, 0)
        if self._tokens is not None:
            self._tokens.try_acquire(BUCKET_KEY, 0, tokens)
        self.reserved += reserve
        return None

    def settle(self, reserved: Decimal, cost: Decimal, day: int) -> None:
        self._roll(day)
        self.reserved -= reserved
        self.spent += cost

    def status(self, day: int) -> BookStatus:
        self._roll(day)
        return BookStatus(
            self._requests.available(BUCKET_KEY)[0] if self._requests is not None else None,
            self._tokens.available(BUCKET_KEY)[1] if self._tokens is not None else None,
            self.spent,
            self.reserved,
        )


__all__ = [
    "BUDGET",
    "BUCKET_KEY",
    "REQUESTS",
    "TOKENS",
    "BookRefusal",
    "BookStatus",
    "LocalUsageBook",
    "NodeLimits",
    "Slots",
    "UsageBook",
]
