"""The response cache (`[cache]`): memory, disk or Redis, behind one small interface.

    cache = build_cache(config.cache)          # None when [cache] enabled = false
    key = cache.key_for(model, system_prompt, prompt, temperature, max_tokens)
    hit = await cache.get(key) if key else None
    ...
    await cache.put(key, completion)

What is stored is the backend's Completion, so a hit is still priced, signed, given a
receipt and written to the ledger like any answer. See `key.py` for which requests
are cacheable (by default temperature == 0 only; None counts as non-deterministic)
and how the key is formed, `base.py` for how sizes count, and each backend's module
for how it evicts and what happens when its store fails.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import replace

from ..config.schema import CacheConfig
from .base import CacheStats, ResponseCache, decode_completion, encode_completion, entry_size, max_bytes_for
from .disk import DiskCache
from .key import cache_key, is_deterministic
from .memory import MemoryCache
from .redis_store import RedisCache

log = logging.getLogger(__name__)

__all__ = [
    "CacheStats",
    "DiskCache",
    "MemoryCache",
    "RedisCache",
    "ResponseCache",
    "build_cache",
    "cache_key",
    "clean_cache",
    "decode_completion",
    "encode_completion",
    "entry_size",
    "is_deterministic",
    "max_bytes_for",
    "parse_age",
]


def build_cache(config: CacheConfig) -> ResponseCache | None:
    """The configured cache, or None when caching is off. Connects lazily: building never
    blocks nor fails on an unreachable Redis (call `await cache.check()` to log its state)."""
    if not config.enabled:
        return None
    max_bytes = max_bytes_for(config.max_size_gb)
    if config.backend == "memory":
        cache: ResponseCache = MemoryCache(max_bytes, config.ttl_seconds, deterministic_only=config.deterministic_only)
    elif config.backend == "disk":
        cache = DiskCache(
            os.path.expanduser(config.path), max_bytes, config.ttl_seconds, deterministic_only=config.deterministic_only
        )
    elif config.backend == "redis":
        cache = RedisCache(
            config.redis.url,
            config.redis.prefix,
            max_bytes,
            config.ttl_seconds,
            deterministic_only=config.deterministic_only,
        )
    else:  # the schema's choices make this unreachable
        raise ValueError(f"unknown cache backend {config.backend!r}")
    log.info(
        "response cache: %s, %d bytes max, ttl %d s, %s",
        config.backend,
        max_bytes,
        config.ttl_seconds,
        "temperature-0 requests only" if config.deterministic_only else "all requests",
    )
    return cache


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """`7d`, `12h`, `30m`, `45s`, `2w` or plain seconds -> seconds (for `--older-than`)."""
    match = _AGE.match(text.lower())
    if match is None:
        raise ValueError(f"expected an age like 7d, 12h, 30m, 45s or a number of seconds, got {text!r}")
    return float(match.group(1)) * _UNIT[match.group(2)]


async def clean_cache(config: CacheConfig, older_than_secs: float) -> int:
    """`maintenance clean-cache`: removes entries stored at least `older_than_secs` ago from
    the configured backend (memory has nothing to clean across processes: 0); returns how many.
    Works with `enabled = false` too, so an operator can clean a cache they turned off."""
    if config.backend == "memory":
        return 0
    cache = build_cache(replace(config, enabled=True))
    assert cache is not None
    try:
        return await cache.clean(older_than_secs)
    finally:
        await cache.close()
