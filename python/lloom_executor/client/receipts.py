"""EIP-712 receipts an executor may carry in the answer's envelope (PROTOCOL.md §4, §7).

Reference decoders ignore unknown envelope keys, so an executor can add a
`receipt` entry to the `SignedLlmResponse` map without breaking anyone. The
native decoder does not expose envelope extras, so the (rare) frames that
contain one are read a second time with cbor2 — lazily imported: receipts are
optional, and the client works without cbor2.

Expected shape (a CBOR map; byte strings may also come as 0x-hex text):
`{"request_hash": bytes32, "timestamp": u64, "success": bool, "digest": bytes32,
"signature": bytes65}`. The client recomputes the response commitment from what
it asked and what it got, so a receipt that commits to other numbers, or is not
signed by the executor, is reported as invalid.
"""
from __future__ import annotations

import logging
from typing import Any

from .. import _native
from .types import Receipt

log = logging.getLogger(__name__)
_warned = False


def envelope_receipt(frame: bytes) -> Any:
    """The raw `receipt` value of a SignedLlmResponse envelope, or None."""
    global _warned
    if b"receipt" not in frame:
        return None
    try:
        import cbor2
    except ImportError:
        if not _warned:
            log.warning("answers carry EIP-712 receipts but cbor2 is not installed: receipts are not checked")
            _warned = True
        return None
    try:
        message = cbor2.loads(frame)
        return message["SignedLlmResponse"].get("receipt")
    except Exception:
        return None


def _bytes(value: Any, size: int) -> bytes:
    if isinstance(value, str):
        value = bytes.fromhex(value.removeprefix("0x").removeprefix("0X"))
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ValueError(f"expected {size} bytes")
    return bytes(value)


def check_receipt(
    raw: Any,
    domain: _native.Eip712Domain,
    *,
    executor_address: str,
    client_address: str,
    model: str,
    prompt: str,
    system_prompt: str | None,
    max_tokens: int | None,
    temperature: float | None,
    inbound_price: str,
    outbound_price: str,
    nonce: int,
    deadline: int,
    content: str,
    inbound_tokens: int,
    outbound_tokens: int,
) -> Receipt:
    """Recompute the commitments and check the executor's signature over them."""
    try:
        request_hash = _bytes(raw["request_hash"], 32)
        digest = _bytes(raw["digest"], 32)
        signature = _bytes(raw["signature"], 65)
        timestamp = int(raw["timestamp"])
        success = bool(raw["success"])
    except (KeyError, TypeError, ValueError) as exc:
        return Receipt(b"", b"", b"", 0, False, False, f"malformed receipt: {exc}")

    def invalid(problem: str) -> Receipt:
        return Receipt(request_hash, digest, signature, timestamp, success, False, problem)

    expected_request = domain.request_commitment_digest(
        executor_address, model, prompt, system_prompt, max_tokens or 0, temperature or 0.0,
        inbound_price, outbound_price, nonce, deadline,
    )
    if bytes(expected_request) != request_hash:
        return invalid("request_hash is not the commitment of the request we sent")
    expected = domain.response_commitment_digest(
        request_hash, client_address, model, content, inbound_tokens, outbound_tokens,
        inbound_price, outbound_price, timestamp, success,
    )
    if bytes(expected) != digest:
        return invalid("digest does not commit to the answer we received")
    try:
        signer = "0x" + bytes(_native.recover_address(digest, signature)).hex()
    except ValueError as exc:
        return invalid(f"unrecoverable signature: {exc}")
    if signer != executor_address.lower():
        return invalid(f"receipt signed by {signer}, not by the executor {executor_address.lower()}")
    return Receipt(request_hash, digest, signature, timestamp, success, True)
