"""The clustering shared state (cluster/redis_*.py) against real redis-server processes.

Atomicity is checked across real processes on one Redis; the Redis buckets are checked
against the in-process Cython `RateLimiter` as the oracle of the bucket model (the script
takes a test clock for that; the server clock is checked on its own); outages are real
redis-server processes stopped and started again on the same port and AOF directory.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.synchronize
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from interop import wait_until
from lloom_executor._fast.ratelimit import RateLimiter
from lloom_executor.cluster.redis_limits import MemberLease, RedisNodeLimits
from lloom_executor.cluster.redis_link import RedisLink
from lloom_executor.cluster.redis_state import BucketScript, RedisRateRules, RedisReplayStore, key_prefix
from lloom_executor.config import ConfigError, RateLimitingConfig, RateLimitRule, inactive_features, load_config
from lloom_executor.outcome import RefusalCode, SharedStateUnavailable
from lloom_executor.pipeline.ratelimits import RateLimitRules
from redis_rig import RedisProcess
from service_rig import until

DIGESTS = [i.to_bytes(4, "big") * 13 for i in range(300)]
PREFIX = key_prefix("test-executor")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    redis = RedisProcess(tmp_path / "redis").start()
    try:
        yield redis
    finally:
        redis.stop()


def admit_all(url: str, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue[list[bytes]]) -> None:
    store = RedisReplayStore(RedisLink(url), PREFIX)
    start.wait()
    out.put([d for d in DIGESTS if store.check_and_remember(d)])


def test_each_digest_is_admitted_by_exactly_one_of_several_processes(
    server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))  # see test_workers_state.py
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=admit_all, args=(server.url, start, out)) for _ in range(3)]
    for p in procs:
        p.start()
    admitted = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    flat = [d for batch in admitted for d in batch]
    assert sorted(flat) == sorted(DIGESTS)  # every digest once, none twice


def test_replay_retention_is_the_window_or_the_signed_deadline_capped(server: RedisProcess) -> None:
    link = RedisLink(server.url)
    store = RedisReplayStore(link, PREFIX, window_secs=0.3, max_hold_secs=50)
    now = time.time()
    assert store.check_and_remember(b"a", now=now) and store.seen(b"a")
    assert not store.check_and_remember(b"a") and store.replays == 1
    assert wait_until(lambda: store.check_and_remember(b"a"), timeout=10)  # the window passed: fresh again
    assert store.check_and_remember(b"b", now=now, deadline=int(now) + 20)
    assert 15_000 < link.client.pttl(PREFIX.encode() + b"rp:b") <= 20_000  # kept until the signed deadline
    assert store.check_and_remember(b"c", now=now, deadline=int(now) + 10**9)
    assert 45_000 < link.client.pttl(PREFIX.encode() + b"rp:c") <= 50_000  # ... capped at max_hold_secs
    assert store.forget(b"b") and store.check_and_remember(b"b")
    assert len(store) >= 3 and store.max_entries == 0 and store.forced_evictions == 0


@pytest.mark.parametrize(("rpm", "tpm", "burst"), [(6, None, None), (60, 1000, 3), (None, 500, None)])
def test_redis_buckets_decide_as_the_in_process_limiter(
    server: RedisProcess, rpm: int | None, tpm: int | None, burst: int | None
) -> None:
    oracle = RateLimiter(rpm, tpm, burst)
    now = 1000.0
    script = BucketScript(RedisLink(server.url), clock=lambda: now)
    shared = RedisRateRules(script, PREFIX).limiter(
        0, RateLimitRule(max_requests_per_minute=rpm, max_tokens_per_minute=tpm, burst_size=burst)
    )
    for step in range(200):
        now += (step % 7) * 0.37
        tokens = (step * 37) % 120
        got = shared.try_acquire("client", 1, tokens, now)
        want = oracle.try_acquire("client", 1, tokens, now)
        assert got == pytest.approx(want, abs=1e-6), (step, got, want)
        assert shared.available("client", now) == pytest.approx(oracle.available("client", now), abs=1e-6)


def test_the_server_clock_refills_a_bucket(server: RedisProcess) -> None:
    limiter = RedisRateRules(BucketScript(RedisLink(server.url)), PREFIX).limiter(
        0, RateLimitRule(max_requests_per_minute=120, burst_size=1)
    )
    assert limiter.try_acquire("peer", 1, 0, 0.0) == 0.0
    wait = limiter.try_acquire("peer", 1, 0, 0.0)
    assert 0.0 < wait <= 0.5  # `now` is ignored: Redis' TIME decides
    assert wait_until(lambda: limiter.try_acquire("peer", 1, 0, 0.0) == 0.0, timeout=10)


def test_a_refusal_by_one_rule_debits_no_other(server: RedisProcess) -> None:
    config = RateLimitingConfig(
        enabled=True,
        rules=(
            RateLimitRule(identifier="peer_id", max_requests_per_minute=100),
            RateLimitRule(identifier="ip_address", max_requests_per_minute=1),
        ),
    )
    redis_rules = RedisRateRules(BucketScript(RedisLink(server.url)), PREFIX)
    rules = RateLimitRules(config, clock=time.time, limiter_factory=redis_rules.limiter, decide=redis_rules.decide)
    assert rules.check("peer-a", "10.0.0.1").allowed
    refused = rules.check("peer-b", "10.0.0.1")
    assert not refused.allowed and "per ip_address" in refused.reason and refused.retry_after_secs > 0
    peer_rule = rules.rules[0].limiter
    assert peer_rule.available("peer-b", 0.0)[0] == pytest.approx(100)  # not debited by the refused request
    assert peer_rule.available("peer-a", 0.0)[0] == pytest.approx(99, abs=0.01)


def hammer(url: str, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue[int]) -> None:
    redis_rules = RedisRateRules(BucketScript(RedisLink(url)), PREFIX)
    config = RateLimitingConfig(enabled=True, rules=(RateLimitRule(max_requests_per_minute=6, burst_size=6),))
    rules = RateLimitRules(config, clock=time.time, limiter_factory=redis_rules.limiter, decide=redis_rules.decide)
    start.wait()
    out.put(sum(rules.check("one-peer", None).allowed for _ in range(40)))


def test_a_rate_limit_holds_across_processes(server: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()
    began = time.monotonic()
    procs = [ctx.Process(target=hammer, args=(server.url, start, out)) for _ in range(3)]
    for p in procs:
        p.start()
    admitted = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    refill = int((time.monotonic() - began) * 6 / 60)  # 0.1 request a second comes back meanwhile
    assert 6 <= admitted <= 6 + refill


def test_usage_book_is_one_account_across_members(server: RedisProcess) -> None:
    members = []
    for name in ("a", "b"):
        link = RedisLink(server.url)
        lease = MemberLease(link, PREFIX, name)
        lease.renew()
        members.append(RedisNodeLimits(link, lease, PREFIX).book("openai", 3, None))
    a, b = members
    day = int(time.time() // 86_400)
    assert a.admit(10, Decimal("0.4"), Decimal("1"), day, 60) is None
    assert b.admit(10, Decimal("0.4"), Decimal("1"), day, 60) is None
    budget = a.admit(10, Decimal("0.4"), Decimal("1"), day, 60)
    assert budget is not None and budget.limit == "max_cost_per_day_usd" and budget.reserved == Decimal("0.8")
    b.settle(Decimal("0.4"), Decimal("0.123456789"), day)
    assert a.admit(10, Decimal("0.1"), Decimal("1"), day, 60) is None  # the third request of the minute
    requests = b.admit(10, Decimal("0"), None, day, 60)
    assert requests is not None and requests.limit == "max_requests_per_minute" and 0 < requests.wait <= 20
    status = b.status(day)
    assert status.spent_today == Decimal("0.123456789") and status.reserved == Decimal("0.5")
    assert status.requests_available is not None and status.requests_available < 1


def test_a_dead_members_slots_and_reservations_come_back(server: RedisProcess) -> None:
    day = int(time.time() // 86_400)
    dying_link = RedisLink(server.url)
    dying = MemberLease(dying_link, PREFIX, "dying", lease_ms=300)
    dying.renew()  # and never again: the process was killed
    dying_limits = RedisNodeLimits(dying_link, dying, PREFIX)
    alive_link = RedisLink(server.url)
    alive = MemberLease(alive_link, PREFIX, "alive")
    alive.start()
    try:
        alive_limits = RedisNodeLimits(alive_link, alive, PREFIX)
        held, free = dying_limits.slots("llm", 2), alive_limits.slots("llm", 2)
        assert held.try_take() and held.try_take() and not free.try_take()
        assert dying_limits.book("llm", None, None).admit(0, Decimal("0.25"), Decimal("1"), day, 60) is None
        assert wait_until(free.try_take, timeout=10)  # the lease ran out: its two slots are free
        assert free.held() == 1
        status = alive_limits.book("llm", None, None).status(day)
        assert status.reserved == 0 and status.spent_today == Decimal("0.25")  # counted as spent
    finally:
        alive.stop()


def test_slots_wait_for_a_slot_another_member_frees(server: RedisProcess) -> None:
    limits = []
    for name in ("a", "b"):
        link = RedisLink(server.url)
        lease = MemberLease(link, PREFIX, name)
        lease.renew()
        limits.append(RedisNodeLimits(link, lease, PREFIX).slots("llm", 1))
    a, b = limits

    async def scenario() -> None:
        assert await a.acquire()
        waiting = asyncio.ensure_future(b.acquire())
        await asyncio.sleep(0.02)  # the waiter has polled a few times and found none
        assert not waiting.done()
        a.release()  # another member's release: b notices it by polling
        await until(waiting.done, "b got the slot a freed")
        assert a.held() == 1

    asyncio.run(scenario())


def test_redis_down_fails_closed_and_recovers_without_forgetting(server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    link = RedisLink(server.url, retry_secs=0.05)
    link.check_persistence()
    assert link.appendonly == "yes"
    store = RedisReplayStore(link, PREFIX)
    lease = MemberLease(link, PREFIX, "m")
    lease.renew()
    slots = RedisNodeLimits(link, lease, PREFIX).slots("llm", 1)
    assert store.check_and_remember(b"frame") and slots.try_take()
    server.stop(kill=True)  # a crash: appendfsync always kept every acknowledged write
    with caplog.at_level(logging.INFO, logger="lloom_executor.cluster.redis_link"):
        for _ in range(5):
            with pytest.raises(SharedStateUnavailable) as refused:
                store.check_and_remember(b"other")
            assert refused.value.code is RefusalCode.SHARED_STATE_UNAVAILABLE
            assert "127.0.0.1" not in refused.value.reason and str(server.port) not in refused.value.reason
            time.sleep(0.06)  # past retry_secs, so each call really tries the dead server
        slots.release()  # never raises: owed
        assert not store.forget(b"frame")
        health = link.health()
        assert not health.reachable and health.failures >= 5 and health.last_error == "ConnectionError"
        server.start()
        assert wait_until(lambda: lease.renew(), timeout=10)
        assert link.health().reachable
    down = [r for r in caplog.records if "unreachable" in r.getMessage()]
    up = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(down) == 1 and len(up) == 1  # one line per change of state, not per request
    assert not store.check_and_remember(b"frame")  # remembered through the restart (AOF)
    assert store.check_and_remember(b"other")
    assert slots.try_take()  # the release owed during the outage was paid first


def test_a_redis_without_appendonly_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisProcess(tmp_path / "r", appendonly=False).start()
    try:
        with caplog.at_level(logging.WARNING, logger="lloom_executor.cluster.redis_link"):
            link = RedisLink(server.url)
            link.check_persistence()
        assert link.appendonly == "no"
        assert any("without appendonly" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


def test_clustering_config_needs_a_redis_url_and_start_says_what_is_not_built(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[clustering]\nenabled = true\nnode_id = "m1"\n')
    with pytest.raises(ConfigError, match="clustering.redis_url"):
        load_config(path, environ={})
    path.write_text('[clustering]\nenabled = true\nnode_id = "m1"\nshared_state_backend = "sqlite"\n')
    with pytest.raises(ConfigError, match="clustering.shared_state_backend"):
        load_config(path, environ={})
    path.write_text('[clustering]\nenabled = true\nnode_id = "m1"\nredis_url = "redis://:${PW}@127.0.0.1:6390/2"\n')
    config = load_config(path, environ={"PW": "s3cret"}).config
    assert config.clustering.redis_url == "redis://:s3cret@127.0.0.1:6390/2"
    assert "s3cret" not in repr(config)  # a secret: never logged with the config
    [note] = [f for f in inactive_features(config) if f.startswith("[clustering]")]
    assert "etcd_endpoints" in note and "leader election" in note and "settlement" in note
