"""OpenAI-compatible HTTP backend (OpenAI, LM Studio, vLLM, llama.cpp server, Ollama's /v1 ...).

One pooled `httpx.AsyncClient` (keep-alive) per backend. Every call has a total
time budget of `timeout_secs` covering all its attempts; connect errors, 429 and
5xx are retried up to `max_retries` times with exponential backoff plus jitter,
honouring `Retry-After` (seconds or HTTP date) when the server sends one. Other
4xx are never retried.

Every failure surfaces as one class of the `BackendError` family in `base.py`
(never a bare httpx error or a KeyError), with the underlying exception chained
as `__cause__` and a message for the operator's log: the URL, the status, an
excerpt of the body. A backend may echo our credentials back (an auth error
quoting the key it refused), so every message is passed through `redact` with
the API key, the credential-like headers and any password or key in `base_url`.
Where the answer had begun (its head arrived) a broken body is a
`BackendProtocolError` and is not retried: the backend may have done, and
billed, the work.

Token usage comes from the server's `usage` block; where a figure is missing, the
server's own tokenizer counts it where it offers one (`tokenizers.py`: llama.cpp,
vLLM, llama-cpp-python; one more call inside the same deadline), else the native
tokenizer (`cl100k_base` by default: system + "\\n" + prompt for the inbound side,
the answer for the outbound side). The answer says which (`Completion.token_source`).

asyncio only (plain loop or uvloop); not for use from trio.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, Self

import httpx
import orjson

from .. import _native
from ..retry_after import parse_retry_after
from .base import (
    TOKEN_SOURCE_SERVER,
    TOKEN_SOURCE_USAGE,
    BackendError,
    BackendProtocolError,
    BackendRequestError,
    BackendServerError,
    BackendTimeout,
    Completion,
    CompletionRequest,
    CompletionStream,
    LlmBackend,
    ModelInfo,
    PromptCount,
    Usage,
    native_source,
    weakest_source,
)
from .http_transport import AiohttpTransport
from .openai_errors import ErrorMapper, credential_values, int_or_none
from .tokenizers import ServerTokenizer, chat_messages, joined_prompt

BACKEND_TYPES = ("openai", "lmstudio")
DEFAULT_TOKEN_ENCODING = "cl100k_base"


def _count(text: str, encoding: str) -> int:
    return _native.count_tokens(text, encoding)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class OpenAICompatibleBackend(LlmBackend):
    """An OpenAI-wire chat-completions server (see the module doc)."""

    def __init__(
        self,
        base_url: str = "http://localhost:1234/v1",
        api_key: str | None = None,
        timeout_secs: float = 300.0,
        max_retries: int = 3,
        backend_type: str = "openai",
        *,
        connect_timeout_secs: float = 10.0,
        backoff_base_secs: float = 0.5,
        backoff_max_secs: float = 30.0,
        max_connections: int = 64,
        max_keepalive_connections: int = 64,
        keepalive_expiry_secs: float = 30.0,
        extra_headers: dict[str, str] | None = None,
        max_tokens_field: str = "max_tokens",
        token_encoding: str = DEFAULT_TOKEN_ENCODING,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if backend_type not in BACKEND_TYPES:
            raise ValueError(f"backend_type must be one of {BACKEND_TYPES}, got {backend_type!r}")
        if not timeout_secs or timeout_secs <= 0:
            raise ValueError("timeout_secs must be > 0")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if backoff_base_secs < 0 or backoff_max_secs < 0:
            raise ValueError("backoff times must be >= 0")
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url.removesuffix("/v1")
        self.api_key = api_key or None
        self.timeout_secs = float(timeout_secs)
        self.max_retries = int(max_retries)
        self.backend_type = backend_type
        self.backoff_base_secs = float(backoff_base_secs)
        self.backoff_max_secs = float(backoff_max_secs)
        self.max_tokens_field = max_tokens_field
        self.token_encoding = token_encoding
        headers = {"User-Agent": "lloom-executor", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra_headers or {})
        self.errors = ErrorMapper(credential_values(self.api_key, self.base_url, headers), self.base_url, self.timeout_secs)
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry_secs,
        )
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_secs, connect=min(connect_timeout_secs, self.timeout_secs)),
            limits=limits,
            # aiohttp's pool under httpx's API: a fifth of httpcore's CPU per call (http_transport.py)
            transport=transport or AiohttpTransport(limits=limits),
            follow_redirects=False,
            trust_env=False,
        )
        self.tokenizer = ServerTokenizer(self._client, self.root_url)  # found out on its first count

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend({self.errors.redact(self.base_url)!r}, backend_type={self.backend_type!r})"

    # ------------------------------------------------------------------ public API

    async def complete(self, request: CompletionRequest) -> Completion:
        with self.errors.failures():
            deadline = time.monotonic() + self.timeout_secs
            url = self.base_url + "/chat/completions"
            resp = await self._send("POST", url, self._chat_body(request, stream=False), deadline, chat=True)
            content, reported_model, usage = self._parse_chat(self._json(resp, url))
            inbound, outbound, source = await self._fill_usage(usage, request, content, deadline)
        return Completion(content, reported_model or request.model, inbound, outbound, source)

    def stream(self, request: CompletionRequest) -> CompletionStream:
        """SSE streaming: yields content deltas; the final `Usage` (server's, else native
        counts) and the time to first token land on the returned `CompletionStream`."""

        def factory(cs: CompletionStream) -> AsyncIterator[str | Usage]:
            return self._stream_source(cs, request)

        return CompletionStream(request.model, factory)

    async def count_prompt(self, request: CompletionRequest, deadline: float) -> PromptCount | None:
        return await self.tokenizer.count_prompt(request, deadline)

    async def list_models(self) -> list[str]:
        with self.errors.failures():
            return [info.id for info in await self._v1_models()]

    async def model_details(self) -> list[ModelInfo]:
        """LM Studio: its REST listing /api/v0/models (state, context length, arch,
        quantization), falling back to /v1/models when that is absent (404/405).
        OpenAI: /v1/models (ids and owners only)."""
        with self.errors.failures():
            if self.backend_type == "lmstudio":
                deadline = time.monotonic() + self.timeout_secs
                url = self.root_url + "/api/v0/models"
                try:
                    resp = await self._send("GET", url, None, deadline)
                except BackendRequestError as exc:
                    if exc.status not in (404, 405):
                        raise
                else:
                    return [self._lmstudio_info(item) for item in self._model_list(self._json(resp, url))]
            return await self._v1_models()

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ request building / parsing

    def _chat_body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "messages": chat_messages(request), "stream": stream}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body[self.max_tokens_field] = request.max_tokens
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _json(self, resp: httpx.Response, url: str) -> Any:
        try:
            return orjson.loads(resp.content)
        except ValueError as exc:
            raise BackendProtocolError(
                f"{url} answered {resp.status_code} with malformed JSON: {self.errors.quote(resp.text, 120)!r}",
                status=resp.status_code,
            ) from exc

    def _parse_chat(self, data: Any) -> tuple[str, str | None, dict[str, Any]]:
        if not isinstance(data, dict):
            raise BackendProtocolError(f"chat completion is not a JSON object: {self.errors.quote(str(data), 120)}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendProtocolError(f"chat completion without choices: {self.errors.quote(str(data), 120)}")
        choice = choices[0]
        message = choice.get("message")
        if isinstance(message, dict) and "content" in message:
            content = message["content"]
        elif "text" in choice:
            content = choice["text"]
        else:
            raise BackendProtocolError(f"chat completion choice without message content: {self.errors.quote(str(choice), 120)}")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BackendProtocolError(f"chat completion content is not a string: {type(content).__name__}")
        model = _str_or_none(data.get("model"))
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        return content, model, usage

    async def _fill_usage(
        self, usage: dict[str, Any], request: CompletionRequest, content: str, deadline: float
    ) -> tuple[int, int, str]:
        """The server's figures; one it left out is counted by its tokenizer (the prompt with its
        chat template where it can apply it), else natively. With the weakest source of the two."""
        inbound, outbound = int_or_none(usage.get("prompt_tokens")), int_or_none(usage.get("completion_tokens"))
        native, sources = native_source(self.token_encoding), [TOKEN_SOURCE_USAGE]
        if inbound is None:
            counted = await self.tokenizer.count_prompt(request, deadline)
            inbound = counted.tokens if counted is not None else _count(joined_prompt(request), self.token_encoding)
            sources.append(TOKEN_SOURCE_SERVER if counted is not None else native)
        if outbound is None:
            outbound = await self.tokenizer.count_text(request.model, content, deadline)
            sources.append(TOKEN_SOURCE_SERVER if outbound is not None else native)
            outbound = outbound if outbound is not None else _count(content, self.token_encoding)
        return inbound, outbound, weakest_source(*sources)

    def _model_list(self, data: Any) -> list[dict[str, Any]]:
        items = data.get("data") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise BackendProtocolError(f"model listing without a data list: {self.errors.quote(str(data), 120)}")
        out = [item for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]
        if len(out) != len(items):
            raise BackendProtocolError("model listing has entries without a string id")
        return out

    @staticmethod
    def _lmstudio_info(item: dict[str, Any]) -> ModelInfo:
        state = item.get("state")
        loaded = True if state == "loaded" else False if state == "not-loaded" else None
        return ModelInfo(
            id=item["id"],
            loaded=loaded,
            context_length=int_or_none(item.get("max_context_length")),
            architecture=_str_or_none(item.get("arch")),
            type=_str_or_none(item.get("type")),
            quantization=_str_or_none(item.get("quantization")),
            publisher=_str_or_none(item.get("publisher")),
            owned_by=_str_or_none(item.get("owned_by")),
        )

    async def _v1_models(self) -> list[ModelInfo]:
        deadline = time.monotonic() + self.timeout_secs
        url = self.base_url + "/models"
        resp = await self._send("GET", url, None, deadline)
        return [
            ModelInfo(
                id=item["id"],
                owned_by=_str_or_none(item.get("owned_by")),
                context_length=int_or_none(item.get("context_length") or item.get("max_model_len")),
            )
            for item in self._model_list(self._json(resp, url))
        ]

    # ------------------------------------------------------------------ transport with retries

    def _backoff(self, failures: int) -> float:
        cap = min(self.backoff_max_secs, self.backoff_base_secs * 2 ** (failures - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    async def _attempt(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str], remaining: float, *, read_body: bool
    ) -> httpx.Response:
        """One try: the response with its head read, and its body too unless `read_body`
        is False (a stream) and the status is a success. Raises `BackendError`s."""
        resp: httpx.Response | None = None
        try:
            async with asyncio.timeout(remaining):
                request = self._client.build_request(method, url, content=content, headers=headers)
                resp = await self._client.send(request, stream=True)
                if read_body or resp.status_code >= 300:
                    await resp.aread()
        except Exception as exc:
            if resp is not None:
                await resp.aclose()
            raise self.errors.transport_error(exc, url, resp) from exc
        except BaseException:
            if resp is not None:
                await resp.aclose()
            raise
        return resp

    async def _send(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        deadline: float,
        *,
        chat: bool = False,
        stream: bool = False,
    ) -> httpx.Response:
        """One logical request with retries, all inside `deadline` (time.monotonic()).
        With stream=True the returned response's body is still unread (caller closes it)."""
        content = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else {}
        if stream:
            headers["Accept"] = "text/event-stream"
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendTimeout(f"no answer from {url} within {self.timeout_secs:g} s", attempts=attempt - 1)
            error: BackendError
            retry_after: float | None = None
            try:
                resp = await self._attempt(method, url, content, headers, remaining, read_body=not stream)
            except BackendError as exc:
                exc.attempts = attempt
                error = exc
            else:
                if resp.status_code < 300:
                    return resp
                await resp.aclose()
                error = self.errors.status_error(resp, url, chat=chat, attempts=attempt)
                if resp.status_code == 429 or resp.status_code >= 500:
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if not error.retryable or attempt > self.max_retries:
                if error.retryable and attempt > 1:
                    error.args = (f"{error.args[0]} (gave up after {attempt} attempts)",)
                raise error
            delay = self._backoff(attempt) if retry_after is None else retry_after * (1 + random.uniform(0, 0.05))
            if time.monotonic() + delay >= deadline:
                error.args = (f"{error.args[0]} (no time left to retry in {self.timeout_secs:g} s)",)
                raise error
            await asyncio.sleep(delay)

    async def _read_rest(self, resp: httpx.Response, url: str, deadline: float) -> None:
        """The rest of an answer whose head has arrived, within `deadline`."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await resp.aread()
        except Exception as exc:
            raise self.errors.transport_error(exc, url, resp) from exc

    async def _stream_source(self, cs: CompletionStream, request: CompletionRequest) -> AsyncIterator[str | Usage]:
        with self.errors.failures():
            deadline = time.monotonic() + self.timeout_secs
            url = self.base_url + "/chat/completions"
            body = self._chat_body(request, stream=True)
            resp = await self._send("POST", url, body, deadline, chat=True, stream=True)
            parts: list[str] = []
            usage: dict[str, Any] = {}
            try:
                if resp.headers.get("content-type", "").startswith("application/json"):
                    # A server that ignores `stream: true` answers with one JSON body.
                    await self._read_rest(resp, url, deadline)
                    content, model, usage = self._parse_chat(self._json(resp, url))
                    cs.model = model or cs.model
                    parts.append(content)
                    yield content
                else:
                    async with aclosing(self._sse_deltas(cs, resp, url, deadline, usage)) as deltas:
                        async for delta in deltas:
                            parts.append(delta)
                            yield delta
            finally:
                await resp.aclose()
            inbound, outbound, source = await self._fill_usage(usage, request, "".join(parts), deadline)
            yield Usage(inbound, outbound, source)

    async def _sse_deltas(
        self, cs: CompletionStream, resp: httpx.Response, url: str, deadline: float, usage: dict[str, Any]
    ) -> AsyncGenerator[str, None]:
        lines = resp.aiter_lines()
        done = finished = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendTimeout(f"stream from {url} not finished within {self.timeout_secs:g} s", status=resp.status_code)
            try:
                async with asyncio.timeout(remaining):
                    line = await lines.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                raise self.errors.transport_error(exc, url, resp) from exc
            if not line.startswith("data:"):
                continue  # blank separators, comments (":"), event:/id:/retry: fields
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                await self._drain(lines, deadline)
                break
            try:
                chunk = orjson.loads(payload)
            except ValueError as exc:
                raise BackendProtocolError(f"malformed JSON in stream from {url}: {self.errors.quote(payload, 120)!r}") from exc
            if not isinstance(chunk, dict):
                raise BackendProtocolError(f"stream chunk from {url} is not a JSON object: {self.errors.quote(payload, 120)!r}")
            if "error" in chunk:
                err = chunk["error"]
                message = err.get("message") if isinstance(err, dict) else err
                raise BackendServerError(f"{url} reported an error mid-stream: {self.errors.quote(str(message))}")
            if isinstance(chunk.get("model"), str):
                cs.model = chunk["model"]
            if isinstance(chunk.get("usage"), dict):
                usage.update(chunk["usage"])
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(text, str) and text:
                    yield text
                if choice.get("finish_reason"):
                    finished = True
        if not done and not finished:
            raise BackendProtocolError(f"stream from {url} ended before [DONE] / finish_reason")

    @staticmethod
    async def _drain(lines: AsyncIterator[str], deadline: float, limit_secs: float = 1.0) -> None:
        """Read to the end of the body after [DONE], so the connection goes back to the
        pool; a server that keeps the body open gets its connection closed instead."""
        try:
            async with asyncio.timeout(max(0.0, min(limit_secs, deadline - time.monotonic()))):
                async for _ in lines:
                    pass
        except (TimeoutError, httpx.HTTPError):
            pass
