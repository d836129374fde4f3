"""The backend turn of an admitted request: cache, the dispatcher's queue, the backend call.

One path to a backend slot: every request goes through the dispatcher (the
direct path is the dispatcher with batches of one at one priority), and the
dispatcher is the one place that talks to the resource governor: whether a
request can run here at all, when it may start, and what its answer cost in
paced output tokens. `request_timeout_secs` bounds the cache lookup, the queueing and the
call. A refusal before the backend was called (queue full, expired while
queued, resources) lets the client resend the same signed request: nothing was
done for it.

What the client reads of a failure is a fixed public sentence per class
(`public_failure`); the detail — URLs, hosts, exception text, backend bodies —
goes to the log only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import _native
from ..backends.base import (
    BackendContextExceeded,
    BackendError,
    BackendRateLimited,
    BackendTimeout,
    BackendUnavailable,
    BudgetExceeded,
    Completion,
    CompletionRequest,
    LlmBackend,
    ModelNotAvailable,
    UsageLimitExceeded,
)
from ..cache.base import ResponseCache
from ..outcome import Refusal, RefusalCode, Timings
from ..pipeline.dispatch import Dispatcher, Job
from ..pipeline.model_registry import ModelRegistry
from .admission import TOKEN_ENCODING, Admitted

log = logging.getLogger(__name__)

BACKEND_UNAVAILABLE = "the backend is unavailable; try again later"
BACKEND_BUSY = "the backend is busy; try again later"
BACKEND_TIMEOUT = "the backend did not answer in time"
BACKEND_FAILED = "the backend failed on this request"
INTERNAL_ERROR = "this executor failed on this request"


def public_failure(exc: BaseException, model: str) -> Refusal:
    """The signed error a backend (or internal) failure becomes: a fixed sentence per class.

    Our own `[openai_limits]` refusals say when to retry, nothing more: their
    full text names the operator's spend and budget, which stays in the log.
    """
    if isinstance(exc, (UsageLimitExceeded, BudgetExceeded)):
        return Refusal(usage_limited_reason(exc.retry_after), RefusalCode.USAGE_LIMITED)
    if isinstance(exc, BackendRateLimited):
        return Refusal(BACKEND_BUSY, RefusalCode.BACKEND_BUSY)
    if isinstance(exc, BackendTimeout):
        return Refusal(BACKEND_TIMEOUT, RefusalCode.BACKEND_TIMEOUT)
    if isinstance(exc, BackendUnavailable):
        return Refusal(BACKEND_UNAVAILABLE, RefusalCode.BACKEND_UNAVAILABLE)
    if isinstance(exc, ModelNotAvailable):
        return Refusal(f"the backend does not offer model {model!r} now; try again later", RefusalCode.BACKEND_UNAVAILABLE)
    if isinstance(exc, BackendContextExceeded):  # the server's tokenizer counted more than ours did
        figures = ""
        if exc.prompt_tokens is not None and exc.context_length is not None:
            figures = f" ({exc.prompt_tokens} tokens by the model's tokenizer, context {exc.context_length})"
        reason = f"the prompt with max_tokens does not fit the context of model {model!r}{figures}; shorten it"
        return Refusal(reason, RefusalCode.TOO_LARGE)
    if isinstance(exc, BackendError):
        return Refusal(BACKEND_FAILED, RefusalCode.BACKEND_FAILED)
    return Refusal(INTERNAL_ERROR, RefusalCode.INTERNAL_ERROR)


def usage_limited_reason(retry_after: float | None) -> str:
    """The public sentence of an `[openai_limits]` refusal: that a limit is reached, and when to retry."""
    if retry_after is None or math.isinf(retry_after):
        return "this executor's usage limit for the backend is reached; try another executor"
    return f"this executor's usage limit for the backend is reached; try again in {math.ceil(retry_after)} s"


def outbound_tokens(completion: Completion) -> int:
    """The answer's output tokens: the backend's count, else ours of its content (`NATIVE_SOURCE`)."""
    if completion.outbound_tokens is not None:
        return completion.outbound_tokens
    return _native.count_tokens(completion.content, TOKEN_ENCODING)


@dataclass
class Produced:
    """A completion for an admitted request, and whether the backend made it just now."""

    completion: Completion
    fresh: bool  # from the backend, not the cache
    cache_key: bytes | None
    outbound: int | None  # output tokens, when already counted (paced models)


class Execution:
    """Runs admitted requests on the backend, one slot each, in the dispatcher's order."""

    def __init__(
        self,
        backend: LlmBackend,
        dispatcher: Dispatcher,
        registry: ModelRegistry,
        *,
        request_timeout_secs: float,
        cache: ResponseCache | None = None,
        on_cache_result: Callable[[bool], None] | None = None,
    ) -> None:
        self.backend = backend
        self.dispatcher = dispatcher
        self.registry = registry
        self.request_timeout_secs = request_timeout_secs
        self.cache = cache
        self._on_cache_result = on_cache_result

    async def produce(self, admitted: Admitted, timings: Timings, forget: Callable[[], None]) -> Produced:
        """The completion of `admitted` (cached or fresh); `forget` is called when a refusal
        comes before the backend was called, so the client may resend the same request."""
        model = admitted.model
        request = admitted.candidate.request
        timeout = self.request_timeout_secs
        cache = self.cache
        key = (
            cache.key_for(model.name, request.system_prompt, request.prompt, request.temperature, admitted.max_tokens)
            if cache
            else None
        )
        waiting = time.monotonic()
        running: float | None = None
        turn: list[Job] = []  # the dispatcher's Job once in line: what it waited for, if it times out
        try:
            async with asyncio.timeout(timeout):
                if cache is not None and key is not None:
                    completion = await cache.get(key)
                    timings.cached = completion is not None
                    if self._on_cache_result is not None:
                        self._on_cache_result(completion is not None)
                    if completion is not None:
                        return Produced(completion, False, key, None)
                waiting = time.monotonic()
                candidate = admitted.candidate
                priority = self.dispatcher.priority_of(
                    model,
                    int(request.inbound_price),
                    int(request.outbound_price),
                    signed=candidate.signed,
                    registry=self.registry,
                )
                deadline = self.dispatcher.clock() + (request.deadline - time.time()) if request.deadline else None
                async with self.dispatcher.slot(
                    model.name,
                    priority=priority,
                    deadline=deadline,
                    limit=model.max_concurrent_requests,
                    on_enqueue=turn.append,
                ):
                    running = time.monotonic()
                    timings.queued_ms = (running - waiting) * 1000.0
                    try:
                        completion = await self.backend.complete(
                            CompletionRequest(
                                model.name, request.prompt, request.system_prompt, request.temperature, admitted.max_tokens
                            )
                        )
                    finally:
                        timings.backend_ms = (time.monotonic() - running) * 1000.0
                    outbound = None
                    if self.dispatcher.metered(model.name):  # charged before the slot is freed
                        outbound = outbound_tokens(completion)
                        self.dispatcher.charge(model.name, outbound)
                    return Produced(completion, True, key, outbound)
        except TimeoutError:
            if running is None:
                timings.queued_ms = (time.monotonic() - waiting) * 1000.0
                forget()
                why = f" ({turn[0].waiting_for})" if turn and turn[0].waiting_for else ""
                raise Refusal(
                    f"expired while queued: no backend slot within request_timeout_secs ({timeout:g} s){why}",
                    RefusalCode.EXPIRED,
                ) from None
            raise Refusal(f"no answer within request_timeout_secs ({timeout:g} s)", RefusalCode.BACKEND_TIMEOUT) from None
        except Refusal:
            if running is None:
                timings.queued_ms = (time.monotonic() - waiting) * 1000.0
                forget()
            raise
        except asyncio.CancelledError:  # the node is stopping, or the stream went away, before any work
            if running is None:
                forget()
            raise
        except Exception as exc:  # a backend failure is the client's signed error, not a dropped stream
            refusal = public_failure(exc, model.name)
            log.warning("backend failed for model %s (%s): %s: %s", model.name, refusal.code, type(exc).__name__, exc)
            raise refusal from None
