"""The asyncio-side answer to one `/lloom/llm/1.0.0` frame (the basic request path).

Decodes with the native codec, checks what the wire contract demands
(signature, freshness, unsigned policy, addressing, model), runs the backend,
counts tokens, prices exactly in wei and answers with a `SignedLlmResponse`.
Every refusal is a signed error answer (PROTOCOL.md §5). The full admission
pipeline (rate limits, prices, replay, queues, cache, ledger) builds on this.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from . import _native
from .backends.base import LlmBackend
from .config import ModelConfig, RequestHandlingConfig
from .p2p.llm_protocol import RequestContext

log = logging.getLogger(__name__)

MAX_MESSAGE_AGE_SECS = 300
MAX_CLOCK_SKEW_SECS = 300
TOKEN_ENCODING = "cl100k_base"


@dataclass(frozen=True)
class Admitted:
    """A request that passed admission: the model it runs on and its token budget."""

    model: ModelConfig
    prompt_tokens: int
    max_tokens: int


def prompt_text(request: _native.LlmRequest) -> str:
    """The text we count as the request's inbound tokens when the backend reports no usage."""
    return request.prompt if request.system_prompt is None else request.system_prompt + "\n" + request.prompt


@dataclass(frozen=True)
class Refusal(Exception):
    """A request we answer with a signed error instead of content."""

    reason: str


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

    async def __call__(self, frame: bytes, ctx: RequestContext) -> bytes | None:
        try:
            decoded = _native.decode_request(frame)
        except ValueError as exc:
            log.info("undecodable request from %s: %s", ctx.peer_id, exc)
            return self._error("", f"malformed request: {exc}")
        if decoded.request is None:
            return self._acknowledge(decoded)
        request = decoded.request
        try:
            if self.draining:
                raise Refusal("executor is shutting down; send the request to another executor")
            admitted = self._admit(decoded)
            return await self._serve(request, admitted)
        except Refusal as refusal:
            return self._error(request.model, refusal.reason)

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

    def _admit(self, decoded: _native.DecodedRequest) -> Admitted:
        request = decoded.request
        now = int(time.time())
        if decoded.is_signed:
            if not decoded.signature_valid:
                raise Refusal("invalid signature: it does not recover to the signer")
            age = now - decoded.timestamp
            if age > MAX_MESSAGE_AGE_SECS:
                raise Refusal(f"request too old: signed {age} s ago (limit {MAX_MESSAGE_AGE_SECS} s)")
            if -age > MAX_CLOCK_SKEW_SECS:
                raise Refusal(f"request timestamp {-age} s in the future (limit {MAX_CLOCK_SKEW_SECS} s)")
        elif not self.allow_unsigned:
            raise Refusal("unsigned requests are not accepted by this executor; send a SignedLlmRequest")
        if request.deadline and request.deadline < now:
            raise Refusal(f"deadline {request.deadline} has passed")
        target = request.executor_address.strip()
        if target.lower() not in self._names_for_us and target not in self._names_for_us:
            raise Refusal(f"request is addressed to {target}, not to this executor ({self.peer_id})")
        for side in ("inbound_price", "outbound_price"):
            price = getattr(request, side)
            if not (price.isascii() and price.isdigit()):
                raise Refusal(f"{side} must be a whole number of wei in decimal, got {price!r}")
        model = self.resolve(request.model)
        if model is None:
            served = sorted(name for name, m in self.models.items() if m.enabled)
            raise Refusal(f"model {request.model!r} is not served here; available: {served}")
        limit = self.handling.max_tokens_per_request
        if request.max_tokens is not None and request.max_tokens > limit:
            raise Refusal(f"max_tokens {request.max_tokens} exceeds this executor's limit of {limit}")
        prompt_tokens = _native.count_tokens(prompt_text(request), TOKEN_ENCODING)
        room = model.context_length - prompt_tokens
        max_tokens = request.max_tokens if request.max_tokens is not None else min(limit, room)
        if max_tokens > room or room <= 0:
            raise Refusal(
                f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"context length {model.context_length} of model {model.name!r}"
            )
        return Admitted(model, prompt_tokens, max_tokens)

    async def _serve(self, request: _native.LlmRequest, admitted: Admitted) -> bytes:
        """Runs the backend on the resolved model; `model_used` names it (not the alias)."""
        model = admitted.model
        timeout = self.handling.request_timeout_secs
        try:
            async with asyncio.timeout(timeout):
                # max_concurrent_requests (global, then per model): the rest wait here
                async with self._backend_slots, self._model_slots(model):
                    completion = await self.backend.complete(
                        model.name, request.prompt, request.system_prompt, request.temperature, admitted.max_tokens
                    )
        except TimeoutError:
            raise Refusal(f"no answer within request_timeout_secs ({timeout:g} s)") from None
        except Exception as exc:  # a backend failure is the client's signed error, not a dropped stream
            log.warning("backend failed for model %s: %s", model.name, exc)
            raise Refusal(f"backend error: {exc}") from None
        inbound = completion.inbound_tokens if completion.inbound_tokens is not None else admitted.prompt_tokens
        outbound = completion.outbound_tokens
        if outbound is None:
            outbound = _native.count_tokens(completion.content, TOKEN_ENCODING)
        cost = inbound * int(request.inbound_price) + outbound * int(request.outbound_price)
        return _native.encode_signed_response(
            self.key, completion.content, inbound, outbound, str(cost), model.name, None, int(time.time())
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
