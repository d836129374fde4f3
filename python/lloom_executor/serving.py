"""The asyncio-side answer to one `/lloom/llm/1.0.0` frame: the executor's request path.

Decode (native codec) -> admission, cheapest check first (`_admit`), then the
plugins' check_request -> backend turn, directly or through the dispatcher's
queues (`_serve`) -> response filters (built-in, then the plugins'
check_response) -> exact wei pricing -> receipt and ledger row (`records.py`)
-> signed `SignedLlmResponse` -> the request's event to webhooks and plugins.
Every refusal is a signed error answer (PROTOCOL.md §5); the optional stages
(`PipelineStages`) are built from their config sections by `service.py`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _native
from .backends.base import Completion, LlmBackend
from .config import ModelConfig, RequestHandlingConfig
from .ledger import Ledger
from .p2p.llm_protocol import RequestContext
from .pipeline.dispatch import NotDispatched
from .plugins import RequestView, Verdict
from .records import ledger_entry, sign_receipt
from .webhooks import malformed_event, request_event, request_event_name

if TYPE_CHECKING:
    from .cache.base import ResponseCache
    from .metrics import Metrics
    from .pipeline.content_filter import ContentFilter
    from .pipeline.dispatch import Dispatcher
    from .pipeline.pricing import PricingEngine
    from .pipeline.ratelimits import RateLimitRules
    from .pipeline.replay import ReplayGuard
    from .pipeline.resources import ResourceGovernor
    from .plugins import PluginHost
    from .webhooks import Webhooks

log = logging.getLogger(__name__)

MAX_MESSAGE_AGE_SECS = 300
MALFORMED_REPORT_INTERVAL_SECS = 10.0  # at most one `malformed` event per interval (webhooks.py)
MAX_CLOCK_SKEW_SECS = 300
TOKEN_ENCODING = "cl100k_base"


@dataclass(frozen=True)
class Admitted:
    """A request that passed admission: the model it runs on and its token budget."""

    model: ModelConfig
    prompt_tokens: int
    max_tokens: int


def outbound_tokens(completion: Completion) -> int:
    """The answer's output tokens: the backend's count, else ours of its content."""
    if completion.outbound_tokens is not None:
        return completion.outbound_tokens
    return _native.count_tokens(completion.content, TOKEN_ENCODING)


def prompt_text(request: _native.LlmRequest) -> str:
    """The text we count as the request's inbound tokens when the backend reports no usage."""
    return request.prompt if request.system_prompt is None else request.system_prompt + "\n" + request.prompt


@dataclass(frozen=True)
class Refusal(Exception):
    """A request we answer with a signed error instead of content; `code` labels it in metrics."""

    reason: str
    code: str = "refused"


@dataclass
class PipelineStages:
    """The optional stages of the request path, each built from its config section (None: off).

    Replay protection is not optional in an executor (`ExecutorService` always
    builds it); it is optional here so tests can exercise one stage at a time.
    """

    rate_limits: RateLimitRules | None = None
    replay: ReplayGuard | None = None
    pricing: PricingEngine | None = None
    content_filter: ContentFilter | None = None
    cache: ResponseCache | None = None
    metrics: Metrics | None = None
    market: dict = field(default_factory=dict)  # latest network view, for market pricing
    dispatcher: Dispatcher | None = None  # [priority]/[batching] queues; None: the direct path
    resources: ResourceGovernor | None = None  # [resources] limits
    webhooks: Webhooks | None = None  # [webhooks]: request_completed / error events
    plugins: PluginHost | None = None  # [[plugins]]: check hooks, and the same events as the webhooks


@dataclass(frozen=True)
class Reply:
    """The `LlmResponse` payload we are about to sign."""

    content: str
    inbound_tokens: int
    outbound_tokens: int
    total_cost: str
    model_used: str
    error: str | None = None

    @classmethod
    def refusal(cls, model: str, reason: str) -> Reply:
        """An error answer: no content, zero tokens, cost "0", the requested model (PROTOCOL.md §5)."""
        return cls("", 0, 0, "0", model, reason)


@dataclass
class Timings:
    """Milliseconds spent waiting for a backend slot and in the backend (None: never got there)."""

    received_at: float  # time.monotonic()
    queued_ms: float | None = None
    backend_ms: float | None = None
    cached: bool = False  # answered from the response cache

    def total_ms(self) -> float:
        return (time.monotonic() - self.received_at) * 1000.0


class BasicRequestHandler:
    def __init__(
        self,
        key: _native.PrivateKey,
        models: list[ModelConfig],
        backend: LlmBackend,
        *,
        allow_unsigned: bool = False,
        handling: RequestHandlingConfig | None = None,
        peer_id: str | None = None,
        aliases: dict[str, str] | None = None,
        receipt_domain: _native.Eip712Domain | None = None,
        ledger: Ledger | None = None,
        stages: PipelineStages | None = None,
    ) -> None:
        self.key = key
        self.models = {m.name: m for m in models}
        self.aliases = dict(aliases or {})
        self.backend = backend
        self.allow_unsigned = allow_unsigned
        self.handling = handling or RequestHandlingConfig()
        self._backend_slots = asyncio.Semaphore(self.handling.max_concurrent_requests)
        self._per_model_slots: dict[str, asyncio.Semaphore] = {}
        self.draining = False  # set on shutdown: new requests get a signed refusal
        self.peer_id = peer_id or key.peer_id
        self._names_for_us = {self.peer_id, key.address.lower()}
        self.receipt_domain = receipt_domain  # None: answers carry no EIP-712 receipt
        self.ledger = ledger  # None: nothing is recorded
        self.stages = stages or PipelineStages()
        self.in_flight = 0  # backend calls running now: the load of dynamic pricing
        self.malformed_report_interval_secs = MALFORMED_REPORT_INTERVAL_SECS
        self._malformed_next_report = -float("inf")  # time.monotonic() from which the next may be reported
        self._malformed_held_back = 0  # malformed frames not reported since the last report

    async def __call__(self, frame: bytes, ctx: RequestContext) -> bytes | None:
        try:
            decoded = _native.decode_request(frame)
        except ValueError as exc:
            log.info("undecodable request from %s: %s", ctx.peer_id, exc)
            self._report_malformed(ctx.peer_id, f"malformed request: {exc}")
            return self._error("", f"malformed request: {exc}")
        if decoded.request is None:
            return self._acknowledge(decoded)
        request = decoded.request
        now = time.monotonic()
        timings = Timings(ctx.received_at if 0 < ctx.received_at <= now else now)
        admitted: Admitted | None = None
        view: RequestView | None = None
        status = "success"
        try:
            if self.draining:
                raise Refusal("executor is shutting down; send the request to another executor", "draining")
            admitted = self._admit(decoded, ctx)
            plugins = self.stages.plugins
            if plugins is not None and (plugins.checks_requests or plugins.checks_responses):
                view = RequestView.of(decoded, ctx, admitted.model.name, admitted.prompt_tokens, admitted.max_tokens)
                if plugins.checks_requests and (verdict := await plugins.check_request(view)) is not None:
                    admitted = None  # an admission refusal: no receipt
                    self._forget(decoded)  # nothing was done for it
                    raise Refusal(verdict.reason, verdict.code)
            reply = await self._serve(request, admitted, timings, decoded, view)
        except Refusal as refusal:
            reply = Reply.refusal(request.model, refusal.reason)
            status = refusal.code
        return await self._answer(decoded, ctx, admitted, reply, timings, status, view)

    def _model_slots(self, model: ModelConfig) -> asyncio.Semaphore | contextlib.nullcontext:
        if model.max_concurrent_requests is None:
            return contextlib.nullcontext()
        slots = self._per_model_slots.get(model.name)
        if slots is None:
            slots = self._per_model_slots[model.name] = asyncio.Semaphore(model.max_concurrent_requests)
        return slots

    def resolve(self, name: str) -> ModelConfig | None:
        """The served model a requested name means: itself, or what `[model_aliases]` points to."""
        model = self.models.get(self.aliases.get(name, name))
        return model if model is not None and model.enabled else None

    def _admit(self, decoded: _native.DecodedRequest, ctx: RequestContext) -> Admitted:
        """Every admission check, cheapest first; each refusal names its reason (PROTOCOL.md §5).

        Synchronous on purpose: nothing can interleave between the replay check
        and remembering the digest, which happens last so a request refused for
        another reason (rate, price) can be retried as it is.
        """
        request = decoded.request
        stages = self.stages
        limit = self.handling.max_tokens_per_request
        prompt_tokens = _native.count_tokens(prompt_text(request), TOKEN_ENCODING)
        if stages.rate_limits is not None:
            wanted = prompt_tokens + (request.max_tokens if request.max_tokens is not None else limit)
            decision = stages.rate_limits.check(ctx.peer_id, ctx.remote_ip, wanted)
            if not decision.allowed:
                if stages.metrics is not None:
                    stages.metrics.rate_limited(decision.rule_description)
                raise Refusal(decision.reason, "rate_limited")
        if request.max_tokens is not None and request.max_tokens > limit:
            raise Refusal(f"max_tokens {request.max_tokens} exceeds this executor's limit of {limit}", "too_large")
        if stages.content_filter is not None and (reason := stages.content_filter.check_length(request.system_prompt, request.prompt)):
            raise Refusal(reason, "too_large")
        now = int(time.time())
        if decoded.is_signed:
            if not decoded.signature_valid:
                raise Refusal("invalid signature: it does not recover to the signer", "invalid_signature")
            age = now - decoded.timestamp
            if age > MAX_MESSAGE_AGE_SECS:
                raise Refusal(f"request too old: signed {age} s ago (limit {MAX_MESSAGE_AGE_SECS} s)", "stale")
            if -age > MAX_CLOCK_SKEW_SECS:
                raise Refusal(f"request timestamp {-age} s in the future (limit {MAX_CLOCK_SKEW_SECS} s)", "stale")
        elif not self.allow_unsigned:
            raise Refusal("unsigned requests are not accepted by this executor; send a SignedLlmRequest", "unsigned")
        if request.deadline and request.deadline < now:
            raise Refusal(f"deadline {request.deadline} has passed", "expired")
        digest = bytes(decoded.digest)
        if stages.replay is not None and stages.replay.seen(digest):
            raise Refusal("replay: this signed request was already received", "replay")
        target = request.executor_address.strip()
        if target.lower() not in self._names_for_us and target not in self._names_for_us:
            raise Refusal(f"request is addressed to {target}, not to this executor ({self.peer_id})", "wrong_executor")
        for side in ("inbound_price", "outbound_price"):
            price = getattr(request, side)
            if not (price.isascii() and price.isdigit()):
                raise Refusal(f"{side} must be a whole number of wei in decimal, got {price!r}", "bad_price")
        model = self.resolve(request.model)
        if model is None:
            served = sorted(name for name, m in self.models.items() if m.enabled)
            raise Refusal(f"model {request.model!r} is not served here; available: {served}", "unknown_model")
        room = model.context_length - prompt_tokens
        max_tokens = request.max_tokens if request.max_tokens is not None else min(limit, room)
        if max_tokens > room or room <= 0:
            raise Refusal(
                f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"context length {model.context_length} of model {model.name!r}",
                "too_large",
            )
        if reason := self._check_price(model, int(request.inbound_price), int(request.outbound_price)):
            raise Refusal(reason, "price_too_low")
        if stages.content_filter is not None and (reason := stages.content_filter.check_prompt(request.system_prompt, request.prompt)):
            raise Refusal(reason, "content_filtered")
        if stages.replay is not None and not stages.replay.check_and_remember(digest, deadline=request.deadline):
            raise Refusal("replay: this signed request was already received", "replay")
        return Admitted(model, prompt_tokens, max_tokens)

    def _check_price(self, model: ModelConfig, offered_in: int, offered_out: int) -> str | None:
        """Our current price (strategy-dependent) must be covered; config prices for models the engine does not know yet."""
        pricing = self.stages.pricing
        if pricing is not None:
            try:
                return pricing.check_offer(model.name, offered_in, offered_out)
            except KeyError:  # a model discovery added after the engine was built
                pass
        if offered_in >= model.inbound_price_wei and offered_out >= model.outbound_price_wei:
            return None
        return (
            f"price too low: this executor charges {model.inbound_price_wei} wei/input token and "
            f"{model.outbound_price_wei} wei/output token for {model.name}"
        )

    async def _serve(
        self,
        request: _native.LlmRequest,
        admitted: Admitted,
        timings: Timings | None = None,
        decoded: _native.DecodedRequest | None = None,
        view: RequestView | None = None,
    ) -> Reply:
        """Runs the backend on the resolved model; `model_used` names it (not the alias).

        The cache first; on a miss the backend, through `_backend_turn` (the
        `[priority]`/`[batching]` queues, or the max_concurrent_requests
        semaphores) and the `[resources]` checks. `request_timeout_secs` bounds
        this part: cache lookup, queueing and the backend call. A refusal before
        the backend was called (queue full, expired while queued, resources)
        forgets the request's replay digest: nothing was done for it, so the
        client may send the same signed request again.

        The content, fresh or cached, then passes the built-in response filter
        and the plugins' check_response (`view`: the request as they see it),
        once each, after that time bound: a plugin's check is bounded by its own
        `timeout_secs` (over it, the request is refused, fail closed), never by
        `request_timeout_secs`, with or without the cache. Only a fresh answer
        both let through is cached.
        """
        model = admitted.model
        timeout = self.handling.request_timeout_secs
        timings = timings or Timings(time.monotonic())
        waiting = time.monotonic()
        running: float | None = None
        turn: list = []  # the dispatcher's Job once in line: what it waited for, if it times out
        fresh = False  # the completion came from the backend (not the cache)
        outbound: int | None = None  # the answer's output tokens, once counted
        cache = self.stages.cache
        key = cache.key_for(model.name, request.system_prompt, request.prompt, request.temperature, admitted.max_tokens) if cache else None
        try:
            async with asyncio.timeout(timeout):
                completion = await cache.get(key) if key is not None else None
                timings.cached = completion is not None
                if key is not None and self.stages.metrics is not None:
                    self.stages.metrics.cache_result(completion is not None)
                if completion is None:
                    waiting = time.monotonic()
                    async with self._backend_turn(request, admitted, decoded, turn):
                        running = time.monotonic()
                        timings.queued_ms = (running - waiting) * 1000.0
                        self.in_flight += 1
                        try:
                            completion = await self.backend.complete(
                                model.name, request.prompt, request.system_prompt, request.temperature,
                                admitted.max_tokens,
                            )
                        finally:
                            self.in_flight -= 1
                            timings.backend_ms = (time.monotonic() - running) * 1000.0
                        fresh = True
                        governor = self.stages.resources
                        if governor is not None and governor.metered(model.name):  # before the slot is freed
                            outbound = outbound_tokens(completion)
                            governor.produced(model.name, outbound)
        except TimeoutError:
            if running is None:
                timings.queued_ms = (time.monotonic() - waiting) * 1000.0
                self._forget(decoded)
                why = f" ({turn[0].waiting_for})" if turn and turn[0].waiting_for else ""
                raise Refusal(
                    f"expired while queued: no backend slot within request_timeout_secs ({timeout:g} s){why}", "expired"
                ) from None
            raise Refusal(f"no answer within request_timeout_secs ({timeout:g} s)") from None
        except NotDispatched as exc:
            timings.queued_ms = (time.monotonic() - waiting) * 1000.0
            self._forget(decoded)
            raise Refusal(exc.reason, exc.code) from None
        except Refusal:
            if running is None:
                self._forget(decoded)
            raise
        except Exception as exc:  # a backend failure is the client's signed error, not a dropped stream
            log.warning("backend failed for model %s: %s", model.name, exc)
            raise Refusal(f"backend error: {exc}") from None
        if not self._response_allowed(completion.content):
            raise Refusal("the answer was withheld by this executor's content filter", "content_filtered")
        if (verdict := await self._check_response(view, completion.content)) is not None:
            raise Refusal(verdict.reason, verdict.code)
        if fresh and key is not None:
            try:
                await cache.put(key, completion)
            except Exception as exc:  # the answer is good; only its reuse is lost
                log.warning("response cache write failed for model %s: %s", model.name, exc)
        inbound = completion.inbound_tokens if completion.inbound_tokens is not None else admitted.prompt_tokens
        if outbound is None:
            outbound = outbound_tokens(completion)
        cost = inbound * int(request.inbound_price) + outbound * int(request.outbound_price)
        return Reply(completion.content, inbound, outbound, str(cost), model.name)

    @contextlib.asynccontextmanager
    async def _backend_turn(
        self,
        request: _native.LlmRequest,
        admitted: Admitted,
        decoded: _native.DecodedRequest | None,
        turn: list | None = None,
    ) -> AsyncIterator[None]:
        """Holds a backend slot for one call: queued by priority (dispatcher) or behind the semaphores.

        `[resources]` and the `[[models]]` needs: a request that can never run
        here is refused first; one that cannot start yet (memory, GPU memory,
        cores, the model's max_tokens_per_second, CPU) waits in the queue when
        there is one, and is refused without a queue (waiting on a semaphore
        would hide it from the priority order that a queue gives). `turn`
        receives the dispatcher's Job once it is in line.
        """
        model = admitted.model
        governor = self.stages.resources
        if governor is not None and (reason := governor.refusal(model.name)):
            raise Refusal(reason, "resources")
        dispatcher = self.stages.dispatcher
        if dispatcher is not None:
            signed = decoded is None or (decoded.is_signed and decoded.signature_valid)
            priority = dispatcher.priority_of(
                model, int(request.inbound_price), int(request.outbound_price), signed=signed, pricing=self.stages.pricing
            )
            deadline = dispatcher.clock() + (request.deadline - time.time()) if request.deadline else None
            async with dispatcher.slot(
                model.name, priority=priority, deadline=deadline, limit=model.max_concurrent_requests,
                on_enqueue=turn.append if turn is not None else None,
            ):
                yield
            return
        async with self._backend_slots, self._model_slots(model):
            if governor is None:
                yield
                return
            if reason := governor.wait_reason(model.name) or governor.cpu_busy():
                code = "throttled" if governor.ready_in(model.name) > 0 else "resources"
                raise Refusal(f"{reason}; try again later", code)
            governor.started(model.name)
            try:
                yield
            finally:
                governor.finished(model.name)

    def _forget(self, decoded: _native.DecodedRequest | None) -> None:
        """Lets the same signed request be sent again (it was refused before any work was done)."""
        if decoded is not None and self.stages.replay is not None:
            self.stages.replay.forget(bytes(decoded.digest))

    async def _check_response(self, view: RequestView | None, content: str) -> Verdict | None:
        plugins = self.stages.plugins
        if view is None or plugins is None or not plugins.checks_responses:
            return None
        return await plugins.check_response(view, content)

    def _report(self, event: str, build, *args, **kwargs) -> None:
        """The request's `event` to the webhooks and the plugins' on_request_finished. Its data
        (`build(*args, **kwargs)`: `webhooks.request_event` / `malformed_event`) is built only
        when an endpoint subscribes to `event` or a plugin observes, and then once for both.
        A fault here is logged, never raised."""
        webhooks, plugins = self.stages.webhooks, self.stages.plugins
        to_webhooks = webhooks is not None and webhooks.wants(event)
        to_plugins = plugins is not None and plugins.observes
        if not (to_webhooks or to_plugins):
            return
        try:
            event, data = build(*args, **kwargs)
            if to_webhooks:
                webhooks.emit(event, data)
            if to_plugins:
                plugins.request_finished(event, data)
        except Exception:
            log.exception("could not report the event of a request")

    def _report_malformed(self, peer_id: str, reason: str) -> None:
        """The `error` event of an undecodable frame, at most one per
        `malformed_report_interval_secs` for the whole node: junk frames cost a sender
        nothing, and one per frame would push the real events out of the bounded queues.
        The event reports how many were held back since the previous one (`suppressed`)."""
        now = time.monotonic()
        if now < self._malformed_next_report:
            self._malformed_held_back += 1
            return
        held, self._malformed_held_back = self._malformed_held_back, 0
        self._malformed_next_report = now + self.malformed_report_interval_secs
        self._report("error", malformed_event, peer_id, reason, held)

    def _response_allowed(self, content: str) -> bool:
        content_filter = self.stages.content_filter
        return content_filter is None or content_filter.check_response(content) is None

    def _receipt(self, decoded: _native.DecodedRequest, reply: Reply, timestamp: int) -> dict | None:
        if self.receipt_domain is None:
            return None
        return sign_receipt(self.receipt_domain, self.key, decoded, reply, timestamp)

    async def _answer(
        self,
        decoded: _native.DecodedRequest,
        ctx: RequestContext,
        admitted: Admitted | None,
        reply: Reply,
        timings: Timings,
        status: str = "success",
        view: RequestView | None = None,
    ) -> bytes:
        """Sign the receipt, commit the ledger row, then sign and return the answer; the request's
        event (webhooks, plugins) and metrics record the reply and `status` (the refusal's code,
        or "success") as sent: a failed ledger write turns an answer into an error
        ("ledger_error"), and they count what the client got, not what the backend produced.
        `view`: the plugins' view of the request, if one was made (its client address and
        digest are reused for the event)."""
        request = decoded.request
        timestamp = int(time.time())
        receipt = self._receipt(decoded, reply, timestamp) if admitted is not None else None
        served = admitted.model if admitted is not None else self.resolve(request.model)  # only our names label series
        if self.ledger is not None:
            entry = ledger_entry(decoded, ctx, served, reply, receipt, timings)
            try:
                await asyncio.to_thread(self.ledger.record, entry)
            except Exception as exc:
                log.error("ledger write failed; answering request from %s with an error: %s", ctx.peer_id, exc)
                if reply.error is None:  # never serve what the ledger does not hold
                    reply = Reply.refusal(request.model, "executor could not record the request; it was not served")
                    receipt = self._receipt(decoded, reply, timestamp) if admitted is not None else None
                    status = "ledger_error"
        shared = {"client": view.client, "request_digest": view.request_digest} if view is not None else {}
        self._report(
            request_event_name(reply), request_event, decoded, ctx, served, reply, receipt, timings, status, **shared
        )
        if self.stages.metrics is not None:
            self.stages.metrics.request_finished(
                served.name if served else "unknown", status, timings.total_ms() / 1000.0,
                reply.inbound_tokens, reply.outbound_tokens, int(reply.total_cost) if reply.error is None else 0,
            )
        return _native.encode_signed_response(
            self.key, reply.content, reply.inbound_tokens, reply.outbound_tokens, reply.total_cost,
            reply.model_used, reply.error, timestamp, None, receipt,
        )

    def _error(self, model: str, reason: str) -> bytes:
        return _native.encode_signed_response(self.key, "", 0, 0, "0", model, reason, int(time.time()))

    def _acknowledge(self, decoded: _native.DecodedRequest) -> bytes:
        """Validator messages: acknowledged (signed) but not acted on by this executor."""
        return _native.encode_signed_ack(
            self.key,
            decoded.digest.hex(),
            False,
            f"{decoded.variant} is not handled by this executor",
            int(time.time()),
        )
