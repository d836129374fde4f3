"""Tests of the Cython token-bucket rate limiter.

The oracle is an independent reference token bucket written here with exact
rational arithmetic (fractions.Fraction), so float rounding in the
implementation cannot hide in the expected values.
"""

from __future__ import annotations

import gc
import math
import sys
import time
import weakref
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


def assert_wait(got: float, expected) -> None:
    """The limiter's answer against the exact reference: 0 allowed, inf never, else the wait."""
    if expected == 0:
        assert got == 0.0
    elif expected == math.inf:
        assert got == math.inf
    else:
        assert got == pytest.approx(float(expected), rel=1e-9, abs=1e-6)


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
        assert_wait(got, expected)
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
    for _ in range(200):
        w = lim.try_acquire("p", requests=1, tokens=3_333, now=now)
        if w:
            assert w != math.inf
            now += w
            assert lim.try_acquire("p", requests=1, tokens=3_333, now=now) == 0.0


# ------------------------------------------------------------- memory bound


def test_flood_of_distinct_keys_keeps_len_bounded() -> None:
    lim = RateLimiter(60, tokens_per_minute=1000, burst=5, max_keys=1000)
    for _ in range(5):
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


def test_second_chance_eviction_order() -> None:
    # Slots are kept in the order they were placed; a key used since then gets
    # one more round (moved to the back, mark cleared) before it can be evicted.
    lim = RateLimiter(60, max_keys=4)
    for k in "abcd":
        lim.try_acquire(k, now=0.0)
    lim.try_acquire("b", now=0.0)
    lim.try_acquire("d", now=0.0)
    held = lambda: {k for k in "abcdefgh" if k in lim}  # noqa: E731
    lim.try_acquire("e", now=0.0)  # a: never used since placed -> evicted
    assert held() == set("bcde")
    lim.try_acquire("f", now=0.0)  # b: second chance (to the back); c evicted
    assert held() == set("bdef")
    lim.try_acquire("g", now=0.0)  # d: second chance; e (unused) evicted
    assert held() == set("bdfg")
    lim.try_acquire("h", now=0.0)  # order now b f d g, no marks: b goes
    assert held() == set("dfgh")
    assert len(lim) == 4


def test_eviction_when_every_key_was_used_takes_the_oldest() -> None:
    lim = RateLimiter(60, max_keys=3)
    for k in "abc":
        lim.try_acquire(k, now=0.0)
    for k in "cab":
        lim.try_acquire(k, now=0.0)
    lim.try_acquire("d", now=0.0)  # all marked: one full round, then a
    assert {k for k in "abcd" if k in lim} == set("bcd")


def test_idle_keys_behind_a_busy_first_key_are_forgotten() -> None:
    # The first key placed keeps being used; idle keys placed after it must not
    # be pinned behind it, and must not be forgotten before idle_seconds.
    lim = RateLimiter(60, burst=10, max_keys=100)  # idle_seconds = 10
    lim.try_acquire("hot", now=0.0)
    lim.try_acquire("a", now=0.5)
    lim.try_acquire("b", now=0.5)
    for t in range(1, 11):
        lim.try_acquire("hot", now=float(t))
        assert "a" in lim and "b" in lim  # idle for less than 10 s
    for t in (11.0, 12.0):
        lim.try_acquire("hot", now=t)
    assert "a" not in lim and "b" not in lim
    assert "hot" in lim and len(lim) == 1


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


def test_amounts_accept_numbers_like_float_does() -> None:
    class Half:
        def __float__(self) -> float:
            return 0.5

    class Two(int):
        pass

    lim = RateLimiter(60, tokens_per_minute=600, burst=10)
    cases = [1, 1.0, True, Two(2), Fraction(3, 2), Half(), 0, False, 2.5]
    for i, v in enumerate(cases):
        key = f"k{i}"
        assert lim.try_acquire(key, v, v, 0.0) == 0.0  # positional
        assert lim.available(key, now=0.0) == pytest.approx((10 - float(v), 600 - float(v)))
        assert lim.try_acquire(key, requests=v, tokens=v, now=0.0) == 0.0  # keywords
        assert lim.available(key, now=0.0) == pytest.approx((10 - 2 * float(v), 600 - 2 * float(v)))
    # a big int is fine as long as it is a float; larger ones overflow like float() does
    assert lim.try_acquire("big", requests=0, tokens=10**300, now=0.0) == math.inf
    with pytest.raises(OverflowError):
        lim.try_acquire("big", tokens=10**400, now=0.0)
    for bad in ("1", None, [1]):
        with pytest.raises(TypeError):
            lim.try_acquire("k", requests=bad)
        with pytest.raises(TypeError):
            lim.retry_after("k", tokens=bad)
    for bad in (-1, -0.5, float("nan"), -(10**30)):
        with pytest.raises(ValueError):
            lim.try_acquire("k", requests=bad)
        with pytest.raises(ValueError):
            lim.try_acquire("k", tokens=bad)
        with pytest.raises(ValueError):
            lim.retry_after("k", bad, 0)
    with pytest.raises(TypeError):
        lim.try_acquire("k", 1, 0, 0.0, 5)  # too many arguments
    with pytest.raises(TypeError):
        lim.try_acquire("k", nope=1)


def test_now_accepts_ints_and_other_numbers() -> None:
    lim = RateLimiter(60, burst=1)
    assert lim.try_acquire("k", now=10) == 0.0
    assert lim.try_acquire("k", now=Fraction(21, 2)) == pytest.approx(0.5)
    assert lim.try_acquire("k", now=11) == 0.0
    assert lim.retry_after("k", now=True) == pytest.approx(1.0)  # earlier: no refill
    clock_lim = RateLimiter(60, burst=1, clock=lambda: 7)  # int from the clock
    assert clock_lim.try_acquire("k") == 0.0
    assert clock_lim.try_acquire("k") == pytest.approx(1.0)


def test_repeated_refusals_report_the_current_wait() -> None:
    # Identical refusals may share one float object; any change in the wait
    # must still be reported exactly.
    lim = RateLimiter(60, tokens_per_minute=600, burst=1)
    assert lim.try_acquire("a", now=0.0) == 0.0
    waits = [lim.try_acquire("a", now=0.0) for _ in range(3)]
    assert waits == [1.0, 1.0, 1.0] and all(type(w) is float for w in waits)
    assert lim.try_acquire("a", now=0.25) == 0.75
    assert lim.retry_after("a", now=0.5) == 0.5
    assert lim.try_acquire("a", now=0.25) == 0.75
    assert lim.try_acquire("b", requests=1, tokens=600, now=0.0) == 0.0
    assert lim.try_acquire("b", requests=0, tokens=60, now=0.0) == pytest.approx(6.0)
    assert lim.try_acquire("a", now=0.25) == 0.75


def test_thousands_of_keys_keep_their_own_buckets() -> None:
    n = 5000  # slot numbers and table sizes far beyond the first allocation
    lim = RateLimiter(60, tokens_per_minute=6000, burst=3, max_keys=n)
    keys = [f"peer-{i}" for i in range(n)]
    for i, k in enumerate(keys):
        assert lim.try_acquire(k, requests=i % 3 + 1, tokens=i % 7, now=1.0) == 0.0
    assert len(lim) == n
    for i, k in enumerate(keys):
        # equal strings built anew find the same bucket
        other = "peer-" + str(i)
        assert other is not k and other in lim
        assert lim.available(other, now=1.0) == (3 - (i % 3 + 1), 6000 - i % 7)
    assert "peer-5000" not in lim
    # every key has been used since it was placed: the next new key costs one
    # round of second chances and then evicts the oldest
    assert lim.try_acquire("newcomer", now=1.0) == 0.0
    assert "peer-0" not in lim and "peer-1" in lim and len(lim) == n
    for i in range(1, n, 97):
        assert lim.reset(keys[i]) is True
        assert keys[i] not in lim
    assert len(lim) == n - len(range(1, n, 97))
    lim.clear()
    assert len(lim) == 0 and not any(k in lim for k in keys[:50])
    assert lim.try_acquire("peer-1", requests=3, now=2.0) == 0.0
    assert lim.try_acquire("peer-1", now=2.0) == pytest.approx(1.0)


def test_keys_compare_like_dict_keys() -> None:
    lim = RateLimiter(60, burst=3)
    assert lim.try_acquire(1, now=0.0) == 0.0
    assert lim.try_acquire(1.0, now=0.0) == 0.0  # == 1 and same hash: same bucket
    assert lim.try_acquire(True, now=0.0) == 0.0
    assert lim.try_acquire(1, now=0.0) > 0.0
    assert lim.try_acquire(b"1", now=0.0) == 0.0  # different key
    assert lim.try_acquire(("ip", 4), now=0.0) == 0.0
    assert ("ip", 4) in lim and ("ip", 6) not in lim
    nan = float("nan")
    assert lim.try_acquire(nan, requests=3, now=0.0) == 0.0
    assert lim.try_acquire(nan, now=0.0) > 0.0  # same object: same key, as in a dict
    assert len(lim) == 4
    with pytest.raises(TypeError):
        lim.try_acquire([1, 2])
    with pytest.raises(TypeError):
        [1] in lim  # noqa: B015


class Colliding:
    """Hashable key whose hash is shared by every instance: all land in one probe run."""

    def __init__(self, name: str, on_eq=None) -> None:
        self.name = name
        self.on_eq = on_eq

    def __hash__(self) -> int:
        return 12345

    def __eq__(self, other: object) -> bool:
        if self.on_eq is not None:
            self.on_eq()
        return isinstance(other, Colliding) and other.name == self.name


def test_keys_with_equal_hashes_stay_apart() -> None:
    lim = RateLimiter(60, burst=2, max_keys=50)
    keys = [Colliding(f"c{i}") for i in range(40)]
    for k in keys:
        assert lim.try_acquire(k, requests=2, now=0.0) == 0.0
    for i in range(0, 40, 3):
        assert lim.reset(keys[i]) is True  # holes in the middle of the run
    for i in range(len(keys)):
        fresh = Colliding(f"c{i}")
        assert (fresh in lim) == (i % 3 != 0)
        assert lim.try_acquire(fresh, now=0.0) == (0.0 if i % 3 == 0 else pytest.approx(1.0))


def test_key_eq_that_changes_the_limiter_does_not_corrupt_it() -> None:
    lim = RateLimiter(60, burst=5, max_keys=10)
    calls = []

    def meddle() -> None:
        calls.append(1)
        if len(calls) <= 3:  # evict and insert while the lookup is comparing
            lim.reset("plain")
            lim.try_acquire(f"extra{len(calls)}", now=0.0)

    stored = Colliding("x", on_eq=meddle)  # the stored key's __eq__ runs first
    lim.try_acquire("plain", now=0.0)
    assert lim.try_acquire(stored, now=0.0) == 0.0
    probe = Colliding("x")
    assert lim.try_acquire(probe, now=0.0) == 0.0  # found the stored key's bucket
    assert len(calls) == 4 and "plain" not in lim  # three restarts, then a stable probe
    assert lim.available(stored, now=0.0)[0] == pytest.approx(3.0)
    assert len(lim) == 1 + len([k for k in ("extra1", "extra2", "extra3") if k in lim])


class Tracked:
    __slots__ = ("name", "__weakref__")

    def __init__(self, name: str) -> None:
        self.name = name

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tracked) and other.name == self.name


def test_forgotten_keys_are_released() -> None:
    lim = RateLimiter(60, burst=1, max_keys=3)
    made = [Tracked(f"t{i}") for i in range(8)]
    refs = [weakref.ref(k) for k in made]
    for k in made[:3]:
        lim.try_acquire(k, now=0.0)
    lim.reset(made[0])
    for k in made[3:5]:
        lim.try_acquire(k, now=0.0)  # the second one evicts t1 for room
    for k in made[5:]:
        lim.try_acquire(k, now=100.0)  # idle sweep forgets the rest
    del made, k
    gc.collect()
    alive = [r() is not None for r in refs]
    assert alive[:5] == [False] * 5  # reset, evicted for room, forgotten when idle
    assert sum(alive) == len(lim) == 3
    lim.clear()
    gc.collect()
    assert all(r() is None for r in refs)
    last = Tracked("last")
    ref = weakref.ref(last)
    lim.try_acquire(last, now=0.0)
    del last, lim
    gc.collect()
    assert ref() is None  # freeing the limiter releases its keys


def test_string_keys_references_are_balanced() -> None:
    lim = RateLimiter(60, max_keys=2)
    key = "".join(["refcount", "-key"])
    before = sys.getrefcount(key)
    lim.try_acquire(key, now=0.0)
    assert sys.getrefcount(key) == before + 1
    for i in range(10):
        lim.try_acquire(f"other{i}", now=0.0)
    assert key not in lim
    assert sys.getrefcount(key) == before
    lim.try_acquire(key, now=0.0)
    lim.reset(key)
    assert sys.getrefcount(key) == before


def test_a_key_finalizer_calling_the_limiter_sees_a_consistent_state() -> None:
    lim = RateLimiter(60, max_keys=1)
    seen = []

    class Calls:
        def __hash__(self) -> int:
            return 7

        def __del__(self) -> None:
            seen.append(lim.try_acquire("from-del", now=0.0))

    lim.try_acquire(Calls(), now=0.0)
    lim.try_acquire("next", now=0.0)  # evicts the Calls key for room
    assert seen == [0.0]
    assert len(lim) == 1


class ClockModel:
    """Exact model of which keys a limiter holds: placement order, a "used
    since placed" mark, idle sweeping of the two oldest placements, and second
    chance when a new key needs room.  Buckets themselves come from RefLimiter
    (a forgotten key starts over as a fresh bucket)."""

    def __init__(self, ref: RefLimiter, max_keys: int, idle: Fraction) -> None:
        self.ref = ref
        self.max_keys = max_keys
        self.idle = idle
        self.order: list[str] = []
        self.meta: dict[str, list] = {}  # key -> [last, placed, used]

    def _evict(self, key: str) -> None:
        self.order.remove(key)
        del self.meta[key]
        self.ref.state.pop(key, None)

    def _replace(self, key: str, now: Fraction) -> None:
        self.order.remove(key)
        self.order.append(key)
        self.meta[key][1:] = [now, False]

    def touch(self, key: str, now: Fraction, hopeless: bool) -> None:
        if self.order and now - self.meta[self.order[0]][1] >= self.idle:
            for _ in range(2):
                if not self.order or now - self.meta[self.order[0]][1] < self.idle:
                    break
                head = self.order[0]
                if now - self.meta[head][0] >= self.idle:
                    self._evict(head)
                else:
                    self._replace(head, now)
        if key in self.meta:
            m = self.meta[key]
            m[2] = True
            m[0] = max(m[0], now)
        elif not hopeless:
            while len(self.order) >= self.max_keys:
                head = self.order[0]
                if self.meta[head][2]:
                    self._replace(head, now)
                else:
                    self._evict(head)
            self.order.append(key)
            self.meta[key] = [now, now, False]


@settings(max_examples=400, deadline=None)
@given(
    rpm=st.integers(1, 600),
    tpm=st.one_of(st.none(), st.none(), st.integers(1, 6000)),
    burst=st.one_of(st.none(), st.integers(1, 12)),
    max_keys=st.integers(1, 5),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["acquire"] * 6 + ["peek", "reset"]),
            st.sampled_from("abcdefg"),
            # dt in 1/64 s: mostly small steps, sometimes long or backwards
            st.one_of(st.sampled_from([0, 0, 1, 16, 64]), st.integers(-64, 64 * 20)),
            st.integers(0, 14),
            st.integers(0, 7000),
        ),
        min_size=20,
        max_size=120,
    ),
)
def test_matches_model_with_evictions(rpm, tpm, burst, max_keys, ops) -> None:
    lim = RateLimiter(rpm, tokens_per_minute=tpm, burst=burst, max_keys=max_keys)
    ref = RefLimiter(rpm, tpm, burst)
    model = ClockModel(ref, max_keys, Fraction(lim.idle_seconds))
    now = Fraction(1000)
    for kind, key, dt, req, tok in ops:
        now += Fraction(dt, 64)
        tok = tok if tpm else 0
        if kind == "reset":
            assert lim.reset(key) is (key in model.meta)
            if key in model.meta:
                model._evict(key)
        elif kind == "peek":
            got = lim.retry_after(key, req, tok, float(now))
            held = (ref.rcap, ref.tcap)
            if key in model.meta:  # refilled up to now, without touching the state
                r, t, last = ref.state[key]
                dt_s = max(now - last, Fraction(0))
                held = (min(ref.rcap, r + dt_s * ref.rpm / 60), min(ref.tcap, t + dt_s * ref.tpm / 60))
            assert lim.available(key, float(now)) == pytest.approx(
                (float(held[0]) if ref.rpm else math.inf, float(held[1]) if ref.tpm else math.inf), rel=1e-9, abs=1e-6
            )
            assert got >= 0.0
        else:
            hopeless = (req > ref.rcap) or (bool(ref.tpm) and tok > ref.tcap)
            model.touch(key, now, hopeless)
            if key in ref.state:
                ref._bucket(key, now)  # any call on a held key refills it, even a hopeless one
            expected = ref.acquire(key, req, tok, now)
            got = lim.try_acquire(key, req, tok, float(now))
            assert_wait(got, expected)
        assert {k for k in "abcdefg" if k in lim} == set(model.meta)
        assert len(lim) == len(model.meta) <= max_keys


@pytest.mark.parametrize("spread", [1, 1024, 2**32, -(2**61)])
def test_table_churn_matches_a_set(spread: int) -> None:
    # Inserts and removals in random order (int keys hash to themselves, so
    # regular strides stress where keys land) must keep exactly the right keys.
    import random

    rnd = random.Random(spread)
    lim = RateLimiter(60, max_keys=10_000)
    held: set[int] = set()
    universe = [i * spread for i in range(3000)]
    for step in range(30_000):
        k = rnd.choice(universe)
        if rnd.random() < 0.45:
            assert lim.reset(k) is (k in held)
            held.discard(k)
        else:
            assert lim.try_acquire(k, now=0.0) == 0.0
            held.add(k)
        if step % 1000 == 0:
            assert len(lim) == len(held)
            assert all((k in lim) == (k in held) for k in universe[::7])
    assert len(lim) == len(held)
    assert all((k in lim) == (k in held) for k in universe)
