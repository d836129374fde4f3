"""Admission components: rate-limit rules, the replay guard and the content filter.

Configs go through the real TOML parser (`parse_config`), clocks are injected
(no sleeping), and the replay guard is checked against a deliberately naive
model (a list scanned in full on every call) by hypothesis.
"""

from __future__ import annotations

import logging
import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lloom_executor import _native
from lloom_executor.config import Config, parse_config
from lloom_executor.pipeline.content_filter import PROMPT_BLOCKED, RESPONSE_BLOCKED, ContentFilter
from lloom_executor.pipeline.ratelimits import RateLimitRules, format_wait
from lloom_executor.pipeline.replay import ReplayGuard, ReplayStore, replay_key


def config_from(text: str) -> Config:
    config, report = parse_config(tomllib.loads(text))
    assert not report.errors, report.errors
    return config


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


MANUAL_RULES = """
[rate_limiting]
enabled = true

[[rate_limiting.rules]]
identifier = "peer_id"
max_requests_per_minute = 60
max_tokens_per_minute = 100000

[[rate_limiting.rules]]
identifier = "ip_address"
max_requests_per_minute = 100
burst_size = 20
"""


def manual_rules(clock: Clock) -> RateLimitRules:
    return RateLimitRules(config_from(MANUAL_RULES).rate_limiting, clock=clock)


# -- rate limits ------------------------------------------------------------------------
def test_peer_request_limit_at_its_edge() -> None:
    clock = Clock()
    rules = manual_rules(clock)
    for i in range(60):  # distinct IPs, so only the peer rule binds
        assert rules.check("peerA", f"10.0.0.{i}").allowed, i
    refused = rules.check("peerA", "10.0.1.1")
    assert not refused.allowed
    assert refused.retry_after_secs == pytest.approx(1.0)
    assert refused.rule_description == "60 requests/minute and 100000 tokens/minute per peer_id"
    assert refused.reason == "rate limit: 60 requests/minute per peer_id exceeded; retry in 1.0 s"
    assert rules.check("peerB", "10.0.1.2").allowed  # other peers unaffected
    clock.t += 0.999
    late = rules.check("peerA", "10.0.1.3")
    assert not late.allowed and late.reason.endswith("retry in 0.1 s")
    clock.t += 0.001
    assert rules.check("peerA", "10.0.1.4").allowed
    assert not rules.check("peerA", "10.0.1.5").allowed


def test_ip_burst_at_its_edge() -> None:
    clock = Clock()
    rules = manual_rules(clock)
    for i in range(20):
        assert rules.check(f"peer{i}", "192.0.2.7").allowed, i
    refused = rules.check("peer-new", "192.0.2.7")
    assert not refused.allowed
    assert refused.retry_after_secs == pytest.approx(0.6)  # 100/minute refills one every 0.6 s
    assert refused.reason == "rate limit: 100 requests/minute per ip_address exceeded; retry in 0.6 s"
    assert rules.check("peer-new", "192.0.2.8").allowed
    clock.t += 0.6
    assert rules.check("peer-new", "192.0.2.7").allowed


def test_token_limit_at_its_edge_and_never() -> None:
    clock = Clock()
    rules = manual_rules(clock)
    assert rules.check("p", "10.0.0.1", tokens=99_999).allowed
    assert rules.check("p", "10.0.0.2", tokens=1).allowed  # exactly the 100000 of the bucket
    refused = rules.check("p", "10.0.0.3", tokens=1)
    assert not refused.allowed
    assert refused.reason == "rate limit: 100000 tokens/minute per peer_id exceeded; retry in 0.1 s"
    assert refused.retry_after_secs == pytest.approx(60 / 100_000)
    never = rules.check("q", "10.0.0.4", tokens=100_001)
    assert not never.allowed and math.isinf(never.retry_after_secs)
    assert "needs 100001 tokens" in never.reason and "can never be served" in never.reason
    assert rules.check("q", "10.0.0.5", tokens=100_000).allowed  # "never" debited nothing


def test_refusal_debits_no_rule() -> None:
    clock = Clock()
    rules = manual_rules(clock)
    peer_rule, ip_rule = rules.rules
    for i in range(60):
        assert rules.check("peerA", f"10.0.0.{i}").allowed
    # peer rule refuses: the IP bucket is not spent
    assert not rules.check("peerA", "198.51.100.1").allowed
    assert ip_rule.limiter.available("198.51.100.1", clock.t)[0] == 20
    # IP rule refuses: the peer bucket is not spent
    for i in range(20):
        assert rules.check(f"x{i}", "198.51.100.2").allowed
    assert not rules.check("peerZ", "198.51.100.2").allowed
    assert peer_rule.limiter.available("peerZ", clock.t)[0] == 60
    assert rules.refusal_counts() == {(0, "peer_id"): 1, (1, "ip_address"): 1}


def test_both_rules_refusing_counts_both_and_reports_the_longer_wait() -> None:
    clock = Clock()
    rules = manual_rules(clock)
    for _ in range(20):
        assert rules.check("p", "203.0.113.1").allowed
    for i in range(40):
        assert rules.check("p", f"10.1.0.{i}").allowed
    decision = rules.check("p", "203.0.113.1")
    assert not decision.allowed
    assert decision.retry_after_secs == pytest.approx(1.0)  # peer: 1 s > ip: 0.6 s
    assert "per peer_id" in decision.reason
    assert rules.refusal_counts() == {(0, "peer_id"): 1, (1, "ip_address"): 1}


def test_retrying_when_told_succeeds() -> None:
    clock = Clock()
    rules = RateLimitRules(config_from(MANUAL_RULES.replace("60", "7")).rate_limiting, clock=clock)
    for _ in range(7):
        assert rules.check("p", None).allowed
    refused = rules.check("p", None)
    told = float(refused.reason.rsplit("retry in ", 1)[1].split()[0])
    clock.t += told
    assert rules.check("p", None).allowed


def test_missing_key_skips_the_rule_and_disabled_allows_all() -> None:
    rules = manual_rules(Clock())
    for _ in range(100):
        assert rules.check(None, None).allowed
    assert rules.unkeyed == 200
    off = RateLimitRules(config_from(MANUAL_RULES.replace("enabled = true", "enabled = false")).rate_limiting)
    assert off.rules == [] and all(off.check("p", "1.2.3.4", 10**9).allowed for _ in range(200))


def test_format_wait_rounds_up() -> None:
    assert format_wait(0.9) == "0.9"
    assert format_wait(0.91) == "1.0"
    assert format_wait(0.30000000000000004) == "0.3"
    assert format_wait(0.0001) == "0.1"


# -- replay guard -----------------------------------------------------------------------
D1, D2, D3, D4 = (bytes([i]) * 32 for i in range(1, 5))


def test_replay_refused_within_window_and_accepted_after() -> None:
    guard = ReplayGuard(window_secs=600)
    assert isinstance(guard, ReplayStore)
    assert guard.check_and_remember(D1, now=1000)
    assert not guard.check_and_remember(D1, now=1000)
    assert guard.check_and_remember(D2, now=1000)
    assert not guard.check_and_remember(D1, now=1599.999)
    assert guard.seen(D1, now=1599.999) and not guard.seen(D1, now=1600)
    assert guard.check_and_remember(D1, now=1600)  # 600 s after: forgotten
    assert guard.replays == 2
    assert guard.expired == 2 and len(guard) == 1  # D1 again; D2 expired at 1600 too


def test_deadline_extends_retention_up_to_the_cap() -> None:
    guard = ReplayGuard(window_secs=600, max_hold_secs=3600)
    assert guard.check_and_remember(D1, now=1000, deadline=5000)  # beyond the cap: 1000 + 3600
    assert guard.expires_at(D1) == 4600
    assert guard.check_and_remember(D2, now=1000, deadline=2000)
    assert guard.expires_at(D2) == 2000
    assert guard.check_and_remember(D3, now=1000, deadline=1200)  # sooner than the window: window wins
    assert guard.expires_at(D3) == 1600
    assert not guard.check_and_remember(D2, now=1999)
    assert guard.check_and_remember(D2, now=2000)


def test_full_store_forgets_the_soonest_expiring_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    guard = ReplayGuard(window_secs=600, max_entries=3)
    for i, d in enumerate((D1, D2, D3)):
        assert guard.check_and_remember(d, now=1000 + i)
    with caplog.at_level(logging.WARNING, logger="lloom_executor.pipeline.replay"):
        assert guard.check_and_remember(D4, now=1010)  # full: D1 (oldest) goes
    assert len(guard) == 3 and D1 not in guard and guard.forced_evictions == 1
    assert "replay store full" in caplog.text
    assert guard.check_and_remember(D1, now=1011)  # the documented cost: D1 is new again...
    assert D2 not in guard and guard.forced_evictions == 2  # ...and it pushed out D2 (until 1601)
    # expired entries make room before any live one is forced out
    assert guard.check_and_remember(b"\x09" * 32, now=1602)  # D3 (until 1602) expired
    assert guard.forced_evictions == 2 and guard.expired == 1 and len(guard) == 3


def test_forget_allows_a_verbatim_retry() -> None:
    guard = ReplayGuard()
    assert guard.check_and_remember(D1, now=0)
    assert guard.forget(D1) and not guard.forget(D1)
    assert guard.check_and_remember(D1, now=1)


def test_stale_heap_rows_are_compacted() -> None:
    guard = ReplayGuard(window_secs=600)
    for i in range(5000):
        d = i.to_bytes(32, "big")
        assert guard.check_and_remember(d, now=0)
        guard.forget(d)
    assert len(guard) == 0 and len(guard._heap) <= 1024 + 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ReplayGuard(window_secs=0)
    with pytest.raises(ValueError):
        ReplayGuard(max_entries=0)
    with pytest.raises(ValueError):
        ReplayGuard(window_secs=600, max_hold_secs=10)


class ModelGuard:
    """Naive model: a list of [digest, expires_at, seq]; full scans, evict the soonest expiry."""

    def __init__(self, window: int, max_entries: int, max_hold: int) -> None:
        self.window, self.max_entries, self.max_hold = window, max_entries, max_hold
        self.rows: list[list] = []
        self.seq = 0

    def check_and_remember(self, digest: object, now: int, deadline: int) -> bool:
        self.rows = [r for r in self.rows if r[1] > now]
        if any(r[0] == digest for r in self.rows):
            return False
        keep = now + self.window
        if deadline:
            keep = max(keep, min(deadline, now + self.max_hold))
        if len(self.rows) >= self.max_entries:
            self.rows.remove(min(self.rows, key=lambda r: (r[1], r[2])))
        self.rows.append([digest, keep, self.seq])
        self.seq += 1
        return True


replay_ops = st.lists(
    st.tuples(
        st.integers(0, 7),  # which payload
        st.integers(0, 400),  # seconds since the previous call
        st.one_of(st.just(0), st.integers(0, 3000)),  # deadline offset (0 = none)
        st.booleans(),  # forget after?
        st.sampled_from((None, 0, 1)),  # who signed it (None: unsigned)
    ),
    max_size=120,
)


def _requests() -> dict[tuple[int | None, int], _native.DecodedRequest]:
    """Real decoded requests: 8 payloads, each unsigned and signed by two clients. Equal payloads
    share a digest whoever signed them; the guard must still tell the signers apart."""
    signers = [_native.PrivateKey.generate() for _ in range(2)]
    executor = _native.PrivateKey.generate().peer_id
    out: dict[tuple[int | None, int], _native.DecodedRequest] = {}
    for payload in range(8):
        args = ("m", f"prompt {payload}", None, None, 16, executor, "1", "1", 1, 0)
        out[None, payload] = _native.decode_request(_native.encode_unsigned_request(*args))
        for i, key in enumerate(signers):
            out[i, payload] = _native.decode_request(_native.encode_signed_request(key, *args, 1_700_000_000))
    return out


REQUESTS = _requests()


@settings(max_examples=200, deadline=None)
@given(ops=replay_ops, max_entries=st.integers(1, 6))
def test_replay_guard_matches_the_model(ops: list, max_entries: int) -> None:
    """The guard, fed `replay_key` of real requests, against a model keyed on (signer, payload)."""
    guard = ReplayGuard(window_secs=600, max_entries=max_entries, max_hold_secs=1800)
    model = ModelGuard(600, max_entries, 1800)
    now = 10_000
    for which, dt, deadline_offset, forget, signer in ops:
        now += dt
        key, identity = replay_key(REQUESTS[signer, which]), (signer, which)
        deadline = now + deadline_offset if deadline_offset else 0
        assert guard.check_and_remember(key, now, deadline) == model.check_and_remember(identity, now, deadline)
        assert len(guard) <= max_entries
        if forget:
            assert guard.forget(key) == any(r[0] == identity for r in model.rows)
            model.rows = [r for r in model.rows if r[0] != identity]
        live = {r[0] for r in model.rows if r[1] > now}
        assert {ident for ident, req in REQUESTS.items() if guard.seen(replay_key(req), now)} == live


@settings(max_examples=200, deadline=None)
@given(ops=replay_ops)
def test_unbounded_guard_never_forgets_within_the_window(ops: list) -> None:
    """With room to spare, a digest is refused for exactly its retention, never longer."""
    guard = ReplayGuard(window_secs=600, max_entries=1000)
    kept_until: dict[bytes, int] = {}
    now = 0
    for which, dt, _, _, _ in ops:
        now += dt
        digest = bytes([which]) * 32
        fresh = kept_until.get(digest, -1) <= now
        assert guard.check_and_remember(digest, now) == fresh
        if fresh:
            kept_until[digest] = now + 600
    assert guard.forced_evictions == 0


# -- content filter ---------------------------------------------------------------------
FILTER = """
[content_filter]
enabled = true
block_patterns = ["malicious.*pattern", "dangerous.*content", "(?i)forbidden"]
max_prompt_length = 10000
scan_responses = true
"""


def make_filter(text: str = FILTER) -> ContentFilter:
    return ContentFilter(config_from(text).content_filter)


def test_prompt_length_at_its_edge_in_characters() -> None:
    f = make_filter()
    assert f.check_prompt(None, "a" * 10000) is None
    assert f.check_prompt(None, "é" * 10000) is None  # characters, not UTF-8 bytes
    assert f.check_prompt("s" * 4000, "p" * 6000) is None
    reason = f.check_prompt("s" * 4000, "p" * 6001)
    assert reason == "prompt too long: 10001 characters (system prompt + prompt); this executor accepts at most 10000"
    assert f.check_length(None, "a" * 10001) is not None and f.check_length(None, "a" * 10000) is None


def test_block_patterns_match_and_miss_without_echo() -> None:
    f = make_filter()
    assert f.check_prompt(None, "a perfectly fine question") is None
    assert f.check_prompt(None, "this is a malicious little pattern") == PROMPT_BLOCKED
    assert f.check_prompt("dangerous system content", "hello") == PROMPT_BLOCKED
    assert f.check_prompt(None, "FORBIDDEN words") == PROMPT_BLOCKED  # (?i) honoured
    assert f.check_prompt(None, "Malicious pattern") is None  # case-sensitive otherwise
    assert f.check_prompt("malicious", "pattern") is None  # no match across the boundary
    assert f.blocked_prompts == 3
    for text in ("malicious", "pattern", "dangerous", "forbidden"):
        assert text not in PROMPT_BLOCKED.lower() and text not in RESPONSE_BLOCKED.lower()


def test_scan_responses_on_and_off() -> None:
    on = make_filter()
    assert on.check_response("an ordinary answer") is None
    assert on.check_response("here is the dangerous bit of content") == RESPONSE_BLOCKED
    assert on.blocked_responses == 1
    off = make_filter(FILTER.replace("scan_responses = true", "scan_responses = false"))
    assert off.check_response("here is the dangerous bit of content") is None
    assert off.check_prompt(None, "dangerous content") == PROMPT_BLOCKED


def test_disabled_filter_checks_nothing() -> None:
    f = make_filter(FILTER.replace("enabled = true", "enabled = false"))
    assert f.check_prompt(None, "malicious pattern" * 1000) is None
    assert f.check_response("dangerous content") is None


def test_bad_pattern_is_a_config_error() -> None:
    _, report = parse_config(tomllib.loads('[content_filter]\nblock_patterns = ["(unclosed"]\n'))
    assert any("block_patterns" in p.path for p in report.errors)
