"""What became of one request: the values every later stage reads (a leaf module).

`RefusalCode` is the one list of outcome labels. It is an external contract:
the `status` label of `lloom_executor_requests_total`, `data.code` of webhook
`error` events and plugin events, and the ledger's `code` column (and its
`refusal_counts` table) all use these strings, so renaming one is a breaking change
(the README lists them).

`Reply` is the `LlmResponse` payload about to be signed, `Timings` where the
request's time went, `Refusal` the exception that turns a request into a
signed error, and `AnsweredRequest` the frozen record of one answer that the
ledger, the metrics, the webhooks and the plugins all take their facts from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RefusalCode(StrEnum):
    """How a request ended. `SUCCESS` is the only one that carries content."""

    SUCCESS = "success"
    # admission: the client's doing; the reason sent names the specific problem
    DRAINING = "draining"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    INVALID_SIGNATURE = "invalid_signature"
    STALE = "stale"
    UNSIGNED = "unsigned"
    EXPIRED = "expired"
    REPLAY = "replay"
    WRONG_EXECUTOR = "wrong_executor"
    BAD_PRICE = "bad_price"
    UNCOMMITTABLE = "uncommittable"  # a value the EIP-712 receipt cannot hold (price >= 2**256, temperature)
    UNKNOWN_MODEL = "unknown_model"
    PRICE_TOO_LOW = "price_too_low"
    CONTENT_FILTERED = "content_filtered"
    PLUGIN_REFUSED = "plugin_refused"
    PLUGIN_ERROR = "plugin_error"
    # capacity: the executor is busy; try again later
    QUEUE_FULL = "queue_full"
    RESOURCES = "resources"
    THROTTLED = "throttled"
    USAGE_LIMITED = "usage_limited"  # [openai_limits]: a local rate or the daily budget
    SHARED_STATE_UNAVAILABLE = "shared_state_unavailable"  # [clustering]: the shared store (Redis) is unreachable
    # the backend: a fixed public sentence each, the detail stays in logs and metrics
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_BUSY = "backend_busy"
    BACKEND_TIMEOUT = "backend_timeout"
    BACKEND_FAILED = "backend_failed"
    # the executor itself
    LEDGER_ERROR = "ledger_error"
    INTERNAL_ERROR = "internal_error"
    # nobody to answer: the client's connection closed (or the node stopped) before the answer
    CANCELLED = "cancelled"
    # not requests: frames that did not decode, and operational events (webhooks)
    MALFORMED = "malformed"
    BACKEND_UNREACHABLE = "backend_unreachable"


class Refusal(Exception):
    """A request answered with a signed error instead of content.

    `reason` is what the client reads: specific for admission refusals (it
    helps the client and reveals nothing internal), a fixed sentence for
    backend and internal failures. `detail` is for the operator's log only and
    never leaves the process in a signed answer. A plain exception class, not a
    frozen dataclass: the interpreter and contextlib set `__traceback__` on
    exceptions that pass through them.
    """

    def __init__(self, reason: str, code: RefusalCode, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


SHARED_STATE_UNAVAILABLE_REASON = "this executor's shared state is temporarily unavailable; try again in a few seconds"


class SharedStateUnavailable(Refusal):
    """The store the members of a clustered executor share (Redis) could not be asked.

    Raised by the shared replay store, rate limiter and usage book themselves, so every call site
    refuses the request (fail closed: never served without its replay check) with the same fixed
    public sentence; `detail` (the error class) stays in the operator's log."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(SHARED_STATE_UNAVAILABLE_REASON, RefusalCode.SHARED_STATE_UNAVAILABLE, detail)


@dataclass(frozen=True)
class Reply:
    """The `LlmResponse` payload we are about to sign."""

    content: str
    inbound_tokens: int
    outbound_tokens: int
    total_cost: str
    model_used: str
    error: str | None = None
    token_source: str | None = None  # not signed: who counted the tokens charged (None: a refusal, none charged)

    @classmethod
    def refusal(cls, model: str, reason: str) -> Reply:
        """An error answer: no content, zero tokens, cost "0", the requested model (docs/PROTOCOL.md §5)."""
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


@dataclass(frozen=True)
class Receipt:
    """The signed EIP-712 `LlmResponseCommitment` of one answer (docs/PROTOCOL.md §7)."""

    request_hash: bytes
    client: bytes  # 20-byte address of the request's signer
    timestamp: int
    success: bool
    digest: bytes
    signature: bytes

    def envelope(self) -> dict[str, Any]:
        """The shape the native encoder puts into the answer's envelope."""
        return {
            "request_hash": self.request_hash,
            "client": self.client,
            "timestamp": self.timestamp,
            "success": self.success,
            "digest": self.digest,
            "signature": self.signature,
        }


@dataclass(frozen=True)
class AnsweredRequest:
    """The frozen record of one answered request, as the client got it.

    Built once per answer by the request path; the ledger row, the metrics,
    the webhook event and the plugins' `on_request_finished` all read it, so
    they cannot disagree. `model` is always one of ours ("" for none), so
    per-model totals cannot be flooded with made-up names; the name as sent is
    `requested_model`.
    """

    code: RefusalCode
    reply: Reply
    model: str  # the served model ("" when the request named none of ours)
    requested_model: str
    client: bytes | None  # 20-byte address of the request's signer; None when unsigned
    peer_id: str  # the libp2p peer the request came from
    inbound_price: str  # offered, wei per token, decimal as sent
    outbound_price: str
    request_digest: bytes  # the signing digest: the ledger's key
    receipt: Receipt | None
    queued_ms: float | None
    backend_ms: float | None
    total_ms: float
    cached: bool

    @property
    def served(self) -> bool:
        return self.reply.error is None
