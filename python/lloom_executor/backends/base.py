"""The contract every LLM backend fulfils (the Python form of the manual's `LlmBackend` trait).

Values at the bottom: what is asked (`CompletionRequest`), what comes back
(`Completion`, `StreamedCompletion`, `ModelInfo`), and the one family of errors a
backend may raise (`BackendError` and its subclasses), which the request path
maps to fixed public answers while the message, with its detail, goes to the logs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self

REDACTED = "<redacted>"


@dataclass(frozen=True)
class CompletionRequest:
    """One completion to ask a backend for: the model's name as the backend knows it,
    the user prompt, and the optional system prompt and sampling settings (None: the
    backend's default). One value instead of five arguments, so a wrapper (limits,
    device pool) passes the request on whole and a new field reaches every backend."""

    model: str
    prompt: str
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


TOKEN_SOURCE_USAGE = "usage"  # the server's own `usage` figures
TOKEN_SOURCE_SERVER = "server_tokenizer"  # counted by the served model's tokenizer, asked over HTTP
NATIVE_SOURCE_PREFIX = "native:"  # counted by our native tiktoken-compatible tokenizer: "native:<encoding>"
_SOURCE_RANK = {TOKEN_SOURCE_USAGE: 0, TOKEN_SOURCE_SERVER: 1}


def native_source(encoding: str) -> str:
    """The source label of a count made natively with `encoding` (e.g. "native:cl100k_base")."""
    return NATIVE_SOURCE_PREFIX + encoding


def weakest_source(*sources: str) -> str:
    """The least authoritative of `sources` (usage < server_tokenizer < native:*): an answer whose
    prompt the server counted but whose completion we counted natively is labelled native, since
    one figure of its charge is an estimate."""
    return max(sources, key=lambda s: _SOURCE_RANK.get(s, 2))


@dataclass(frozen=True)
class PromptCount:
    """A prompt's tokens by the served model's tokenizer. `templated`: the chat template's tokens
    are in the count (llama.cpp's /apply-template, vLLM's chat /tokenize); False: only the texts
    were counted (system + "\n" + prompt), so a template allowance must be added for a context check."""

    tokens: int
    templated: bool
    source: str = TOKEN_SOURCE_SERVER


@dataclass(frozen=True)
class Completion:
    """A backend's answer; token counts are None when the backend reports no usage.
    `token_source` says who counted the figures (`TOKEN_SOURCE_USAGE`, `TOKEN_SOURCE_SERVER`,
    `native_source(encoding)`; the weakest of the two sides): the ledger row and the metrics say it."""

    content: str
    model: str
    inbound_tokens: int | None = None
    outbound_tokens: int | None = None
    token_source: str = TOKEN_SOURCE_USAGE


# --- Errors every backend may raise (the serving path maps them to refusals) ---


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every occurrence of each non-empty secret replaced by `REDACTED`.

    Backend error messages quote the backend's answer, and a backend may echo the
    API key it was sent (an auth error saying which key it refused), so every
    message built from a backend's answer goes through this before it can reach a
    log. Longer secrets go first, so a secret that contains another is replaced whole.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def excerpt(text: str, limit: int = 300) -> str:
    """At most `limit` characters of `text`, stripped, "..." marking a cut: a backend's
    body in an error message is there to help the operator, not to fill the log."""
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + "..."


class BackendError(Exception):
    """A backend could not produce an answer. `status` is the HTTP status when one
    came back, `attempts` how many tries were made; the underlying exception (if
    any) is chained as `__cause__`.

    The message is for the operator's logs (URL, status, an excerpt of the body,
    secrets redacted); the request path answers a client with a fixed sentence
    chosen by the class, not with this message (only our own `[openai_limits]`
    refusals are sent as written: they name our configured limit, nothing internal).
    Every failure of a built-in backend is one of these classes, so the class
    alone says what happened.
    """

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class BackendUnavailable(BackendError):
    """The backend could not be reached (connection refused, DNS, connect timeout)."""

    retryable = True


class BackendServerError(BackendError):
    """The backend answered 5xx."""

    retryable = True


class BackendAuthError(BackendError):
    """The backend refused our credentials (401/403)."""


class BackendTimeout(BackendError):
    """No (complete) answer within the configured time budget."""


class BackendRateLimited(BackendError):
    """The backend answered 429; `retry_after` is its Retry-After in seconds, if given."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class UsageLimitExceeded(BackendRateLimited):
    """A local `[openai_limits]` rate (requests or tokens per minute) would be exceeded;
    refused before the backend is called. `limit` names the setting, `retry_after` is
    the seconds until the same request would pass (`math.inf`: it never can)."""

    def __init__(self, message: str, *, limit: str, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kw)
        self.limit = limit


class BudgetExceeded(BackendError):
    """The `[openai_limits] max_cost_per_day_usd` budget would be exceeded; refused before
    the backend is called. `retry_after` is the seconds until the budget resets (UTC midnight)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ModelNotAvailable(BackendError):
    """The model is unknown to the backend or not loaded (404 / model_not_found)."""


class BackendRequestError(BackendError):
    """The backend rejected the request itself (4xx other than 401/403/404/429)."""


class BackendContextExceeded(BackendRequestError):
    """The server's tokenizer says the prompt (plus the answer's room) does not fit the model's
    context: no retry helps, and the request path can refuse it as too large, not as a failure.
    `prompt_tokens`, `context_length`: the server's figures when it gives them (llama.cpp does)."""

    def __init__(self, message: str, *, prompt_tokens: int | None = None, context_length: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.prompt_tokens, self.context_length = prompt_tokens, context_length


class BackendProtocolError(BackendError):
    """The backend's answer was unusable: malformed JSON, missing fields, a stream cut short."""


# --- Model details and streaming (additive; backends may override) ---


@dataclass(frozen=True)
class ModelInfo:
    """What a backend can say about one model; fields it cannot tell are None."""

    id: str
    loaded: bool | None = None
    context_length: int | None = None
    architecture: str | None = None
    type: str | None = None
    quantization: str | None = None
    publisher: str | None = None
    owned_by: str | None = None


@dataclass(frozen=True)
class StreamedCompletion(Completion):
    """A completion gathered from a stream: `ttft_secs` is the time from sending the
    request to the first non-empty content delta (None if no content came), and
    `duration_secs` the time to the end of the stream."""

    ttft_secs: float | None = None
    duration_secs: float | None = None


@dataclass(frozen=True)
class Usage:
    """A usage report inside a stream (either count may be missing); `source` as in `Completion`."""

    inbound_tokens: int | None = None
    outbound_tokens: int | None = None
    source: str = TOKEN_SOURCE_USAGE


class CompletionStream:
    """An async iterator of content deltas (str) over a backend's stream.

    `source` yields str deltas and optionally `Usage` items (recorded, not passed on)
    and may set `model` on this object. After the iteration ends, `completion` holds
    a `StreamedCompletion` with the whole text, the usage (None where none came) and
    the timings, counted from the first `__anext__` (when the request goes out);
    `ttft_secs` is set as soon as the first content arrives.
    Use as `async for delta in stream` or `async with stream: ...` (closes early exits).
    """

    def __init__(self, model: str, source_factory: Callable[[CompletionStream], AsyncIterator[str | Usage]]) -> None:
        self.model = model
        self.ttft_secs: float | None = None
        self.usage = Usage()
        self.completion: StreamedCompletion | None = None
        self._parts: list[str] = []
        self._started: float | None = None
        self._source = source_factory(self)

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> str:
        if self._started is None:
            self._started = time.perf_counter()
        while True:
            try:
                item = await self._source.__anext__()
            except StopAsyncIteration:
                if self.completion is None:
                    self.completion = StreamedCompletion(
                        content="".join(self._parts),
                        model=self.model,
                        inbound_tokens=self.usage.inbound_tokens,
                        outbound_tokens=self.usage.outbound_tokens,
                        token_source=self.usage.source,
                        ttft_secs=self.ttft_secs,
                        duration_secs=time.perf_counter() - self._started,
                    )
                raise
            if isinstance(item, Usage):
                self.usage = item
                continue
            if not item:
                continue
            if self.ttft_secs is None:
                self.ttft_secs = time.perf_counter() - self._started
            self._parts.append(item)
            return item

    async def collect(self) -> StreamedCompletion:
        """Read the stream to its end; the whole answer with its usage and timings."""
        async for _ in self:
            pass
        assert self.completion is not None
        return self.completion

    async def aclose(self) -> None:
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class LlmBackend(ABC):
    """An LLM server as the executor sees it: completions, a model listing, optional streaming.

    Built-in kinds are in `registry.py`; a custom backend (a `package.module:Class`
    kind, or one published under the `lloom_executor.backends` entry-point group)
    subclasses this and implements at least::

        async def complete(self, request: CompletionRequest) -> Completion: ...
        async def list_models(self) -> list[str]: ...

    `complete` takes one `CompletionRequest` (model, prompt, system_prompt,
    temperature, max_tokens); the older five-argument form is gone. It should raise
    the `BackendError` family for its failures: the request path answers those with
    a fixed sentence per class, and anything else as an internal error.
    """

    @abstractmethod
    async def complete(self, request: CompletionRequest) -> Completion: ...

    @abstractmethod
    async def list_models(self) -> list[str]: ...

    async def model_details(self) -> list[ModelInfo]:
        """Per-model details; the default knows only the names."""
        return [ModelInfo(id=name) for name in await self.list_models()]

    def stream(self, request: CompletionRequest) -> CompletionStream:
        """Content deltas as they come. The default runs `complete` and yields its
        whole answer as one delta (so ttft is the full latency)."""

        async def source(stream: CompletionStream) -> AsyncIterator[str | Usage]:
            done = await self.complete(request)
            stream.model = done.model
            yield done.content
            yield Usage(done.inbound_tokens, done.outbound_tokens, done.token_source)

        return CompletionStream(request.model, source)

    async def count_prompt(self, request: CompletionRequest, deadline: float) -> PromptCount | None:
        """The request's prompt tokens by the served model's own tokenizer, asked before
        `deadline` (time.monotonic()); None when the server offers no tokenizer or it failed (the
        caller then counts natively). The default knows none: admission's context check uses it
        only where a prompt is near the context length (serving/admission.py)."""
        return None

    async def complete_streaming(self, request: CompletionRequest) -> StreamedCompletion:
        """`complete` over `stream`, with the time to first token measured."""
        async with self.stream(request) as s:
            return await s.collect()

    async def close(self) -> None:
        """Release connections; the default holds none."""
        return None


class WrappingBackend(LlmBackend):
    """A backend that adds a rule around another (a concurrency bound, `[openai_limits]`): what it
    does not change -- the model listing, the models' details, closing -- goes to `inner` as is."""

    def __init__(self, inner: LlmBackend) -> None:
        self.inner = inner

    async def list_models(self) -> list[str]:
        return await self.inner.list_models()

    async def model_details(self) -> list[ModelInfo]:
        return await self.inner.model_details()

    async def count_prompt(self, request: CompletionRequest, deadline: float) -> PromptCount | None:
        return await self.inner.count_prompt(request, deadline)

    async def close(self) -> None:
        await self.inner.close()
