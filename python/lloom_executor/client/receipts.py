"""EIP-712 receipts an executor carries in the answer's envelope (docs/PROTOCOL.md §4, §7).

Reference decoders ignore unknown envelope keys, so an executor adds a
`receipt` entry to the `SignedLlmResponse` map, after the standard fields,
without breaking anyone. The native decoder exposes it
(`DecodedResponse.receipt`); wire shape (a CBOR map, in this order; byte
strings may also come as 0x-hex text), see `native/src/codec/types.rs`:
`{"request_hash": bytes32, "client": bytes20, "timestamp": u64,
"success": bool, "digest": bytes32, "signature": bytes65}`.

The client recomputes both commitments from what it asked and what it got
(the request's model, its prices, the answer's content and tokens), so a
receipt that commits to other numbers, names another client, or is not
signed by the executor is reported as invalid. `client` is optional here
(older executors sent receipts without it).
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from .. import _native
from .types import Receipt

log = logging.getLogger(__name__)


def envelope_receipt(frame: bytes) -> Any:
    """The `receipt` value of a SignedLlmResponse envelope (a dict when well-formed), or None."""
    if b"receipt" not in frame:  # cheap: most frames carry none
        return None
    try:
        return _native.decode_response(frame).receipt
    except ValueError:
        return None


def wire_temperature(temperature: float | None) -> float:
    """The temperature as the executor reads it: the request carries an f32 (0.7 → 0.699999988…)."""
    if temperature is None:
        return 0.0
    return struct.unpack("<f", struct.pack("<f", float(temperature)))[0]


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
        client = _bytes(raw["client"], 20) if "client" in raw else None
    except (KeyError, TypeError, ValueError) as exc:
        return Receipt(b"", b"", b"", 0, False, False, f"malformed receipt: {exc}")

    def invalid(problem: str) -> Receipt:
        return Receipt(request_hash, digest, signature, timestamp, success, False, problem)

    if client is not None and "0x" + client.hex() != client_address.lower():
        return invalid(f"receipt names client 0x{client.hex()}, not us ({client_address.lower()})")
    try:
        expected_request = domain.request_commitment_digest(
            executor_address,
            model,
            prompt,
            system_prompt,
            max_tokens or 0,
            wire_temperature(temperature),
            inbound_price,
            outbound_price,
            nonce,
            deadline,
        )
    except (TypeError, ValueError) as exc:
        return invalid(f"the request cannot be committed to: {exc}")
    if bytes(expected_request) != request_hash:
        return invalid("request_hash is not the commitment of the request we sent")
    try:
        expected = domain.response_commitment_digest(
            request_hash,
            client_address,
            model,
            content,
            inbound_tokens,
            outbound_tokens,
            inbound_price,
            outbound_price,
            timestamp,
            success,
        )
    except (TypeError, ValueError) as exc:
        return invalid(f"the answer cannot be committed to: {exc}")
    if bytes(expected) != digest:
        return invalid("digest does not commit to the answer we received")
    try:
        signer = "0x" + bytes(_native.recover_address(digest, signature)).hex()
    except ValueError as exc:
        return invalid(f"unrecoverable signature: {exc}")
    if signer != executor_address.lower():
        return invalid(f"receipt signed by {signer}, not by the executor {executor_address.lower()}")
    return Receipt(request_hash, digest, signature, timestamp, success, True)
