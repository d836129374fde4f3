"""`[[rate_limiting.rules]]`: the first, cheapest admission check.

One Cython `RateLimiter` (token buckets, see `_fast/ratelimit.pyx` for the
bucket model and its memory bound) per configured rule.  A rule keys its
buckets on the client's PeerId (`identifier = "peer_id"`) or on the remote IP
address of the connection (`identifier = "ip_address"`).

A request passes only when *every* rule allows it, and a refused request is
debited from *no* rule: all rules are asked first without touching state
(`retry_after`), and only when all say yes are they debited (`try_acquire`).
Otherwise a request refused by the IP rule would still spend the peer's
allowance, and a client that waits as told would find less than promised.

`tokens` is whatever token count the caller wants charged against
`max_tokens_per_minute`; the pipeline passes the request's budget (prompt tokens
+ max_tokens), known before the backend runs.  A request needing more tokens
than the token bucket ever holds can never
pass: its refusal says so instead of naming a retry time.

A rule whose key is unknown (no remote IP, e.g. an in-process test transport)
is skipped for that request and counted in `unkeyed`: sharing one bucket among
all such clients would let one of them starve the rest.

Not thread-safe (neither are the limiters): call from the event loop only.
With several worker processes (docs/workers.md) the buckets live in a shared
store: `limiter_factory` builds each rule's `Limiter` over it and `atomic`
makes one decision (all rules asked, then all debited) one transaction, so a
client spread over workers gets its configured rate in total.  Across machines
(Redis, docs/clustering.md) `decide` does the same in one server-side script:
it gets every (rule index, key) of the request and returns each rule's wait,
having debited all of them when all waits are 0 and none otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .._fast.ratelimit import RateLimiter, monotonic
from ..config import RateLimitingConfig, RateLimitRule

log = logging.getLogger(__name__)

__all__ = ["Limiter", "RateDecision", "RuleState", "RateLimitRules", "describe_rule", "format_wait"]


class Limiter(Protocol):
    """One rule's buckets: the Cython `RateLimiter` in one process, a shared store across workers."""

    def retry_after(self, key: str, requests: int, tokens: int, now: float) -> float: ...

    def try_acquire(self, key: str, requests: int, tokens: int, now: float) -> float: ...

    def available(self, key: str, now: float) -> tuple[float, float]: ...


@dataclass(frozen=True)
class RateDecision:
    """The answer for one request.

    `retry_after_secs` is 0.0 when allowed, the wait (seconds, exact float) of
    the slowest refusing rule otherwise, `math.inf` when the request can never
    pass.  `rule_description` names that rule; `reason` is the readable text
    for the signed error answer ("" when allowed).
    """

    allowed: bool
    retry_after_secs: float = 0.0
    rule_description: str = ""
    reason: str = ""


@dataclass
class RuleState:
    """One configured rule, its limiter and its refusal counter (for metrics)."""

    index: int
    rule: RateLimitRule
    limiter: Limiter
    description: str
    refusals: int = 0

    @property
    def identifier(self) -> str:
        return self.rule.identifier


def describe_rule(rule: RateLimitRule) -> str:
    """ "60 requests/minute (burst 20) and 100000 tokens/minute per peer_id"."""
    parts = []
    if rule.max_requests_per_minute is not None:
        burst = f" (burst {rule.burst_size})" if rule.burst_size is not None else ""
        parts.append(f"{rule.max_requests_per_minute} requests/minute{burst}")
    if rule.max_tokens_per_minute is not None:
        parts.append(f"{rule.max_tokens_per_minute} tokens/minute")
    limits = " and ".join(parts) or "no limit"
    return f"{limits} per {rule.identifier}"


def format_wait(seconds: float) -> str:
    """A wait rounded *up* to 0.1 s, so a client retrying after it is never early."""
    return f"{math.ceil(seconds * 10 - 1e-9) / 10:.1f}"


class RateLimitRules:
    """All `[[rate_limiting.rules]]`; `check` admits or refuses one request.

    `clock`: monotonic seconds (default: the limiters' C clock, the epoch of
    `time.monotonic`).  `max_keys` bounds each rule's memory (see the limiter).
    With `[rate_limiting] enabled = false` every request is allowed.
    """

    def __init__(
        self,
        config: RateLimitingConfig,
        clock: Callable[[], float] | None = None,
        *,
        max_keys: int = 100_000,
        limiter_factory: Callable[[int, RateLimitRule], Limiter] | None = None,
        atomic: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
        decide: Callable[[list[tuple[int, str]], int, int], list[float]] | None = None,
    ) -> None:
        self.enabled = config.enabled
        self._clock = clock or monotonic
        self._atomic = atomic
        self._decide = decide
        self.rules: list[RuleState] = []
        self.unkeyed = 0  # rule checks skipped because the request had no such key
        if not self.enabled:
            return
        for index, rule in enumerate(config.rules):
            limiter: Limiter = (
                limiter_factory(index, rule)
                if limiter_factory is not None
                else RateLimiter(rule.max_requests_per_minute, rule.max_tokens_per_minute, rule.burst_size, max_keys=max_keys)
            )
            self.rules.append(RuleState(index, rule, limiter, describe_rule(rule)))
        log.info("rate limiting: %s", "; ".join(r.description for r in self.rules) or "enabled, no rules")

    def refusal_counts(self) -> dict[tuple[int, str], int]:
        """(rule index, identifier) -> requests refused by that rule so far."""
        return {(r.index, r.identifier): r.refusals for r in self.rules}

    def check(self, peer_id: str | None, ip: str | None, tokens: int = 0) -> RateDecision:
        """Allow and debit every rule, or refuse and debit none."""
        if not self.rules:
            return RateDecision(True)
        with self._atomic():
            return self._check(peer_id, ip, tokens)

    def _check(self, peer_id: str | None, ip: str | None, tokens: int) -> RateDecision:
        now = self._clock()
        keyed: list[tuple[RuleState, str]] = []
        worst: tuple[float, RuleState, str] | None = None
        for state in self.rules:
            key = peer_id if state.rule.identifier == "peer_id" else ip
            if not key:
                self.unkeyed += 1
                continue
            keyed.append((state, key))
        if self._decide is not None:  # ask and debit every rule in one step of the shared store
            waits = self._decide([(state.index, key) for state, key in keyed], 1, tokens)
        else:
            waits = [state.limiter.retry_after(key, 1, tokens, now) for state, key in keyed]
        for (state, key), wait in zip(keyed, waits, strict=True):
            if wait > 0.0:
                state.refusals += 1
                if worst is None or wait > worst[0]:
                    worst = (wait, state, key)
        if worst is not None:
            wait, state, key = worst
            return RateDecision(False, wait, state.description, self._reason(state, key, tokens, wait, now))
        if self._decide is not None:
            return RateDecision(True)
        for state, key in keyed:
            # Same clock reading and retry_after said 0 for every rule: this cannot refuse.
            if state.limiter.try_acquire(key, 1, tokens, now) > 0.0:  # pragma: no cover
                log.warning("rate limit %s: debit refused after a clear check", state.description)
        return RateDecision(True)

    @staticmethod
    def _reason(state: RuleState, key: str, tokens: int, wait: float, now: float) -> str:
        rule = state.rule
        if math.isinf(wait):
            return (
                f"rate limit: this request needs {tokens} tokens but the limit is "
                f"{rule.max_tokens_per_minute} tokens/minute per {rule.identifier}; it can never be served here"
                if rule.max_tokens_per_minute is not None and tokens > rule.max_tokens_per_minute
                else f"rate limit: {state.description} can never admit this request"
            )
        requests_left, tokens_left = state.limiter.available(key, now)
        exceeded = []
        if rule.max_requests_per_minute is not None and requests_left < 1:
            exceeded.append(f"{rule.max_requests_per_minute} requests/minute")
        if rule.max_tokens_per_minute is not None and tokens_left < tokens:
            exceeded.append(f"{rule.max_tokens_per_minute} tokens/minute")
        what = " and ".join(exceeded) or state.description.rsplit(" per ", 1)[0]
        return f"rate limit: {what} per {rule.identifier} exceeded; retry in {format_wait(wait)} s"
