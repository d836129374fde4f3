"""The asyncio-side request path at its edges, with real signed frames and the native codec."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from lloom_executor import _native
from lloom_executor.backends.base import Completion, CompletionRequest, LlmBackend
from lloom_executor.backends.echo import EchoBackend
from lloom_executor.config import ModelConfig, RequestHandlingConfig
from lloom_executor.outcome import Refusal, RefusalCode
from lloom_executor.p2p.llm_protocol import RequestContext
from lloom_executor.serving import RequestHandler, build_request_handler
from lloom_executor.serving.admission import TEMPLATE_TOKENS_FIXED, TEMPLATE_TOKENS_PER_MESSAGE

EXECUTOR = _native.PrivateKey.generate()
CLIENT = _native.PrivateKey.generate()
CTX = RequestContext("16Uiu2HAmTestPeer", "127.0.0.1", 0, 0.0)


def frame(
    model: str = "m",
    *,
    max_tokens: int | None = None,
    price: str = "3",
    prompt: str = "hello world",
    client: _native.PrivateKey = CLIENT,
) -> bytes:
    now = int(time.time())
    return _native.encode_signed_request(
        client, model, prompt, None, None, max_tokens, EXECUTOR.peer_id, price, "5", 1, now + 300, now
    )


def answer(raw: bytes) -> _native.DecodedResponse:
    decoded = _native.decode_response(raw)
    assert decoded.signature_valid and decoded.recovered == EXECUTOR.address_bytes
    return decoded


def handler(backend: LlmBackend | None = None, **kwargs) -> RequestHandler:
    models = [ModelConfig("m"), ModelConfig("off", enabled=False)]
    return build_request_handler(EXECUTOR, models, backend or EchoBackend(["m"]), **kwargs)


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

    async def complete(self, request: CompletionRequest) -> Completion:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        return Completion(content="done", model=request.model)

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
    """A backend without a tokenizer of its server (echo): our cl100k count plus the documented
    chat template allowance for one message decides, to the token."""
    prompt = "one two three four five six seven"
    prompt_tokens = _native.count_tokens(prompt, "cl100k_base")
    estimate = prompt_tokens + TEMPLATE_TOKENS_FIXED + TEMPLATE_TOKENS_PER_MESSAGE
    models = [ModelConfig("m", context_length=estimate + 5)]
    h = build_request_handler(EXECUTOR, models, EchoBackend(["m"]))
    decoded = answer(asyncio.run(h(frame(prompt=prompt, max_tokens=max_tokens), CTX)))
    if refused:
        assert decoded.error == (
            f"prompt ({estimate} tokens by our count, with a chat template allowance) plus max_tokens (6) "
            f"exceeds the context length {estimate + 5} of model 'm'"
        )
    else:
        assert decoded.error is None and decoded.inbound_tokens == prompt_tokens


def test_per_model_max_concurrent_requests() -> None:
    backend = SlowBackend(0.05)
    models = [ModelConfig("m", max_concurrent_requests=2)]
    h = build_request_handler(EXECUTOR, models, backend, handling=RequestHandlingConfig(max_concurrent_requests=10))

    async def many() -> list[_native.DecodedResponse]:
        return [answer(raw) for raw in await asyncio.gather(*(h(frame(prompt=f"p{i}"), CTX) for i in range(8)))]

    assert all(a.error is None for a in asyncio.run(many()))
    assert backend.peak == 2


# ---------------------------------------------------------------- events, filters, token counts
class EventSink:
    """Stands in for `Webhooks`: subscribes to `wanted`, records what is emitted."""

    def __init__(self, wanted: tuple[str, ...] = ("request_completed", "error")) -> None:
        self.wanted = set(wanted)
        self.events: list[tuple[str, dict]] = []

    def wants(self, event: str) -> bool:
        return event in self.wanted

    def emit(self, event: str, data: dict) -> None:
        self.events.append((event, dict(data)))


class FakePlugins:
    """Stands in for `PluginHost`: an on_request_finished observer and a check_response that counts."""

    checks_requests = False
    checks_responses = True
    observes = True

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.checked: list[str] = []

    def request_finished(self, event: str, data: dict) -> None:
        self.events.append((event, dict(data)))

    async def check_response(self, view, content: str):
        self.checked.append(content)
        return None


class NoUsageBackend(LlmBackend):
    """Answers without token usage, so the executor counts the output itself."""

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        return Completion("the answer, uncounted", request.model)

    async def list_models(self) -> list[str]:
        return ["m"]


def test_malformed_frames_are_reported_at_most_once_per_interval() -> None:
    """A junk flood is answered frame by frame, but reported as one `malformed` event per
    interval carrying the number held back, so it cannot push real events out of the queues."""
    sink, plugins = EventSink(), FakePlugins()
    h = handler(webhooks=sink, plugins=plugins)
    h.answers.malformed_report_interval_secs = 0.3

    async def scenario() -> list[str | None]:
        errors = [answer(await h(b"junk %d" % i, CTX)).error for i in range(5)]
        await asyncio.sleep(0.35)
        errors.append(answer(await h(b"more junk", CTX)).error)
        errors.append(answer(await h(frame(), CTX)).error)  # a real request is still reported
        return errors

    errors = asyncio.run(scenario())
    assert all(e and e.startswith("malformed request") for e in errors[:6]) and errors[6] is None
    for events in (sink.events, plugins.events):
        assert [(e, d["code"] if e == "error" else None) for e, d in events] == [
            ("error", "malformed"),
            ("error", "malformed"),
            ("request_completed", None),
        ]
        assert [d["suppressed"] for _, d in events[:2]] == [0, 4]
        assert events[0][1]["peer_id"] == CTX.peer_id and events[0][1]["reason"].startswith("malformed request")


def test_the_request_event_is_built_only_for_a_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    from lloom_executor.serving import answer as answer_module

    built: list[str] = []
    real = answer_module.request_event

    def counting(*args, **kwargs):
        event, data = real(*args, **kwargs)
        built.append(event)
        return event, data

    monkeypatch.setattr(answer_module, "request_event", counting)
    sink = EventSink(wanted=("error",))
    h = handler(webhooks=sink)
    assert answer(asyncio.run(h(frame(), CTX))).error is None  # nobody wants request_completed: not built
    assert built == [] and sink.events == []
    assert answer(asyncio.run(h(frame("nope"), CTX))).error  # an error: built once, sent
    assert built == ["error"] and [(e, d["code"]) for e, d in sink.events] == [("error", "unknown_model")]
    assert sink.events[0][1]["client"] == CLIENT.address and sink.events[0][1]["request_digest"].startswith("0x")


def test_plugins_view_and_event_share_client_and_digest() -> None:
    sink, plugins = EventSink(), FakePlugins()
    h = handler(webhooks=sink, plugins=plugins)
    raw = frame()
    decoded = _native.decode_request(raw)
    assert answer(asyncio.run(h(raw, CTX))).error is None
    ((event, data),) = sink.events
    assert event == "request_completed" and data == plugins.events[0][1]
    assert data["client"] == CLIENT.address and data["request_digest"] == "0x" + bytes(decoded.digest).hex()


def test_response_checks_run_once_and_only_passed_fresh_answers_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    from lloom_executor.cache.memory import MemoryCache
    from lloom_executor.pipeline.content_filter import ContentFilter

    filtered: list[str] = []
    real_check = ContentFilter.check_response

    def counting_check(self, content: str):
        filtered.append(content)
        return real_check(self, content)

    monkeypatch.setattr(ContentFilter, "check_response", counting_check)
    from lloom_executor.config.schema import ContentFilterConfig

    plugins = FakePlugins()
    backend = NoUsageBackend()
    cache = MemoryCache(1 << 20, 3600, deterministic_only=False)
    h = handler(backend, plugins=plugins, cache=cache, content_filter=ContentFilter(ContentFilterConfig()))

    async def scenario() -> tuple[_native.DecodedResponse, _native.DecodedResponse]:
        fresh = answer(await h(frame(), CTX))
        cached = answer(await h(frame(client=_native.PrivateKey.generate()), CTX))  # another client, same prompt: a cache hit
        return fresh, cached

    fresh, cached = asyncio.run(scenario())
    assert fresh.error is None and cached.error is None and fresh.content == cached.content
    assert backend.calls == 1  # the second came from the cache
    assert plugins.checked == ["the answer, uncounted"] * 2  # once per answer, fresh or cached
    assert filtered == ["the answer, uncounted"] * 2  # the built-in filter too

    plugins.checked.clear()

    async def refused() -> str | None:
        async def no(view, content):
            plugins.checked.append(content)
            return Refusal("not this", RefusalCode.PLUGIN_REFUSED)

        plugins.check_response = no
        cache2 = MemoryCache(1 << 20, 3600, deterministic_only=False)
        h.execution.cache = cache2
        error = answer(await h(frame(prompt="other"), CTX)).error
        assert cache2.stats().entries == 0  # refused: not cached
        return error

    assert asyncio.run(refused()) == "not this" and plugins.checked == ["the answer, uncounted"]


def test_output_tokens_are_counted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A metered model (max_tokens_per_second) whose backend reports no usage: the answer is
    tokenized once, for the token-rate charge, and that count is what is priced."""
    produced: list[int] = []

    class Governor:
        def refusal(self, model):
            return None

        def wait_reason(self, model):
            return None

        def cpu_busy(self):
            return None

        def ready_in(self, model):
            return 0.0

        def metered(self, model):
            return True

        def produced(self, model, tokens):
            produced.append(tokens)

        def started(self, model):
            pass

        def finished(self, model):
            pass

    counted: list[str] = []
    real = _native.count_tokens

    def counting(text: str, encoding: str) -> int:
        counted.append(text)
        return real(text, encoding)

    monkeypatch.setattr(_native, "count_tokens", counting)
    h = handler(NoUsageBackend(), resources=Governor())
    decoded = answer(asyncio.run(h(frame(), CTX)))
    assert decoded.error is None and counted.count("the answer, uncounted") == 1
    assert produced == [decoded.outbound_tokens] and decoded.outbound_tokens == real("the answer, uncounted", "cl100k_base")


def test_a_start_that_fails_closes_what_it_opened(tmp_path: Path) -> None:
    """The listen port is taken: start raises, and the ledger's writer and the P2P thread are gone
    (nothing start opened is left behind)."""
    import socket
    import threading

    from lloom_executor.identity import load_identity
    from lloom_executor.service import ExecutorService
    from service_rig import echo_service_config

    def ours() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith(("lloom-ledger", "lloom-p2p"))}

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = echo_service_config(
            tmp_path,
            network={
                "listen_address": f"/ip4/127.0.0.1/tcp/{port}",
                "protocols": {"enable_mdns": False, "enable_autonat": False, "enable_relay": False},
            },
        )
        before = ours()
        service = ExecutorService(config, load_identity(config.identity, environ={}))
        assert ours() - before  # the ledger's writer runs from construction
        with pytest.raises(Exception):  # noqa: B017  (whatever py-libp2p raises for a taken port)
            asyncio.run(service.start())
    assert not service.node.running and ours() == before
