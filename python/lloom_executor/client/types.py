"""What the client hands back: discovered executors, verified answers, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# How an executor was found (ExecutorInfo.via).
VIA_KAD_PROVIDERS = "kad_providers"
VIA_KAD_RECORD = "kad_record"
VIA_GOSSIP = "gossip"
VIA_MDNS = "mdns"
VIA_DIRECT = "direct"


class LloomClientError(Exception):
    """Base of every error the client raises."""


class ExecutorUnreachable(LloomClientError):
    """No connection or no `/lloom/llm/1.0.0` stream could be opened to the executor."""


class RequestTimeout(LloomClientError, TimeoutError):
    """A step (dial, stream, write, answer) did not finish in time."""


class InvalidResponse(LloomClientError):
    """The answer cannot be trusted: undecodable, unsigned, bad signature, wrong signer,
    stale timestamp, too large, or the stream ended without one."""


@dataclass
class ExecutorInfo:
    """An executor as discovery knows it; `via` says which channels vouched for it."""

    peer_id: str
    addresses: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)
    evm_address: str | None = None  # lowercase 0x…, from a verified announcement or the PeerId
    models: tuple[str, ...] | None = None  # from the latest verified ModelAnnouncement
    announcement: dict[str, Any] | None = None  # that announcement's payload

    def copy(self) -> ExecutorInfo:
        return ExecutorInfo(self.peer_id, list(self.addresses), set(self.via), self.evm_address, self.models, self.announcement)


@dataclass(frozen=True)
class Receipt:
    """An EIP-712 response commitment carried in the answer's envelope, checked by the client."""

    request_hash: bytes
    digest: bytes
    signature: bytes
    timestamp: int
    success: bool
    valid: bool  # digest recomputed from what we asked and got, and signed by the executor
    problem: str | None = None


@dataclass(frozen=True)
class Answer:
    """A verified `SignedLlmResponse`. `error` is set for a (signed) refusal; that is not an exception."""

    content: str
    inbound_tokens: int
    outbound_tokens: int
    total_cost: str
    model_used: str
    error: str | None
    signer: str  # lowercase 0x… EVM address that signed the answer
    signature_valid: bool
    timestamp: int
    executor: str  # the PeerId we sent the request to
    latency_s: float
    request_nonce: int
    request_digest: bytes  # keccak256 of our signed request payload
    receipt: Receipt | None = None
    receipt_raw: Any = None  # the envelope's "receipt" value as received, if any
    commitment_hash: bytes | None = None  # EIP-712 digest of our signed LlmRequestCommitment (settleable requests)

    @property
    def ok(self) -> bool:
        return self.error is None
