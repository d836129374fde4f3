"""The response cache on each backend (memory, disk, a real Redis server): key, hit/miss,
TTL, LRU eviction at the byte budget's edge, the deterministic-only policy, Redis going
down and coming back, disk persistence, sharing between processes, and clean()."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lloom_executor.backends.base import Completion
from lloom_executor.cache import (
    DiskCache,
    MemoryCache,
    RedisCache,
    ResponseCache,
    build_cache,
    cache_key,
    clean_cache,
    decode_completion,
    encode_completion,
    entry_size,
    parse_age,
)
from lloom_executor.cache.redis_store import redact_url
from lloom_executor.config.schema import CacheConfig, RedisCacheConfig
from redis_rig import REDIS_SERVER, RedisProcess, free_port

NO_REDIS = "redis-server is not on PATH and LLOOM_TEST_REDIS_URL is unset (apt-get install redis-server)"


# -- a real Redis server ----------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("LLOOM_TEST_REDIS_URL")
    if url:
        yield url
        return
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS)
    with tempfile.TemporaryDirectory(prefix="lloom-redis-") as tmp:
        server = RedisProcess(Path(tmp), appendonly=False).start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A server this test may stop and restart (outage tests): no persistence, so it comes back empty."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH: the outage test needs a server it can stop")
    server = RedisProcess(tmp_path / "redis", appendonly=False).start()
    try:
        yield server
    finally:
        server.stop()


# -- helpers ------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def key(n: int | str) -> bytes:
    k = cache_key("m", None, f"prompt {n}", 0.0, 64)
    assert k is not None
    return k


def answer(n: int | str) -> Completion:
    return Completion(f"answer {n}", "m", 7, 11)


SIZE = entry_size(key(1), answer(1))  # every key(i)/answer(i) with one-digit i has this size


def make_factory(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., ResponseCache]:
    """Builds a cache through build_cache (so max_size_gb's conversion is exercised), with an
    injected clock where the backend takes one. Call it inside the test's event loop."""

    def make(max_bytes: int = 10**6, ttl: int = 3600, clock: Clock | None = None, **kw: Any) -> ResponseCache:
        config = CacheConfig(
            enabled=True,
            backend=backend,
            max_size_gb=max_bytes / 1e9,
            ttl_seconds=ttl,
            path=str(tmp_path / "cache"),
            redis=RedisCacheConfig(url=url, prefix=f"test:{uuid.uuid4().hex}:"),
            **kw,
        )
        cache = build_cache(config)
        assert cache is not None and cache.max_bytes == max_bytes  # type: ignore[attr-defined]
        if clock is not None:
            cache._clock = clock  # type: ignore[attr-defined]
        return cache

    url = request.getfixturevalue("redis_url") if backend == "redis" else "redis://127.0.0.1:1"
    return make


@pytest.fixture(params=["memory", "disk", "redis"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., ResponseCache]:
    return make_factory(request.param, tmp_path, request)


@pytest.fixture(params=["memory", "disk"])
def clocked_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., ResponseCache]:
    return make_factory(request.param, tmp_path, request)


# -- the key ----------------------------------------------------------------------------
def documented_key(model: str, system: str | None, prompt: str, temperature: float | None, max_tokens: int | None) -> bytes:
    """The encoding as key.py's docstring states it, rebuilt here independently."""

    def text(s: str) -> bytes:
        raw = s.encode()
        return len(raw).to_bytes(8, "big") + raw

    out = b"lloom-response-cache/v1\x00" + text(model)
    out += b"\x00" if system is None else b"\x01" + text(system)
    out += text(prompt)
    out += b"\x00" if temperature is None else b"\x01" + struct.pack(">d", abs(temperature) if temperature == 0 else temperature)
    out += b"\x00" if max_tokens is None else b"\x01" + max_tokens.to_bytes(8, "big")
    return hashlib.sha256(out).digest()


def test_key_matches_the_documented_encoding() -> None:
    for args in [("m", None, "p", 0.0, 64), ("llama-2-70b", "be brief", "héllo ✓", 0.0, None), ("m", "", "", 0.0, 0)]:
        assert cache_key(*args) == documented_key(*args)
    assert cache_key("m", None, "p", 0.7, 5, deterministic_only=False) == documented_key("m", None, "p", 0.7, 5)
    assert cache_key("m", None, "p", None, 5, deterministic_only=False) == documented_key("m", None, "p", None, 5)
    assert len(cache_key("m", None, "p", 0, 1) or b"") == 32


def test_key_separates_every_field_and_folds_zero() -> None:
    base = cache_key("m", "s", "p", 0.0, 10)
    assert cache_key("m", "s", "p", 0, 10) == base == cache_key("m", "s", "p", -0.0, 10)
    variants = [
        cache_key("m2", "s", "p", 0.0, 10),
        cache_key("m", "s2", "p", 0.0, 10),
        cache_key("m", None, "p", 0.0, 10),
        cache_key("m", "", "p", 0.0, 10),
        cache_key("m", "s", "p2", 0.0, 10),
        cache_key("m", "s", "p", 0.0, 11),
        cache_key("m", "s", "p", 0.0, None),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # no ambiguity from concatenation: ("ab", "c") vs ("a", "bc")
    assert cache_key("m", "ab", "c", 0, 1) != cache_key("m", "a", "bc", 0, 1)


def test_only_deterministic_requests_are_cacheable_by_default() -> None:
    assert cache_key("m", None, "p", 0.0, 8) is not None
    assert cache_key("m", None, "p", 1e-9, 8) is None  # just over 0
    assert cache_key("m", None, "p", 0.7, 8) is None
    assert cache_key("m", None, "p", None, 8) is None  # no temperature: the backend samples
    assert cache_key("m", None, "p", 0.7, 8, deterministic_only=False) is not None
    assert cache_key("m", None, "p", None, 8, deterministic_only=False) is not None
    assert cache_key("m", None, "p", float("nan"), 8, deterministic_only=False) is None
    assert cache_key("m", None, "p", float("inf"), 8, deterministic_only=False) is None


def test_completion_round_trips_and_rejects_garbage() -> None:
    for c in [answer(1), Completion("", "m"), Completion("ünï", "x", 0, None)]:
        assert decode_completion(encode_completion(c)) == c
    for bad in [
        b"",
        b"[]",
        b'{"content": 1, "model": "m"}',
        b'{"content": "a", "model": "m", "inbound_tokens": -1}',
        b'{"content": "a", "model": "m", "outbound_tokens": true}',
    ]:
        with pytest.raises(ValueError):
            decode_completion(bad)


def test_build_cache_off_and_parse_age() -> None:
    assert build_cache(CacheConfig(enabled=False)) is None
    assert isinstance(build_cache(CacheConfig(enabled=True)), MemoryCache)  # the default backend
    assert parse_age("7d") == 7 * 86400 and parse_age("12h") == 43200 and parse_age("30m") == 1800
    assert parse_age("45s") == 45 and parse_age("90") == 90 and parse_age("2w") == 14 * 86400
    with pytest.raises(ValueError):
        parse_age("7 days")
    assert "***" in redact_url("redis://:secret@h:6379/0") and "secret" not in redact_url("redis://u:secret@h/0")
    assert redact_url("redis://h:6379") == "redis://h:6379"


# -- every backend ------------------------------------------------------------------------
def test_hit_miss_and_policy(factory: Callable[..., ResponseCache]) -> None:
    async def body() -> None:
        cache = factory()
        try:
            assert isinstance(cache, ResponseCache) and cache.available
            assert await cache.get(key(1)) is None
            await cache.put(key(1), answer(1))
            assert await cache.get(key(1)) == answer(1)
            assert await cache.get(key(2)) is None
            await cache.put(key(1), answer("replaced"))  # same key: replaced, counted once
            assert await cache.get(key(1)) == answer("replaced")
            stats = cache.stats()
            assert (stats.hits, stats.misses, stats.stores, stats.entries) == (2, 2, 2, 1)
            assert stats.size_bytes == entry_size(key(1), answer("replaced"))
            # the default policy: a sampled request has no key, so it is never stored or served
            assert cache.key_for("m", None, "p", 0.7, 8) is None and cache.key_for("m", None, "p", None, 8) is None
            assert cache.key_for("m", None, "p", 0, 8) == cache_key("m", None, "p", 0.0, 8)
        finally:
            await cache.close()

    run(body())


def test_non_deterministic_cached_when_configured(factory: Callable[..., ResponseCache]) -> None:
    async def body() -> None:
        cache = factory(deterministic_only=False)
        try:
            k = cache.key_for("m", None, "p", 0.9, 8)
            assert k is not None and k != cache.key_for("m", None, "p", 0.8, 8)
            await cache.put(k, answer(9))
            assert await cache.get(k) == answer(9)
        finally:
            await cache.close()

    run(body())


@pytest.mark.parametrize("room", [0, -1], ids=["at-budget", "one-byte-over"])
def test_lru_eviction_at_the_budget_edge(factory: Callable[..., ResponseCache], room: int) -> None:
    """Budget = 3 entries exactly: three fit; one byte less and only two do. The
    least recently *used* entry goes first (a get refreshes it)."""

    async def body() -> None:
        cache = factory(max_bytes=3 * SIZE + room)
        try:
            for i in (1, 2, 3):
                await cache.put(key(i), answer(i))
            present = [await cache.get(key(i)) is not None for i in (1, 2, 3)]  # also uses 1, then 2, then 3
            if room == 0:
                assert present == [True, True, True]
                assert cache.stats().size_bytes == 3 * SIZE and cache.stats().evictions == 0
                assert await cache.get(key(1)) is not None  # 1 is now the most recently used
                await cache.put(key(4), answer(4))  # over budget: 2 (least recently used) goes
                left = [await cache.get(key(i)) is not None for i in (1, 2, 3, 4)]
                assert left == [True, False, True, True]
            else:
                assert present == [False, True, True]
            stats = cache.stats()
            assert stats.evictions == 1 and stats.entries * SIZE == stats.size_bytes <= 3 * SIZE + room
        finally:
            await cache.close()

    run(body())


def test_entry_larger_than_budget_not_stored(factory: Callable[..., ResponseCache]) -> None:
    async def body() -> None:
        cache = factory(max_bytes=SIZE)
        try:
            await cache.put(key(1), answer(1))  # exactly the budget: stored
            assert await cache.get(key(1)) == answer(1)
            big = Completion("x" * SIZE, "m", 1, 1)
            await cache.put(key(2), big)  # over the whole budget: skipped, nothing evicted for it
            assert await cache.get(key(2)) is None and await cache.get(key(1)) == answer(1)
        finally:
            await cache.close()

    run(body())


def test_ttl_expiry_with_injected_clock(clocked_factory: Callable[..., ResponseCache]) -> None:
    async def body() -> None:
        clock = Clock()
        cache = clocked_factory(ttl=60, clock=clock)
        try:
            await cache.put(key(1), answer(1))
            clock.now += 59.999
            assert await cache.get(key(1)) == answer(1)  # just under the TTL
            clock.now += 0.001
            assert await cache.get(key(1)) is None  # at the TTL: expired
            assert cache.stats().expirations == 1 and cache.stats().entries == 0
        finally:
            await cache.close()

    run(body())


def test_redis_ttl_expiry_and_index_purge(redis_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async def body() -> None:
        cache = make_factory("redis", tmp_path, request)(ttl=1)
        try:
            await cache.put(key(1), answer(1))
            assert await cache.get(key(1)) == answer(1)
            for _ in range(100):  # Redis expires the key after 1 s
                if await cache.get(key(1)) is None:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("entry outlived its 1 s TTL")
            await cache.put(key(2), answer(2))  # the next put forgets the expired entry's bytes
            assert cache.stats().entries == 1 and cache.stats().size_bytes == SIZE
            assert cache.stats().expirations == 1
        finally:
            await cache.close()

    run(body())


def test_clean_older_than(clocked_factory: Callable[..., ResponseCache]) -> None:
    async def body() -> None:
        clock = Clock()
        cache = clocked_factory(clock=clock)
        try:
            await cache.put(key(1), answer(1))
            clock.now += 100
            await cache.put(key(2), answer(2))
            clock.now += 20  # key 1 is 120 s old, key 2 is 20 s old
            assert await cache.clean(120.001) == 0
            assert await cache.clean(120) == 1  # stored exactly at the cutoff: removed
            assert await cache.get(key(1)) is None and await cache.get(key(2)) == answer(2)
            assert await cache.clean(0) == 1 and cache.stats().entries == 0
        finally:
            await cache.close()

    run(body())


def test_redis_clean_and_prefix_isolation(redis_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async def body() -> None:
        make = make_factory("redis", tmp_path, request)
        a, b = make(), make()
        try:
            await a.put(key(1), answer(1))
            await b.put(key(1), answer("b"))
            assert await a.get(key(1)) == answer(1) and await b.get(key(1)) == answer("b")
            assert await a.clean(3600) == 0
            assert await a.clean(0) == 1
            assert await a.get(key(1)) is None and await b.get(key(1)) == answer("b")
            assert a.stats().entries == 0 and a.stats().size_bytes == 0
        finally:
            await a.close()
            await b.close()

    run(body())


# -- Redis down and back ------------------------------------------------------------------
def test_redis_down_serves_without_cache_and_recovers(own_redis: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        clock = Clock()
        cache = RedisCache(own_redis.url, f"t:{uuid.uuid4().hex}:", 10**6, 3600, op_timeout=0.5, clock=clock)
        try:
            assert await cache.check()
            await cache.put(key(1), answer(1))
            assert await cache.get(key(1)) == answer(1)

            own_redis.stop()
            with caplog.at_level(logging.INFO, logger="lloom_executor.cache.redis_store"):
                assert await cache.get(key(1)) is None  # a miss, not an exception
                assert not cache.available and not cache.stats().available
                await cache.put(key(2), answer(2))  # a no-op
                for _ in range(5):  # within the backoff: answered without touching the network
                    assert await cache.get(key(1)) is None
                assert cache._probe is None
                clock.now += 1  # backoff over: a background probe runs, the request still misses
                assert await cache.get(key(1)) is None
                assert cache._probe is not None
                await cache._probe
                assert not cache.available
                warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
                assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()  # once per outage

                own_redis.start()  # back, empty (no persistence)
                for _ in range(20):
                    clock.now += 60
                    await cache.get(key(1))
                    if cache._probe is not None:
                        await cache._probe
                    if cache.available:
                        break
                assert cache.available
                assert any("reachable again" in r.getMessage() for r in caplog.records)
            await cache.put(key(3), answer(3))
            assert await cache.get(key(3)) == answer(3)
            stats = cache.stats()
            assert stats.errors >= 1 and stats.hits == 2
        finally:
            await cache.close()

    run(body())


def test_redis_hung_server_times_out_to_a_miss(own_redis: RedisProcess) -> None:
    """A server that accepts but never answers (SIGSTOP): the request gets a miss after
    the small operation timeout, not a hang, and the cache recovers once it answers."""
    import signal

    async def body() -> None:
        clock = Clock()
        cache = RedisCache(own_redis.url, f"t:{uuid.uuid4().hex}:", 10**6, 3600, op_timeout=0.3, clock=clock)
        assert own_redis.proc is not None
        try:
            await cache.put(key(1), answer(1))
            own_redis.proc.send_signal(signal.SIGSTOP)
            try:
                assert await cache.get(key(1)) is None and not cache.available
                await cache.put(key(2), answer(2))
            finally:
                own_redis.proc.send_signal(signal.SIGCONT)
            for _ in range(20):
                clock.now += 60
                await cache.get(key(1))
                if cache._probe is not None:
                    await cache._probe
                if cache.available:
                    break
            assert cache.available and await cache.get(key(1)) == answer(1)
        finally:
            await cache.close()

    run(body())


def test_redis_unreachable_from_the_start() -> None:
    async def body() -> None:
        cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", "x:", 10**6, 60, op_timeout=0.5)
        try:
            assert not await cache.check() and not cache.available
            assert await cache.get(key(1)) is None
            await cache.put(key(1), answer(1))
        finally:
            await cache.close()

    run(body())


# -- disk -----------------------------------------------------------------------------
def test_disk_survives_a_new_instance(tmp_path: Path) -> None:
    async def body() -> None:
        first = DiskCache(tmp_path / "c", 10**6, 3600)
        await first.put(key(1), answer(1))
        await first.close()
        second = DiskCache(tmp_path / "c", 10**6, 3600)
        try:
            assert await second.get(key(1)) == answer(1)
            assert second.stats().entries == 1 and second.stats().size_bytes == SIZE
        finally:
            await second.close()

    run(body())


def test_disk_missing_or_corrupt_file_is_a_miss_and_clean_sweeps_orphans(tmp_path: Path) -> None:
    async def body() -> None:
        cache = DiskCache(tmp_path / "c", 10**6, 3600)
        try:
            await cache.put(key(1), answer(1))
            await cache.put(key(2), answer(2))
            cache._file(key(1)).write_bytes(b"{not json")
            cache._file(key(2)).unlink()
            assert await cache.get(key(1)) is None and await cache.get(key(2)) is None
            assert cache.stats().entries == 0 and cache.stats().size_bytes == 0
            orphan = cache._file(key(3))
            orphan.parent.mkdir(exist_ok=True)
            orphan.write_bytes(encode_completion(answer(3)))  # a file a crash left without its row
            tmp = orphan.parent / ".leftover.tmp"
            tmp.write_bytes(b"x")
            assert await cache.clean(10**9) == 0  # no entry that old, but the orphans go
            assert not orphan.exists() and not tmp.exists()
            assert await cache.get(key(3)) is None
        finally:
            await cache.close()

    run(body())


def test_disk_unusable_path_degrades_to_misses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    async def body() -> None:
        cache = DiskCache(blocker / "cache", 10**6, 3600)
        try:
            with caplog.at_level(logging.WARNING, logger="lloom_executor.cache.disk"):
                await cache.put(key(1), answer(1))
                assert await cache.get(key(1)) is None
            assert not cache.available and cache.stats().errors == 2
            assert len([r for r in caplog.records if "failing" in r.getMessage()]) == 1
        finally:
            await cache.close()

    run(body())


WRITER = """
import asyncio, sys
from lloom_executor.backends.base import Completion
from lloom_executor.cache import DiskCache, cache_key

async def main(path, tag, n, max_bytes):
    cache = DiskCache(path, max_bytes, 3600, op_timeout=30)
    for i in range(n):
        k = cache_key("m", None, f"{tag} {i}", 0, 8)
        await cache.put(k, Completion(f"{tag} answer {i}", "m", 1, 2))
        await cache.get(cache_key("m", None, f"{tag} {i // 2}", 0, 8))
    await cache.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


def test_disk_shared_by_two_processes_stays_consistent(tmp_path: Path) -> None:
    """Two processes write and read one directory with a small budget (constant eviction);
    afterwards the index, its totals and the files agree exactly and the budget holds."""
    path, n, max_bytes = tmp_path / "shared", 150, 20 * SIZE
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the lloom_executor this run imports
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(n), str(max_bytes)], env=env)
        for tag in ("alpha", "bravo")
    ]
    assert [p.wait(120) for p in procs] == [0, 0]
    db = sqlite3.connect(path / "index.sqlite3")
    rows = db.execute("SELECT key, size FROM entries").fetchall()
    size, entries = db.execute("SELECT size, entries FROM totals").fetchone()
    db.close()
    assert entries == len(rows) and size == sum(s for _, s in rows) <= max_bytes
    files = {f.name for f in (path / "entries").rglob("*") if f.is_file()}
    assert files == {f"{bytes(k).hex()}.json" for k, _ in rows}
    for k, s in rows:
        data = (path / "entries" / bytes(k).hex()[:2] / f"{bytes(k).hex()}.json").read_bytes()
        assert len(k) + len(data) == s and decode_completion(data).content.split()[0] in ("alpha", "bravo")


def test_clean_cache_for_maintenance(tmp_path: Path) -> None:
    async def body() -> None:
        config = CacheConfig(enabled=False, backend="disk", path=str(tmp_path / "c"))
        cache = DiskCache(config.path, 10**6, 3600)
        await cache.put(key(1), answer(1))
        await cache.close()
        assert await clean_cache(config, 7 * 86400) == 0
        assert await clean_cache(config, 0) == 1
        assert await clean_cache(CacheConfig(backend="memory"), 0) == 0

    run(body())
