"""OpenAICompatibleBackend against a real local HTTP server (tests/openai_server.py),
plus the backend registry."""
from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from openai_server import OpenAIServer, echo_content, refused_url, usage_for  # noqa: E402

from lloom_executor import _native  # noqa: E402
from lloom_executor.backends.base import (  # noqa: E402
    BackendAuthError,
    BackendError,
    BackendProtocolError,
    BackendRateLimited,
    BackendRequestError,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    Completion,
    LlmBackend,
    ModelNotAvailable,
    StreamedCompletion,
)
from lloom_executor.backends.echo import EchoBackend  # noqa: E402
from lloom_executor.backends.openai_compat import OpenAICompatibleBackend, parse_retry_after  # noqa: E402
from lloom_executor.backends.registry import create_backend, known_kinds, register_backend  # noqa: E402

MODEL = "test-model"
PROMPT = "the quick brown fox jumps"


@pytest.fixture
def srv():
    with OpenAIServer() as server:
        yield server


def run(coro_fn, *args, **kw):
    return asyncio.run(coro_fn(*args, **kw))


def backend(server_or_url, **kw) -> OpenAICompatibleBackend:
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.base_url
    kw.setdefault("backoff_base_secs", 0.01)
    kw.setdefault("timeout_secs", 10)
    return OpenAICompatibleBackend(url, **kw)


async def _complete(b: LlmBackend, *args, **kw) -> Completion:
    try:
        return await b.complete(*args, **kw)
    finally:
        await b.close()


async def _expect(exc_type, b: LlmBackend, *args, stream: bool = False, **kw) -> BackendError:
    try:
        if stream:
            await b.complete_streaming(*args, **kw)
        else:
            await b.complete(*args, **kw)
    except exc_type as exc:
        return exc
    finally:
        await b.close()
    raise AssertionError(f"expected {exc_type.__name__}")


# ---------------------------------------------------------------- basic completions


def test_completion_with_usage(srv):
    done = run(_complete, backend(srv), MODEL, PROMPT, "be brief", 0.2, 50)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    usage = usage_for(messages, 50)
    assert done == Completion(echo_content(PROMPT), MODEL, usage["prompt_tokens"], usage["completion_tokens"])


def test_usage_missing_falls_back_to_native_count(srv):
    srv.no_usage()
    done = run(_complete, backend(srv), MODEL, PROMPT, "be brief")
    assert done.content == echo_content(PROMPT)
    assert done.inbound_tokens == _native.count_tokens("be brief\n" + PROMPT, "cl100k_base")
    assert done.outbound_tokens == _native.count_tokens(done.content, "cl100k_base")


def test_request_carries_system_prompt_sampling_and_bearer(srv):
    run(_complete, backend(srv, api_key="sk-test-123"), MODEL, PROMPT, "you are terse", 0.25, 7)
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


def test_optional_fields_left_out(srv):
    run(_complete, backend(srv), MODEL, PROMPT)
    (req,) = srv.chat_requests
    assert "authorization" not in req.headers
    assert req.json == {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": False}


def test_max_tokens_cuts_answer(srv):
    done = run(_complete, backend(srv), MODEL, PROMPT, None, None, 3)
    assert done.content == "echo: the quick"
    assert done.outbound_tokens == 3


def test_connections_are_kept_alive(srv):
    async def go():
        b = backend(srv)
        try:
            for _ in range(5):
                await b.complete(MODEL, PROMPT)
            await b.complete_streaming(MODEL, PROMPT)
            await b.list_models()
        finally:
            await b.close()

    run(go)
    assert len(srv.requests) == 7
    assert len({r.connection for r in srv.requests}) == 1


# ---------------------------------------------------------------- retries


def test_429_retry_after_is_honoured(srv):
    srv.fail(429, retry_after="1")
    done = run(_complete, backend(srv), MODEL, PROMPT)
    assert done.content == echo_content(PROMPT)
    first, second = srv.chat_requests
    assert second.time - first.time >= 1.0


def test_503_retry_after_http_date_is_honoured(srv):
    # An HTTP date has 1 s resolution: "now + 2 s" truncated still asks for > ~1 s.
    when = datetime.fromtimestamp(time.time() + 2, timezone.utc)
    srv.fail(503, retry_after=when.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    run(_complete, backend(srv), MODEL, PROMPT)
    first, second = srv.chat_requests
    assert second.time - first.time >= 0.9


def test_500_retried_then_success(srv):
    srv.fail(500, times=2)
    done = run(_complete, backend(srv, max_retries=3), MODEL, PROMPT)
    assert done.content == echo_content(PROMPT)
    assert len(srv.chat_requests) == 3


def test_retries_exhausted_carries_cause(srv):
    srv.fail(500, times=None, message="GPU on fire")
    exc = run(_expect, BackendServerError, backend(srv, max_retries=2), MODEL, PROMPT)
    assert exc.status == 500 and exc.attempts == 3
    assert "GPU on fire" in str(exc) and "3 attempts" in str(exc)
    assert len(srv.chat_requests) == 3


def test_rate_limited_exhausted(srv):
    srv.fail(429, times=None, retry_after="0.05")
    exc = run(_expect, BackendRateLimited, backend(srv, max_retries=1), MODEL, PROMPT)
    assert exc.retry_after == pytest.approx(0.05)
    assert exc.status == 429 and len(srv.chat_requests) == 2


def test_no_retry_when_retry_after_exceeds_budget(srv):
    srv.fail(503, times=None, retry_after="30")
    t0 = time.monotonic()
    exc = run(_expect, BackendServerError, backend(srv, timeout_secs=2), MODEL, PROMPT)
    assert time.monotonic() - t0 < 2
    assert "no time left" in str(exc)
    assert len(srv.chat_requests) == 1


def test_401_is_auth_error_without_retry():
    with OpenAIServer(api_key="sk-right") as srv:
        exc = run(_expect, BackendAuthError, backend(srv, api_key="sk-wrong"), MODEL, PROMPT)
        assert exc.status == 401 and "Incorrect API key" in str(exc)
        assert len(srv.chat_requests) == 1
        assert srv.chat_requests[0].bearer == "sk-wrong"


def test_403_is_auth_error(srv):
    srv.fail(403)
    run(_expect, BackendAuthError, backend(srv), MODEL, PROMPT)
    assert len(srv.chat_requests) == 1


def test_other_4xx_not_retried(srv):
    srv.fail(400, message="bad temperature")
    exc = run(_expect, BackendRequestError, backend(srv), MODEL, PROMPT)
    assert exc.status == 400 and "bad temperature" in str(exc)
    assert len(srv.chat_requests) == 1


def test_connection_refused_is_unavailable():
    exc = run(_expect, BackendUnavailable, backend(refused_url(), max_retries=2), MODEL, PROMPT)
    assert isinstance(exc.__cause__, httpx.ConnectError)
    assert exc.attempts == 3


def test_drop_before_answer_retried(srv):
    srv.drop_connection()
    done = run(_complete, backend(srv), MODEL, PROMPT)
    assert done.content == echo_content(PROMPT)
    assert len(srv.chat_requests) == 2


# ---------------------------------------------------------------- timeouts and bad answers


def test_hang_times_out_within_budget(srv):
    srv.hang()
    t0 = time.monotonic()
    exc = run(_expect, BackendTimeout, backend(srv, timeout_secs=0.5), MODEL, PROMPT)
    assert 0.4 <= time.monotonic() - t0 < 2.0
    assert "0.5 s" in str(exc)


def test_hang_mid_stream_times_out(srv):
    srv.slow(0, chunk_delay=5)
    t0 = time.monotonic()
    run(_expect, BackendTimeout, backend(srv, timeout_secs=0.5), MODEL, PROMPT, stream=True)
    assert time.monotonic() - t0 < 2.0


def test_malformed_json_is_protocol_error(srv):
    srv.malformed()
    exc = run(_expect, BackendProtocolError, backend(srv), MODEL, PROMPT)
    assert "malformed JSON" in str(exc) and exc.__cause__ is not None
    assert len(srv.chat_requests) == 1


@pytest.mark.parametrize("body", [b'{"id": "x"}', b'{"choices": []}', b'{"choices": [{"message": {"content": 5}}]}', b"[]"])
def test_missing_fields_is_protocol_error(srv, body):
    srv.malformed(body)
    run(_expect, BackendProtocolError, backend(srv), MODEL, PROMPT)


@pytest.mark.parametrize("model", ["unloaded-model", "no-such-model"])
def test_model_not_available(srv, model):
    exc = run(_expect, ModelNotAvailable, backend(srv, backend_type="lmstudio"), model, PROMPT)
    assert exc.status == 404 and model in str(exc)
    assert len(srv.chat_requests) == 1


# ---------------------------------------------------------------- streaming


def test_stream_matches_non_stream_and_measures_ttft(srv):
    async def go():
        b = backend(srv, api_key="k")
        try:
            plain = await b.complete(MODEL, PROMPT, "sys", 0.1, 20)
            streamed = await b.complete_streaming(MODEL, PROMPT, "sys", 0.1, 20)
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
    assert streamed.ttft_secs is not None and 0 < streamed.ttft_secs <= streamed.duration_secs
    req = srv.chat_requests[-1]
    assert req.json["stream"] is True and req.json["stream_options"] == {"include_usage": True}
    assert req.headers["accept"] == "text/event-stream" and req.bearer == "k"


def test_stream_yields_deltas_and_ttft_reflects_latency(srv):
    srv.slow(0.3, chunk_delay=0.05)

    async def go():
        b = backend(srv)
        try:
            async with b.stream(MODEL, PROMPT) as s:
                deltas = [d async for d in s]
            return deltas, s
        finally:
            await b.close()

    deltas, s = run(go)
    assert len(deltas) == len(echo_content(PROMPT).split())
    assert "".join(deltas) == echo_content(PROMPT)
    assert s.ttft_secs >= 0.3
    assert s.completion.duration_secs >= s.ttft_secs + 0.04 * (len(deltas) - 1)


def test_stream_without_usage_counts_natively(srv):
    srv.no_usage()
    done = run(lambda: _stream_once(backend(srv), MODEL, PROMPT, "be brief"))
    assert done.inbound_tokens == _native.count_tokens("be brief\n" + PROMPT, "cl100k_base")
    assert done.outbound_tokens == _native.count_tokens(echo_content(PROMPT), "cl100k_base")


async def _stream_once(b, *args):
    try:
        return await b.complete_streaming(*args)
    finally:
        await b.close()


def test_drop_mid_stream_is_protocol_error(srv):
    srv.drop_mid_stream(after_chunks=3)
    exc = run(_expect, BackendProtocolError, backend(srv), MODEL, PROMPT, stream=True)
    assert isinstance(exc.__cause__, httpx.RemoteProtocolError)
    assert len(srv.chat_requests) == 1  # not retried once the answer started


def test_stream_status_errors_and_retries(srv):
    srv.fail(500, times=1)
    done = run(lambda: _stream_once(backend(srv), MODEL, PROMPT))
    assert done.content == echo_content(PROMPT)
    srv.fail(401)
    run(_expect, BackendAuthError, backend(srv), MODEL, PROMPT, stream=True)


def test_stream_abandoned_early_leaves_backend_usable(srv):
    async def go():
        b = backend(srv)
        try:
            async with b.stream(MODEL, PROMPT) as s:
                async for _ in s:
                    break
            return await b.complete(MODEL, PROMPT)
        finally:
            await b.close()

    assert run(go).content == echo_content(PROMPT)


def test_works_under_uvloop(srv):
    uvloop = pytest.importorskip("uvloop")

    async def go():
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        b = backend(srv)
        try:
            return await b.complete(MODEL, PROMPT), await b.complete_streaming(MODEL, PROMPT)
        finally:
            await b.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        plain, streamed = runner.run(go())
    assert plain.content == streamed.content == echo_content(PROMPT)


# ---------------------------------------------------------------- model listings


def test_list_models(srv):
    async def go():
        b = backend(srv)
        try:
            return await b.list_models()
        finally:
            await b.close()

    assert run(go) == ["test-model", "unloaded-model", "text-embedding-test"]
    assert srv.requests[-1].path == "/v1/models"


async def _details(b):
    try:
        return await b.model_details()
    finally:
        await b.close()


def test_lmstudio_model_details(srv):
    infos = run(_details, backend(srv, backend_type="lmstudio"))
    by_id = {i.id: i for i in infos}
    assert set(by_id) == {"test-model", "unloaded-model", "text-embedding-test"}
    m = by_id["test-model"]
    assert (m.loaded, m.context_length, m.architecture, m.type, m.quantization) == (True, 8192, "llama", "llm", "Q4_K_M")
    assert by_id["unloaded-model"].loaded is False and by_id["unloaded-model"].context_length == 32768
    assert by_id["text-embedding-test"].type == "embeddings"
    assert [r.path for r in srv.requests] == ["/api/v0/models"]


def test_lmstudio_details_fall_back_to_v1_models():
    with OpenAIServer(lmstudio_api=False) as srv:
        infos = run(_details, backend(srv, backend_type="lmstudio"))
        assert [i.id for i in infos] == ["test-model", "unloaded-model", "text-embedding-test"]
        assert all(i.loaded is None for i in infos)
        assert [r.path for r in srv.requests] == ["/api/v0/models", "/v1/models"]


def test_openai_details_use_v1_models_only(srv):
    infos = run(_details, backend(srv))
    assert [i.id for i in infos][0] == "test-model"
    assert [r.path for r in srv.requests] == ["/v1/models"]


# ---------------------------------------------------------------- helpers and validation


def test_parse_retry_after():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
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
def test_constructor_validation(kw):
    args = {"base_url": "http://127.0.0.1:1/v1", **kw}
    with pytest.raises(ValueError):
        OpenAICompatibleBackend(**args)


def test_root_url_for_lmstudio_rest_api():
    b = OpenAICompatibleBackend("http://localhost:1234/v1/", backend_type="lmstudio")
    assert (b.base_url, b.root_url) == ("http://localhost:1234/v1", "http://localhost:1234")
    run(b.close)


# ---------------------------------------------------------------- registry


def test_registry_builtin_kinds(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    openai = create_backend("openai")
    assert isinstance(openai, OpenAICompatibleBackend)
    assert (openai.base_url, openai.api_key, openai.backend_type) == ("https://api.openai.com/v1", "sk-env", "openai")
    lms = create_backend("lmstudio", backend="lmstudio", timeout_secs=5, max_retries=1)
    assert (lms.base_url, lms.api_key, lms.backend_type, lms.timeout_secs, lms.max_retries) == (
        "http://localhost:1234/v1",
        None,
        "lmstudio",
        5.0,
        1,
    )
    echo = create_backend("echo", models=["m"])
    assert isinstance(echo, EchoBackend)
    assert run(echo.list_models) == ["m"]
    run(openai.close)
    run(lms.close)
    assert {"openai", "lmstudio", "echo"} <= set(known_kinds())


def test_registry_end_to_end_against_server(srv):
    b = create_backend("lmstudio", base_url=srv.base_url)
    assert run(_complete, b, MODEL, PROMPT).content == echo_content(PROMPT)


def test_registry_module_class_and_entry_points(tmp_path, monkeypatch):
    (tmp_path / "my_backends.py").write_text(
        textwrap.dedent(
            """
            from lloom_executor.backends.base import Completion, LlmBackend

            class Upper(LlmBackend):
                def __init__(self, suffix=""):
                    self.suffix = suffix
                async def complete(self, model, prompt, system_prompt=None, temperature=None, max_tokens=None):
                    return Completion(prompt.upper() + self.suffix, model)
                async def list_models(self):
                    return ["upper"]

            class NotABackend:
                pass
            """
        )
    )
    dist = tmp_path / "my_backends-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-backends\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lloom_executor.backends]\nshout = my_backends:Upper\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    custom = create_backend("my_backends:Upper", suffix="!")
    assert run(custom.complete, "upper", "hi").content == "HI!"
    by_entry_point = create_backend("shout")
    assert run(by_entry_point.complete, "upper", "hey").content == "HEY"
    assert "shout" in known_kinds()
    with pytest.raises(TypeError):
        create_backend("my_backends:NotABackend")
    with pytest.raises(ValueError, match="no attribute"):
        create_backend("my_backends:Missing")
    with pytest.raises(ValueError, match="cannot import"):
        create_backend("no_such_module_xyz:Thing")


def test_registry_register_backend():
    register_backend("test-echo-twice", lambda **kw: EchoBackend(["a", "b"], **kw))
    assert run(create_backend("test-echo-twice").list_models) == ["a", "b"]
    with pytest.raises(ValueError):
        register_backend("echo", EchoBackend)


def test_registry_unknown_kind_names_known_kinds():
    with pytest.raises(ValueError) as info:
        create_backend("vllm-turbo")
    message = str(info.value)
    assert "vllm-turbo" in message
    for kind in ("openai", "lmstudio", "echo"):
        assert kind in message


def test_default_stream_on_base_class():
    done = run(EchoBackend(["m"]).complete_streaming, "m", "a b c")
    assert isinstance(done, StreamedCompletion) and done.content == "echo: a b c" and done.ttft_secs is not None
