"""OpenAI-compatible HTTP backend (OpenAI, LM Studio, vLLM, llama.cpp server, Ollama's /v1 ...).

One pooled `httpx.AsyncClient` (keep-alive) per backend. Every call has a total
time budget of `timeout_secs` covering all its attempts; connect errors, 429 and
5xx are retried up to `max_retries` times with exponential backoff plus jitter,
honouring `Retry-After` (seconds or HTTP date) when the server sends one. Other
4xx are never retried. Failures surface as the `BackendError` family in
`base.py`, with the underlying exception chained as `__cause__`.

Token usage comes from the server's `usage` block; where it is missing, the
native tokenizer counts (`cl100k_base` by default: system + "\\n" + prompt for
the inbound side, the answer for the outbound side, the rule `serving.py` uses).

asyncio only (plain loop or uvloop); not for use from trio.
"""
from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime, timezone
from typing import Any

import httpx
import orjson

from .. import _native
from .base import (
    BackendAuthError,
    BackendError,
    BackendProtocolError,
    BackendRateLimited,
    BackendRequestError,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    Completion,
    CompletionStream,
    LlmBackend,
    ModelInfo,
    ModelNotAvailable,
    Usage,
)

BACKEND_TYPES = ("openai", "lmstudio")
DEFAULT_TOKEN_ENCODING = "cl100k_base"
_MODEL_MISSING = re.compile(r"model.*(not (found|loaded|exist)|does not exist|no such)|no models? (is )?loaded", re.I)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date. None if absent/unparsable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, secs) if math.isfinite(secs) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _count(text: str, encoding: str) -> int:
    return _native.count_tokens(text, encoding)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _error_detail(resp: httpx.Response) -> tuple[str, str | None]:
    """(message, code) from an error body in OpenAI / LM Studio shape, else the raw text."""
    try:
        data = orjson.loads(resp.content)
    except ValueError:
        return resp.text[:300].strip() or resp.reason_phrase, None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or str(err)[:300]
            code = err.get("code") or err.get("type")
            return str(message), str(code) if code is not None else None
        if isinstance(err, str):
            return err, None
    return str(data)[:300], None


class OpenAICompatibleBackend(LlmBackend):
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
        max_keepalive_connections: int = 16,
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
        root = self.base_url
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        self.root_url = root
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
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_secs, connect=min(connect_timeout_secs, self.timeout_secs)),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive_connections,
                keepalive_expiry=keepalive_expiry_secs,
            ),
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend({self.base_url!r}, backend_type={self.backend_type!r})"

    # ------------------------------------------------------------------ public API

    async def complete(
        self,
        model: str,
        prompt: str,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        deadline = time.monotonic() + self.timeout_secs
        body = self._chat_body(model, prompt, system_prompt, temperature, max_tokens, stream=False)
        resp = await self._send("POST", self.base_url + "/chat/completions", body, deadline, chat=True)
        data = self._json(resp)
        content, reported_model, usage = self._parse_chat(data)
        inbound, outbound = self._fill_usage(usage, prompt, system_prompt, content)
        return Completion(content=content, model=reported_model or model, inbound_tokens=inbound, outbound_tokens=outbound)

    def stream(
        self,
        model: str,
        prompt: str,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> CompletionStream:
        """SSE streaming: yields content deltas; the final `Usage` (server's, else native
        counts) and the time to first token land on the returned `CompletionStream`."""
        body = self._chat_body(model, prompt, system_prompt, temperature, max_tokens, stream=True)

        def factory(cs: CompletionStream) -> AsyncIterator[str | Usage]:
            return self._stream_source(cs, body, prompt, system_prompt)

        return CompletionStream(model, factory)

    async def list_models(self) -> list[str]:
        return [info.id for info in await self._v1_models()]

    async def model_details(self) -> list[ModelInfo]:
        """LM Studio: its REST listing /api/v0/models (state, context length, arch,
        quantization), falling back to /v1/models when that is absent (404/405).
        OpenAI: /v1/models (ids and owners only)."""
        if self.backend_type == "lmstudio":
            deadline = time.monotonic() + self.timeout_secs
            try:
                resp = await self._send("GET", self.root_url + "/api/v0/models", None, deadline)
            except BackendRequestError as exc:
                if exc.status not in (404, 405):
                    raise
            else:
                return [self._lmstudio_info(item) for item in self._model_list(self._json(resp))]
        return await self._v1_models()

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> OpenAICompatibleBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ request building / parsing

    def _chat_body(
        self,
        model: str,
        prompt: str,
        system_prompt: str | None,
        temperature: float | None,
        max_tokens: int | None,
        *,
        stream: bool,
    ) -> dict[str, Any]:
        messages = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": prompt})
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body[self.max_tokens_field] = max_tokens
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    @staticmethod
    def _json(resp: httpx.Response) -> Any:
        try:
            return orjson.loads(resp.content)
        except ValueError as exc:
            raise BackendProtocolError(
                f"backend answered {resp.status_code} with malformed JSON: {resp.text[:120]!r}", status=resp.status_code
            ) from exc

    @staticmethod
    def _parse_chat(data: Any) -> tuple[str, str | None, dict]:
        if not isinstance(data, dict):
            raise BackendProtocolError(f"chat completion is not a JSON object: {str(data)[:120]}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendProtocolError(f"chat completion without choices: {str(data)[:120]}")
        choice = choices[0]
        message = choice.get("message")
        if isinstance(message, dict) and "content" in message:
            content = message["content"]
        elif "text" in choice:
            content = choice["text"]
        else:
            raise BackendProtocolError(f"chat completion choice without message content: {str(choice)[:120]}")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BackendProtocolError(f"chat completion content is not a string: {type(content).__name__}")
        model = data.get("model") if isinstance(data.get("model"), str) else None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return content, model, usage

    def _fill_usage(self, usage: dict, prompt: str, system_prompt: str | None, content: str) -> tuple[int, int]:
        inbound = _int_or_none(usage.get("prompt_tokens"))
        outbound = _int_or_none(usage.get("completion_tokens"))
        if inbound is None:
            text = prompt if system_prompt is None else system_prompt + "\n" + prompt
            inbound = _count(text, self.token_encoding)
        if outbound is None:
            outbound = _count(content, self.token_encoding)
        return inbound, outbound

    @staticmethod
    def _model_list(data: Any) -> list[dict]:
        items = data.get("data") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise BackendProtocolError(f"model listing without a data list: {str(data)[:120]}")
        out = [item for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]
        if len(out) != len(items):
            raise BackendProtocolError("model listing has entries without a string id")
        return out

    @staticmethod
    def _lmstudio_info(item: dict) -> ModelInfo:
        state = item.get("state")
        loaded = True if state == "loaded" else False if state == "not-loaded" else None
        return ModelInfo(
            id=item["id"],
            loaded=loaded,
            context_length=_int_or_none(item.get("max_context_length")),
            architecture=item.get("arch"),
            type=item.get("type"),
            quantization=item.get("quantization"),
            publisher=item.get("publisher"),
            owned_by=item.get("owned_by"),
        )

    async def _v1_models(self) -> list[ModelInfo]:
        deadline = time.monotonic() + self.timeout_secs
        resp = await self._send("GET", self.base_url + "/models", None, deadline)
        return [
            ModelInfo(
                id=item["id"],
                owned_by=item.get("owned_by"),
                context_length=_int_or_none(item.get("context_length") or item.get("max_model_len")),
            )
            for item in self._model_list(self._json(resp))
        ]

    # ------------------------------------------------------------------ transport with retries

    def _status_error(self, resp: httpx.Response, *, chat: bool, attempts: int) -> BackendError:
        status = resp.status_code
        message, code = _error_detail(resp)
        text = f"backend answered {status}: {message}"
        if status in (401, 403):
            return BackendAuthError(text, status=status, attempts=attempts)
        if status == 429:
            return BackendRateLimited(
                text, retry_after=parse_retry_after(resp.headers.get("retry-after")), status=status, attempts=attempts
            )
        if status >= 500:
            return BackendServerError(text, status=status, attempts=attempts)
        if chat and (status == 404 or code == "model_not_found" or _MODEL_MISSING.search(message)):
            return ModelNotAvailable(text, status=status, attempts=attempts)
        if status == 408:
            return BackendTimeout(text, status=status, attempts=attempts)
        return BackendRequestError(text, status=status, attempts=attempts)

    def _backoff(self, failures: int) -> float:
        cap = min(self.backoff_max_secs, self.backoff_base_secs * 2 ** (failures - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    async def _send(
        self,
        method: str,
        url: str,
        body: dict | None,
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
                raise BackendTimeout(f"no answer within {self.timeout_secs:g} s", attempts=attempt - 1)
            error: BackendError
            retry_after: float | None = None
            try:
                async with asyncio.timeout(remaining):
                    request = self._client.build_request(method, url, content=content, headers=headers)
                    resp = await self._client.send(request, stream=True)
                    try:
                        if resp.status_code >= 400 or not stream:
                            await resp.aread()
                    except BaseException:
                        await resp.aclose()
                        raise
            except (TimeoutError, httpx.PoolTimeout, httpx.ReadTimeout, httpx.WriteTimeout) as exc:
                raise BackendTimeout(
                    f"no answer from {url} within {self.timeout_secs:g} s", attempts=attempt
                ) from exc
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = BackendUnavailable(f"cannot connect to {url}: {exc or type(exc).__name__}", attempts=attempt)
                error.__cause__ = exc
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                error = BackendUnavailable(
                    f"connection to {url} lost before an answer: {exc or type(exc).__name__}", attempts=attempt
                )
                error.__cause__ = exc
            except httpx.HTTPError as exc:
                raise BackendError(f"request to {url} failed: {exc or type(exc).__name__}", attempts=attempt) from exc
            else:
                if resp.status_code < 400:
                    return resp
                await resp.aclose()
                error = self._status_error(resp, chat=chat, attempts=attempt)
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

    async def _stream_source(
        self, cs: CompletionStream, body: dict, prompt: str, system_prompt: str | None
    ) -> AsyncIterator[str | Usage]:
        deadline = time.monotonic() + self.timeout_secs
        resp = await self._send("POST", self.base_url + "/chat/completions", body, deadline, chat=True, stream=True)
        parts: list[str] = []
        usage: dict = {}
        try:
            if resp.headers.get("content-type", "").startswith("application/json"):
                # A server that ignores `stream: true` answers with one JSON body.
                await resp.aread()
                content, model, usage = self._parse_chat(self._json(resp))
                cs.model = model or cs.model
                parts.append(content)
                yield content
            else:
                async with aclosing(self._sse_deltas(cs, resp, deadline, usage)) as deltas:
                    async for delta in deltas:
                        parts.append(delta)
                        yield delta
        finally:
            await resp.aclose()
        inbound, outbound = self._fill_usage(usage, prompt, system_prompt, "".join(parts))
        yield Usage(inbound, outbound)

    async def _sse_deltas(
        self, cs: CompletionStream, resp: httpx.Response, deadline: float, usage: dict
    ) -> AsyncIterator[str]:
        lines = resp.aiter_lines()
        done = finished = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendTimeout(f"stream not finished within {self.timeout_secs:g} s")
            try:
                async with asyncio.timeout(remaining):
                    line = await lines.__anext__()
            except StopAsyncIteration:
                break
            except (TimeoutError, httpx.TimeoutException) as exc:
                raise BackendTimeout(f"stream not finished within {self.timeout_secs:g} s") from exc
            except httpx.HTTPError as exc:
                raise BackendProtocolError(f"stream cut short: {exc or type(exc).__name__}") from exc
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
                raise BackendProtocolError(f"malformed JSON in stream: {payload[:120]!r}") from exc
            if not isinstance(chunk, dict):
                raise BackendProtocolError(f"stream chunk is not a JSON object: {payload[:120]!r}")
            if "error" in chunk:
                message = chunk["error"].get("message") if isinstance(chunk["error"], dict) else chunk["error"]
                raise BackendServerError(f"backend reported an error mid-stream: {message}")
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
            raise BackendProtocolError("stream ended before [DONE] / finish_reason")

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
