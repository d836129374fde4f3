"""The `X-Lloom-Signature` scheme: EIP-191 personal_sign over keccak256 of the exact body bytes.

Why personal_sign and not the bare keccak256(body): the same key signs answers and
EIP-712 receipts, and a personal_sign signature can never be mistaken for either
(or for a transaction), while every Ethereum library verifies it as it is. The
receiver's side, in Python and JavaScript, is in docs/webhooks.md.
"""

from __future__ import annotations

from .. import _native

SIGNATURE_HEADER = "X-Lloom-Signature"
SIGNER_HEADER = "X-Lloom-Signer"
_PERSONAL_SIGN_PREFIX = b"\x19Ethereum Signed Message:\n32"


def signing_digest(body: bytes) -> bytes:
    """What `X-Lloom-Signature` signs: EIP-191 personal_sign of the 32-byte keccak256(body)."""
    return _native.keccak256(_PERSONAL_SIGN_PREFIX + _native.keccak256(body))


def sign_body(key: _native.PrivateKey, body: bytes) -> str:
    """The `X-Lloom-Signature` value: 0x r||s||v hex, v = 27/28 as Ethereum tools write it."""
    signature = bytearray(key.sign_digest(signing_digest(body)))
    if signature[64] < 27:
        signature[64] += 27
    return "0x" + signature.hex()


def verify_signature(body: bytes, signature: str) -> str:
    """The EIP-55 address that signed `body` (compare it with the executor you expect);
    ValueError when the signature is malformed or does not recover."""
    text = signature[2:] if signature[:2] in ("0x", "0X") else signature
    raw = bytes.fromhex(text)
    if len(raw) != 65:
        raise ValueError(f"expected a 65-byte signature, got {len(raw)} bytes")
    return _native.checksum_address(_native.recover_address(signing_digest(body), raw))
