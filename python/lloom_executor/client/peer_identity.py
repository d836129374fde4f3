"""The EVM address behind a secp256k1 PeerId (docs/PROTOCOL.md §1: one key, two faces).

A `16Uiu2…` PeerId is an identity multihash of the protobuf `PublicKey{Type=2,
Data=<33-byte compressed key>}`, so the key — and with it the EVM address —
can be read out of the PeerId itself. That lets the client check that an
answer is signed by the executor it dialed, even without any announcement.
"""

from __future__ import annotations

import base58
import coincurve

from .. import _native

_IDENTITY_MULTIHASH = 0x00
_KEY_TYPE_SECP256K1 = 2


class NotSecp256k1PeerId(ValueError):
    """The PeerId does not embed a secp256k1 key (e.g. an Ed25519 or hashed RSA id)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise NotSecp256k1PeerId("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The 33-byte compressed secp256k1 key embedded in `peer_id`."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError as exc:
        raise NotSecp256k1PeerId(f"not a base58 PeerId: {peer_id!r}") from exc
    code, pos = _varint(raw, 0)
    if code != _IDENTITY_MULTIHASH:
        raise NotSecp256k1PeerId(f"PeerId {peer_id} is a hash (multihash code {code:#x}), it embeds no key")
    length, pos = _varint(raw, pos)
    message = raw[pos:]
    if len(message) != length:
        raise NotSecp256k1PeerId(f"PeerId {peer_id}: multihash length {length} != {len(message)}")
    key_type = data = None
    pos = 0
    while pos < len(message):  # protobuf PublicKey{1: KeyType (varint), 2: bytes}
        tag, pos = _varint(message, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(message, pos)
            if field == 1:
                key_type = value
        elif wire == 2:
            size, pos = _varint(message, pos)
            if field == 2:
                data = message[pos : pos + size]
            pos += size
        else:
            raise NotSecp256k1PeerId(f"PeerId {peer_id}: unexpected protobuf wire type {wire}")
    if key_type != _KEY_TYPE_SECP256K1 or data is None or len(data) != 33:
        raise NotSecp256k1PeerId(f"PeerId {peer_id} does not embed a compressed secp256k1 key (type {key_type})")
    return bytes(data)


def evm_address_from_peer_id(peer_id: str) -> str:
    """Lowercase `0x…` EVM address of the key inside a secp256k1 PeerId.

    Raises `NotSecp256k1PeerId` for any other kind of PeerId, or when the
    embedded key does not round-trip to the same PeerId.
    """
    compressed = public_key_from_peer_id(peer_id)
    try:
        uncompressed = coincurve.PublicKey(compressed).format(compressed=False)
    except ValueError as exc:
        raise NotSecp256k1PeerId(f"PeerId {peer_id} embeds an invalid secp256k1 point") from exc
    if _native.peer_id_from_public_key(compressed) != peer_id:
        raise NotSecp256k1PeerId(f"PeerId {peer_id} is not in canonical form")
    return "0x" + bytes(_native.keccak256(uncompressed[1:]))[-20:].hex()
