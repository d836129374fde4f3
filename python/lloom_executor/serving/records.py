"""What every answer leaves behind: its EIP-712 receipt and its ledger row.

Receipt: every signed request that passed admission (served, or a signed error
after admission) gets an EIP-712 `LlmResponseCommitment` in the answer's
envelope (docs/PROTOCOL.md §7). The response commitment names the request's
signer as `client`, so a cached answer served to another client carries a
receipt naming that client, never the first one. Unsigned requests (no client
to name) and refusals during admission get none.

Ledger row: one per served request, committed before the answer leaves;
refusals are handed over without waiting (`ledger/refusals.py` says what is
kept). Malformed frames and validator messages are not requests.
"""

from __future__ import annotations

import json
import logging

from .. import _native
from ..events import signer
from ..ledger import STATUS_REFUSED, STATUS_SERVED, LedgerEntry
from ..outcome import AnsweredRequest, Receipt, Reply

log = logging.getLogger(__name__)


def sign_receipt(
    domain: _native.Eip712Domain, key: _native.PrivateKey, decoded: _native.DecodedRequest, reply: Reply, timestamp: int
) -> Receipt | None:
    """The signed `LlmResponseCommitment` for the envelope, or None (unsigned or uncommittable request)."""
    client = signer(decoded)
    request = decoded.request
    if client is None or request is None:
        return None
    try:
        request_hash = bytes(
            domain.request_commitment_digest(
                key.address_bytes,
                request.model,
                request.prompt,
                request.system_prompt,
                request.max_tokens or 0,
                request.temperature or 0.0,
                request.inbound_price,
                request.outbound_price,
                request.nonce,
                request.deadline,
            )
        )
        digest, signature = domain.sign_response_receipt(
            key,
            request_hash,
            client,
            request.model,
            reply.content,
            reply.inbound_tokens,
            reply.outbound_tokens,
            request.inbound_price,
            request.outbound_price,
            timestamp,
            reply.error is None,
        )
    except (TypeError, ValueError) as exc:  # admission refuses what cannot be committed; a last guard
        log.warning("no receipt for a request from 0x%s: %s", client.hex(), exc)
        return None
    return Receipt(request_hash, client, timestamp, reply.error is None, bytes(digest), bytes(signature))


def settlement_commitment(request: _native.LlmRequest, reply: Reply, receipt: Receipt, client_signature: bytes) -> str:
    """The `requests.client_commitment` JSON of a served request whose client signed its EIP-712
    commitment: the client's signature and what the two commitments hold that the row does not
    (hashes, nonce, deadline, temperature), so settlement rebuilds both without the texts."""
    keccak = _native.keccak256
    return json.dumps(
        {
            "client_signature": "0x" + client_signature.hex(),
            "model": request.model,
            "prompt_hash": "0x" + bytes(keccak(request.prompt.encode())).hex(),
            "system_prompt_hash": "0x"
            + (bytes(keccak(request.system_prompt.encode())) if request.system_prompt is not None else bytes(32)).hex(),
            "max_tokens": request.max_tokens or 0,
            "temperature": request.temperature or 0.0,  # the wire f32, widened: the digest's input
            "inbound_price": request.inbound_price,
            "outbound_price": request.outbound_price,
            "nonce": request.nonce,
            "deadline": request.deadline,
            "content_hash": "0x" + bytes(keccak(reply.content.encode())).hex(),
            "inbound_tokens": reply.inbound_tokens,
            "outbound_tokens": reply.outbound_tokens,
            "timestamp": receipt.timestamp,
            "success": receipt.success,
        },
        separators=(",", ":"),
    )


def ledger_entry(answered: AnsweredRequest) -> LedgerEntry:
    """The row of one answered request; `reason` is the public sentence the client got."""
    reply, receipt = answered.reply, answered.receipt
    return LedgerEntry(
        status=STATUS_SERVED if answered.served else STATUS_REFUSED,
        model=answered.model,
        requested_model=answered.requested_model,
        client_address="0x" + answered.client.hex() if answered.client is not None else None,
        peer_id=answered.peer_id,
        inbound_tokens=reply.inbound_tokens,
        outbound_tokens=reply.outbound_tokens,
        inbound_price=answered.inbound_price,
        outbound_price=answered.outbound_price,
        total_cost=reply.total_cost,
        reason=reply.error,
        request_digest=answered.request_digest,
        request_hash=receipt.request_hash if receipt else None,
        receipt_digest=receipt.digest if receipt else None,
        receipt_signature=receipt.signature if receipt else None,
        receipt_timestamp=receipt.timestamp if receipt else None,
        queued_ms=answered.queued_ms,
        backend_ms=answered.backend_ms,
        total_ms=answered.total_ms,
        token_source=reply.token_source if answered.served else None,
    )
