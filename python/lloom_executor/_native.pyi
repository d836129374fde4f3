"""Type stubs of the Rust extension (native/src). Every function is one native call."""

from collections.abc import Iterable
from typing import Any

__version__: str

# -- error.rs ------------------------------------------------------------------
class CodecError(ValueError):
    """Input the native core refuses: malformed CBOR or JSON, a wrong shape or length, a value
    out of range, bad hex, an unusable key or signature, a field EIP-712 cannot encode.

    Raised by every function below where the *value* is wrong (a wrong *type* stays TypeError).
    A ValueError subclass, so `except ValueError` keeps catching it; the message names the
    problem and, where known, the field and byte offset.
    """

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
        self,
        executor: _Address,
        model: str,
        prompt: _TextOrHash,
        system_prompt: _TextOrHash | None,
        max_tokens: int,
        temperature: float,
        inbound_price: _Wei,
        outbound_price: _Wei,
        nonce: int,
        deadline: int,
    ) -> bytes: ...
    def response_commitment_digest(
        self,
        request_hash: bytes,
        client: _Address,
        model: str,
        content: _TextOrHash,
        inbound_tokens: int,
        outbound_tokens: int,
        inbound_price: _Wei,
        outbound_price: _Wei,
        timestamp: int,
        success: bool,
    ) -> bytes: ...
    def sign_response_receipt(
        self,
        key: PrivateKey,
        request_hash: bytes,
        client: _Address,
        model: str,
        content: _TextOrHash,
        inbound_tokens: int,
        outbound_tokens: int,
        inbound_price: _Wei,
        outbound_price: _Wei,
        timestamp: int,
        success: bool,
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
    """A decoded request payload (read-only); `temperature` is the wire f32, widened."""
    @property
    def model(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def system_prompt(self) -> str | None: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def executor_address(self) -> str: ...
    @property
    def inbound_price(self) -> str: ...
    @property
    def outbound_price(self) -> str: ...
    @property
    def nonce(self) -> int: ...
    @property
    def deadline(self) -> int: ...

class LlmResponse:
    """A decoded response payload (read-only)."""
    @property
    def content(self) -> str: ...
    @property
    def inbound_tokens(self) -> int: ...
    @property
    def outbound_tokens(self) -> int: ...
    @property
    def total_cost(self) -> str: ...
    @property
    def model_used(self) -> str: ...
    @property
    def error(self) -> str | None: ...

class Decoded:
    """A decoded message; `digest` is keccak256 of the payload's serde_json bytes."""
    @property
    def variant(self) -> str: ...
    @property
    def payload_json(self) -> bytes: ...
    @property
    def payload(self) -> dict[str, Any]: ...
    @property
    def is_signed(self) -> bool: ...
    @property
    def signer(self) -> bytes | None: ...
    @property
    def signature(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int | None: ...
    @property
    def nonce(self) -> int | None: ...
    @property
    def digest(self) -> bytes: ...
    @property
    def signature_valid(self) -> bool: ...
    @property
    def recovered(self) -> bytes | None: ...

class DecodedRequest(Decoded):
    @property
    def request(self) -> LlmRequest | None: ...
    # envelope `commitment` (our extension, client/commitments.py): the value as received
    # (a dict {executor: bytes, signature: bytes} when well-formed); None when absent
    @property
    def commitment(self) -> Any: ...

class DecodedResponse(Decoded):
    @property
    def response(self) -> LlmResponse | None: ...
    @property
    def content(self) -> str | None: ...
    @property
    def inbound_tokens(self) -> int | None: ...
    @property
    def outbound_tokens(self) -> int | None: ...
    @property
    def total_cost(self) -> str | None: ...
    @property
    def model_used(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    # envelope `receipt`: {request_hash: bytes, client: bytes, timestamp: int, success: bool,
    # digest: bytes, signature: bytes} when well-formed; a malformed one as received; None when absent
    @property
    def receipt(self) -> Any: ...  # dict[str, Any] | None, or a malformed value as received

class DecodedAnnouncement(Decoded):
    @property
    def announcement(self) -> dict[str, Any]: ...

def decode_request(frame: _Frame) -> DecodedRequest: ...
def decode_response(frame: _Frame) -> DecodedResponse: ...
def encode_signed_request(
    key: PrivateKey,
    model: str,
    prompt: str,
    system_prompt: str | None,
    temperature: float | None,
    max_tokens: int | None,
    executor_address: str,
    inbound_price: str,
    outbound_price: str,
    nonce: int,
    deadline: int,
    timestamp: int,
    envelope_nonce: int | None = None,
    commitment: dict[str, Any] | None = None,
) -> bytes: ...
def encode_unsigned_request(
    model: str,
    prompt: str,
    system_prompt: str | None,
    temperature: float | None,
    max_tokens: int | None,
    executor_address: str,
    inbound_price: str,
    outbound_price: str,
    nonce: int,
    deadline: int,
) -> bytes: ...
def encode_signed_response(
    key: PrivateKey,
    content: str,
    inbound_tokens: int,
    outbound_tokens: int,
    total_cost: str,
    model_used: str,
    error: str | None,
    timestamp: int,
    nonce: int | None = None,
    receipt: dict[str, Any] | None = None,
) -> bytes: ...
def encode_unsigned_response(
    content: str,
    inbound_tokens: int,
    outbound_tokens: int,
    total_cost: str,
    model_used: str,
    error: str | None = None,
) -> bytes: ...
def encode_signed_ack(
    key: PrivateKey,
    request_id: str,
    success: bool,
    message: str | None,
    timestamp: int,
    nonce: int | None = None,
) -> bytes: ...
def encode_model_announcement_json(
    key: PrivateKey,
    announcement: dict[str, Any],
    timestamp: int,
    nonce: int | None = None,
) -> bytes: ...
def decode_model_announcement_json(data: _Frame) -> DecodedAnnouncement: ...
