"""The state a node shares, built once for `service.py`: nothing, SQLite, or Redis.

- one process: nothing shared (`SharedParts()`: in-memory replay guard and buckets);
- `--workers N`: the workers of one machine share a SQLite file (`workers/shared_state.py`);
- `[clustering] enabled` with `shared_state_backend = "redis"`: every member (and every worker
  of every member) shares Redis (`redis_state.py`, `redis_limits.py`).

All three give the same three pieces (a replay store, the rate-limit rules, the backends'
node limits), so the request path does not know which one it runs on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.usage_book import NodeLimits
from ..config import Config, RateLimitingConfig
from ..metrics.collector import Metrics
from ..pipeline.ratelimits import RateLimitRules
from ..pipeline.replay import ReplayStore
from ..workers.role import WorkerRole
from ..workers.shared_limits import SharedNodeLimits
from ..workers.shared_state import NodeState, SharedBucket, SharedReplayStore
from .redis_limits import MemberLease, RedisNodeLimits, member_id
from .redis_link import RedisLink
from .redis_state import BucketScript, RedisRateRules, RedisReplayStore, key_prefix

log = logging.getLogger(__name__)


def uses_redis(config: Config) -> bool:
    clustering = config.clustering
    return clustering.enabled and clustering.shared_state_backend == "redis"


@dataclass
class SharedParts:
    """What the request path shares; None fields: the one-process defaults."""

    replay: ReplayStore | None = None
    node_limits: NodeLimits | None = None
    rate_limits: Callable[[RateLimitingConfig], RateLimitRules] = RateLimitRules
    health: Callable[[], dict[str, Any] | None] = lambda: None
    closers: list[Callable[[], None]] = field(default_factory=list)
    link: RedisLink | None = None

    def watch(self, metrics: Metrics) -> None:
        """Export the shared store's up gauge and failure counter (Redis only)."""
        link = self.link
        if link is not None:
            metrics.watch_shared_state(lambda: (link.reachable, link.failures))

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def sqlite_parts(data_dir: Path, role: WorkerRole) -> SharedParts:
    state = NodeState.in_directory(data_dir)
    state.forget_worker(role.index, day=int(time.time() // 86_400))

    def rules(config: RateLimitingConfig) -> RateLimitRules:
        return RateLimitRules(
            config,
            clock=time.time,
            limiter_factory=lambda i, r: SharedBucket(state, i, r.max_requests_per_minute, r.max_tokens_per_minute, r.burst_size),
            atomic=state.transaction,
        )

    return SharedParts(SharedReplayStore(state), SharedNodeLimits(state, role.index), rules, closers=[state.close])


def redis_parts(config: Config, namespace: str, role: WorkerRole) -> SharedParts:
    """Connect (no request is needed: a Redis that is down now is reported and retried),
    warn when Redis keeps no append-only file, and start this member's lease."""
    clustering = config.clustering
    assert clustering.redis_url is not None  # config/rules.py requires it with this backend
    link = RedisLink(clustering.redis_url)
    link.check_persistence()
    prefix = key_prefix(namespace)
    lease = MemberLease(link, prefix, member_id(clustering.node_id or "member", role.index))
    lease.start()
    script = BucketScript(link)

    def rules(rate_config: RateLimitingConfig) -> RateLimitRules:
        redis_rules = RedisRateRules(script, prefix)
        return RateLimitRules(rate_config, clock=time.time, limiter_factory=redis_rules.limiter, decide=redis_rules.decide)

    log.info("shared state: redis (member %s); replay guard, rate limits and [openai_limits] shared", lease.member)
    return SharedParts(
        RedisReplayStore(link, prefix),
        RedisNodeLimits(link, lease, prefix),
        rules,
        lambda: link.health().as_dict(),
        [link.close, lease.stop],
        link=link,
    )


def build_shared_parts(config: Config, role: WorkerRole, data_dir: Path, namespace: str) -> SharedParts:
    """The parts for this process: Redis when clustered with it, SQLite with several workers."""
    if uses_redis(config):
        return redis_parts(config, namespace, role)
    if role.several:
        return sqlite_parts(data_dir, role)
    return SharedParts()


__all__ = ["SharedParts", "build_shared_parts", "uses_redis"]
