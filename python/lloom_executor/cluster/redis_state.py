"""The replay guard and the rate-limit buckets of a clustered executor, in Redis.

Same interfaces and same rules as the SQLite versions the workers of one node share
(`workers/shared_state.py`), one Redis command or script per decision:

- replay: `SET key 1 NX PX ms` admits a digest on exactly one member; the retention is
  `ReplayGuard`'s (the window, or the signed deadline capped at `max_hold_secs`), as a TTL;
- buckets: one Lua script per decision over one hash per (rule, key), the bucket model of the
  Cython `RateLimiter` (`_fast/ratelimit.pyx`), timed by the Redis server's clock
  (`redis.call('TIME')`), so the members' clocks do not matter.  `RedisRateRules.decide` asks and
  debits *all* the rules of one request in one script: no other member can debit between the
  asking and the debiting (`RateLimitRules(decide=...)`).

Keys are `lloom:{<peer id>}:...`: members of one executor share them, other executors on the
same Redis do not; the `{...}` hash tag keeps one executor's keys in one slot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..config import RateLimitRule
from ..outcome import SharedStateUnavailable
from ..pipeline.replay import DEFAULT_MAX_HOLD_SECS, DEFAULT_WINDOW_SECS
from .redis_link import RedisLink

REQUESTS_RULE = -1  # bucket rule ids of the backends' [openai_limits] buckets (rate_limiting rules are 0..n)
TOKENS_RULE = -2


def key_prefix(namespace: str) -> str:
    """`lloom:{namespace}:`: the hash tag keeps an executor's keys in one Redis Cluster slot."""
    return f"lloom:{{{namespace}}}:"


# A bucket: hash {r = requests left, t = tokens left, u = server time of the last debit}.
# One `ARGV` group per bucket: req_cap req_rate tok_cap tok_rate requests tokens idle_ms.
BUCKET_LUA = """
local function clock(override)
  if override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
local function bucket(key, a, now)
  local b = {req_cap = tonumber(a[1]), req_rate = tonumber(a[2]), tok_cap = tonumber(a[3]),
             tok_rate = tonumber(a[4]), requests = tonumber(a[5]), tokens = tonumber(a[6]), idle = tonumber(a[7])}
  b.r, b.t = b.req_cap, b.tok_cap
  local row = redis.call('HMGET', key, 'r', 't', 'u')
  if row[1] then
    local elapsed = math.max(0, now - tonumber(row[3]))
    b.r = math.min(b.req_cap, tonumber(row[1]) + elapsed * b.req_rate)
    b.t = math.min(b.tok_cap, tonumber(row[2]) + elapsed * b.tok_rate)
  end
  local wait = 0
  if b.req_rate > 0 then
    if b.requests > b.req_cap then b.wait = math.huge return b end
    wait = math.max(wait, (b.requests - b.r) / b.req_rate)
  end
  if b.tok_rate > 0 then
    if b.tokens > b.tok_cap then b.wait = math.huge return b end
    wait = math.max(wait, (b.tokens - b.t) / b.tok_rate)
  end
  b.wait = math.max(0, wait)
  return b
end
local function debit(key, b, now)
  if b.req_rate == 0 and b.tok_rate == 0 then return end
  local r, t = b.r, b.t
  if b.req_rate > 0 then r = r - b.requests end
  if b.tok_rate > 0 then t = t - b.tokens end
  redis.call('HSET', key, 'r', fmt(r), 't', fmt(t), 'u', fmt(now))
  redis.call('PEXPIRE', key, b.idle)
end
"""

# KEYS: the buckets; ARGV: now override ('' = server clock), mode (check | acquire | all), then
# 7 values per bucket. check: waits only; acquire: each bucket on its own; all: every bucket or none.
# Returns per bucket {wait, requests left, tokens left} (as text: Lua numbers would be truncated).
DECIDE_LUA = (
    BUCKET_LUA
    + """
local now = clock(ARGV[1])
local mode = ARGV[2]
local out, buckets, clear = {}, {}, true
for i = 1, #KEYS do
  local a = {}
  for j = 1, 7 do a[j] = ARGV[2 + (i - 1) * 7 + j] end
  local b = bucket(KEYS[i], a, now)
  buckets[i] = b
  if b.wait > 0 then clear = false end
  if mode == 'acquire' and b.wait == 0 then debit(KEYS[i], b, now) end
end
if mode == 'all' and clear then
  for i = 1, #KEYS do debit(KEYS[i], buckets[i], now) end
end
for i = 1, #KEYS do
  local b = buckets[i]
  out[i] = {fmt(b.wait), fmt(b.r), fmt(b.t)}
end
return out
"""
)


class BucketParams:
    """One bucket's shape (as `SharedBucket`): capacities, refill rates per second, idle expiry."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None, burst: int | None = None) -> None:
        self.req_cap = float(burst or requests_per_minute or 0)
        self.req_rate = (requests_per_minute or 0) / 60.0
        self.tok_cap = float(tokens_per_minute or 0)
        self.tok_rate = (tokens_per_minute or 0) / 60.0
        # a bucket idle this long is full again: its key may expire
        idle = max(self.req_cap / self.req_rate if self.req_rate else 0.0, 60.0 if self.tok_rate else 0.0, 1.0)
        self.idle_ms = math.ceil(idle * 1000) + 1000

    def args(self, requests: int, tokens: int) -> list[str]:
        values = (self.req_cap, self.req_rate, self.tok_cap, self.tok_rate, requests, tokens)
        return [repr(float(v)) for v in values] + [str(self.idle_ms)]


class BucketScript:
    """The decision script, registered once per link (redis-py reloads it after a Redis restart)."""

    def __init__(self, link: RedisLink, clock: Callable[[], float] | None = None) -> None:
        self.link = link
        self.clock = clock  # None: the Redis server's clock (tests pass one to compare with the Cython oracle)
        self._script = link.client.register_script(DECIDE_LUA)

    def run(self, mode: str, buckets: Sequence[tuple[str, BucketParams, int, int]]) -> list[tuple[float, float, float]]:
        keys = [key for key, _, _, _ in buckets]
        args: list[str] = ["" if self.clock is None else repr(self.clock()), mode]
        for _, params, requests, tokens in buckets:
            args += params.args(requests, tokens)
        reply: Any = self.link.call(lambda _client: self._script(keys=keys, args=args))
        return [(float(w), float(r), float(t)) for w, r, t in reply]


class RedisBucket:
    """One rule's buckets: the `Limiter` protocol (`pipeline.ratelimits`) in Redis.

    `now` is ignored: the Redis server's clock decides (or the script's test clock)."""

    def __init__(self, script: BucketScript, prefix: str, rule: int, params: BucketParams) -> None:
        self.script = script
        self.prefix = f"{prefix}rl:{rule}:"
        self.params = params

    def key(self, key: str) -> str:
        return self.prefix + key

    def _one(self, mode: str, key: str, requests: int, tokens: int) -> tuple[float, float, float]:
        return self.script.run(mode, [(self.key(key), self.params, requests, tokens)])[0]

    def retry_after(self, key: str, requests: int, tokens: int, now: float) -> float:
        return self._one("check", key, requests, tokens)[0]

    def try_acquire(self, key: str, requests: int, tokens: int, now: float) -> float:
        """Debit when both buckets hold enough (0.0); else the wait and no debit. One script."""
        return self._one("acquire", key, requests, tokens)[0]

    def available(self, key: str, now: float) -> tuple[float, float]:
        _, requests, tokens = self._one("check", key, 0, 0)
        return (requests if self.params.req_rate else math.inf), (tokens if self.params.tok_rate else math.inf)


class RedisRateRules:
    """`[[rate_limiting.rules]]` in Redis: `limiter` builds each rule's `RedisBucket`
    (`RateLimitRules(limiter_factory=...)`), `decide` makes one request's decision across all
    rules a single script (`RateLimitRules(decide=...)`)."""

    def __init__(self, script: BucketScript, prefix: str) -> None:
        self.script = script
        self.prefix = prefix
        self._buckets: dict[int, RedisBucket] = {}

    def limiter(self, index: int, rule: RateLimitRule) -> RedisBucket:
        params = BucketParams(rule.max_requests_per_minute, rule.max_tokens_per_minute, rule.burst_size)
        bucket = self._buckets[index] = RedisBucket(self.script, self.prefix, index, params)
        return bucket

    def decide(self, checks: Sequence[tuple[int, str]], requests: int, tokens: int) -> list[float]:
        """Each (rule index, key)'s wait; all 0.0: every rule was debited, else none was."""
        if not checks:
            return []
        buckets = [(self._buckets[i].key(key), self._buckets[i].params, requests, tokens) for i, key in checks]
        return [wait for wait, _, _ in self.script.run("all", buckets)]


class RedisReplayStore:
    """`pipeline.replay.ReplayStore` in Redis: a digest is admitted by exactly one member.

    `check_and_remember` is one `SET key 1 NX PX ms`; the TTL is the retention `ReplayGuard`
    keeps (window, or the signed deadline capped at `max_hold_secs`), counted from this member's
    clock for the deadline only (a deadline is wall-clock time; the window is relative).
    No forced eviction: Redis holds every live digest (size it: docs/clustering.md), so
    `max_entries` is 0 and `forced_evictions` stays 0 (kept for the metrics' shape).
    `__len__` is approximate: the key count of the Redis database (`DBSIZE`, O(1)), which
    includes the buckets and the limits; give the executor a database of its own.
    """

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        window_secs: float = DEFAULT_WINDOW_SECS,
        *,
        max_hold_secs: float = DEFAULT_MAX_HOLD_SECS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.link = link
        self.prefix = f"{prefix}rp:"
        self.window_secs = float(window_secs)
        self.max_hold_secs = float(max_hold_secs)
        self._clock = clock or time.time
        self.replays = 0
        self.forced_evictions = 0
        self.max_entries = 0

    def _key(self, digest: bytes) -> bytes:
        return self.prefix.encode() + digest

    def check_and_remember(self, digest: bytes, now: float | None = None, deadline: int = 0) -> bool:
        now = self._clock() if now is None else now
        keep_until = now + self.window_secs
        if deadline:
            keep_until = max(keep_until, min(float(deadline), now + self.max_hold_secs))
        ttl_ms = max(1, math.ceil((keep_until - now) * 1000))
        key = self._key(digest)
        if self.link.call(lambda c: c.set(key, b"1", nx=True, px=ttl_ms)):
            return True
        self.replays += 1
        return False

    def seen(self, digest: bytes, now: float | None = None) -> bool:
        key = self._key(digest)
        return bool(self.link.call(lambda c: c.exists(key)))

    def forget(self, digest: bytes) -> bool:
        """Drop `digest`; when Redis cannot be asked it stays remembered (a verbatim retry is then
        refused as a replay until its TTL ends: the safe side), so this never raises."""
        key = self._key(digest)
        try:
            return bool(self.link.call(lambda c: c.delete(key)))
        except SharedStateUnavailable:  # logged by the link once per outage
            return False

    def __len__(self) -> int:
        if not self.link.reachable:
            return 0
        try:
            return int(self.link.call(lambda c: c.dbsize()))
        except SharedStateUnavailable:  # a scrape during an outage shows 0; the up gauge says why
            return 0


__all__ = [
    "BucketParams",
    "BucketScript",
    "REQUESTS_RULE",
    "RedisBucket",
    "RedisRateRules",
    "RedisReplayStore",
    "TOKENS_RULE",
    "key_prefix",
]
