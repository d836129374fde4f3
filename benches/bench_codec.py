"""Wire codec: ours (one native call) against the same work in Python.

The Python side is what a careful pure-Python executor would do per request:
cbor2 to decode, Python's json plus a shortest-f32 loop for the serde_json
text, eth-hash keccak for the digest, coincurve (libsecp256k1, the same C
library we use) to recover the public key, keccak of it for the address.

Groups:
- decode-verify: the hot path, a signed ~1 KB SignedLlmRequest;
- decode-unsigned: the same payload unsigned (decode + JSON + keccak, no
  recovery), showing what the codec costs apart from the curve;
- recover: public-key recovery alone (the floor both sides share);
- encode-response: building and signing a ~1 KB SignedLlmResponse.

Run: PYTHONPATH=python pytest benches/bench_codec.py --benchmark-only -q
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import cbor2
import coincurve
import pytest
from eth_hash.auto import keccak

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import codec_oracle as oracle  # noqa: E402
from lloom_executor import _native  # noqa: E402

SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
KEY = _native.PrivateKey.from_bytes(SECRET)
CC_KEY = coincurve.PrivateKey(SECRET)
TS = 1_700_000_000
PROMPT = ("Summarise the following text in two sentences, keeping every number exact. " * 11)[:800]
CONTENT = ("The answer, with care: é ü 中 \U0001f600 and a newline\n. " * 20)[:1000]

FRAME = _native.encode_signed_request(
    KEY,
    "llama-3-8b-instruct",
    PROMPT,
    "You are a helpful assistant.",
    0.7,
    512,
    "16Uiu2HAmPXv8X4mJmYQhjpoZ3s2hBpVg6Jc6F3WdqFZ1nH5c9zKq",
    "1500000000",
    "3000000000",
    1,
    TS + 300,
    TS,
)
UNSIGNED = _native.encode_unsigned_request(
    "llama-3-8b-instruct",
    PROMPT,
    "You are a helpful assistant.",
    0.7,
    512,
    "16Uiu2HAmPXv8X4mJmYQhjpoZ3s2hBpVg6Jc6F3WdqFZ1nH5c9zKq",
    "1500000000",
    "3000000000",
    1,
    TS + 300,
)
REQUEST_FIELDS = (
    "model",
    "prompt",
    "system_prompt",
    "temperature",
    "max_tokens",
    "executor_address",
    "inbound_price",
    "outbound_price",
    "nonce",
    "deadline",
)


def f32_text(x: float) -> str:
    """serde_json's f32 text: shortest digits that survive an f32 round trip."""
    if x == 0:
        return "0.0"
    sign, x = ("-", -x) if x < 0 else ("", x)
    for p in range(1, 10):
        s = f"{x:.{p - 1}e}"
        if struct.unpack("<f", struct.pack("<f", float(s)))[0] == x:
            break
    mant, _, e = s.partition("e")
    return sign + oracle.layout(mant.replace(".", "").rstrip("0") or "0", int(e), range(-6, 13))


def py_payload_json(p: dict) -> bytes:
    ordered = {k: p[k] for k in REQUEST_FIELDS}
    t = ordered["temperature"]
    ordered["temperature"] = None
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))
    if t is not None:  # a quote inside a JSON string is always escaped, so this key is unique
        text = text.replace('"temperature":null', '"temperature":' + f32_text(t), 1)
    return text.encode()


def py_decode_verify(frame: bytes) -> tuple[dict, bool]:
    ((variant, env),) = cbor2.loads(frame).items()
    assert variant == "SignedLlmRequest"
    digest = keccak(py_payload_json(env["payload"]))
    sig = env["signature"]
    pub = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    return env["payload"], keccak(pub.format(compressed=False)[1:])[12:] == env["signer"]


def py_decode_unsigned(frame: bytes) -> tuple[dict, bytes]:
    ((variant, payload),) = cbor2.loads(frame).items()
    assert variant == "LlmRequest"
    return payload, keccak(py_payload_json(payload))


def ours_decode(frame: bytes):
    d = _native.decode_request(frame)
    return d.request.prompt, d.signature_valid


def py_encode_response() -> bytes:
    payload = {
        "content": CONTENT,
        "inbound_tokens": 812,
        "outbound_tokens": 230,
        "total_cost": "1908000000000",
        "model_used": "llama-3-8b-instruct",
        "error": None,
    }
    digest = keccak(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
    sig = CC_KEY.sign_recoverable(digest, hasher=None)
    env = {"payload": payload, "signer": ADDRESS, "signature": sig, "timestamp": TS, "nonce": None}
    return cbor2.dumps({"SignedLlmResponse": env})


ADDRESS = KEY.address_bytes


def ours_encode_response() -> bytes:
    return _native.encode_signed_response(KEY, CONTENT, 812, 230, "1908000000000", "llama-3-8b-instruct", None, TS)


def test_same_results() -> None:
    """Both sides must agree before their speed means anything."""
    payload, ok = py_decode_verify(FRAME)
    assert ok and ours_decode(FRAME) == (payload["prompt"], True)
    assert py_decode_unsigned(UNSIGNED)[1] == _native.decode_request(UNSIGNED).digest
    assert py_encode_response() == ours_encode_response()
    assert 900 <= len(FRAME) <= 1300


@pytest.mark.benchmark(group="decode-verify")
def test_decode_verify_ours(benchmark) -> None:
    assert benchmark(ours_decode, FRAME)[1]


@pytest.mark.benchmark(group="decode-verify")
def test_decode_verify_python(benchmark) -> None:
    assert benchmark(py_decode_verify, FRAME)[1]


@pytest.mark.benchmark(group="decode-unsigned")
def test_decode_unsigned_ours(benchmark) -> None:
    benchmark(lambda: _native.decode_request(UNSIGNED).request.prompt)


@pytest.mark.benchmark(group="decode-unsigned")
def test_decode_unsigned_python(benchmark) -> None:
    benchmark(py_decode_unsigned, UNSIGNED)


@pytest.mark.benchmark(group="recover")
def test_recover_ours(benchmark) -> None:
    d = _native.decode_request(FRAME)
    digest, sig = d.digest, d.signature
    assert benchmark(_native.recover_address, digest, sig) == ADDRESS


@pytest.mark.benchmark(group="recover")
def test_recover_python(benchmark) -> None:
    d = _native.decode_request(FRAME)
    digest, sig = d.digest, d.signature

    def recover() -> bytes:
        pub = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
        return keccak(pub.format(compressed=False)[1:])[12:]

    assert benchmark(recover) == ADDRESS


@pytest.mark.benchmark(group="encode-response")
def test_encode_response_ours(benchmark) -> None:
    benchmark(ours_encode_response)


@pytest.mark.benchmark(group="encode-response")
def test_encode_response_python(benchmark) -> None:
    benchmark(py_encode_response)
