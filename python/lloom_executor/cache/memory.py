"""In-process response cache: an LRU ordered dict bounded by bytes, with a TTL.

Per worker process (nothing is shared between workers); lost on restart. All work
is synchronous dict operations, so it never blocks the event loop for long and
needs no lock: asyncio runs each call to completion between awaits.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..backends.base import Completion
from .base import CacheStats, Counters, KeyedCache, entry_size


@dataclass(frozen=True)
class _Entry:
    completion: Completion
    size: int
    stored_at: float


class MemoryCache(KeyedCache):
    """LRU + TTL. An entry is alive while `clock() - stored_at < ttl_seconds`."""

    backend = "memory"

    def __init__(
        self,
        max_bytes: int,
        ttl_seconds: float,
        *,
        deterministic_only: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.deterministic_only = deterministic_only
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._counters = Counters()

    @property
    def available(self) -> bool:
        return True

    def _drop(self, key: bytes) -> _Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._counters.size_bytes -= entry.size
            self._counters.entries -= 1
        return entry

    async def get(self, key: bytes) -> Completion | None:
        entry = self._entries.get(key)
        if entry is None:
            self._counters.misses += 1
            return None
        if self._clock() - entry.stored_at >= self.ttl_seconds:
            self._drop(key)
            self._counters.expirations += 1
            self._counters.misses += 1
            return None
        self._entries.move_to_end(key)
        self._counters.hits += 1
        return entry.completion

    async def put(self, key: bytes, completion: Completion) -> None:
        size = entry_size(key, completion)
        self._drop(key)
        if size > self.max_bytes:
            return
        self._entries[key] = _Entry(completion, size, self._clock())
        self._counters.size_bytes += size
        self._counters.entries += 1
        self._counters.stores += 1
        while self._counters.size_bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self._counters.evictions += 1

    def stats(self) -> CacheStats:
        return self._counters.snapshot(self.backend, True, self.max_bytes)

    async def clean(self, older_than_secs: float) -> int:
        """Drops entries stored at least `older_than_secs` ago; returns how many."""
        cutoff = self._clock() - older_than_secs
        old = [key for key, entry in self._entries.items() if entry.stored_at <= cutoff]
        for key in old:
            self._drop(key)
        return len(old)

    async def close(self) -> None:
        self._entries.clear()
        self._counters.entries = self._counters.size_bytes = 0
