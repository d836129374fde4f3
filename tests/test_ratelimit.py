"""Tests of the Cython token-bucket rate limiter.

The oracle is an independent reference token bucket written here with exact
rational arithmetic (fractions.Fraction), so float rounding in the
implementation cannot hide in the expected values.
"""
from __future__ import annotations

import math
import time
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lloom_executor._fast.ratelimit import RateLimiter, monotonic

SETTINGS = settings(max_examples=150, deadline=None)


class RefLimiter:
    """Exact reference: per key, request + token buckets refilled linearly, capped.

    Request capacity = burst (default rpm), token capacity = tpm; allowed iff
    both hold enough, then both are debited; a refusal debits nothing and the
    wait is the larger of the two deficits divided by its refill rate.
    """

    def __init__(self, rpm: int | None, tpm: int | None = None, burst: int | None = None):
        self.rpm = Fraction(rpm or 0)
        self.tpm = Fraction(tpm or 0)
        self.rcap = Fraction(burst) if burst is not None else self.rpm
        self.tcap = self.tpm
        self.state: dict[str, list[Fraction]] = {}

    def _bucket(self, key: str, now: Fraction) -> list[Fraction]:
        if key not in self.state:
            self.state[key] = [self.rcap, self.tcap, now]
        b = self.state[key]
        if now > b[2]:
            dt = now - b[2]
            b[0] = min(self.rcap, b[0] + dt * self.rpm / 60)
            b[1] = min(self.tcap, b[1] + dt * self.tpm / 60)
            b[2] = now
        return b

    def acquire(self, key: str, req: int, tok: int, now: Fraction) -> Fraction | float:
        if (self.rpm and req > self.rcap) or (self.tpm and tok > self.tcap):
            return math.inf
        b = self._bucket(key, now)
        wait = Fraction(0)
        if self.rpm and req > b[0]:
            wait = max(wait, (req - b[0]) / (self.rpm / 60))
        if self.tpm and tok > b[1]:
            wait = max(wait, (tok - b[1]) / (self.tpm / 60))
        if wait:
            return wait
        if self.rpm:
            b[0] -= req
        if self.tpm:
            b[1] -= tok
        return Fraction(0)


# ------------------------------------------------------------------ refill

@SETTINGS
@given(
    rpm=st.integers(1, 6000),
    burst=st.integers(1, 200),
    ticks=st.integers(0, 64 * 600),  # wait, in 1/64 s
)
def test_refill_allowance_is_min_capacity_rate_times_t(rpm: int, burst: int, ticks: int) -> None:
    t = Fraction(ticks, 64)
    allowance = min(Fraction(burst), Fraction(rpm, 60) * t)
    lim = RateLimiter(rpm, burst=burst, max_keys=10)
    for _ in range(burst):
        assert lim.try_acquire("k", now=100.0) == 0.0
    assert lim.try_acquire("k", now=100.0) > 0.0  # drained
    later = 100.0 + float(t)
    granted = 0
    while lim.try_acquire("k", now=later) == 0.0:
        granted += 1
        assert granted <= burst
    assert granted == math.floor(allowance)


@SETTINGS
@given(
    tpm=st.integers(1, 6000),
    ticks=st.integers(0, 64 * 120),
)
def test_token_refill_matches_min_capacity_rate_times_t(tpm: int, ticks: int) -> None:
    t = Fraction(ticks, 64)
    lim = RateLimiter(None, tokens_per_minute=tpm, max_keys=10)
    assert lim.try_acquire("k", requests=0, tokens=tpm, now=5.0) == 0.0  # drain
    allowance = min(Fraction(tpm), Fraction(tpm, 60) * t)
    now = 5.0 + float(t)
    k = math.floor(allowance)
    assert lim.retry_after("k", requests=0, tokens=k, now=now) == 0.0
    if k + 1 <= tpm:
        expected_wait = (k + 1 - allowance) / Fraction(tpm, 60)
        got = lim.retry_after("k", requests=0, tokens=k + 1, now=now)
        assert got == pytest.approx(float(expected_wait), rel=1e-9, abs=1e-6)
    req, tok = lim.available("k", now=now)
    assert req == math.inf
    assert tok == pytest.approx(float(allowance), rel=1e-9, abs=1e-6)


# ------------------------------------------------------------------ edges

@pytest.mark.parametrize("rpm,burst", [(60, 20), (60, None), (1, 1), (600, 5), (30, 45)])
def test_burst_edge_exactly_burst_then_wait_one_interval(rpm: int, burst: int | None) -> None:
    lim = RateLimiter(rpm, burst=burst)
    cap = burst if burst is not None else rpm
    assert all(lim.try_acquire("peer", now=0.0) == 0.0 for _ in range(cap))
    wait = lim.try_acquire("peer", now=0.0)
    assert wait == pytest.approx(60 / rpm)
    assert lim.try_acquire("peer", now=wait) == 0.0
    assert lim.try_acquire("peer", now=wait) > 0.0


def test_tokens_per_minute_edges() -> None:
    lim = RateLimiter(None, tokens_per_minute=1000)
    assert lim.try_acquire("a", requests=0, tokens=999, now=0.0) == 0.0  # just under
    assert lim.try_acquire("b", requests=0, tokens=1000, now=0.0) == 0.0  # at
    assert lim.try_acquire("c", requests=0, tokens=1001, now=0.0) == math.inf  # over: never
    assert "c" not in lim  # a hopeless request does not take a slot
    assert lim.try_acquire("a", requests=0, tokens=1, now=0.0) == 0.0
    assert lim.try_acquire("a", requests=0, tokens=1, now=0.0) == pytest.approx(60 / 1000)
    assert lim.try_acquire("b", requests=0, tokens=1, now=0.0) == pytest.approx(60 / 1000)


def test_request_larger_than_burst_is_never_allowed() -> None:
    lim = RateLimiter(60, burst=3)
    assert lim.try_acquire("a", requests=4, now=0.0) == math.inf
    assert lim.retry_after("a", requests=4, now=0.0) == math.inf
    assert lim.try_acquire("a", requests=3, now=0.0) == 0.0
    assert lim.try_acquire("a", requests=4, now=1000.0) == math.inf


def test_both_limits_refusal_debits_nothing() -> None:
    lim = RateLimiter(60, tokens_per_minute=100, burst=5)
    assert lim.try_acquire("k", requests=1, tokens=90, now=0.0) == 0.0
    # requests are fine but tokens are short: 20 wanted, 10 held -> 10/(100/60) s
    assert lim.try_acquire("k", requests=1, tokens=20, now=0.0) == pytest.approx(6.0)
    assert lim.available("k", now=0.0) == pytest.approx((4.0, 10.0))


@SETTINGS
@given(
    rpm=st.integers(1, 6000),
    tpm=st.one_of(st.none(), st.integers(1, 6000)),
    burst=st.one_of(st.none(), st.integers(1, 50)),
    ops=st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.integers(0, 64 * 30),  # dt in 1/64 s
            st.integers(0, 4),
            st.integers(0, 2000),
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_matches_reference_and_retry_after_is_exact(rpm, tpm, burst, ops) -> None:
    lim = RateLimiter(rpm, tokens_per_minute=tpm, burst=burst)
    ref = RefLimiter(rpm, tpm, burst)
    now = Fraction(1000)
    for key, dt, req, tok in ops:
        now += Fraction(dt, 64)
        tok = tok if tpm else 0
        expected = ref.acquire(key, req, tok, now)
        peek = lim.retry_after(key, requests=req, tokens=tok, now=float(now))
        got = lim.try_acquire(key, requests=req, tokens=tok, now=float(now))
        assert peek == got or peek == pytest.approx(got)
        if expected == 0:
            assert got == 0.0
        elif expected == math.inf:
            assert got == math.inf
        else:
            assert got == pytest.approx(float(expected), rel=1e-9, abs=1e-6)
    # A refusal's wait is exact: acquiring at now + wait succeeds.
    key, _, req, tok = ops[-1]
    tok = tok if tpm else 0
    wait = lim.retry_after(key, requests=req, tokens=tok, now=float(now))
    assume(wait != math.inf)
    if wait > 1e-3:
        assert lim.try_acquire(key, requests=req, tokens=tok, now=float(now) + wait - 1e-3) > 0.0
    assert lim.try_acquire(key, requests=req, tokens=tok, now=float(now) + wait) == 0.0


def test_retry_after_large_monotonic_values() -> None:
    # Realistic clock values (days of uptime) lose precision in now + wait;
    # the limiter must still accept the retry at exactly now + wait.
    lim = RateLimiter(7, tokens_per_minute=99_991, burst=3)
    now = 987_654.321
    for i in range(200):
        w = lim.try_acquire("p", requests=1, tokens=3_333, now=now)
        if w:
            assert w != math.inf
            now += w
            assert lim.try_acquire("p", requests=1, tokens=3_333, now=now) == 0.0


# ------------------------------------------------------------- memory bound

def test_flood_of_distinct_keys_keeps_len_bounded() -> None:
    lim = RateLimiter(60, tokens_per_minute=1000, burst=5, max_keys=1000)
    for i in range(5):
        lim.try_acquire("victim", now=0.0)
    assert lim.try_acquire("victim", now=0.0) > 0.0
    for i in range(100_000):
        assert lim.try_acquire(f"flood-{i}", now=0.001) == 0.0  # never refused for being new
        if i % 997 == 0:
            assert len(lim) <= 1000
    assert len(lim) == 1000
    assert "victim" not in lim
    # The evicted key comes back exactly like a fresh bucket: burst, no more.
    granted = sum(lim.try_acquire("victim", now=0.002) == 0.0 for _ in range(20))
    fresh = RateLimiter(60, tokens_per_minute=1000, burst=5, max_keys=1000)
    granted_fresh = sum(fresh.try_acquire("x", now=0.002) == 0.0 for _ in range(20))
    assert granted == granted_fresh == 5


def test_lru_keeps_recently_used_keys() -> None:
    lim = RateLimiter(60, max_keys=3)
    for k in "abc":
        lim.try_acquire(k, now=0.0)
    lim.try_acquire("a", now=0.0)  # a is now the most recently used
    lim.try_acquire("d", now=0.0)  # evicts b (least recently used)
    assert "b" not in lim and {"a", "c", "d"} <= {k for k in "abcd" if k in lim}
    assert len(lim) == 3


def test_idle_buckets_are_forgotten_only_once_full() -> None:
    lim = RateLimiter(60, burst=10, max_keys=100)  # full refill: 10 s
    assert lim.idle_seconds == pytest.approx(10.0)
    for k in ("a", "b", "c"):
        lim.try_acquire(k, requests=10, now=0.0)
    lim.try_acquire("z", now=9.0)
    assert len(lim) == 4  # not yet refilled: must be kept
    lim.try_acquire("z", now=10.0)
    lim.try_acquire("z", now=10.0)
    assert "a" not in lim and "b" not in lim
    lim.try_acquire("z", now=10.0)
    assert len(lim) == 1


def test_idle_seconds_is_raised_to_full_refill_time() -> None:
    lim = RateLimiter(60, tokens_per_minute=600, burst=30, idle_seconds=1.0)
    assert lim.idle_seconds == pytest.approx(60.0)  # max(30/1, 600/10)
    assert RateLimiter(60, idle_seconds=3600).idle_seconds == 3600.0


def test_reset_and_clear() -> None:
    lim = RateLimiter(60, burst=2)
    lim.try_acquire("a", requests=2, now=0.0)
    assert lim.try_acquire("a", now=0.0) > 0
    assert lim.reset("a") is True
    assert lim.reset("a") is False
    assert lim.try_acquire("a", requests=2, now=0.0) == 0.0
    lim.try_acquire("b", now=0.0)
    lim.clear()
    assert len(lim) == 0


# ------------------------------------------------------------- clock, config

def test_injected_clock_is_used() -> None:
    t = [50.0]
    lim = RateLimiter(60, burst=1, clock=lambda: t[0])
    assert lim.try_acquire("k") == 0.0
    assert lim.try_acquire("k") == pytest.approx(1.0)
    t[0] += 0.5
    assert lim.retry_after("k") == pytest.approx(0.5)
    t[0] += 0.5
    assert lim.try_acquire("k") == 0.0


def test_default_clock_is_monotonic_seconds() -> None:
    # CLOCK_MONOTONIC_COARSE: same epoch as time.monotonic(), updated once per
    # kernel tick, so it lags by a few ms (more on a busy VM); 50 ms is far
    # below anything a per-minute limit can notice.
    a = time.monotonic()
    b = monotonic()
    c = time.monotonic()
    assert a - 0.05 <= b <= c
    readings = [monotonic() for _ in range(1000)]
    assert readings == sorted(readings)
    lim = RateLimiter(60, burst=1)
    assert lim.try_acquire("k") == 0.0
    w = lim.try_acquire("k")
    assert 0.9 < w <= 1.0


def test_time_going_backwards_does_not_refill() -> None:
    lim = RateLimiter(60, burst=1)
    assert lim.try_acquire("k", now=10.0) == 0.0
    assert lim.try_acquire("k", now=5.0) == pytest.approx(1.0)
    assert lim.try_acquire("k", now=11.0) == 0.0


def test_unlimited_dimensions() -> None:
    lim = RateLimiter(None, tokens_per_minute=0)
    assert all(lim.try_acquire("k", requests=10**6, tokens=10**9, now=0.0) == 0.0 for _ in range(10))
    assert len(lim) == 0
    lim = RateLimiter(0, tokens_per_minute=100)
    assert lim.try_acquire("k", requests=10**6, tokens=100, now=0.0) == 0.0
    assert lim.available("k", now=0.0) == (math.inf, 0.0)
    assert lim.requests_per_minute is None and lim.burst is None
    assert lim.tokens_per_minute == 100 and lim.token_capacity == 100


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(requests_per_minute=-1),
        dict(requests_per_minute=60, tokens_per_minute=-5),
        dict(requests_per_minute=60, max_keys=0),
        dict(requests_per_minute=60, max_keys=-3),
        dict(requests_per_minute=60, max_keys=1.5),
        dict(requests_per_minute=60, burst=0),
        dict(requests_per_minute=60, burst=-2),
        dict(requests_per_minute=None, burst=5),
        dict(requests_per_minute=float("nan")),
        dict(requests_per_minute=float("inf")),
        dict(requests_per_minute="fast"),
        dict(requests_per_minute=60, idle_seconds=-1),
        dict(requests_per_minute=60, clock=42),
    ],
)
def test_invalid_parameters_raise_value_error(kwargs) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)


def test_negative_amounts_raise_value_error() -> None:
    lim = RateLimiter(60)
    with pytest.raises(ValueError):
        lim.try_acquire("k", requests=-1)
    with pytest.raises(ValueError):
        lim.try_acquire("k", tokens=-1)
    with pytest.raises(ValueError):
        lim.retry_after("k", requests=-1)
