"""Type stubs of the Rust extension (native/src). Every function is one native call."""
from collections.abc import Iterable
from typing import Any

__version__: str

# -- crypto.rs -----------------------------------------------------------------
class PrivateKey:
    """secp256k1 key: Ethereum key and libp2p identity in one; repr never shows the secret."""
    @staticmethod
    def generate() -> PrivateKey: ...
    @staticmethod
    def from_bytes(data: bytes) -> PrivateKey: ...
    @staticmethod
    def from_hex(text: str) -> PrivateKey: ...
    def to_bytes(self) -> bytes: ...
    def to_hex(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def address_bytes(self) -> bytes: ...
    @property
    def public_key(self) -> bytes: ...
    @property
    def public_key_uncompressed(self) -> bytes: ...
    @property
    def peer_id(self) -> str: ...
    def sign_digest(self, digest: bytes) -> bytes: ...

def keccak256(data: bytes) -> bytes: ...
def sign_digest(key: PrivateKey, digest: bytes) -> bytes: ...
def recover_address(digest: bytes, signature: bytes) -> bytes: ...
def checksum_address(address: bytes) -> str: ...
def peer_id_from_public_key(public_key: bytes) -> str: ...

# -- eip712.rs -----------------------------------------------------------------
EIP712_DOMAIN_TYPE: str
LLM_REQUEST_COMMITMENT_TYPE: str
LLM_RESPONSE_COMMITMENT_TYPE: str
EIP712_DOMAIN_NAME: str
EIP712_DOMAIN_VERSION: str

_Address = bytes | str
_Wei = str | int
_TextOrHash = str | bytes

class Eip712Domain:
    """AccountingV2 domain; the separator is computed once at construction."""
    def __init__(self, chain_id: int, verifying_contract: _Address) -> None: ...
    @property
    def separator(self) -> bytes: ...
    @property
    def chain_id(self) -> int: ...
    @property
    def verifying_contract(self) -> str: ...
    def request_commitment_digest(
        self, executor: _Address, model: str, prompt: _TextOrHash, system_prompt: _TextOrHash | None,
        max_tokens: int, temperature: float, inbound_price: _Wei, outbound_price: _Wei,
        nonce: int, deadline: int,
    ) -> bytes: ...
    def response_commitment_digest(
        self, request_hash: bytes, client: _Address, model: str, content: _TextOrHash,
        inbound_tokens: int, outbound_tokens: int, inbound_price: _Wei, outbound_price: _Wei,
        timestamp: int, success: bool,
    ) -> bytes: ...
    def sign_response_receipt(
        self, key: PrivateKey, request_hash: bytes, client: _Address, model: str, content: _TextOrHash,
        inbound_tokens: int, outbound_tokens: int, inbound_price: _Wei, outbound_price: _Wei,
        timestamp: int, success: bool,
    ) -> tuple[bytes, bytes]: ...

# -- tokens.rs -----------------------------------------------------------------
TOKEN_ENCODINGS: tuple[str, ...]

def count_tokens(text: str, encoding: str) -> int: ...
def count_tokens_batch(texts: Iterable[str], encoding: str) -> list[int]: ...

# -- codec/ --------------------------------------------------------------------
MAX_REQUEST_BYTES: int
MAX_RESPONSE_BYTES: int
MAX_CBOR_DEPTH: int

_Frame = bytes | bytearray | memoryview

class LlmRequest:
    model: str
    prompt: str
    system_prompt: str | None
    temperature: float | None
    max_tokens: int | None
    executor_address: str
    inbound_price: str
    outbound_price: str
    nonce: int
    deadline: int

class LlmResponse:
    content: str
    inbound_tokens: int
    outbound_tokens: int
    total_cost: str
    model_used: str
    error: str | None

class Decoded:
    """A decoded message; `digest` is keccak256 of the payload's serde_json bytes."""
    variant: str
    payload_json: bytes
    payload: dict[str, Any]
    is_signed: bool
    signer: bytes | None
    signature: bytes | None
    timestamp: int | None
    nonce: int | None
    digest: bytes
    signature_valid: bool
    recovered: bytes | None

class DecodedRequest(Decoded):
    request: LlmRequest | None

class DecodedResponse(Decoded):
    response: LlmResponse | None
    content: str | None
    inbound_tokens: int | None
    outbound_tokens: int | None
    total_cost: str | None
    model_used: str | None
    error: str | None
    # envelope `receipt`: {request_hash: bytes, client: bytes, timestamp: int, success: bool,
    # digest: bytes, signature: bytes} when well-formed; a malformed one as received; None when absent
    receipt: Any  # dict[str, Any] | None, or a malformed value as received

class DecodedAnnouncement(Decoded):
    announcement: dict[str, Any]

def decode_request(frame: _Frame) -> DecodedRequest: ...
def decode_response(frame: _Frame) -> DecodedResponse: ...
def encode_signed_request(
    key: PrivateKey, model: str, prompt: str, system_prompt: str | None, temperature: float | None,
    max_tokens: int | None, executor_address: str, inbound_price: str, outbound_price: str,
    nonce: int, deadline: int, timestamp: int, envelope_nonce: int | None = None,
) -> bytes: ...
def encode_unsigned_request(
    model: str, prompt: str, system_prompt: str | None, temperature: float | None,
    max_tokens: int | None, executor_address: str, inbound_price: str, outbound_price: str,
    nonce: int, deadline: int,
) -> bytes: ...
def encode_signed_response(
    key: PrivateKey, content: str, inbound_tokens: int, outbound_tokens: int, total_cost: str,
    model_used: str, error: str | None, timestamp: int, nonce: int | None = None,
    receipt: dict[str, Any] | None = None,
) -> bytes: ...
def encode_unsigned_response(
    content: str, inbound_tokens: int, outbound_tokens: int, total_cost: str, model_used: str,
    error: str | None = None,
) -> bytes: ...
def encode_signed_ack(
    key: PrivateKey, request_id: str, success: bool, message: str | None, timestamp: int,
    nonce: int | None = None,
) -> bytes: ...
def encode_model_announcement_json(
    key: PrivateKey, announcement: dict[str, Any], timestamp: int, nonce: int | None = None,
) -> bytes: ...
def decode_model_announcement_json(data: _Frame) -> DecodedAnnouncement: ...
