"""What every response-cache backend offers, and the stored form of a cached answer.

The cache holds the backend's `Completion` (content, model, token counts), never a
signed answer: a hit still goes through pricing, signing, the receipt and the ledger,
so a client pays for and can verify a cached answer exactly like a fresh one.

Sizes: an entry counts `len(key) + len(encoded value)` bytes (the payload, not the
store's own per-entry overhead), and `max_size_gb` is in decimal gigabytes
(1 GB = 10**9 bytes). An entry larger than the whole budget is not stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import orjson

from ..backends.base import TOKEN_SOURCE_USAGE, Completion
from .key import cache_key

GB = 10**9


def max_bytes_for(max_size_gb: float) -> int:
    """The byte budget for `max_size_gb` (rounded, so 4.5e-7 GB is exactly 450 bytes)."""
    return max(0, round(max_size_gb * GB))


def encode_completion(completion: Completion) -> bytes:
    """The stored form: compact JSON with the Completion's fields (`token_source`: who counted its
    tokens, so a cached answer's ledger row says it as the first one's did)."""
    return orjson.dumps(
        {
            "content": completion.content,
            "model": completion.model,
            "inbound_tokens": completion.inbound_tokens,
            "outbound_tokens": completion.outbound_tokens,
            "token_source": completion.token_source,
        }
    )


def decode_completion(data: bytes) -> Completion:
    """Inverse of `encode_completion`; raises ValueError on anything else (a corrupt entry is a miss)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"cache entry is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("content"), str) or not isinstance(obj.get("model"), str):
        raise ValueError("cache entry lacks content/model")
    tokens = []
    for name in ("inbound_tokens", "outbound_tokens"):
        value = obj.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"cache entry has a bad {name}: {value!r}")
        tokens.append(value)
    source = obj.get("token_source", TOKEN_SOURCE_USAGE)  # entries stored before the field existed: usage
    if not isinstance(source, str):
        raise ValueError(f"cache entry has a bad token_source: {source!r}")
    return Completion(obj["content"], obj["model"], tokens[0], tokens[1], source)


def entry_size(key: bytes, completion: Completion) -> int:
    """Bytes this entry counts against `max_size_gb` on every backend."""
    return len(key) + len(encode_completion(completion))


@dataclass(frozen=True)
class CacheStats:
    """A snapshot for metrics and the health API. `entries`/`size_bytes` are the
    backend's last known totals (for Redis: as of this node's last write)."""

    backend: str
    available: bool
    entries: int
    size_bytes: int
    max_bytes: int
    hits: int
    misses: int
    stores: int
    evictions: int
    expirations: int
    errors: int


@dataclass
class Counters:
    """Mutable per-instance counters behind `CacheStats`."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    evictions: int = 0
    expirations: int = 0
    errors: int = 0
    entries: int = 0
    size_bytes: int = 0

    def snapshot(self, backend: str, available: bool, max_bytes: int) -> CacheStats:
        return CacheStats(
            backend,
            available,
            self.entries,
            self.size_bytes,
            max_bytes,
            self.hits,
            self.misses,
            self.stores,
            self.evictions,
            self.expirations,
            self.errors,
        )


@runtime_checkable
class ResponseCache(Protocol):
    """One small interface for the response cache, whatever holds it.

    `get`/`put` never raise for the store's own failures and never hold a request
    longer than the backend's small operation timeout: a broken store is a miss.
    """

    backend: str
    deterministic_only: bool

    @property
    def available(self) -> bool: ...

    def key_for(
        self, model: str, system_prompt: str | None, prompt: str, temperature: float | None, max_tokens: int | None
    ) -> bytes | None: ...

    async def get(self, key: bytes) -> Completion | None: ...

    async def put(self, key: bytes, completion: Completion) -> None: ...

    def stats(self) -> CacheStats: ...

    async def clean(self, older_than_secs: float) -> int: ...

    async def close(self) -> None: ...


class KeyedCache:
    """Shared by the backends: the key under this cache's `deterministic_only` policy."""

    deterministic_only: bool = True

    def key_for(
        self, model: str, system_prompt: str | None, prompt: str, temperature: float | None, max_tokens: int | None
    ) -> bytes | None:
        return cache_key(model, system_prompt, prompt, temperature, max_tokens, deterministic_only=self.deterministic_only)
