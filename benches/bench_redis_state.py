"""Microseconds per shared-state operation on a loopback redis-server (docs/clustering.md "Numbers").

What a member's event loop blocks for per request: the replay step (`SET NX PX`), a rate-limit
decision over two rules (one Lua script), an `[openai_limits]` admission and its settlement, a
slot taken and released. Starts its own redis-server (AOF on, `appendfsync everysec`) in a temp
dir; reports the median and p99 of single synchronous calls, as the request path makes them.

    PYTHONPATH=python python benches/bench_redis_state.py [operations]
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal

from lloom_executor.cluster.redis_limits import MemberLease, RedisNodeLimits
from lloom_executor.cluster.redis_link import RedisLink
from lloom_executor.cluster.redis_state import BucketScript, RedisRateRules, RedisReplayStore, key_prefix
from lloom_executor.config import RateLimitingConfig, RateLimitRule
from lloom_executor.pipeline.ratelimits import RateLimitRules


def timed(n: int, op: Callable[[int], object]) -> dict[str, float]:
    """Wall time per call (median, p99) and this process's CPU per call (the loop's own work)."""
    samples = []
    cpu = time.process_time_ns()
    for i in range(n):
        began = time.perf_counter_ns()
        op(i)
        samples.append((time.perf_counter_ns() - began) / 1000)
    cpu_us = (time.process_time_ns() - cpu) / 1000 / n
    samples.sort()
    return {
        "median_us": round(statistics.median(samples), 1),
        "p99_us": round(samples[int(n * 0.99)], 1),
        "cpu_us": round(cpu_us, 1),
    }


def main(n: int) -> None:
    server = shutil.which("redis-server")
    assert server is not None, "redis-server is not on PATH"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        try:
            link = RedisLink(f"redis://127.0.0.1:{port}/0")
            deadline = time.monotonic() + 10
            while True:
                try:
                    link.client.ping()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            prefix = key_prefix("bench")
            replay = RedisReplayStore(link, prefix)
            redis_rules = RedisRateRules(BucketScript(link), prefix)
            config = RateLimitingConfig(
                enabled=True,
                rules=(
                    RateLimitRule(identifier="peer_id", max_requests_per_minute=10**9, max_tokens_per_minute=10**12),
                    RateLimitRule(identifier="ip_address", max_requests_per_minute=10**9),
                ),
            )
            rules = RateLimitRules(config, limiter_factory=redis_rules.limiter, decide=redis_rules.decide)
            lease = MemberLease(link, prefix, "bench")
            lease.renew()
            limits = RedisNodeLimits(link, lease, prefix)
            book = limits.book("openai", 10**9, 10**12)
            slots = limits.slots("openai", 10**6)
            day = int(time.time() // 86_400)
            results = {
                "ping": timed(n, lambda i: link.client.ping()),
                "replay_set_nx_px": timed(n, lambda i: replay.check_and_remember(i.to_bytes(8, "big") * 4)),
                "rate_limit_2_rules": timed(n, lambda i: rules.check(f"peer{i % 100}", f"10.0.0.{i % 200}", 500)),
                "usage_admit": timed(n, lambda i: book.admit(500, Decimal("0.001"), Decimal(10**6), day, 60)),
                "usage_settle": timed(n, lambda i: book.settle(Decimal("0.001"), Decimal("0.0005"), day)),
                "slot_take": timed(n, lambda i: slots.try_take()),
                "slot_release": timed(n, lambda i: slots.release()),
            }
            print(json.dumps({"operations": n, "redis": link.client.info("server")["redis_version"], **results}, indent=2))
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
