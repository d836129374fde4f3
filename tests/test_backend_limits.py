"""`[openai_limits]` (backends/limits.py): every limit at its edge with injected clocks, the
UTC-day reset, cost from the backend's real usage (the OpenAI wire test server), streaming,
and the signed refusal the serving path sends."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from lloom_executor import _native
from lloom_executor.backends.base import (
    BackendError,
    BackendProtocolError,
    BackendRateLimited,
    BackendServerError,
    BackendTimeout,
    BudgetExceeded,
    Completion,
    CompletionRequest,
    LlmBackend,
    UsageLimitExceeded,
)
from lloom_executor.backends.echo import EchoBackend
from lloom_executor.backends.limits import LimitedBackend, limits_configured, unpriced_models, with_limits
from lloom_executor.backends.openai_compat import OpenAICompatibleBackend
from lloom_executor.config import ModelConfig
from lloom_executor.config.schema import OpenAiLimitsConfig
from lloom_executor.p2p.llm_protocol import RequestContext
from lloom_executor.serving import build_request_handler
from openai_server import OpenAIServer

T = TypeVar("T")
DAY = 86_400
MIDNIGHT = 20_000 * DAY  # some UTC midnight


class Clock:
    """One fake time for both clocks: `mono` for the minute buckets, `wall` for the UTC day."""

    def __init__(self, wall: float = MIDNIGHT + 12 * 3600) -> None:
        self.wall = wall
        self.mono = 1000.0

    def advance(self, secs: float) -> None:
        self.wall += secs
        self.mono += secs


class CountingEcho(EchoBackend):
    def __init__(self, models: tuple[str, ...] | list[str] = ("m",)) -> None:
        super().__init__(list(models))
        self.calls = 0
        self.label = ""

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        return await super().complete(request)


def limited(inner: LlmBackend, clock: Clock, **limits: Any) -> LimitedBackend:
    return LimitedBackend(inner, OpenAiLimitsConfig(**limits), clock=lambda: clock.mono, wall_clock=lambda: clock.wall)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def tokens(text: str) -> int:
    return _native.count_tokens(text, "cl100k_base")


# -- requests per minute ---------------------------------------------------------------------
def test_requests_per_minute_edge() -> None:
    clock, inner = Clock(), CountingEcho()
    b = limited(inner, clock, max_requests_per_minute=3)

    async def go() -> None:
        for _ in range(3):  # just under and at the limit
            assert (await b.complete(CompletionRequest("m", "hi"))).content == "echo: hi"
        with pytest.raises(UsageLimitExceeded) as over:  # over
            await b.complete(CompletionRequest("m", "hi"))
        assert inner.calls == 3  # refused before the backend
        exc = over.value
        assert isinstance(exc, BackendRateLimited) and isinstance(exc, BackendError)
        assert exc.limit == "max_requests_per_minute" and exc.retry_after == pytest.approx(20.0)
        assert "max_requests_per_minute = 3 reached" in str(exc) and "allowed in 20.0 s" in str(exc)
        clock.advance(19.9)
        with pytest.raises(UsageLimitExceeded) as still:
            await b.complete(CompletionRequest("m", "hi"))
        assert still.value.retry_after == pytest.approx(0.1, abs=1e-6)
        clock.advance(0.1)  # one request's worth has refilled
        await b.complete(CompletionRequest("m", "hi"))
        with pytest.raises(UsageLimitExceeded):
            await b.complete(CompletionRequest("m", "hi"))
        assert inner.calls == 4 and b.refusals == {"max_requests_per_minute": 3}

    run(go())


# -- tokens per minute -----------------------------------------------------------------------
def test_tokens_per_minute_edge_counts_prompt_plus_max_tokens() -> None:
    clock, inner = Clock(), CountingEcho()
    b = limited(inner, clock, max_tokens_per_minute=100)
    prompt = "one two three"
    p = tokens(prompt)

    async def go() -> None:
        await b.complete(CompletionRequest("m", prompt, max_tokens=60 - p))  # 60 of 100
        await b.complete(CompletionRequest("m", prompt, max_tokens=40 - p))  # exactly 100: at the edge
        assert inner.calls == 2
        with pytest.raises(UsageLimitExceeded) as over:  # one token over
            await b.complete(CompletionRequest("m", prompt, max_tokens=1))
        exc = over.value
        assert exc.limit == "max_tokens_per_minute"
        need = p + 1  # refills at 100/60 tokens per second
        assert exc.retry_after == pytest.approx(need * 60 / 100, rel=1e-6)
        assert f"needs {need} tokens (prompt {p} + max_tokens 1)" in str(exc)
        assert "max_tokens_per_minute = 100 reached" in str(exc)
        clock.advance(need * 60 / 100)
        await b.complete(CompletionRequest("m", prompt, max_tokens=1))
        # More than one minute's worth can never pass.
        clock.advance(120)
        with pytest.raises(UsageLimitExceeded) as never:
            await b.complete(CompletionRequest("m", prompt, max_tokens=101 - p))
        assert never.value.retry_after is not None and math.isinf(never.value.retry_after)
        assert "can never pass" in str(never.value)
        await b.complete(CompletionRequest("m", prompt, max_tokens=100 - p))  # exactly the capacity passes
        assert inner.calls == 4

    run(go())


def test_system_prompt_counts_toward_tokens() -> None:
    clock = Clock()
    b = limited(CountingEcho(), clock, max_tokens_per_minute=50)
    assert b.prompt_tokens("hello world", "be brief") == tokens("be brief\nhello world")


def test_rate_refusal_spends_nothing() -> None:
    """A token refusal must not eat a request, and a request refusal must not eat tokens."""
    clock = Clock()
    b = limited(CountingEcho(), clock, max_requests_per_minute=2, max_tokens_per_minute=10)

    async def go() -> None:
        with pytest.raises(UsageLimitExceeded, match="max_tokens_per_minute"):
            await b.complete(CompletionRequest("m", "x", max_tokens=50))
        await b.complete(CompletionRequest("m", "x", max_tokens=2))
        await b.complete(CompletionRequest("m", "x", max_tokens=2))
        with pytest.raises(UsageLimitExceeded, match="max_requests_per_minute"):
            await b.complete(CompletionRequest("m", "x", max_tokens=2))
        status = b.status()
        assert status["requests_available"] == pytest.approx(0)
        assert status["tokens_available"] == pytest.approx(10 - 2 * (tokens("x") + 2))

    run(go())


# -- daily budget ----------------------------------------------------------------------------
PRICES = {"test-model": {"input_per_1k": 1.0, "output_per_1k": 2.0}}


def test_cost_from_real_usage_and_budget_edge() -> None:
    """Server usage: prompt_tokens = words, completion_tokens = answer words ("echo:" + prompt)."""
    clock = Clock()
    with OpenAIServer() as server:
        prompt = "one two three"
        assert tokens(prompt) == 3

        async def go() -> None:
            async with OpenAICompatibleBackend(server.base_url, max_retries=0) as inner:
                await scenario(limited(inner, clock, max_cost_per_day_usd=0.05, model_prices_usd=PRICES))

        async def scenario(b: LimitedBackend) -> None:
            done = await b.complete(CompletionRequest("test-model", prompt, max_tokens=10))
            assert (done.inbound_tokens, done.outbound_tokens) == (3, 4)
            assert b.spent_today == Decimal("0.011") and b.reserved == 0  # (3*1 + 4*2) / 1000
            # Worst case now: 3 in + 18 out = 0.039; 0.011 + 0.039 = 0.05 exactly: at the edge, allowed.
            await b.complete(CompletionRequest("test-model", prompt, max_tokens=18))
            assert b.spent_today == Decimal("0.022")  # charged the real cost, not the reservation
            # 0.028 left: 3 + 2*13 = 0.029 is over; 3 + 2*12 = 0.027 is under.
            with pytest.raises(BudgetExceeded) as over:
                await b.complete(CompletionRequest("test-model", prompt, max_tokens=13))
            exc = over.value
            assert "max_cost_per_day_usd = 0.05 would be exceeded" in str(exc)
            assert "$0.022 spent today" in str(exc) and "may cost up to $0.029" in str(exc)
            assert "resets at 00:00 UTC, in 12 h 0 min" in str(exc) and exc.retry_after == pytest.approx(12 * 3600)
            assert len(server.chat_requests) == 2  # the refused one never reached the backend
            await b.complete(CompletionRequest("test-model", prompt, max_tokens=12))
            assert b.spent_today == Decimal("0.033")
            status = b.status()
            assert status["spent_today_usd"] == pytest.approx(0.033) and status["budget_usd"] == 0.05

        run(go())


def test_budget_resets_at_utc_midnight() -> None:
    clock = Clock(wall=MIDNIGHT + DAY - 10)  # 10 s before the next midnight
    prices = {"m": {"input_per_1k": 0, "output_per_1k": 1000}}  # $1 per output token
    b = limited(CountingEcho(), clock, max_cost_per_day_usd=3, model_prices_usd=prices)

    async def go() -> None:
        await b.complete(CompletionRequest("m", "a b c", max_tokens=3))  # echo counts natively: "echo: a b c"
        spent = b.spent_today
        assert spent == tokens("echo: a b c")
        with pytest.raises(BudgetExceeded) as over:
            await b.complete(CompletionRequest("m", "a", max_tokens=1))
        assert over.value.retry_after == pytest.approx(10) and "in 10.0 s" in str(over.value)
        clock.advance(9.9)
        with pytest.raises(BudgetExceeded):
            await b.complete(CompletionRequest("m", "a", max_tokens=1))
        clock.advance(0.1)  # 00:00 UTC
        done = await b.complete(CompletionRequest("m", "a", max_tokens=1))
        assert done.content == "echo: a" and b.spent_today == tokens("echo: a")
        assert b.seconds_to_reset() == pytest.approx(DAY)

    run(go())


def test_unpriced_model_is_refused_under_a_budget() -> None:
    b = limited(CountingEcho(["m", "free"]), Clock(), max_cost_per_day_usd=1, model_prices_usd={"m": {"input_per_1k": 1}})
    with pytest.raises(BudgetExceeded, match="'free' has no price in model_prices_usd"):
        run(b.complete(CompletionRequest("free", "hi")))
    run(b.complete(CompletionRequest("m", "hi", max_tokens=5)))  # a missing output price is 0


def test_unpriced_models_are_listed_for_a_startup_warning() -> None:
    limits = OpenAiLimitsConfig(max_cost_per_day_usd=1, model_prices_usd={"m": {"input_per_1k": 1}})
    assert unpriced_models(limits, ["m", "free"]) == ["free"]
    assert unpriced_models(OpenAiLimitsConfig(max_requests_per_minute=1), ["free"]) == []


def test_bad_price_table_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        limited(CountingEcho(), Clock(), max_cost_per_day_usd=1, model_prices_usd={"m": {"input": 1}})
    with pytest.raises(ValueError, match="non-negative"):
        limited(CountingEcho(), Clock(), max_cost_per_day_usd=1, model_prices_usd={"m": {"input_per_1k": -1}})


class Gate(EchoBackend):
    """Holds every completion until released; raises `fail` instead when set."""

    def __init__(self) -> None:
        super().__init__(["m"])
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def complete(self, request: CompletionRequest) -> Completion:
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return await super().complete(request)


def test_requests_in_flight_reserve_their_worst_case() -> None:
    prices = {"m": {"input_per_1k": 0, "output_per_1k": 1000}}
    inner = Gate()
    b = limited(inner, Clock(), max_cost_per_day_usd=10, model_prices_usd=prices)

    async def go() -> None:
        first = asyncio.ensure_future(b.complete(CompletionRequest("m", "x", max_tokens=5)))
        second = asyncio.ensure_future(b.complete(CompletionRequest("m", "x", max_tokens=5)))
        await asyncio.sleep(0)
        assert b.reserved == 10
        with pytest.raises(BudgetExceeded, match=r"\$10 reserved by requests in flight"):
            await b.complete(CompletionRequest("m", "x", max_tokens=1))
        inner.release.set()
        await asyncio.gather(first, second)
        assert b.reserved == 0 and b.spent_today == 2 * tokens("echo: x")

    run(go())


@pytest.mark.parametrize(
    "error, charged",
    [(BackendServerError("boom", status=500), False), (BackendTimeout("slow"), True), (BackendProtocolError("cut short"), True)],
)
def test_failed_request_releases_or_charges_its_reservation(error: Exception, charged: bool) -> None:
    prices = {"m": {"input_per_1k": 0, "output_per_1k": 1000}}
    inner = Gate()
    inner.fail = error
    inner.release.set()
    b = limited(inner, Clock(), max_cost_per_day_usd=10, model_prices_usd=prices)
    with pytest.raises(type(error)):
        run(b.complete(CompletionRequest("m", "x", max_tokens=4)))
    assert b.reserved == 0 and b.spent_today == (4 if charged else 0)


def test_server_500_through_the_real_backend_releases_the_reservation() -> None:
    clock = Clock()
    with OpenAIServer() as server:
        inner = OpenAICompatibleBackend(server.base_url, max_retries=0)
        b = limited(inner, clock, max_cost_per_day_usd=1, model_prices_usd=PRICES)
        server.fail(500)

        async def go() -> None:
            try:
                with pytest.raises(BackendServerError):
                    await b.complete(CompletionRequest("test-model", "a b", max_tokens=5))
                assert b.reserved == 0 and b.spent_today == 0
            finally:
                await inner.close()

        run(go())


# -- streaming -------------------------------------------------------------------------------
def test_streaming_is_limited_and_settled_from_stream_usage() -> None:
    clock = Clock()
    with OpenAIServer() as server:
        inner = OpenAICompatibleBackend(server.base_url, max_retries=0)
        b = limited(inner, clock, max_requests_per_minute=1, max_cost_per_day_usd=1, model_prices_usd=PRICES)

        async def go() -> None:
            try:
                done = await b.complete_streaming(CompletionRequest("test-model", "one two three", max_tokens=10))
                assert done.content == "echo: one two three" and (done.inbound_tokens, done.outbound_tokens) == (3, 4)
                assert b.spent_today == Decimal("0.011") and b.reserved == 0
                with pytest.raises(UsageLimitExceeded, match="max_requests_per_minute = 1"):
                    await b.complete_streaming(CompletionRequest("test-model", "again", max_tokens=10))
                assert len(server.chat_requests) == 1
            finally:
                await inner.close()

        run(go())


# -- wiring ----------------------------------------------------------------------------------
def test_with_limits_wraps_only_when_configured() -> None:
    inner = CountingEcho()
    assert with_limits(inner, OpenAiLimitsConfig()) is inner and not limits_configured(OpenAiLimitsConfig())
    wrapped = with_limits(inner, OpenAiLimitsConfig(max_requests_per_minute=5))
    assert isinstance(wrapped, LimitedBackend) and wrapped.inner is inner
    inner.label = "forwarded"
    assert wrapped.label == "forwarded"  # public attributes are the inner backend's
    with pytest.raises(AttributeError):
        _ = wrapped._latency  # private ones are not
    assert run(wrapped.list_models()) == ["m"]


def test_serving_turns_a_limit_into_a_signed_error() -> None:
    executor, client = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    ctx = RequestContext("16Uiu2HAmTestPeer", "127.0.0.1", 0, 0.0)
    inner = CountingEcho()
    backend = LimitedBackend(inner, OpenAiLimitsConfig(max_requests_per_minute=1))
    h = build_request_handler(executor, [ModelConfig("m")], backend)

    def frame(nonce: int) -> bytes:
        now = int(time.time())
        return _native.encode_signed_request(
            client, "m", "hello", None, None, 8, executor.peer_id, "1", "1", nonce, now + 300, now
        )

    async def answer(nonce: int) -> bytes:
        signed = await h(frame(nonce), ctx)
        assert signed is not None
        return signed

    ok = _native.decode_response(run(answer(1)))
    assert ok.error is None and ok.content == "echo: hello"
    refused = _native.decode_response(run(answer(2)))
    assert refused.signature_valid and refused.recovered == executor.address_bytes
    # Our own limit: the client learns that it is reached and when to retry, not the operator's settings.
    assert refused.error is not None and re.fullmatch(
        r"this executor's usage limit for the backend is reached; try again in \d+ s", refused.error
    )
    assert "openai_limits" not in refused.error and "max_requests_per_minute" not in refused.error
    assert inner.calls == 1
