"""The one connection a member keeps to the shared Redis, and whether it works now.

Every shared-state call goes through `RedisLink.call`: a Redis error becomes the typed
`SharedStateUnavailable` refusal (fail closed: a request is never served without its replay
check), the link is marked down (one log line per change of state, not one per request), and
for `RETRY_SECS` afterwards calls fail at once instead of each waiting for a timeout on the
event loop.  The heartbeat thread (`members.py`) calls through it every second, so the link
comes back up by itself when Redis does, with or without traffic.

Calls are synchronous on purpose (docs/clustering.md "Numbers"): a round trip on loopback
costs tens of microseconds, and the replay step must be atomic with respect to the request it
admits.  The socket timeouts bound what one call can block the loop for when Redis is
reachable but stuck.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from ..outcome import SharedStateUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

SOCKET_TIMEOUT_SECS = 0.5  # the most one call blocks the loop on a Redis that accepted but does not answer
RETRY_SECS = 0.5  # after a failure, calls fail at once for this long (then one call tries again)


@dataclass(frozen=True)
class LinkHealth:
    """What /health/detailed and the metrics show (no host, URL or message: class names only)."""

    backend: str
    reachable: bool
    failures: int
    last_error: str | None
    appendonly: str | None  # "yes", "no", or None when the server would not say (CONFIG forbidden)

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "reachable": self.reachable,
            "failures": self.failures,
            "last_error": self.last_error,
            "appendonly": self.appendonly,
        }


class RedisLink:
    """A `redis.Redis` client (thread-safe pool) plus its up/down state."""

    def __init__(self, url: str, *, socket_timeout: float = SOCKET_TIMEOUT_SECS, retry_secs: float = RETRY_SECS) -> None:
        self.client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, decode_responses=False
        )
        self.retry_secs = retry_secs
        self.reachable = True
        self.failures = 0
        self.last_error: str | None = None
        self.appendonly: str | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def call(self, operation: Callable[[redis.Redis], T]) -> T:
        """`operation(client)`, or `SharedStateUnavailable` when Redis cannot be asked now."""
        if not self.reachable and time.monotonic() < self._retry_at:
            raise SharedStateUnavailable(self.last_error)
        try:
            result = operation(self.client)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            raise SharedStateUnavailable(type(exc).__name__) from exc
        if not self.reachable:
            self._recovered()
        return result

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = type(exc).__name__
            self._retry_at = time.monotonic() + self.retry_secs
            if self.reachable:
                self.reachable = False
                log.error(
                    "shared state (redis) unreachable (%s: %s): requests are refused until it is back", self.last_error, exc
                )

    def _recovered(self) -> None:
        with self._lock:
            if not self.reachable:
                self.reachable = True
                log.warning("shared state (redis) reachable again: serving")

    def check_persistence(self) -> None:
        """Warn when Redis does not log writes to its append-only file: a restart would then forget
        the replay digests and let captured requests be served again (docs/clustering.md)."""
        reply: dict[Any, Any]
        try:
            reply = dict(self.client.config_get("appendonly"))
        except redis.ResponseError:  # managed Redis often forbids CONFIG: INFO persistence says it too
            try:
                reply = {"appendonly": "yes" if self.client.info("persistence").get("aof_enabled") else "no"}
            except redis.RedisError:
                reply = {}
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return
        value = reply.get("appendonly") or reply.get(b"appendonly")
        self.appendonly = value.decode() if isinstance(value, bytes) else value
        if self.appendonly != "yes":
            log.warning(
                "shared state: redis runs without appendonly (%s): a redis restart forgets the replay digests, "
                "so captured requests could be served again; run it with appendonly yes (docs/clustering.md)",
                self.appendonly or "unknown",
            )

    def health(self) -> LinkHealth:
        return LinkHealth("redis", self.reachable, self.failures, self.last_error, self.appendonly)

    def close(self) -> None:
        self.client.close()


__all__ = ["LinkHealth", "RedisLink", "RETRY_SECS", "SOCKET_TIMEOUT_SECS"]
