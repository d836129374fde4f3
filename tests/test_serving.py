"""The asyncio-side request path at its edges, with real signed frames and the native codec."""
from __future__ import annotations

import asyncio
import time

import pytest

from lloom_executor import _native
from lloom_executor.backends.base import Completion, LlmBackend
from lloom_executor.backends.echo import EchoBackend
from lloom_executor.config import ModelConfig, RequestHandlingConfig
from lloom_executor.p2p.llm_protocol import RequestContext
from lloom_executor.serving import BasicRequestHandler

EXECUTOR = _native.PrivateKey.generate()
CLIENT = _native.PrivateKey.generate()
CTX = RequestContext("16Uiu2HAmTestPeer", "127.0.0.1", 0, 0.0)


def frame(model: str = "m", *, max_tokens: int | None = None, price: str = "3", prompt: str = "hello world") -> bytes:
    now = int(time.time())
    return _native.encode_signed_request(CLIENT, model, prompt, None, None, max_tokens, EXECUTOR.peer_id, price, "5", 1, now + 300, now)


def answer(raw: bytes) -> _native.DecodedResponse:
    decoded = _native.decode_response(raw)
    assert decoded.signature_valid and decoded.recovered == EXECUTOR.address_bytes
    return decoded


def handler(backend: LlmBackend | None = None, **kwargs) -> BasicRequestHandler:
    models = [ModelConfig("m"), ModelConfig("off", enabled=False)]
    return BasicRequestHandler(EXECUTOR, models, backend or EchoBackend(["m"]), **kwargs)


def test_alias_resolves_and_answer_names_the_model() -> None:
    h = handler(aliases={"fast": "m", "dead": "off"})
    ok = answer(asyncio.run(h(frame("fast"), CTX)))
    assert ok.error is None and ok.model_used == "m" and ok.content == "echo: hello world"
    refused = answer(asyncio.run(h(frame("dead"), CTX)))
    assert refused.error == "model 'dead' is not served here; available: ['m']" and refused.model_used == "dead"


@pytest.mark.parametrize("max_tokens, refused", [(99, False), (100, False), (101, True)])
def test_max_tokens_per_request_edge(max_tokens: int, refused: bool) -> None:
    h = handler(handling=RequestHandlingConfig(max_tokens_per_request=100))
    decoded = answer(asyncio.run(h(frame(max_tokens=max_tokens), CTX)))
    if refused:
        assert decoded.error == "max_tokens 101 exceeds this executor's limit of 100"
    else:
        assert decoded.error is None


def test_exact_cost_in_wei_for_huge_prices() -> None:
    price = str(10**40 + 7)
    decoded = answer(asyncio.run(handler()(frame(price=price), CTX)))
    assert decoded.inbound_tokens == _native.count_tokens("hello world", "cl100k_base")
    assert int(decoded.total_cost) == decoded.inbound_tokens * (10**40 + 7) + decoded.outbound_tokens * 5


@pytest.mark.parametrize("price", ["1.5", "-3", "١٢", "²", "0x10", ""])
def test_non_integer_prices_are_refused_with_a_signed_error(price: str) -> None:
    decoded = answer(asyncio.run(handler()(frame(price=price), CTX)))
    assert decoded.error and decoded.error.startswith("inbound_price must be a whole number of wei")


class SlowBackend(LlmBackend):
    """Counts how many completions run at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.running = 0
        self.peak = 0

    async def complete(self, model, prompt, system_prompt=None, temperature=None, max_tokens=None) -> Completion:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        return Completion(content="done", model=model)

    async def list_models(self) -> list[str]:
        return ["m"]


def test_max_concurrent_requests_bounds_backend_calls() -> None:
    backend = SlowBackend(0.05)
    h = handler(backend, handling=RequestHandlingConfig(max_concurrent_requests=3))

    async def many() -> list[_native.DecodedResponse]:
        return [answer(raw) for raw in await asyncio.gather(*(h(frame(prompt=f"p{i}"), CTX) for i in range(12)))]

    answers = asyncio.run(many())
    assert all(a.error is None for a in answers)
    assert backend.peak == 3


def test_request_timeout_gives_a_signed_error() -> None:
    h = handler(SlowBackend(5), handling=RequestHandlingConfig(request_timeout_secs=0.2))
    decoded = answer(asyncio.run(h(frame(), CTX)))
    assert decoded.error == "no answer within request_timeout_secs (0.2 s)" and decoded.total_cost == "0"


def test_draining_refuses_new_work() -> None:
    h = handler()
    h.draining = True
    decoded = answer(asyncio.run(h(frame(), CTX)))
    assert decoded.error and "shutting down" in decoded.error


@pytest.mark.parametrize("max_tokens, refused", [(None, False), (5, False), (6, True)])
def test_context_length_edge(max_tokens: int | None, refused: bool) -> None:
    prompt = "one two three four five six seven"
    prompt_tokens = _native.count_tokens(prompt, "cl100k_base")
    models = [ModelConfig("m", context_length=prompt_tokens + 5)]
    h = BasicRequestHandler(EXECUTOR, models, EchoBackend(["m"]))
    decoded = answer(asyncio.run(h(frame(prompt=prompt, max_tokens=max_tokens), CTX)))
    if refused:
        assert decoded.error == (
            f"prompt ({prompt_tokens} tokens) plus max_tokens (6) exceeds the context length {prompt_tokens + 5} of model 'm'"
        )
    else:
        assert decoded.error is None and decoded.inbound_tokens == prompt_tokens


def test_per_model_max_concurrent_requests() -> None:
    backend = SlowBackend(0.05)
    models = [ModelConfig("m", max_concurrent_requests=2)]
    h = BasicRequestHandler(EXECUTOR, models, backend, handling=RequestHandlingConfig(max_concurrent_requests=10))

    async def many() -> list[_native.DecodedResponse]:
        return [answer(raw) for raw in await asyncio.gather(*(h(frame(prompt=f"p{i}"), CTX) for i in range(8)))]

    assert all(a.error is None for a in asyncio.run(many()))
    assert backend.peak == 2
