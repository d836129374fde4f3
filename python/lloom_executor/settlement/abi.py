"""AccountingV2 calldata, written by hand for the few calls settlement makes (no ABI library at run time).

`processRequestSigned((address,string,bytes32,bytes32,uint32,uint32,uint256,uint256,uint64,uint64),
(bytes32,address,string,bytes32,uint32,uint32,uint256,uint256,uint64,bool),bytes,bytes)` and
`getCurrentNonce(address)`, in the Solidity ABI's head/tail encoding: both structs
hold a `string`, so they are dynamic tuples, each referenced by an offset.
tests/test_settlement_encoding.py checks every byte against eth-abi.

The commitments are rebuilt from the ledger row (`requests.client_commitment`,
written by serving/records.py) and their EIP-712 digests recomputed here in
Python (`request_hash`, `response_hash`), so a row whose stored hash the rebuilt
commitment does not reproduce is never sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import _native

REQUEST_TUPLE = "(address,string,bytes32,bytes32,uint32,uint32,uint256,uint256,uint64,uint64)"
RESPONSE_TUPLE = "(bytes32,address,string,bytes32,uint32,uint32,uint256,uint256,uint64,bool)"
PROCESS_REQUEST_SIGNED = f"processRequestSigned({REQUEST_TUPLE},{RESPONSE_TUPLE},bytes,bytes)"
GET_CURRENT_NONCE = "getCurrentNonce(address)"
ERROR_STRING = "Error(string)"


def selector(signature: str) -> bytes:
    return bytes(_native.keccak256(signature.encode()))[:4]


def _word(value: int) -> bytes:
    return int(value).to_bytes(32, "big")


def _address(value: bytes) -> bytes:
    if len(value) != 20:
        raise ValueError("an address is 20 bytes")
    return bytes(12) + value


def _bytes32(value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError("a bytes32 is 32 bytes")
    return value


def _dynamic(data: bytes) -> bytes:
    return _word(len(data)) + data + bytes(-len(data) % 32)


def _tuple(heads: list[bytes | None], tail: bytes) -> bytes:
    """A tuple with one dynamic member (the `None` head): its offset is the head's size."""
    offset = 32 * len(heads)
    return b"".join(h if h is not None else _word(offset) for h in heads) + tail


def temperature_u32(t: float) -> int:
    """round(t x 10000), half away from zero, exactly as the native EIP-712 code (Rust f64::round)."""
    scaled = float(t) * 10000.0
    whole = int(scaled)
    return whole + (1 if scaled - whole >= 0.5 else 0)


@dataclass(frozen=True)
class RequestCommitment:
    executor: bytes
    model: str
    prompt_hash: bytes
    system_prompt_hash: bytes
    max_tokens: int
    temperature: int  # uint32: round(t x 10000)
    inbound_price: int
    outbound_price: int
    nonce: int
    deadline: int

    def encode(self) -> bytes:
        return _tuple(
            [
                _address(self.executor),
                None,
                _bytes32(self.prompt_hash),
                _bytes32(self.system_prompt_hash),
                _word(self.max_tokens),
                _word(self.temperature),
                _word(self.inbound_price),
                _word(self.outbound_price),
                _word(self.nonce),
                _word(self.deadline),
            ],
            _dynamic(self.model.encode()),
        )


@dataclass(frozen=True)
class ResponseCommitment:
    request_hash: bytes
    client: bytes
    model: str
    content_hash: bytes
    inbound_tokens: int
    outbound_tokens: int
    inbound_price: int
    outbound_price: int
    timestamp: int
    success: bool

    def encode(self) -> bytes:
        return _tuple(
            [
                _bytes32(self.request_hash),
                _address(self.client),
                None,
                _bytes32(self.content_hash),
                _word(self.inbound_tokens),
                _word(self.outbound_tokens),
                _word(self.inbound_price),
                _word(self.outbound_price),
                _word(self.timestamp),
                _word(1 if self.success else 0),
            ],
            _dynamic(self.model.encode()),
        )


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.removeprefix("0x"))


def commitments_of(
    stored: dict[str, Any], executor: bytes, client: bytes, request_hash: bytes
) -> tuple[RequestCommitment, ResponseCommitment]:
    """Both commitments from a ledger row's `client_commitment` JSON (serving/records.py)."""
    request = RequestCommitment(
        executor=executor,
        model=str(stored["model"]),
        prompt_hash=_hex(stored["prompt_hash"]),
        system_prompt_hash=_hex(stored["system_prompt_hash"]),
        max_tokens=int(stored["max_tokens"]),
        temperature=temperature_u32(float(stored["temperature"])),
        inbound_price=int(stored["inbound_price"]),
        outbound_price=int(stored["outbound_price"]),
        nonce=int(stored["nonce"]),
        deadline=int(stored["deadline"]),
    )
    response = ResponseCommitment(
        request_hash=request_hash,
        client=client,
        model=request.model,
        content_hash=_hex(stored["content_hash"]),
        inbound_tokens=int(stored["inbound_tokens"]),
        outbound_tokens=int(stored["outbound_tokens"]),
        inbound_price=request.inbound_price,
        outbound_price=request.outbound_price,
        timestamp=int(stored["timestamp"]),
        success=bool(stored["success"]),
    )
    return request, response


def _keccak(data: bytes) -> bytes:
    return bytes(_native.keccak256(data))


REQUEST_TYPEHASH = _keccak(_native.LLM_REQUEST_COMMITMENT_TYPE.encode())
RESPONSE_TYPEHASH = _keccak(_native.LLM_RESPONSE_COMMITMENT_TYPE.encode())


def request_hash(domain: _native.Eip712Domain, r: RequestCommitment) -> bytes:
    """The EIP-712 digest of a request commitment, from the encoded words (not the native helper):
    what the contract computes from the calldata we send."""
    struct = REQUEST_TYPEHASH + _address(r.executor) + _keccak(r.model.encode()) + r.prompt_hash + r.system_prompt_hash
    struct += b"".join(_word(v) for v in (r.max_tokens, r.temperature, r.inbound_price, r.outbound_price, r.nonce, r.deadline))
    return _keccak(b"\x19\x01" + bytes(domain.separator) + _keccak(struct))


def response_hash(domain: _native.Eip712Domain, r: ResponseCommitment) -> bytes:
    struct = RESPONSE_TYPEHASH + r.request_hash + _address(r.client) + _keccak(r.model.encode()) + r.content_hash
    struct += b"".join(
        _word(v) for v in (r.inbound_tokens, r.outbound_tokens, r.inbound_price, r.outbound_price, r.timestamp, int(r.success))
    )
    return _keccak(b"\x19\x01" + bytes(domain.separator) + _keccak(struct))


def signature_27(signature: bytes) -> bytes:
    """r||s||v with v as 27/28: what OpenZeppelin's ECDSA.recover (and AccountingV2) accept; our
    wire signatures carry v as 0/1 (docs/PROTOCOL.md §4)."""
    if len(signature) != 65:
        raise ValueError("a signature is 65 bytes")
    v = signature[64]
    return signature[:64] + bytes([v + 27 if v < 27 else v])


def process_request_signed(
    request: RequestCommitment, response: ResponseCommitment, client_sig: bytes, executor_sig: bytes
) -> bytes:
    parts = [request.encode(), response.encode(), _dynamic(signature_27(client_sig)), _dynamic(signature_27(executor_sig))]
    heads, offset = [], 32 * len(parts)
    for part in parts:
        heads.append(_word(offset))
        offset += len(part)
    return selector(PROCESS_REQUEST_SIGNED) + b"".join(heads) + b"".join(parts)


def get_current_nonce(client: bytes) -> bytes:
    return selector(GET_CURRENT_NONCE) + _address(client)


def revert_reason(data: bytes) -> str | None:
    """The `Error(string)` of revert data, None when it is something else."""
    if data[:4] != selector(ERROR_STRING) or len(data) < 68:
        return None
    length = int.from_bytes(data[36:68], "big")
    return data[68 : 68 + length].decode("utf-8", "replace")
