"""`_native.CodecError`: the one exception the native core raises for input it refuses.

Why these tests exist: callers catch `ValueError` today and may narrow to
`CodecError` tomorrow, so every refusal class must raise exactly that class
(a `ValueError` subclass), with a message that says what is wrong and where,
while a wrong *type* still raises `TypeError`. Malformed frames are written
here with cbor2 or by cutting valid frames, never with the decoder under test.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable

import cbor2
import pytest

from lloom_executor import _native

KEY = _native.PrivateKey.from_bytes(bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"))
TS = 1_700_000_000
DIGEST = bytes(range(32))


def request_frame() -> bytes:
    """A valid signed request frame."""
    return _native.encode_signed_request(
        KEY, "llama-3-8b", "Say hi", None, 0.5, 256, "16Uiu2HAmExecutor", "1000", "2000", 1, TS + 300, TS
    )


def request_envelope(**payload_overrides: object) -> dict[str, object]:
    """The SignedLlmRequest envelope as cbor2 values, payload fields overridable."""
    payload: dict[str, object] = {
        "model": "llama-3-8b",
        "prompt": "Say hi",
        "system_prompt": None,
        "temperature": None,
        "max_tokens": 256,
        "executor_address": "16Uiu2HAmExecutor",
        "inbound_price": "1000",
        "outbound_price": "2000",
        "nonce": 1,
        "deadline": TS + 300,
    }
    payload.update(payload_overrides)
    return {"payload": payload, "signer": KEY.address_bytes, "signature": bytes(65), "timestamp": TS, "nonce": None}


def test_codec_error_is_an_exported_value_error() -> None:
    assert issubclass(_native.CodecError, ValueError)
    assert not issubclass(_native.CodecError, TypeError)
    assert _native.CodecError.__module__ == "lloom_executor._native"
    assert _native.CodecError.__name__ == "CodecError"
    # Reachable by its qualified name, so it crosses process boundaries intact.
    err = pickle.loads(pickle.dumps(_native.CodecError("boom")))
    assert type(err) is _native.CodecError and str(err) == "boom"


@pytest.mark.parametrize(
    "frame,fragments",
    [
        (b"", ["truncated frame", "empty RequestMessage frame"]),
        (request_frame()[:-3], ["malformed RequestMessage", "truncated frame", "at byte"]),
        (request_frame() + b"\x00", ["trailing bytes: 1 bytes after the end of the RequestMessage"]),
        (
            cbor2.dumps({"SignedLlmRequest": request_envelope()}).replace(b"\x6amax_tokens\x19\x01\x00", b"\x6amax_tokens\x1c"),
            ["invalid CBOR initial byte 0x1c", "field `SignedLlmRequest.payload.max_tokens`"],
        ),
        (
            cbor2.dumps({"ModelQuery": request_envelope()}).replace(b"\x65nonce\x01", b"\x65nonce\xc1\x00"),
            ["unsupported CBOR tag (initial byte 0xc1)"],
        ),
        (
            cbor2.dumps({"SignedLlmRequest": request_envelope(prompt="Say hi")}).replace(b"\x66Say hi", b"\x7b" + b"\xff" * 8),
            ["needs 18446744073709551615 bytes, only", "field `SignedLlmRequest.payload.prompt`"],
        ),
        (
            cbor2.dumps({"SignedLlmRequest": request_envelope(max_tokens="many")}),
            [
                "wrong type: expected an unsigned integer (u32), found a text string",
                "field `SignedLlmRequest.payload.max_tokens`",
            ],
        ),
        (cbor2.dumps({"SignedLlmRequest": request_envelope(max_tokens=2**32)}), ["integer 4294967296 out of range for u32"]),
        (cbor2.dumps({"Sometimes": {}}), ["unknown variant `Sometimes`"]),
        (cbor2.dumps({"LlmRequest": {"model": "m"}}), ["missing field `prompt`"]),
        (
            cbor2.dumps({"ModelQuery": request_envelope()}).replace(b"\x65nonce\x01", b"\x65nonce" + b"\x81" * 100_000 + b"\x00"),
            ["nesting too deep"],
        ),
    ],
    ids=[
        "empty",
        "truncated",
        "trailing",
        "initial-byte",
        "tag",
        "huge-length",
        "wrong-type",
        "u32-range",
        "variant",
        "missing-field",
        "too-deep",
    ],
)
def test_malformed_request_frames(frame: bytes, fragments: list[str]) -> None:
    with pytest.raises(_native.CodecError) as err:
        _native.decode_request(frame)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_text_that_is_not_utf8() -> None:
    frame = cbor2.dumps({"SignedLlmRequest": request_envelope(prompt="Say hi")}).replace(b"Say hi", b"Say h\xff")
    with pytest.raises(_native.CodecError, match=r"not valid UTF-8 \(field `SignedLlmRequest.payload.prompt`"):
        _native.decode_request(frame)


def test_every_buffer_kind_and_the_size_limit() -> None:
    frame = request_frame()[:-1]
    for buffer in (frame, bytearray(frame), memoryview(frame)):
        with pytest.raises(_native.CodecError, match="truncated"):
            _native.decode_request(buffer)
    # Over the limit: refused before a copy is made, whatever the buffer.
    with pytest.raises(_native.CodecError, match="over the 1048576 byte size limit"):
        _native.decode_request(bytearray(_native.MAX_REQUEST_BYTES + 1))
    with pytest.raises(_native.CodecError, match="ResponseMessage frame is"):
        _native.decode_response(bytes(_native.MAX_RESPONSE_BYTES + 1))


def test_malformed_announcement_json() -> None:
    with pytest.raises(
        _native.CodecError, match="malformed SignedMessage<ModelAnnouncement>: expected ident at line 1 column 14"
    ):
        _native.decode_model_announcement_json(b'{"payload": nope}')
    with pytest.raises(_native.CodecError, match="EOF"):
        _native.decode_model_announcement_json(b'{"payload": {')


SIG = KEY.sign_digest(DIGEST)
HIGH_S = (
    SIG[:32]
    + (0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 - int.from_bytes(SIG[32:64], "big")).to_bytes(32, "big")
    + bytes([SIG[64] ^ 1])
)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: _native.PrivateKey.from_bytes(bytes(32)), "private key is zero or not below the secp256k1 curve order"),
        (lambda: _native.PrivateKey.from_bytes(b"\x01" * 31), "private key must be 32 bytes, got 31"),
        (lambda: _native.PrivateKey.from_hex("0x1234"), "private key hex must be 64 hex digits"),
        (lambda: _native.PrivateKey.from_hex("zz" * 32), "private key hex contains a non-hex character"),
        (lambda: KEY.sign_digest(b"\x00" * 31), "digest must be 32 bytes, got 31"),
        (lambda: _native.recover_address(DIGEST, SIG[:64]), "signature must be 65 bytes (r||s||v), got 64"),
        (lambda: _native.recover_address(DIGEST, SIG[:64] + b"\x05"), "recovery id v must be 0, 1, 27 or 28, got 5"),
        (lambda: _native.recover_address(DIGEST, HIGH_S), "upper half of the curve order (malleable)"),
        (lambda: _native.recover_address(DIGEST, b"\xff" * 32 + SIG[32:]), "r or s is zero or not below the curve order"),
        (lambda: _native.checksum_address(b"\x01" * 19), "address must be 20 bytes, got 19"),
        (lambda: _native.peer_id_from_public_key(b"\x02" + b"\xff" * 32), "not a valid secp256k1 public key"),
        (lambda: _native.count_tokens("hi", "gpt2"), 'unknown encoding "gpt2"; known encodings: cl100k_base, o200k_base'),
    ],
    ids=[
        "zero-key",
        "short-key",
        "hex-length",
        "hex-digit",
        "digest-length",
        "sig-length",
        "recovery-id",
        "high-s",
        "r-overflow",
        "address-length",
        "public-key",
        "encoding",
    ],
)
def test_crypto_and_token_refusals(call: Callable[[], object], message: str) -> None:
    with pytest.raises(_native.CodecError) as err:
        call()
    assert message in str(err.value)


DOMAIN = _native.Eip712Domain(1, b"\x01" * 20)
GOOD_REQ: dict[str, object] = dict(
    executor=b"\x02" * 20,
    model="m",
    prompt="p",
    system_prompt=None,
    max_tokens=1,
    temperature=0.5,
    inbound_price="1",
    outbound_price="1",
    nonce=1,
    deadline=1,
)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("inbound_price", str(2**256), f"inbound_price: {2**256} does not fit in uint256"),
        ("outbound_price", 2**256, "outbound_price: does not fit in uint256"),
        ("outbound_price", -1, "outbound_price: must not be negative"),
        ("inbound_price", "1e3", 'inbound_price: must be a non-negative decimal integer string of wei, got "1e3"'),
        ("executor", "0x1234", 'executor: address must be 40 hex digits, got "0x1234"'),
        ("executor", b"\x02" * 19, "executor: address must be 20 bytes, got 19"),
        ("max_tokens", 2**32, "max_tokens: must be an integer in 0..=2**32-1"),
        ("nonce", -1, "nonce: must be an integer in 0..=2**64-1"),
        ("temperature", math.nan, "temperature: temperature must be a finite number"),
        ("temperature", 1e12, "outside uint32"),
        ("prompt", b"\x00" * 31, "prompt: must be 32 bytes, got 31"),
    ],
)
def test_eip712_refusals_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(_native.CodecError) as err:
        DOMAIN.request_commitment_digest(**{**GOOD_REQ, field: value})  # type: ignore[arg-type]
    assert message in str(err.value)


def receipt(**overrides: object) -> dict[str, object]:
    """A well-formed receipt dict, fields overridable."""
    base: dict[str, object] = dict(
        request_hash=bytes(32), client=b"\x02" * 20, timestamp=TS, success=True, digest=bytes(32), signature=bytes(65)
    )
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    "bad,message",
    [
        ({k: v for k, v in receipt().items() if k != "digest"}, 'receipt is missing "digest"'),
        (receipt(client="0xzz"), 'receipt "client" is not hex: "0xzz"'),
        (receipt(signature=bytes(64)), 'receipt "signature" must be 65 bytes, got 64'),
        (receipt(timestamp=-1), 'receipt "timestamp" must be in 0..=2**64-1'),
    ],
)
def test_encode_refusals(bad: dict[str, object], message: str) -> None:
    with pytest.raises(_native.CodecError) as err:
        _native.encode_signed_response(KEY, "c", 1, 1, "1", "m", None, TS, receipt=bad)
    assert message in str(err.value)


def test_encode_value_refusals() -> None:
    with pytest.raises(_native.CodecError, match="temperature must be finite, got inf"):
        _native.encode_unsigned_request("m", "p", None, math.inf, None, "e", "1", "1", 1, 1)
    with pytest.raises(_native.CodecError, match="is out of the f32 range"):
        _native.encode_unsigned_request("m", "p", None, 1e300, None, "e", "1", "1", 1, 1)
    nested: list[object] = []
    for _ in range(200):
        nested = [nested]
    with pytest.raises(_native.CodecError, match="value nested deeper than 128 levels"):
        _native.encode_model_announcement_json(KEY, {"models": nested}, TS)
    with pytest.raises(_native.CodecError, match=f"integer {2**64} does not fit in 64 bits"):
        _native.encode_model_announcement_json(KEY, {"nonce": 2**64}, TS)
    with pytest.raises(_native.CodecError, match="missing field `executor_peer_id`"):
        _native.encode_model_announcement_json(KEY, {}, TS)


def test_wrong_types_stay_type_errors() -> None:
    calls: list[Callable[[], object]] = [
        lambda: _native.decode_request("not bytes"),  # type: ignore[arg-type]
        lambda: _native.Eip712Domain("1", b"\x01" * 20),  # type: ignore[arg-type]
        lambda: DOMAIN.request_commitment_digest(**{**GOOD_REQ, "max_tokens": "1"}),  # type: ignore[arg-type]
        lambda: _native.encode_signed_response(KEY, "c", 1, 1, "1", "m", None, TS, receipt=receipt(success=1)),
        lambda: _native.count_tokens_batch("one str", "cl100k_base"),
    ]
    for call in calls:
        with pytest.raises(TypeError) as err:
            call()
        assert not isinstance(err.value, _native.CodecError)


def test_bad_signature_is_a_result_not_an_error() -> None:
    """A frame that decodes but whose signature does not verify is not refused."""
    frame = cbor2.dumps({"SignedLlmRequest": request_envelope()})
    decoded = _native.decode_request(frame)
    assert decoded.signature_valid is False and decoded.recovered is None
