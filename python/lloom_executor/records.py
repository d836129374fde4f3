"""What every answer leaves behind: its EIP-712 receipt and its ledger row.

Receipt: every signed request that passed admission (served, or a signed error
after admission) gets an EIP-712 `LlmResponseCommitment` in the answer's
envelope (PROTOCOL.md §7; wire shape in `native/src/codec/types.rs`).
`requestHash` is the request commitment with `executor` = our EVM address, the
request's model, texts, `max_tokens` (0 when absent), temperature as it
travelled (f32, `round(t*10000)`, 0 when absent), prices, nonce and deadline;
the response commitment names the request's signer as `client`, the request's
model, the answer's content and tokens, the request's prices, the answer's
timestamp and `success` = no error. Unsigned requests (no client to name) and
refusals during admission get none.

Ledger row: one per answered request (served or refused; malformed frames and
validator messages are not requests). The request path commits it, off the
event loop, *before* the answer bytes leave; if the write fails, a would-be
served answer becomes a signed error, so nothing is served unrecorded.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import _native
from .config import ModelConfig
from .ledger import STATUS_REFUSED, STATUS_SERVED, LedgerEntry

if TYPE_CHECKING:
    from .p2p.llm_protocol import RequestContext
    from .serving import Reply, Timings

log = logging.getLogger(__name__)


def signer(decoded: _native.DecodedRequest) -> bytes | None:
    """The 20-byte address that signed the request; None when it is unsigned or badly signed."""
    if decoded.is_signed and decoded.signature_valid and decoded.signer is not None:
        return bytes(decoded.signer)
    return None


def sign_receipt(
    domain: _native.Eip712Domain, key: _native.PrivateKey, decoded: _native.DecodedRequest, reply: Reply, timestamp: int
) -> dict | None:
    """The signed `LlmResponseCommitment` for the envelope, or None (unsigned or uncommittable request)."""
    client = signer(decoded)
    if client is None:
        return None
    request = decoded.request
    try:
        request_hash = bytes(domain.request_commitment_digest(
            key.address_bytes, request.model, request.prompt, request.system_prompt,
            request.max_tokens or 0, request.temperature or 0.0,
            request.inbound_price, request.outbound_price, request.nonce, request.deadline,
        ))
        digest, signature = domain.sign_response_receipt(
            key, request_hash, client, request.model, reply.content,
            reply.inbound_tokens, reply.outbound_tokens, request.inbound_price, request.outbound_price,
            timestamp, reply.error is None,
        )
    except (TypeError, ValueError) as exc:  # e.g. a price of 2**256 wei or more: not committable
        log.warning("no receipt for a request from 0x%s: %s", client.hex(), exc)
        return None
    return {
        "request_hash": request_hash,
        "client": client,
        "timestamp": timestamp,
        "success": reply.error is None,
        "digest": bytes(digest),
        "signature": bytes(signature),
    }


def ledger_entry(
    decoded: _native.DecodedRequest,
    ctx: RequestContext,
    served: ModelConfig | None,
    reply: Reply,
    receipt: dict | None,
    timings: Timings,
) -> LedgerEntry:
    """The row for one answered request. `model` is always one of ours (or ""), so per-model
    totals cannot be flooded with made-up names; the name as requested is `requested_model`."""
    request = decoded.request
    signed_by = signer(decoded)
    return LedgerEntry(
        status=STATUS_SERVED if reply.error is None else STATUS_REFUSED,
        model=served.name if served is not None else "",
        requested_model=request.model,
        client_address="0x" + signed_by.hex() if signed_by is not None else None,
        peer_id=ctx.peer_id,
        inbound_tokens=reply.inbound_tokens,
        outbound_tokens=reply.outbound_tokens,
        inbound_price=request.inbound_price,
        outbound_price=request.outbound_price,
        total_cost=reply.total_cost,
        reason=reply.error,
        request_digest=bytes(decoded.digest),
        request_hash=receipt["request_hash"] if receipt else None,
        receipt_digest=receipt["digest"] if receipt else None,
        receipt_signature=receipt["signature"] if receipt else None,
        receipt_timestamp=receipt["timestamp"] if receipt else None,
        queued_ms=timings.queued_ms,
        backend_ms=timings.backend_ms,
        total_ms=timings.total_ms(),
    )
