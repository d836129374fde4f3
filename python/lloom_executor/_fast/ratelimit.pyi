"""Type stubs for lloom_executor._fast.ratelimit (see the .pyx for the rationale)."""

from collections.abc import Callable, Hashable
from typing import final

__all__ = ["RateLimiter", "monotonic"]

def monotonic() -> float:
    """CLOCK_MONOTONIC_COARSE seconds read from C (the limiter's default clock)."""

@final  # a Cython cdef class: not subclassable at runtime
class RateLimiter:
    """Request and token buckets for one rate-limit rule, keyed by identifier.

    Request-bucket capacity = ``burst`` (default ``requests_per_minute``);
    token-bucket capacity = ``tokens_per_minute``; ``None``/0 = unlimited.
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None = None,
        burst: float | None = None,
        max_keys: int = 100_000,
        idle_seconds: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None: ...
    def try_acquire(self, key: Hashable, requests: float = 1, tokens: float = 0, now: float | None = None) -> float:
        """0.0 = allowed and debited; else seconds to wait (``inf`` = never), nothing debited."""
    def retry_after(self, key: Hashable, requests: float = 1, tokens: float = 0, now: float | None = None) -> float:
        """What ``try_acquire`` would return now, without touching state."""
    def available(self, key: Hashable, now: float | None = None) -> tuple[float, float]:
        """(requests, tokens) spendable now; ``inf`` for an unlimited dimension."""
    def reset(self, key: Hashable) -> bool: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...
    @property
    def requests_per_minute(self) -> float | None: ...
    @property
    def tokens_per_minute(self) -> float | None: ...
    @property
    def burst(self) -> float | None: ...
    @property
    def token_capacity(self) -> float | None: ...
    @property
    def max_keys(self) -> int: ...
    @property
    def idle_seconds(self) -> float: ...
