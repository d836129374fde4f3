"""Redis response cache, shared by every worker and node pointed at the same server.

Each entry is a plain Redis string `{prefix}{key hex}` holding the encoded Completion,
written with `EX ttl_seconds`, so Redis itself expires it. `max_size_gb` is honoured
without touching the server's config (no `maxmemory` change) through a small index
kept next to the entries, updated atomically by Lua scripts:

    {prefix}__lru     sorted set  member = key hex, score = use counter (LRU order)
    {prefix}__stored  sorted set  member = key hex, score = store time (server ms)
    {prefix}__sizes   hash        key hex -> counted bytes
    {prefix}__totals  hash        size, entries, tick

A put first forgets entries older than the TTL (at most `purge_batch` per put: their
values have already expired), then stores the new entry and evicts least recently
used entries until the counted size is within budget. The index is bounded by the
budget too, since every counted entry is in it. What this cannot see: bytes Redis
spends per key beyond key + value, and keys the server drops on its own (an operator
`maxmemory` policy, FLUSHDB); those are forgotten from the index at their TTL.
Needs a standalone Redis (or one Redis Cluster slot): the scripts touch entry keys
they compute from the prefix.

Availability: every operation runs under a short timeout (`op_timeout`, default
0.25 s) with no client-side retries. A connection error or timeout marks the cache
unavailable and logs that once; the node keeps serving without it. While down, get
and put return at once (miss / no-op) and a background ping retries with exponential
backoff (0.5 s doubling to 30 s); the first success logs the recovery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..backends.base import Completion
from .base import CacheStats, Counters, KeyedCache, decode_completion, encode_completion

log = logging.getLogger(__name__)
T = TypeVar("T")

_FORGET = """
local function forget(member)
  local size = tonumber(redis.call('HGET', KEYS[3], member))
  if not size then return 0 end
  redis.call('HDEL', KEYS[3], member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('DEL', ARGV[1] .. member)
  redis.call('HINCRBY', KEYS[4], 'size', -size)
  redis.call('HINCRBY', KEYS[4], 'entries', -1)
  return size
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: lru, stored, sizes, totals, entry   ARGV: prefix, member, value, ttl s, size, max bytes, purge batch
_PUT = (
    _FORGET
    + """
local now = now_ms()
local ttl = tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl * 1000, 'LIMIT', 0, tonumber(ARGV[7]))
for _, member in ipairs(expired) do forget(member) end
forget(ARGV[2])
local size = tonumber(ARGV[5])
local max = tonumber(ARGV[6])
local stored = 0
local evicted = 0
if size <= max then
  redis.call('SET', KEYS[5], ARGV[3], 'EX', ttl)
  local tick = redis.call('HINCRBY', KEYS[4], 'tick', 1)
  redis.call('ZADD', KEYS[1], tick, ARGV[2])
  redis.call('ZADD', KEYS[2], now, ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[2], size)
  redis.call('HINCRBY', KEYS[4], 'entries', 1)
  local total = redis.call('HINCRBY', KEYS[4], 'size', size)
  stored = 1
  while total > max do
    local victim = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
    if (not victim) or victim == ARGV[2] then break end
    total = total - forget(victim)
    evicted = evicted + 1
  end
end
local totals = redis.call('HMGET', KEYS[4], 'size', 'entries')
return {stored, evicted, #expired, tonumber(totals[1]) or 0, tonumber(totals[2]) or 0}
"""
)

# KEYS: lru, totals, entry   ARGV: member
_GET = """
local value = redis.call('GET', KEYS[3])
if value then
  local tick = redis.call('HINCRBY', KEYS[2], 'tick', 1)
  redis.call('ZADD', KEYS[1], 'XX', tick, ARGV[1])
end
return value
"""

# KEYS: lru, stored, sizes, totals   ARGV: prefix, cutoff age ms
_CLEAN = (
    _FORGET
    + """
local cutoff = now_ms() - tonumber(ARGV[2])
local removed = 0
while true do
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'LIMIT', 0, 1000)
  if #old == 0 then break end
  for _, member in ipairs(old) do forget(member); removed = removed + 1 end
end
local totals = redis.call('HMGET', KEYS[4], 'size', 'entries')
return {removed, tonumber(totals[1]) or 0, tonumber(totals[2]) or 0}
"""
)

_OUTAGE = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)


def redact_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


class RedisCache(KeyedCache):
    """LRU (by a size-accounted index) + Redis key TTL; degrades to no cache when Redis is down."""

    backend = "redis"
    MIN_BACKOFF = 0.5
    MAX_BACKOFF = 30.0

    def __init__(
        self,
        url: str,
        prefix: str,
        max_bytes: int,
        ttl_seconds: int,
        *,
        deterministic_only: bool = True,
        op_timeout: float = 0.25,
        max_in_flight: int = 64,
        purge_batch: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.ttl_seconds = int(ttl_seconds)
        self.deterministic_only = deterministic_only
        self.op_timeout = op_timeout
        self.purge_batch = purge_batch
        self._clock = clock
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_in_flight + 4,  # the checker's ping never waits for a slot
        )
        self._slots = asyncio.Semaphore(max_in_flight)
        self._index = [f"{prefix}__lru", f"{prefix}__stored", f"{prefix}__sizes", f"{prefix}__totals"]
        self._put_script = self._client.register_script(_PUT)
        self._get_script = self._client.register_script(_GET)
        self._clean_script = self._client.register_script(_CLEAN)
        self._counters = Counters()
        self._available = True
        self._backoff = self.MIN_BACKOFF
        self._retry_at = 0.0
        self._probe: asyncio.Task[bool] | None = None

    # -- availability --------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self._available

    def _went_down(self, exc: BaseException) -> None:
        self._counters.errors += 1
        if self._available:
            self._available = False
            self._backoff = self.MIN_BACKOFF
            log.warning(
                "redis cache at %s is unavailable (%s); serving without cache, retrying in the background",
                redact_url(self.url),
                exc or type(exc).__name__,
            )
        else:
            self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)
        self._retry_at = self._clock() + self._backoff

    def _came_back(self) -> None:
        if not self._available:
            self._available = True
            self._backoff = self.MIN_BACKOFF
            log.info("redis cache at %s is reachable again; caching resumed", redact_url(self.url))

    async def check(self) -> bool:
        """Pings Redis now (bounded by `op_timeout`) and updates `available`; for startup and health."""
        try:
            async with asyncio.timeout(self.op_timeout):
                await self._client.ping()
        except (*_OUTAGE, RedisError) as exc:
            self._went_down(exc)
            return False
        self._came_back()
        return True

    def _usable(self) -> bool:
        """True when a request may talk to Redis now; while down, starts a background
        probe once the backoff has passed and answers False (the request never waits)."""
        if self._available:
            return True
        if self._clock() >= self._retry_at and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self.check(), name="redis-cache-probe")
        return False

    async def _call(self, op: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """Runs one operation within `op_timeout`; (False, None) when it could not run."""
        if not self._usable():
            return False, None
        started = False
        try:
            async with asyncio.timeout(self.op_timeout):
                async with self._slots:
                    started = True
                    result = await op()
        except TimeoutError as exc:
            if started:
                self._went_down(exc)
            else:  # every slot busy: this request skips the cache, Redis is not blamed
                self._counters.errors += 1
            return False, None
        except _OUTAGE as exc:
            self._went_down(exc)
            return False, None
        except RedisError as exc:  # a command error (script, wrong type): not an outage
            self._counters.errors += 1
            log.warning("redis cache command failed: %s", exc)
            return False, None
        return True, result

    # -- the cache -----------------------------------------------------------------------
    async def get(self, key: bytes) -> Completion | None:
        member = key.hex()
        lru, _, _, totals = self._index
        ok, raw = await self._call(lambda: self._get_script(keys=[lru, totals, self.prefix + member], args=[member]))
        if not ok or raw is None:
            self._counters.misses += 1
            return None
        try:
            completion = decode_completion(raw)
        except ValueError as exc:
            log.debug("redis cache entry %s unreadable (%s): a miss", member, exc)
            self._counters.misses += 1
            self._counters.errors += 1
            return None
        self._counters.hits += 1
        return completion

    async def put(self, key: bytes, completion: Completion) -> None:
        member = key.hex()
        data = encode_completion(completion)
        args: list[Any] = [self.prefix, member, data, self.ttl_seconds, len(key) + len(data), self.max_bytes, self.purge_batch]
        ok, result = await self._call(lambda: self._put_script(keys=[*self._index, self.prefix + member], args=args))
        if ok and result is not None:
            stored, evicted, expired, size, entries = (int(x) for x in result)
            c = self._counters
            c.stores += stored
            c.evictions += evicted
            c.expirations += expired
            c.size_bytes, c.entries = size, entries

    async def clean(self, older_than_secs: float) -> int:
        """Removes entries stored at least `older_than_secs` ago (server clock); returns how
        many. Maintenance: not bounded by `op_timeout`, and raises if Redis is unreachable."""
        result = await self._clean_script(keys=self._index, args=[self.prefix, int(older_than_secs * 1000)])
        removed, size, entries = (int(x) for x in result)
        self._counters.size_bytes, self._counters.entries = size, entries
        return removed

    def stats(self) -> CacheStats:
        return self._counters.snapshot(self.backend, self._available, self.max_bytes)

    async def close(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
        await self._client.aclose()
