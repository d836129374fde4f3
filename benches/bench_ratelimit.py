"""Rate limiter: Cython RateLimiter vs a plain-Python token-bucket dict.

Each benchmark round runs 1000 ``try_acquire`` calls so the fixture's own
per-call overhead does not dominate; divide the reported times by 1000 for
the per-call cost.  The ``floor`` entry is the same loop calling a
RateLimiter that returns at once (no clock, no table): subtract it from both
sides for the cost of the limiting work itself.  Targets: <= 200 ns per call and >= 10x the plain-Python
reference.

    PYTHONPATH=python pytest benches/bench_ratelimit.py --benchmark-only -q
"""

from __future__ import annotations

import time

import pytest

from lloom_executor._fast.ratelimit import RateLimiter

CALLS = 1000


class PyTokenBucket:
    """Plain-Python reference doing the same work: a dict of [req, tok, last]
    lists, the same refill/cap/debit math, and a simple bound on keys
    (oldest-inserted key dropped when full)."""

    def __init__(self, rpm, tpm=None, burst=None, max_keys=100_000, clock=time.monotonic):
        self.rr = rpm / 60.0
        self.tr = (tpm or 0) / 60.0
        self.rcap = float(burst if burst is not None else rpm)
        self.tcap = float(tpm or 0)
        self.max_keys = max_keys
        self.clock = clock
        self.buckets: dict[str, list[float]] = {}

    def try_acquire(self, key, requests=1, tokens=0, now=None):
        if now is None:
            now = self.clock()
        b = self.buckets.get(key)
        if b is None:
            if requests > self.rcap or (self.tr and tokens > self.tcap):
                return float("inf")
            if len(self.buckets) >= self.max_keys:
                del self.buckets[next(iter(self.buckets))]
            b = self.buckets[key] = [self.rcap, self.tcap, now]
        else:
            el = now - b[2]
            if el > 0:
                b[0] = min(self.rcap, b[0] + el * self.rr)
                if self.tr:
                    b[1] = min(self.tcap, b[1] + el * self.tr)
                b[2] = now
        wait = 0.0
        if requests > b[0]:
            wait = (requests - b[0]) / self.rr
        if self.tr and tokens > b[1]:
            wait = max(wait, (tokens - b[1]) / self.tr)
        if wait > 1e-6:
            return wait
        b[0] -= requests
        if self.tr:
            b[1] -= tokens
        return 0.0


def _floor(*_args, **_kwargs):
    """Call-overhead floor: an unlimited RateLimiter returns 0.0 before reading
    the clock or the table, so timing it measures only the loop plus the
    Python->Cython method call that every implementation pays."""
    return RateLimiter(None)


def _impls():
    return [("cython", RateLimiter), ("python", PyTokenBucket), ("floor", _floor)]


@pytest.mark.parametrize("name,cls", _impls())
def test_hot_key_mostly_refused(benchmark, name, cls):
    """One peer hammering: after its burst, almost every call is a refusal."""
    benchmark.group = "ratelimit: 1000 calls, one hot key (refusals)"
    lim = cls(60, 100_000, burst=20)
    acquire = lim.try_acquire

    def run():
        for _ in range(CALLS):
            acquire("peer-hot")

    benchmark(run)


@pytest.mark.parametrize("name,cls", _impls())
def test_many_keys_allowed(benchmark, name, cls):
    """1000 active peers, each call allowed and debited (requests + tokens)."""
    benchmark.group = "ratelimit: 1000 calls, 1000 keys (allowed)"
    lim = cls(1e9, 1e12)
    keys = [f"12D3KooWpeer{i:06d}" for i in range(CALLS)]
    acquire = lim.try_acquire

    def run():
        for k in keys:
            acquire(k, 1, 250)

    benchmark(run)


@pytest.mark.parametrize("name,cls", _impls())
def test_flood_of_new_keys(benchmark, name, cls):
    """Never-seen keys with the table full: every call evicts one key."""
    benchmark.group = "ratelimit: 1000 calls, new keys, table full (eviction)"
    lim = cls(60, 100_000, burst=20, max_keys=1000)
    pools = [[f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n * CALLS, (n + 1) * CALLS)] for n in range(64)]
    state = [0]

    def run():
        keys = pools[state[0] % 64]
        state[0] += 1
        for k in keys:
            acquire(k)

    acquire = lim.try_acquire
    benchmark(run)
