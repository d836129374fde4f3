"""OpenAICompatibleBackend against a real local HTTP server (tests/openai_server.py):
completions, retries, streaming, model listings, and every way a call can fail, each
surfacing as one `BackendError` class whose message never holds a credential."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest

from lloom_executor import _native
from lloom_executor.backends.base import (
    REDACTED,
    BackendAuthError,
    BackendError,
    BackendProtocolError,
    BackendRateLimited,
    BackendRequestError,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    Completion,
    CompletionRequest,
    CompletionStream,
    LlmBackend,
    ModelInfo,
    ModelNotAvailable,
    StreamedCompletion,
    redact,
)
from lloom_executor.backends.echo import EchoBackend
from lloom_executor.backends.openai_compat import OpenAICompatibleBackend
from lloom_executor.retry_after import parse_retry_after
from openai_server import Behaviour, OpenAIServer, echo_content, refused_url, unresolvable_url, usage_for

MODEL = "test-model"
PROMPT = "the quick brown fox jumps"
REQUEST = CompletionRequest(MODEL, PROMPT)


T = TypeVar("T")
E = TypeVar("E", bound=BackendError)


@pytest.fixture
def srv() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


def run(coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kw: Any) -> T:
    return asyncio.run(coro_fn(*args, **kw))


def backend(server_or_url: OpenAIServer | str, **kw: Any) -> OpenAICompatibleBackend:
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.base_url
    kw.setdefault("backoff_base_secs", 0.01)
    kw.setdefault("timeout_secs", 10)
    return OpenAICompatibleBackend(url, **kw)


async def _complete(b: LlmBackend, request: CompletionRequest) -> Completion:
    try:
        return await b.complete(request)
    finally:
        await b.close()


async def _expect(exc_type: type[E], b: LlmBackend, request: CompletionRequest, *, stream: bool = False) -> E:
    try:
        if stream:
            await b.complete_streaming(request)
        else:
            await b.complete(request)
    except exc_type as exc:
        return exc
    finally:
        await b.close()
    raise AssertionError(f"expected {exc_type.__name__}")


# ---------------------------------------------------------------- basic completions


def test_completion_with_usage(srv: OpenAIServer) -> None:
    done = run(_complete, backend(srv), CompletionRequest(MODEL, PROMPT, "be brief", 0.2, 50))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    usage = usage_for(messages, 50)
    assert done == Completion(echo_content(PROMPT), MODEL, usage["prompt_tokens"], usage["completion_tokens"])


def test_usage_missing_falls_back_to_native_count(srv: OpenAIServer) -> None:
    srv.no_usage()
    done = run(_complete, backend(srv), CompletionRequest(MODEL, PROMPT, "be brief"))
    assert done.content == echo_content(PROMPT)
    assert done.inbound_tokens == _native.count_tokens("be brief\n" + PROMPT, "cl100k_base")
    assert done.outbound_tokens == _native.count_tokens(done.content, "cl100k_base")


def test_request_carries_system_prompt_sampling_and_bearer(srv: OpenAIServer) -> None:
    run(_complete, backend(srv, api_key="sk-test-123"), CompletionRequest(MODEL, PROMPT, "you are terse", 0.25, 7))
    (req,) = srv.chat_requests
    assert req.method == "POST"
    assert req.bearer == "sk-test-123"
    assert req.headers["content-type"] == "application/json"
    assert req.json == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "you are terse"}, {"role": "user", "content": PROMPT}],
        "stream": False,
        "temperature": 0.25,
        "max_tokens": 7,
    }


def test_optional_fields_left_out(srv: OpenAIServer) -> None:
    run(_complete, backend(srv), CompletionRequest(MODEL, PROMPT))
    (req,) = srv.chat_requests
    assert "authorization" not in req.headers
    assert req.json == {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": False}


def test_max_tokens_cuts_answer(srv: OpenAIServer) -> None:
    done = run(_complete, backend(srv), CompletionRequest(MODEL, PROMPT, None, None, 3))
    assert done.content == "echo: the quick"
    assert done.outbound_tokens == 3


def test_connections_are_kept_alive(srv: OpenAIServer) -> None:
    async def go() -> None:
        b = backend(srv)
        try:
            for _ in range(5):
                await b.complete(CompletionRequest(MODEL, PROMPT))
            await b.complete_streaming(CompletionRequest(MODEL, PROMPT))
            await b.list_models()
        finally:
            await b.close()

    run(go)
    assert len(srv.requests) == 7
    assert len({r.connection for r in srv.requests}) == 1


# ---------------------------------------------------------------- retries


def test_429_retry_after_is_honoured(srv: OpenAIServer) -> None:
    srv.fail(429, retry_after="1")
    done = run(_complete, backend(srv), CompletionRequest(MODEL, PROMPT))
    assert done.content == echo_content(PROMPT)
    first, second = srv.chat_requests
    assert second.time - first.time >= 1.0


def test_503_retry_after_http_date_is_honoured(srv: OpenAIServer) -> None:
    # An HTTP date has 1 s resolution: "now + 3 s" truncated is still >= 2 s after now, so
    # the wait stays over 0.9 s even when the first answer takes a second on a loaded machine.
    when = datetime.fromtimestamp(time.time() + 3, UTC)
    srv.fail(503, retry_after=when.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    run(_complete, backend(srv), CompletionRequest(MODEL, PROMPT))
    first, second = srv.chat_requests
    assert second.time - first.time >= 0.9


def test_500_retried_then_success(srv: OpenAIServer) -> None:
    srv.fail(500, times=2)
    done = run(_complete, backend(srv, max_retries=3), CompletionRequest(MODEL, PROMPT))
    assert done.content == echo_content(PROMPT)
    assert len(srv.chat_requests) == 3


def test_retries_exhausted_carries_cause(srv: OpenAIServer) -> None:
    srv.fail(500, times=None, message="GPU on fire")
    exc = run(_expect, BackendServerError, backend(srv, max_retries=2), CompletionRequest(MODEL, PROMPT))
    assert exc.status == 500 and exc.attempts == 3
    assert "GPU on fire" in str(exc) and "3 attempts" in str(exc)
    assert len(srv.chat_requests) == 3


def test_rate_limited_exhausted(srv: OpenAIServer) -> None:
    srv.fail(429, times=None, retry_after="0.05")
    exc = run(_expect, BackendRateLimited, backend(srv, max_retries=1), CompletionRequest(MODEL, PROMPT))
    assert exc.retry_after == pytest.approx(0.05)
    assert exc.status == 429 and len(srv.chat_requests) == 2


def test_no_retry_when_retry_after_exceeds_budget(srv: OpenAIServer) -> None:
    srv.fail(503, times=None, retry_after="30")
    t0 = time.monotonic()
    exc = run(_expect, BackendServerError, backend(srv, timeout_secs=2), CompletionRequest(MODEL, PROMPT))
    assert time.monotonic() - t0 < 2
    assert "no time left" in str(exc)
    assert len(srv.chat_requests) == 1


def test_401_is_auth_error_without_retry() -> None:
    with OpenAIServer(api_key="sk-right") as srv:
        exc = run(_expect, BackendAuthError, backend(srv, api_key="sk-wrong"), CompletionRequest(MODEL, PROMPT))
        assert exc.status == 401 and "Incorrect API key" in str(exc)
        assert len(srv.chat_requests) == 1
        assert srv.chat_requests[0].bearer == "sk-wrong"


def test_403_is_auth_error(srv: OpenAIServer) -> None:
    srv.fail(403)
    run(_expect, BackendAuthError, backend(srv), CompletionRequest(MODEL, PROMPT))
    assert len(srv.chat_requests) == 1


def test_other_4xx_not_retried(srv: OpenAIServer) -> None:
    srv.fail(400, message="bad temperature")
    exc = run(_expect, BackendRequestError, backend(srv), CompletionRequest(MODEL, PROMPT))
    assert exc.status == 400 and "bad temperature" in str(exc)
    assert len(srv.chat_requests) == 1


def test_connection_refused_is_unavailable() -> None:
    exc = run(_expect, BackendUnavailable, backend(refused_url(), max_retries=2), CompletionRequest(MODEL, PROMPT))
    assert isinstance(exc.__cause__, httpx.ConnectError)
    assert exc.attempts == 3


def test_drop_before_answer_retried(srv: OpenAIServer) -> None:
    srv.drop_connection()
    done = run(_complete, backend(srv), CompletionRequest(MODEL, PROMPT))
    assert done.content == echo_content(PROMPT)
    assert len(srv.chat_requests) == 2


# ---------------------------------------------------------------- timeouts and bad answers


def test_hang_times_out_within_budget(srv: OpenAIServer) -> None:
    srv.hang()
    t0 = time.monotonic()
    exc = run(_expect, BackendTimeout, backend(srv, timeout_secs=0.5), CompletionRequest(MODEL, PROMPT))
    assert 0.4 <= time.monotonic() - t0 < 2.0
    assert "0.5 s" in str(exc)


def test_hang_mid_stream_times_out(srv: OpenAIServer) -> None:
    srv.slow(0, chunk_delay=5)
    t0 = time.monotonic()
    run(_expect, BackendTimeout, backend(srv, timeout_secs=0.5), CompletionRequest(MODEL, PROMPT), stream=True)
    assert time.monotonic() - t0 < 2.0


def test_malformed_json_is_protocol_error(srv: OpenAIServer) -> None:
    srv.malformed()
    exc = run(_expect, BackendProtocolError, backend(srv), CompletionRequest(MODEL, PROMPT))
    assert "malformed JSON" in str(exc) and exc.__cause__ is not None
    assert len(srv.chat_requests) == 1


@pytest.mark.parametrize("body", [b'{"id": "x"}', b'{"choices": []}', b'{"choices": [{"message": {"content": 5}}]}', b"[]"])
def test_missing_fields_is_protocol_error(srv: OpenAIServer, body: bytes) -> None:
    srv.malformed(body)
    run(_expect, BackendProtocolError, backend(srv), CompletionRequest(MODEL, PROMPT))


@pytest.mark.parametrize("model", ["unloaded-model", "no-such-model"])
def test_model_not_available(srv: OpenAIServer, model: str) -> None:
    exc = run(_expect, ModelNotAvailable, backend(srv, backend_type="lmstudio"), CompletionRequest(model, PROMPT))
    assert exc.status == 404 and model in str(exc)
    assert len(srv.chat_requests) == 1


# ---------------------------------------------------------------- every failure: one class, no credentials

KEY = "sk-live-0123456789abcdefSECRET"
AZURE_KEY = "az-fedcba9876543210SECRET"


def keyed(server_or_url: OpenAIServer | str, **kw: Any) -> OpenAICompatibleBackend:
    """A backend holding two credentials: the bearer key and an Azure-style api-key header."""
    return backend(server_or_url, api_key=KEY, extra_headers={"api-key": AZURE_KEY}, **kw)


def clean(exc: BaseException) -> str:
    """The message, checked to hold neither credential, nor even the start of one."""
    text = str(exc)
    for secret in (KEY, AZURE_KEY):
        assert secret[:8] not in text, text
    return text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("url", [refused_url, unresolvable_url], ids=["refused", "dns"])
def test_unreachable_is_unavailable(url: Callable[[], str], stream: bool) -> None:
    target = url()
    exc = run(_expect, BackendUnavailable, keyed(target, max_retries=0), REQUEST, stream=stream)
    assert clean(exc).startswith(f"cannot connect to {target}/chat/completions: ")
    assert isinstance(exc.__cause__, httpx.ConnectError) and exc.status is None


def test_password_in_base_url_is_redacted() -> None:
    host_port = refused_url().removeprefix("http://")
    exc = run(_expect, BackendUnavailable, backend(f"http://operator:pw-0123456789@{host_port}", max_retries=0), REQUEST)
    assert "pw-0123456789" not in str(exc) and f"operator:{REDACTED}@" in str(exc)


def test_timeout_names_the_url(srv: OpenAIServer) -> None:
    srv.hang()
    exc = run(_expect, BackendTimeout, keyed(srv, timeout_secs=0.3), REQUEST)
    assert clean(exc) == f"no answer from {srv.base_url}/chat/completions within 0.3 s"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "status, exc_type",
    [(401, BackendAuthError), (403, BackendAuthError), (429, BackendRateLimited), (500, BackendServerError)],
)
def test_error_answers_quoting_our_credentials_are_redacted(
    srv: OpenAIServer, status: int, exc_type: type[BackendError], stream: bool
) -> None:
    srv.fail(status, times=None, retry_after="0", echo_credentials=True)
    exc = run(_expect, exc_type, keyed(srv, max_retries=0), REQUEST, stream=stream)
    assert type(exc) is exc_type and exc.status == status
    text = clean(exc)
    assert text.startswith(f"{srv.base_url}/chat/completions answered {status}: injected {status} ")
    assert text.endswith(f"(you sent authorization={REDACTED}, api-key={REDACTED})")


def test_401_quoting_the_refused_key_is_redacted() -> None:
    with OpenAIServer(api_key="sk-right") as srv:
        exc = run(_expect, BackendAuthError, keyed(srv), REQUEST)
    assert clean(exc).endswith(f"answered 401: Incorrect API key provided: {REDACTED}.")


def test_500_with_a_text_body_is_quoted_bounded_and_redacted(srv: OpenAIServer) -> None:
    # The key straddles the excerpt's edge: it is redacted before the cut, so no prefix survives.
    body = b"upstream failure " + b"x" * 280 + f" Bearer {KEY}\n".encode() + b"stack frame\n" * 5000
    srv.fail(500, body=body, headers={"Content-Type": "text/plain"})
    exc = run(_expect, BackendServerError, keyed(srv, max_retries=0), REQUEST)
    text = clean(exc)
    assert exc.status == 500 and "answered 500: upstream failure xxx" in text
    assert len(text) < 500 and text.endswith("...")


def test_malformed_json_quoting_the_key_is_redacted(srv: OpenAIServer) -> None:
    srv.malformed(b'{"debug": "' + KEY.encode() + b'", "choices": [')
    exc = run(_expect, BackendProtocolError, keyed(srv), REQUEST)
    assert "malformed JSON" in clean(exc) and REDACTED in str(exc)


def test_body_closed_midway_is_protocol_error_not_retried(srv: OpenAIServer) -> None:
    srv.truncate(after_bytes=20)
    exc = run(_expect, BackendProtocolError, keyed(srv, max_retries=3), REQUEST)
    assert clean(exc).startswith(f"answer from {srv.base_url}/chat/completions cut short: ")
    assert isinstance(exc.__cause__, httpx.RemoteProtocolError) and exc.status == 200
    assert len(srv.chat_requests) == 1  # the backend answered (and may bill): no second try


def test_undecodable_body_is_protocol_error(srv: OpenAIServer) -> None:
    srv.add(Behaviour(body=b"this is not gzip", headers={"Content-Encoding": "gzip"}))
    exc = run(_expect, BackendProtocolError, keyed(srv), REQUEST)
    assert "could not be decoded" in clean(exc) and isinstance(exc.__cause__, httpx.DecodingError)


class BrokenTransport(httpx.AsyncBaseTransport):
    """httpx's transport failing in a way httpx does not wrap (a bug in it or below it),
    with a message quoting the request's credentials."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"pool state corrupted while sending {request.headers['authorization']}")


@pytest.mark.parametrize("stream", [False, True])
def test_unexpected_exception_from_httpx_is_a_backend_error(srv: OpenAIServer, stream: bool) -> None:
    exc = run(_expect, BackendError, keyed(srv, transport=BrokenTransport()), REQUEST, stream=stream)
    assert type(exc) is BackendError and isinstance(exc.__cause__, RuntimeError)
    assert clean(exc) == (
        f"request to {srv.base_url}/chat/completions failed unexpectedly: "
        f"RuntimeError: pool state corrupted while sending {REDACTED}"
    )


def test_model_listing_failures_are_redacted_too(srv: OpenAIServer) -> None:
    srv.fail(500, times=None, path="/v1/models", echo_credentials=True)

    async def go() -> BackendError:
        b = keyed(srv, max_retries=0)
        try:
            await b.list_models()
        except BackendServerError as exc:
            return exc
        finally:
            await b.close()
        raise AssertionError("expected BackendServerError")

    assert f"api-key={REDACTED}" in clean(run(go))


def test_redact_replaces_longer_secrets_first() -> None:
    assert redact("Bearer abcdef and abc", ["abc", "Bearer abcdef", "", None]) == f"{REDACTED} and {REDACTED}"
    assert redact("nothing secret", []) == "nothing secret"


# ---------------------------------------------------------------- streaming


def test_stream_matches_non_stream_and_measures_ttft(srv: OpenAIServer) -> None:
    async def go() -> tuple[Completion, StreamedCompletion]:
        b = backend(srv, api_key="k")
        try:
            plain = await b.complete(CompletionRequest(MODEL, PROMPT, "sys", 0.1, 20))
            streamed = await b.complete_streaming(CompletionRequest(MODEL, PROMPT, "sys", 0.1, 20))
        finally:
            await b.close()
        return plain, streamed

    plain, streamed = run(go)
    assert isinstance(streamed, StreamedCompletion)
    assert (streamed.content, streamed.model, streamed.inbound_tokens, streamed.outbound_tokens) == (
        plain.content,
        plain.model,
        plain.inbound_tokens,
        plain.outbound_tokens,
    )
    assert streamed.ttft_secs is not None and streamed.duration_secs is not None
    assert 0 < streamed.ttft_secs <= streamed.duration_secs
    req = srv.chat_requests[-1]
    assert req.json["stream"] is True and req.json["stream_options"] == {"include_usage": True}
    assert req.headers["accept"] == "text/event-stream" and req.bearer == "k"


def test_stream_yields_deltas_and_ttft_reflects_latency(srv: OpenAIServer) -> None:
    srv.slow(0.3, chunk_delay=0.05)

    async def go() -> tuple[list[str], CompletionStream]:
        b = backend(srv)
        try:
            async with b.stream(CompletionRequest(MODEL, PROMPT)) as s:
                deltas = [d async for d in s]
            return deltas, s
        finally:
            await b.close()

    deltas, s = run(go)
    assert len(deltas) == len(echo_content(PROMPT).split())
    assert "".join(deltas) == echo_content(PROMPT)
    assert s.ttft_secs is not None and s.completion is not None and s.completion.duration_secs is not None
    assert s.ttft_secs >= 0.3
    assert s.completion.duration_secs >= s.ttft_secs + 0.04 * (len(deltas) - 1)


def test_stream_without_usage_counts_natively(srv: OpenAIServer) -> None:
    srv.no_usage()
    done = run(lambda: _stream_once(backend(srv), CompletionRequest(MODEL, PROMPT, "be brief")))
    assert done.inbound_tokens == _native.count_tokens("be brief\n" + PROMPT, "cl100k_base")
    assert done.outbound_tokens == _native.count_tokens(echo_content(PROMPT), "cl100k_base")


async def _stream_once(b: LlmBackend, request: CompletionRequest) -> StreamedCompletion:
    try:
        return await b.complete_streaming(request)
    finally:
        await b.close()


def test_drop_mid_stream_is_protocol_error(srv: OpenAIServer) -> None:
    srv.drop_mid_stream(after_chunks=3)
    exc = run(_expect, BackendProtocolError, backend(srv), CompletionRequest(MODEL, PROMPT), stream=True)
    assert isinstance(exc.__cause__, httpx.RemoteProtocolError)
    assert len(srv.chat_requests) == 1  # not retried once the answer started


def test_stream_status_errors_and_retries(srv: OpenAIServer) -> None:
    srv.fail(500, times=1)
    done = run(lambda: _stream_once(backend(srv), CompletionRequest(MODEL, PROMPT)))
    assert done.content == echo_content(PROMPT)
    srv.fail(401)
    run(_expect, BackendAuthError, backend(srv), CompletionRequest(MODEL, PROMPT), stream=True)


def test_stream_abandoned_early_leaves_backend_usable(srv: OpenAIServer) -> None:
    async def go() -> Completion:
        b = backend(srv)
        try:
            async with b.stream(CompletionRequest(MODEL, PROMPT)) as s:
                async for _ in s:
                    break
            return await b.complete(CompletionRequest(MODEL, PROMPT))
        finally:
            await b.close()

    assert run(go).content == echo_content(PROMPT)


def test_works_under_uvloop(srv: OpenAIServer) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def go() -> tuple[Completion, StreamedCompletion]:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        b = backend(srv)
        try:
            return await b.complete(REQUEST), await b.complete_streaming(REQUEST)
        finally:
            await b.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        plain, streamed = runner.run(go())
    assert plain.content == streamed.content == echo_content(PROMPT)


# ---------------------------------------------------------------- model listings


def test_list_models(srv: OpenAIServer) -> None:
    async def go() -> list[str]:
        b = backend(srv)
        try:
            return await b.list_models()
        finally:
            await b.close()

    assert run(go) == ["test-model", "unloaded-model", "text-embedding-test"]
    assert srv.requests[-1].path == "/v1/models"


async def _details(b: LlmBackend) -> list[ModelInfo]:
    try:
        return await b.model_details()
    finally:
        await b.close()


def test_lmstudio_model_details(srv: OpenAIServer) -> None:
    infos = run(_details, backend(srv, backend_type="lmstudio"))
    by_id = {i.id: i for i in infos}
    assert set(by_id) == {"test-model", "unloaded-model", "text-embedding-test"}
    m = by_id["test-model"]
    assert (m.loaded, m.context_length, m.architecture, m.type, m.quantization) == (True, 8192, "llama", "llm", "Q4_K_M")
    assert by_id["unloaded-model"].loaded is False and by_id["unloaded-model"].context_length == 32768
    assert by_id["text-embedding-test"].type == "embeddings"
    assert [r.path for r in srv.requests] == ["/api/v0/models"]


def test_lmstudio_details_fall_back_to_v1_models() -> None:
    with OpenAIServer(lmstudio_api=False) as srv:
        infos = run(_details, backend(srv, backend_type="lmstudio"))
        assert [i.id for i in infos] == ["test-model", "unloaded-model", "text-embedding-test"]
        assert all(i.loaded is None for i in infos)
        assert [r.path for r in srv.requests] == ["/api/v0/models", "/v1/models"]


def test_openai_details_use_v1_models_only(srv: OpenAIServer) -> None:
    infos = run(_details, backend(srv))
    assert infos[0].id == "test-model"
    assert [r.path for r in srv.requests] == ["/v1/models"]


# ---------------------------------------------------------------- helpers and validation


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:07 GMT", now) == 7.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("nan") is None


@pytest.mark.parametrize(
    "kw",
    [{"backend_type": "ollama"}, {"timeout_secs": 0}, {"max_retries": -1}, {"base_url": "localhost:1234"}],
)
def test_constructor_validation(kw: dict[str, Any]) -> None:
    args = {"base_url": "http://127.0.0.1:1/v1", **kw}
    with pytest.raises(ValueError):
        OpenAICompatibleBackend(**args)


def test_root_url_for_lmstudio_rest_api() -> None:
    b = OpenAICompatibleBackend("http://localhost:1234/v1/", backend_type="lmstudio")
    assert (b.base_url, b.root_url) == ("http://localhost:1234/v1", "http://localhost:1234")
    run(b.close)


def test_default_stream_on_base_class() -> None:
    done = run(EchoBackend(["m"]).complete_streaming, CompletionRequest("m", "a b c"))
    assert isinstance(done, StreamedCompletion) and done.content == "echo: a b c" and done.ttft_secs is not None


def test_echo_refuses_negative_max_tokens_as_a_backend_error() -> None:
    with pytest.raises(BackendRequestError, match="max_tokens must be >= 0"):
        run(EchoBackend(["m"]).complete, CompletionRequest("m", "a b c", max_tokens=-1))
