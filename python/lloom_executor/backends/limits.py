"""`[openai_limits]`: usage limits enforced before the backend is called.

`LimitedBackend(inner, limits)` wraps any `LlmBackend` (meant for paid APIs such
as OpenAI, but it works on every backend) and refuses a request *before* it
reaches the backend when it would break one of:

* `max_requests_per_minute` -- a token bucket (the Cython `RateLimiter`) holding
  one minute's worth of requests, refilled continuously (rpm/60 per second).
* `max_tokens_per_minute` -- a second bucket of one minute's worth of tokens. A
  request costs its prompt tokens, counted natively with `cl100k_base`
  (system prompt + "\\n" + prompt, the rule `serving/admission.py` uses), plus the
  `max_tokens` it asks for (0 when it asks none): the worst case, which is also
  how OpenAI counts a request against its own TPM limit. Nothing is refunded when
  the answer is shorter. A request needing more than one minute's worth can never
  pass and is refused with `retry_after = inf`.
* `max_cost_per_day_usd` -- a budget per UTC day, priced with `model_prices_usd`
  (`{model: {input_per_1k, output_per_1k}}` in USD per 1000 tokens, by the
  model name requested). Admission *reserves* the worst case (prompt tokens at
  the input price + max_tokens at the output price) and refuses when
  spent + reserved + this reservation would go over the budget, so concurrent
  requests cannot overshoot it; when the answer arrives the reservation is
  replaced by its real cost from the backend's `usage` (native counts where the
  backend reports none). A backend error releases the reservation, except a
  timeout, a malformed answer or a cancelled/abandoned request, which may still be
  billed by the provider and are charged the reserved worst case. Costs are charged
  to the UTC day the answer arrives; the total resets at 00:00 UTC. With a budget
  set, a model without a price is refused (its cost could not be counted).
  The counts live in a `UsageBook` (usage_book.py): in memory for one process (the
  spend starts at zero on restart), shared by the workers of a node (one account, one budget).

A refusal raises `UsageLimitExceeded` (a `BackendRateLimited`, naming the limit,
with `retry_after` seconds) or `BudgetExceeded` (`retry_after` = seconds to UTC
midnight); their messages say which limit and when it frees up. They are
`BackendError`s, so the request path refuses them like any backend failure, by
class (`UsageLimitExceeded` and `BudgetExceeded` as usage limits).

Wiring (in `service.py`): `backend = with_limits(backend, config.openai_limits)`,
which returns the backend unchanged when no limit is set. One event loop only
(the Cython limiter is not thread-safe).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .. import _native
from ..config.schema import OpenAiLimitsConfig
from .base import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BudgetExceeded,
    Completion,
    CompletionRequest,
    CompletionStream,
    LlmBackend,
    Usage,
    UsageLimitExceeded,
    WrappingBackend,
)
from .usage_book import BUDGET, REQUESTS, TOKENS, BookRefusal, LocalUsageBook, NodeLimits, UsageBook

TOKEN_ENCODING = "cl100k_base"
SECONDS_PER_DAY = 86_400
PRICE_KEYS = ("input_per_1k", "output_per_1k")
_THOUSAND = Decimal(1000)


def limits_configured(limits: OpenAiLimitsConfig) -> bool:
    return any(v is not None for v in (limits.max_requests_per_minute, limits.max_tokens_per_minute, limits.max_cost_per_day_usd))


def with_limits(
    backend: LlmBackend, limits: OpenAiLimitsConfig, *, scope: str = "", node: NodeLimits | None = None, **kw: Any
) -> LlmBackend:
    """`backend` wrapped in a `LimitedBackend` when any `[openai_limits]` limit is set, else itself.
    With `node` (several workers) the counts are the node's, kept under `scope` (the backend's name)."""
    if not limits_configured(limits):
        return backend
    if node is not None:
        kw["book"] = node.book(scope, limits.max_requests_per_minute, limits.max_tokens_per_minute)
    return LimitedBackend(backend, limits, **kw)


def unpriced_models(limits: OpenAiLimitsConfig, model_names: list[str]) -> list[str]:
    """The served models a daily budget would refuse because they have no price (warn at startup)."""
    if limits.max_cost_per_day_usd is None:
        return []
    return [name for name in model_names if name not in limits.model_prices_usd]


def _usd(value: float | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _fmt_usd(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.000001')).normalize():f}"


def _fmt_wait(secs: float) -> str:
    if secs >= 3600:
        return f"{int(secs // 3600)} h {int(secs % 3600 // 60)} min"
    if secs >= 60:
        return f"{int(secs // 60)} min {int(secs % 60)} s"
    return f"{secs:.1f} s"


@dataclass(frozen=True)
class ModelPrice:
    input_per_1k: Decimal
    output_per_1k: Decimal

    def cost(self, inbound: int, outbound: int) -> Decimal:
        return (inbound * self.input_per_1k + outbound * self.output_per_1k) / _THOUSAND


def parse_prices(table: dict[str, dict[str, float]]) -> dict[str, ModelPrice]:
    """`model_prices_usd` checked: ValueError for unknown keys or negative prices (a missing key is 0)."""
    out = {}
    for model, entry in table.items():
        if not isinstance(entry, dict):
            raise ValueError(  # a config value of the wrong shape, reported like every config error
                f"[openai_limits].model_prices_usd.{model}: expected a table with {' and '.join(PRICE_KEYS)}"
            )
        unknown = set(entry) - set(PRICE_KEYS)
        if unknown:
            raise ValueError(
                f"[openai_limits].model_prices_usd.{model}: unknown key(s) {sorted(unknown)}; use {' and '.join(PRICE_KEYS)}"
            )
        values = {}
        for key in PRICE_KEYS:
            raw = entry.get(key, 0)
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw < 0:
                raise ValueError(f"[openai_limits].model_prices_usd.{model}.{key}: expected a non-negative number, got {raw!r}")
            values[key] = _usd(raw)
        out[model] = ModelPrice(**values)
    return out


@dataclass
class _Ticket:
    """One admitted request: its worst-case cost reservation (0 without a budget)."""

    model: str
    prompt_tokens: int
    reserved: Decimal
    open: bool = True


class LimitedBackend(WrappingBackend):
    """`inner` behind the `[openai_limits]` checks (see the module doc).

    `clock` is monotonic seconds for the per-minute buckets (None: the limiter's C
    clock), `wall_clock` epoch seconds for the UTC day of the budget; tests inject both.
    """

    def __init__(
        self,
        inner: LlmBackend,
        limits: OpenAiLimitsConfig,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        *,
        token_encoding: str = TOKEN_ENCODING,
        book: UsageBook | None = None,
    ) -> None:
        super().__init__(inner)
        self.limits = limits
        self.prices = parse_prices(dict(limits.model_prices_usd))
        self.token_encoding = token_encoding
        self._wall = wall_clock
        self.book: UsageBook = (
            book if book is not None else LocalUsageBook(limits.max_requests_per_minute, limits.max_tokens_per_minute, clock)
        )
        self.budget = _usd(limits.max_cost_per_day_usd) if limits.max_cost_per_day_usd is not None else None
        self.refusals: dict[str, int] = {}  # limit name -> refusals

    def __repr__(self) -> str:
        return f"LimitedBackend({self.inner!r})"

    def __getattr__(self, name: str) -> Any:
        """Other attributes (base_url, backend_type, ...) are the inner backend's."""
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def spent_today(self) -> Decimal:
        """Settled cost of the current UTC day (the node's, when the book is shared)."""
        return self.book.status(self._today()).spent_today

    @property
    def reserved(self) -> Decimal:
        """Worst-case cost of the requests in flight."""
        return self.book.status(self._today()).reserved

    # ------------------------------------------------------------------ the day
    def _today(self) -> int:
        return int(self._wall() // SECONDS_PER_DAY)

    def seconds_to_reset(self) -> float:
        return max(0.0, (self._today() + 1) * SECONDS_PER_DAY - self._wall())

    # ------------------------------------------------------------------ admission
    def prompt_tokens(self, prompt: str, system_prompt: str | None) -> int:
        text = prompt if system_prompt is None else system_prompt + "\n" + prompt
        return _native.count_tokens(text, self.token_encoding)

    def _refuse(self, limit: str) -> None:
        self.refusals[limit] = self.refusals.get(limit, 0) + 1

    def admit(self, request: CompletionRequest) -> _Ticket:
        """Check every limit without spending; then debit them all. Raises on the first limit hit."""
        model = request.model
        prompt_tokens = self.prompt_tokens(request.prompt, request.system_prompt)
        out_tokens = request.max_tokens or 0
        reserve = Decimal(0)
        if self.budget is not None:
            price = self.prices.get(model)
            if price is None:
                self._refuse(BUDGET)
                raise BudgetExceeded(
                    f"[openai_limits] model {model!r} has no price in model_prices_usd, so max_cost_per_day_usd "
                    f"cannot be enforced for it; add model_prices_usd.{model} = {{ input_per_1k = ..., output_per_1k = ... }}"
                )
            reserve = price.cost(prompt_tokens, out_tokens)
        tokens = prompt_tokens + out_tokens
        refusal = self.book.admit(tokens, reserve, self.budget, self._today(), self.seconds_to_reset())
        if refusal is not None:
            self._refuse(refusal.limit)
            raise self._refusal_error(refusal, reserve, prompt_tokens, out_tokens)
        return _Ticket(model, prompt_tokens, reserve)

    def _refusal_error(self, refusal: BookRefusal, reserve: Decimal, prompt_tokens: int, out_tokens: int) -> BackendError:
        """The refusal, in words that name the limit and when it frees up."""
        wait = refusal.wait
        if refusal.limit == BUDGET:
            in_flight = f", {_fmt_usd(refusal.reserved)} reserved by requests in flight" if refusal.reserved else ""
            return BudgetExceeded(
                f"[openai_limits] max_cost_per_day_usd = {self.budget} would be exceeded: {_fmt_usd(refusal.spent)} "
                f"spent today (UTC){in_flight}, this request may cost up to {_fmt_usd(reserve)}; "
                f"the budget resets at 00:00 UTC, in {_fmt_wait(wait)}",
                retry_after=wait,
            )
        if refusal.limit == REQUESTS:
            return UsageLimitExceeded(
                f"[openai_limits] max_requests_per_minute = {self.limits.max_requests_per_minute} reached; "
                f"the next request is allowed in {_fmt_wait(wait)}",
                limit=REQUESTS,
                retry_after=wait,
            )
        tpm = self.limits.max_tokens_per_minute
        need = f"this request needs {prompt_tokens + out_tokens} tokens (prompt {prompt_tokens} + max_tokens {out_tokens})"
        if math.isinf(wait):
            message = f"[openai_limits] {need}, more than max_tokens_per_minute = {tpm} allows; it can never pass (ask fewer max_tokens)"
        else:
            message = f"[openai_limits] max_tokens_per_minute = {tpm} reached: {need}; enough are free in {_fmt_wait(wait)}"
        return UsageLimitExceeded(message, limit=TOKENS, retry_after=wait)

    def settle(self, ticket: _Ticket, inbound: int | None, outbound: int | None, content: str = "") -> Decimal:
        """Replace the reservation by the real cost; returns it (0 without a budget)."""
        if not ticket.open:
            return Decimal(0)
        ticket.open = False
        cost = Decimal(0)
        if self.budget is not None:
            if inbound is None:
                inbound = ticket.prompt_tokens
            if outbound is None:
                outbound = _native.count_tokens(content, self.token_encoding)
            cost = self.prices[ticket.model].cost(inbound, outbound)
        self.book.settle(ticket.reserved, cost, self._today())
        return cost

    def release(self, ticket: _Ticket, exc: BaseException | None) -> None:
        """The request failed: free its reservation, or charge it when the provider may have billed it."""
        if not ticket.open:
            return
        ticket.open = False
        billable = exc is None or isinstance(exc, (BackendTimeout, BackendProtocolError, asyncio.CancelledError, GeneratorExit))
        charged = ticket.reserved if billable and self.budget is not None else Decimal(0)
        self.book.settle(ticket.reserved, charged, self._today())

    def status(self) -> dict[str, Any]:
        """What is left now, for status pages and logs."""
        now = self.book.status(self._today())
        out: dict[str, Any] = {}
        if now.requests_available is not None:
            out["requests_available"] = now.requests_available
        if now.tokens_available is not None:
            out["tokens_available"] = now.tokens_available
        if self.budget is not None:
            out.update(
                budget_usd=float(self.budget),
                spent_today_usd=float(now.spent_today),
                reserved_usd=float(now.reserved),
                resets_in_secs=self.seconds_to_reset(),
            )
        out["refusals"] = dict(self.refusals)
        return out

    # ------------------------------------------------------------------ LlmBackend
    async def complete(self, request: CompletionRequest) -> Completion:
        ticket = self.admit(request)
        try:
            done = await self.inner.complete(request)
        except BaseException as exc:
            self.release(ticket, exc)
            raise
        self.settle(ticket, done.inbound_tokens, done.outbound_tokens, done.content)
        return done

    def stream(self, request: CompletionRequest) -> CompletionStream:
        """The inner stream, admitted when the request goes out (the first `__anext__`)."""

        async def source(cs: CompletionStream) -> AsyncIterator[str | Usage]:
            ticket = self.admit(request)
            failure: BaseException | None = None
            try:
                async with self.inner.stream(request) as inner:
                    async for delta in inner:
                        yield delta
                    cs.model = inner.model
                    done = inner.completion
                assert done is not None
                self.settle(ticket, done.inbound_tokens, done.outbound_tokens, done.content)
                yield Usage(done.inbound_tokens, done.outbound_tokens, done.token_source)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                if ticket.open:  # failed, or abandoned mid-stream (billable)
                    self.release(ticket, failure if failure is not None else GeneratorExit())

        return CompletionStream(request.model, source)


__all__ = [
    "BackendError",
    "BudgetExceeded",
    "LimitedBackend",
    "ModelPrice",
    "UsageLimitExceeded",
    "limits_configured",
    "parse_prices",
    "unpriced_models",
    "with_limits",
]
