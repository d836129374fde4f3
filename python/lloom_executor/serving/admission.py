"""Admission: the ordered checks a decoded request passes before any work is done for it.

Cheapest check first, each refusal with its specific public reason (the
limit, the price we charge, the models we serve, what is wrong with the
frame): that helps the client and reveals nothing internal.

The one step that must stay atomic is the replay guard's check-and-remember:
it runs after every check that may refuse cheaply (so a request refused for
its price can be resent as it is) and before the checks that may wait (the
plugins' `check_request`, and later shared stores), so two copies of one
request can never both pass. A refusal after it forgets the request again:
nothing was done for it. A check may be a plain function or return an
awaitable; plain ones cost no `await`.

The context check counts the prompt with our native tokenizer (cl100k_base, system + "\\n" +
prompt) plus a template allowance: the chat template adds tokens of its own (role headers,
separators, BOS, the assistant's generation prompt), `TEMPLATE_TOKENS_PER_MESSAGE` (8) per message
plus `TEMPLATE_TOKENS_FIXED` (8) -- what ChatML (about 5 per message, 3 for the generation prompt)
and Llama 3 (5 per message, BOS + 4) take, with room to spare. Where the model's backend offers
its server's tokenizer (`LlmBackend.count_prompt`: llama.cpp, vLLM, llama-cpp-python), the count
that decides is the model's own, template included where the server applies it -- but only where
it can change the decision: tokenizers differ from cl100k by less than `EXACT_COUNT_FACTOR` (2x)
either way for ordinary text, so a prompt whose estimate fits even when doubled passes, and one
that does not fit even when halved is refused, on the native count alone, without a call. Only a
prompt in between costs one call to the server's tokenizer (within `PROMPT_COUNT_TIMEOUT_SECS`);
when it fails or the server has none, the estimate with its allowance decides.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .. import _native
from ..backends.base import TOKEN_SOURCE_SERVER, CompletionRequest, PromptCount, native_source
from ..config import ModelConfig, RequestHandlingConfig
from ..events import RequestView
from ..outcome import Refusal, RefusalCode
from ..p2p.llm_protocol import RequestContext
from ..pipeline.content_filter import ContentFilter
from ..pipeline.model_registry import ModelRegistry
from ..pipeline.ratelimits import RateLimitRules
from ..pipeline.replay import ReplayStore, replay_key
from ..plugins import PluginHost

MAX_MESSAGE_AGE_SECS = 300
MAX_CLOCK_SKEW_SECS = 300
TOKEN_ENCODING = "cl100k_base"
NATIVE_SOURCE = native_source(TOKEN_ENCODING)
TEMPLATE_TOKENS_PER_MESSAGE = 8  # a chat template's tokens around one message (role header, separators)
TEMPLATE_TOKENS_FIXED = 8  # ... and around them all (BOS, the assistant's generation prompt)
EXACT_COUNT_FACTOR = 2  # how far a model's tokenizer may plausibly differ from cl100k, either way
PROMPT_COUNT_TIMEOUT_SECS = 5.0  # the most admission waits for the server's tokenizer

PromptCounter = Callable[[CompletionRequest, float], Awaitable[PromptCount | None]]
"""`LlmBackend.count_prompt`: the prompt's tokens by the served model's tokenizer, or None."""


def prompt_text(request: _native.LlmRequest) -> str:
    """The text we count as the request's inbound tokens when the backend reports no usage."""
    return request.prompt if request.system_prompt is None else request.system_prompt + "\n" + request.prompt


def template_margin(request: _native.LlmRequest) -> int:
    """The tokens a chat template may add to this request's messages (see the module doc)."""
    messages = 2 if request.system_prompt else 1
    return TEMPLATE_TOKENS_FIXED + TEMPLATE_TOKENS_PER_MESSAGE * messages


@dataclass
class Candidate:
    """A decoded request on its way through admission; the checks fill in what they learn."""

    decoded: _native.DecodedRequest
    request: _native.LlmRequest
    ctx: RequestContext
    prompt_tokens: int  # our native count; the model's own once the context check asked its server
    replay_key: bytes
    prompt_source: str = NATIVE_SOURCE  # who counted prompt_tokens (server_tokenizer: the model's tokenizer)
    model: ModelConfig | None = None  # resolved (aliases) once the model check passed
    max_tokens: int = 0  # the output budget the backend gets
    view: RequestView | None = None  # what plugins see, made once when a plugin checks
    client_commitment: bytes | None = None  # the client's EIP-712 request signature, once verified

    @property
    def signed(self) -> bool:
        return self.decoded.is_signed and self.decoded.signature_valid


@dataclass(frozen=True)
class Admitted:
    """A request that passed admission: the model it runs on and its token budget."""

    candidate: Candidate
    model: ModelConfig
    prompt_tokens: int
    max_tokens: int

    @property
    def prompt_source(self) -> str:
        return self.candidate.prompt_source


Check = Callable[[Candidate], Awaitable[None] | None]


class Admission:
    """`before` checks, the atomic replay check-and-remember, then `after` checks."""

    def __init__(self, before: Sequence[Check], replay: ReplayStore, after: Sequence[Check] = ()) -> None:
        self.before = tuple(before)
        self.replay = replay
        self.after = tuple(after)

    async def admit(self, decoded: _native.DecodedRequest, ctx: RequestContext) -> Admitted:
        request = decoded.request
        assert request is not None  # validator messages never reach admission
        candidate = Candidate(
            decoded, request, ctx, _native.count_tokens(prompt_text(request), TOKEN_ENCODING), replay_key(decoded)
        )
        for check in self.before:
            pending = check(candidate)
            if pending is not None:
                await pending
        if not self.replay.check_and_remember(candidate.replay_key, deadline=request.deadline):
            raise Refusal("replay: this signed request was already received", RefusalCode.REPLAY)
        try:
            for check in self.after:
                pending = check(candidate)
                if pending is not None:
                    await pending
        except BaseException:
            self.replay.forget(candidate.replay_key)
            raise
        assert candidate.model is not None  # the model check is one of `before`
        return Admitted(candidate, candidate.model, candidate.prompt_tokens, candidate.max_tokens)

    def forget(self, admitted: Admitted) -> None:
        """Lets the same signed request be sent again (it was refused before any work was done)."""
        self.replay.forget(admitted.candidate.replay_key)


# -- the checks, in the order `standard_admission` runs them ------------------------------


def rate_limit_check(rules: RateLimitRules, limit: int, on_refused: Callable[[str], None] | None) -> Check:
    def check(c: Candidate) -> None:
        max_tokens = c.request.max_tokens
        wanted = c.prompt_tokens + (max_tokens if max_tokens is not None else limit)
        decision = rules.check(c.ctx.peer_id, c.ctx.remote_ip, wanted)
        if not decision.allowed:
            if on_refused is not None:
                on_refused(decision.rule_description)
            raise Refusal(decision.reason, RefusalCode.RATE_LIMITED)

    return check


def size_check(limit: int, content_filter: ContentFilter | None) -> Check:
    def check(c: Candidate) -> None:
        request = c.request
        if request.max_tokens is not None and request.max_tokens > limit:
            raise Refusal(f"max_tokens {request.max_tokens} exceeds this executor's limit of {limit}", RefusalCode.TOO_LARGE)
        if content_filter is not None and (reason := content_filter.check_length(request.system_prompt, request.prompt)):
            raise Refusal(reason, RefusalCode.TOO_LARGE)

    return check


def signature_check(allow_unsigned: bool) -> Check:
    def check(c: Candidate) -> None:
        now = int(time.time())
        decoded = c.decoded
        if decoded.is_signed:
            if not decoded.signature_valid:
                raise Refusal("invalid signature: it does not recover to the signer", RefusalCode.INVALID_SIGNATURE)
            age = now - (decoded.timestamp or 0)
            if age > MAX_MESSAGE_AGE_SECS:
                raise Refusal(f"request too old: signed {age} s ago (limit {MAX_MESSAGE_AGE_SECS} s)", RefusalCode.STALE)
            if -age > MAX_CLOCK_SKEW_SECS:
                raise Refusal(f"request timestamp {-age} s in the future (limit {MAX_CLOCK_SKEW_SECS} s)", RefusalCode.STALE)
        elif not allow_unsigned:
            raise Refusal("unsigned requests are not accepted by this executor; send a SignedLlmRequest", RefusalCode.UNSIGNED)
        if c.request.deadline and c.request.deadline < now:
            raise Refusal(f"deadline {c.request.deadline} has passed", RefusalCode.EXPIRED)

    return check


def replay_seen_check(replay: ReplayStore) -> Check:
    """An early, read-only refusal of a replay, before the more expensive checks."""

    def check(c: Candidate) -> None:
        if replay.seen(c.replay_key):
            raise Refusal("replay: this signed request was already received", RefusalCode.REPLAY)

    return check


def addressing_check(peer_id: str, evm_address: str) -> Check:
    names_for_us = {peer_id, evm_address.lower()}

    def check(c: Candidate) -> None:
        target = c.request.executor_address.strip()
        if target.lower() not in names_for_us and target not in names_for_us:
            raise Refusal(f"request is addressed to {target}, not to this executor ({peer_id})", RefusalCode.WRONG_EXECUTOR)

    return check


def model_check(registry: ModelRegistry, limit: int, counter: PromptCounter | None = None) -> Check:
    """Price syntax, the model (or alias) served, and the context length (the module doc says how
    the prompt is counted for it, and when `counter`, the backend's tokenizer, is asked)."""

    def check(c: Candidate) -> Awaitable[None] | None:
        request = c.request
        for side in ("inbound_price", "outbound_price"):
            price = getattr(request, side)
            if not (price.isascii() and price.isdigit()):
                raise Refusal(f"{side} must be a whole number of wei in decimal, got {price!r}", RefusalCode.BAD_PRICE)
        model = registry.resolve(request.model)
        if model is None:
            served = registry.served_names()
            raise Refusal(f"model {request.model!r} is not served here; available: {served}", RefusalCode.UNKNOWN_MODEL)
        estimate = c.prompt_tokens + template_margin(request)
        wanted = request.max_tokens if request.max_tokens is not None else 1
        context = model.context_length
        if (
            counter is None
            or EXACT_COUNT_FACTOR * estimate + wanted <= context
            or estimate // EXACT_COUNT_FACTOR + wanted > context
        ):
            fit(c, model, estimate, "by our count, with a chat template allowance")
            return None
        return exact(c, model, estimate, counter)

    async def exact(c: Candidate, model: ModelConfig, estimate: int, counter: PromptCounter) -> None:
        request = c.request
        asked = CompletionRequest(model.name, request.prompt, request.system_prompt)
        counted = await counter(asked, time.monotonic() + PROMPT_COUNT_TIMEOUT_SECS)
        if counted is None:
            fit(c, model, estimate, "by our count, with a chat template allowance")
            return
        c.prompt_tokens, c.prompt_source = counted.tokens, TOKEN_SOURCE_SERVER
        if counted.templated:
            fit(c, model, counted.tokens, "by the model's tokenizer, chat template included")
        else:
            fit(c, model, counted.tokens + template_margin(request), "by the model's tokenizer, with a template allowance")

    def fit(c: Candidate, model: ModelConfig, prompt_tokens: int, how: str) -> None:
        request = c.request
        room = model.context_length - prompt_tokens
        max_tokens = request.max_tokens if request.max_tokens is not None else min(limit, room)
        if max_tokens > room or room <= 0:
            budget = f" plus max_tokens ({max_tokens})" if request.max_tokens is not None else ""
            raise Refusal(
                f"prompt ({prompt_tokens} tokens {how}){budget} exceeds the "
                f"context length {model.context_length} of model {model.name!r}",
                RefusalCode.TOO_LARGE,
            )
        c.model, c.max_tokens = model, max_tokens

    return check


UINT256_LIMIT = 2**256
MAX_COMMITTED_TEMPERATURE = (2**32 - 0.5) / 10_000  # the receipt holds round(t x 10000) as a uint32


def commitment_check(c: Candidate) -> None:
    """A signed answer carries an EIP-712 receipt that commits to the request's prices and
    temperature; a request with values the receipt's uint types cannot hold is refused rather
    than served and charged without a receipt a contract could verify."""
    request = c.request
    for side in ("inbound_price", "outbound_price"):
        if int(getattr(request, side)) >= UINT256_LIMIT:
            raise Refusal(f"{side} must be below 2**256 wei (a uint256 in the receipt)", RefusalCode.UNCOMMITTABLE)
    t = request.temperature
    if t is not None and not 0.0 <= t < MAX_COMMITTED_TEMPERATURE:
        raise Refusal(
            f"temperature must be between 0 and {MAX_COMMITTED_TEMPERATURE:.4f} (a uint32 of t x 10000 in the receipt)",
            RefusalCode.UNCOMMITTABLE,
        )


def client_commitment_check(domain: _native.Eip712Domain, executor: bytes) -> Check:
    """The envelope's `commitment` extension (client/commitments.py), when present: the client's
    EIP-712 signature over the request's `LlmRequestCommitment`, naming us as executor. What
    settlement will send must be right now: a bad one is refused (signed) rather than served
    and found unsettleable later. Absent: nothing to check (the request is not settleable)."""

    def check(c: Candidate) -> None:
        extension = c.decoded.commitment
        if extension is None:
            return
        problem = _commitment_problem(extension, c, domain, executor)
        if problem is not None:
            raise Refusal(f"invalid EIP-712 request commitment: {problem}", RefusalCode.INVALID_SIGNATURE)

    return check


def _commitment_problem(extension: object, c: Candidate, domain: _native.Eip712Domain, executor: bytes) -> str | None:
    if not c.signed or c.decoded.signer is None:
        return "only a signed request can carry one"
    if not isinstance(extension, dict):
        return "it must be a map"
    named, signature = extension.get("executor"), extension.get("signature")
    if not isinstance(named, bytes) or len(named) != 20:
        return "executor must be a 20-byte address"
    if named != executor:
        return f"it names executor 0x{named.hex()}, not this executor (0x{executor.hex()})"
    if not isinstance(signature, bytes) or len(signature) != 65:
        return "signature must be 65 bytes"
    r = c.request
    try:
        digest = bytes(
            domain.request_commitment_digest(
                executor,
                r.model,
                r.prompt,
                r.system_prompt,
                r.max_tokens or 0,
                r.temperature or 0.0,
                r.inbound_price,
                r.outbound_price,
                r.nonce,
                r.deadline,
            )
        )
        recovered = bytes(_native.recover_address(digest, signature))
    except ValueError as exc:
        return str(exc)
    if recovered != bytes(c.decoded.signer):
        return "its signature does not recover to the request's signer"
    c.client_commitment = signature
    return None


def price_check(registry: ModelRegistry) -> Check:
    def check(c: Candidate) -> None:
        assert c.model is not None
        if reason := registry.check_offer(c.model, int(c.request.inbound_price), int(c.request.outbound_price)):
            raise Refusal(reason, RefusalCode.PRICE_TOO_LOW)

    return check


def prompt_filter_check(content_filter: ContentFilter) -> Check:
    def check(c: Candidate) -> None:
        if reason := content_filter.check_prompt(c.request.system_prompt, c.request.prompt):
            raise Refusal(reason, RefusalCode.CONTENT_FILTERED)

    return check


def plugin_view(c: Candidate) -> RequestView:
    """The plugins' view of an admitted request, made once (its event reuses it)."""
    if c.view is None:
        assert c.model is not None
        c.view = RequestView.of(c.decoded, c.ctx.peer_id, c.ctx.remote_ip, c.model.name, c.prompt_tokens, c.max_tokens)
    return c.view


def plugin_check(plugins: PluginHost) -> Check:
    """The plugins' check_request; which plugins check is known only once they are loaded."""

    async def ask(c: Candidate) -> None:
        refusal = await plugins.check_request(plugin_view(c))
        if refusal is not None:
            raise refusal

    def check(c: Candidate) -> Awaitable[None] | None:
        return ask(c) if plugins.checks_requests else None

    return check


def _address_bytes(address: str) -> bytes:
    return bytes.fromhex(address.removeprefix("0x"))


def standard_admission(
    *,
    registry: ModelRegistry,
    replay: ReplayStore,
    handling: RequestHandlingConfig,
    allow_unsigned: bool,
    peer_id: str,
    evm_address: str,
    rate_limits: RateLimitRules | None = None,
    content_filter: ContentFilter | None = None,
    plugins: PluginHost | None = None,
    on_rate_limited: Callable[[str], None] | None = None,
    commitment_domain: _native.Eip712Domain | None = None,
    prompt_counter: PromptCounter | None = None,
) -> Admission:
    """The executor's admission, cheapest check first, from the stages that are configured."""
    limit = handling.max_tokens_per_request
    before: list[Check] = []
    if rate_limits is not None:
        before.append(rate_limit_check(rate_limits, limit, on_rate_limited))
    before += [
        size_check(limit, content_filter),
        signature_check(allow_unsigned),
        replay_seen_check(replay),
        addressing_check(peer_id, evm_address),
        model_check(registry, limit, prompt_counter),
        commitment_check,
        price_check(registry),
    ]
    if commitment_domain is not None:  # after the prices are known to fit the commitment's uint256
        before.insert(before.index(commitment_check) + 1, client_commitment_check(commitment_domain, _address_bytes(evm_address)))
    if content_filter is not None:
        before.append(prompt_filter_check(content_filter))
    after: list[Check] = []
    if plugins is not None:
        after.append(plugin_check(plugins))
    return Admission(before, replay, after)
