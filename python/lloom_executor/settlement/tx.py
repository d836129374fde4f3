"""Signed Ethereum transactions from the settlement key: EIP-1559 (type 2) or legacy EIP-155.

RLP and the signing digests are written out here (a few dozen lines) instead of
pulling an Ethereum library into the executor's run-time dependencies;
tests/test_settlement_encoding.py compares the raw bytes with eth-account's
`sign_transaction` for the same fields (signatures are deterministic, RFC 6979).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _native


def _rlp_length(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(encoded)]) + encoded


def rlp(item: bytes | int | list[object]) -> bytes:
    """RLP of bytes, a non-negative int (big-endian, no leading zeros) or a list of those."""
    if isinstance(item, list):
        body = b"".join(rlp(x) for x in item)  # type: ignore[arg-type]
        return _rlp_length(len(body), 0xC0) + body
    if isinstance(item, int):
        if item < 0:
            raise ValueError("RLP integers are non-negative")
        item = item.to_bytes((item.bit_length() + 7) // 8, "big") if item else b""
    if len(item) == 1 and item[0] < 0x80:
        return item
    return _rlp_length(len(item), 0x80) + item


@dataclass(frozen=True)
class Transaction:
    """A contract call; `max_priority_fee` None makes it a legacy transaction at `max_fee` per gas."""

    chain_id: int
    nonce: int
    gas: int
    to: bytes
    data: bytes
    max_fee: int  # wei per gas: maxFeePerGas (type 2) or gasPrice (legacy)
    max_priority_fee: int | None
    value: int = 0

    def sign(self, key: _native.PrivateKey) -> tuple[bytes, bytes]:
        """(raw signed bytes for eth_sendRawTransaction, transaction hash)."""
        if self.max_priority_fee is not None:
            fields: list[object] = [
                self.chain_id,
                self.nonce,
                self.max_priority_fee,
                self.max_fee,
                self.gas,
                self.to,
                self.value,
                self.data,
                [],
            ]
            signature = bytes(key.sign_digest(bytes(_native.keccak256(b"\x02" + rlp(fields)))))
            r, s, y = signature[:32], signature[32:64], signature[64] % 27
            raw = b"\x02" + rlp([*fields, y, int.from_bytes(r, "big"), int.from_bytes(s, "big")])
        else:
            fields = [self.nonce, self.max_fee, self.gas, self.to, self.value, self.data]
            digest = bytes(_native.keccak256(rlp([*fields, self.chain_id, 0, 0])))
            signature = bytes(key.sign_digest(digest))
            v = signature[64] % 27 + 35 + 2 * self.chain_id
            raw = rlp([*fields, v, int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")])
        return raw, bytes(_native.keccak256(raw))
