"""The bounded, drop-oldest event queue with one worker task, shared by the webhook
endpoints (`webhooks/`) and the plugins' on_request_finished (`plugins/`).

Why drop the oldest: events are reported off the request path, so a slow or dead
receiver must cost the node nothing; during a long outage the newest events are
the useful ones.

`put` never blocks: when the queue holds `size` items, the oldest is dropped and
handed to `on_drop(item, first)` (`first`: the first drop of an overflow episode,
which ends when the worker finds the queue empty). `start(consume)` runs one task
that awaits `consume(item)` for each item, in order, one at a time; a consumer
handles its own failures (an exception that escapes it is logged and the worker
goes on). `drain(timeout)` stops taking items, lets the worker empty the queue
for up to `timeout` seconds, cancels it and returns what was left (the item being
consumed included), for the owner to count and log.

asyncio only, one loop; `put` must be called on the loop's thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, cast

log = logging.getLogger(__name__)

T = TypeVar("T")


class EventQueue(Generic[T]):
    def __init__(self, size: int, on_drop: Callable[[T, bool], None], name: str = "events") -> None:
        if size < 1:
            raise ValueError("an event queue holds at least one item")
        self.size = size
        self.name = name
        self._on_drop = on_drop
        self._items: collections.deque[T] = collections.deque()
        self._current: T | None = None
        self._busy = False  # consuming _current
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._overflowing = False
        self.closed = False

    @property
    def pending(self) -> int:
        """Items queued, plus the one being consumed."""
        return len(self._items) + self._busy

    def put(self, item: T) -> None:
        if self.closed:
            return
        if len(self._items) >= self.size:
            oldest = self._items.popleft()
            first, self._overflowing = not self._overflowing, True
            self._on_drop(oldest, first)
        self._items.append(item)
        self._idle.clear()
        self._wakeup.set()

    def start(self, consume: Callable[[T], Awaitable[object]]) -> None:
        """Start the worker on the running loop (items put before are kept)."""
        if self._task is None and not self.closed:
            self._task = asyncio.get_running_loop().create_task(self._run(consume), name=self.name)

    async def _run(self, consume: Callable[[T], Awaitable[object]]) -> None:
        while True:
            if not self._items:
                self._overflowing = False
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._current, self._busy = self._items.popleft(), True
            try:
                await consume(self._current)
            except asyncio.CancelledError:
                raise  # drain() counts the current item as left
            except Exception:  # a bug must not end the worker and silently stop all delivery
                log.exception("%s: unexpected error consuming an event", self.name)
            self._current, self._busy = None, False

    async def drain(self, timeout: float) -> list[T]:
        """Take no more items; give the worker up to `timeout` seconds to consume what is
        queued, then stop it. Returns the items left (oldest first). Safe to call twice."""
        self.closed = True
        if self._task is not None:
            if self.pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, timeout)):
                        await self._idle.wait()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = list(self._items)
        if self._busy:
            left.insert(0, cast(T, self._current))
        self._items.clear()
        self._current, self._busy = None, False
        return left
