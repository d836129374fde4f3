"""The Lloom wire codec against independent oracles (PROTOCOL.md §3, §4, §6).

Every expectation is computed here from the protocol text with cbor2, Python's
json, eth-hash, coincurve and eth-account (see codec_oracle.py), never with our
own code: frames must be byte-identical to what an independent CBOR encoder
writes for the reference's field lists, digests must equal keccak256 of
independently built serde_json text, and signatures made by coincurve must
verify (and ours must verify under coincurve).
"""

from __future__ import annotations

import copy
import json
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import cbor2
import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import codec_oracle as oracle  # noqa: E402
from codec_oracle import F32, to_f32  # noqa: E402
from lloom_executor import _native  # noqa: E402

SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
KEY = _native.PrivateKey.from_bytes(SECRET)
ADDR = bytes.fromhex(Account.from_key(SECRET).address[2:])
OTHER_SECRET = bytes.fromhex("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
TS = 1_700_000_000
U64 = 2**64 - 1

REQUEST_FIELDS = [
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
]
RESPONSE_FIELDS = ["content", "inbound_tokens", "outbound_tokens", "total_cost", "model_used", "error"]
ENVELOPE_FIELDS = ["payload", "signer", "signature", "timestamp", "nonce"]


def req_payload(
    model: str = "llama-3-8b",
    prompt: str = "Say hi",
    system_prompt: str | None = "be brief",
    temperature: float | None = 0.7,
    max_tokens: int | None = 256,
    executor_address: str = "16Uiu2HAmExecutor",
    inbound_price: str = "1000000000",
    outbound_price: str = "2000000000",
    nonce: int = 1,
    deadline: int = TS + 300,
) -> dict:
    """An LlmRequest payload in declared field order (temperature as f32)."""
    return {
        "model": model,
        "prompt": prompt,
        "system_prompt": system_prompt,
        "temperature": None if temperature is None else F32(to_f32(temperature)),
        "max_tokens": max_tokens,
        "executor_address": executor_address,
        "inbound_price": inbound_price,
        "outbound_price": outbound_price,
        "nonce": nonce,
        "deadline": deadline,
    }


def encode_req(p: dict, timestamp: int = TS, envelope_nonce: int | None = None, key=KEY) -> bytes:
    t = p["temperature"]
    return _native.encode_signed_request(
        key,
        p["model"],
        p["prompt"],
        p["system_prompt"],
        None if t is None else t.value,
        p["max_tokens"],
        p["executor_address"],
        p["inbound_price"],
        p["outbound_price"],
        p["nonce"],
        p["deadline"],
        timestamp,
        envelope_nonce,
    )


def oracle_frame(variant: str, payload: dict, secret: bytes = SECRET, ts: int = TS, nonce=None, plus=True) -> bytes:
    return oracle.cbor({variant: oracle.signed_envelope(secret, payload, ts, nonce, plus)})


def assert_request_fields(req, p: dict) -> None:
    for name in REQUEST_FIELDS:
        want = p[name]
        if isinstance(want, F32):
            want = want.value
        assert getattr(req, name) == want, name


# ---------------------------------------------------------------- encode: exact bytes


def test_signed_request_frame_is_byte_identical_to_independent_cbor() -> None:
    p = req_payload()
    frame = encode_req(p, envelope_nonce=None)
    assert frame == oracle_frame("SignedLlmRequest", p)


def test_request_frame_structure_seen_by_cbor2() -> None:
    p = req_payload(temperature=0.7, nonce=1, deadline=2**32)
    frame = encode_req(p, envelope_nonce=5)
    top = cbor2.loads(frame)
    assert list(top) == ["SignedLlmRequest"]
    env = top["SignedLlmRequest"]
    assert list(env) == ENVELOPE_FIELDS
    assert list(env["payload"]) == REQUEST_FIELDS
    assert isinstance(env["signer"], bytes) and env["signer"] == ADDR
    assert isinstance(env["signature"], bytes) and len(env["signature"]) == 65
    assert env["signature"][64] in (0, 1)
    assert env["timestamp"] == TS and env["nonce"] == 5
    # f32 single float, shortest integers, null for None.
    assert b"ktemperature\xfa" + struct.pack(">f", 0.7) in frame
    assert b"enonce\x01" in frame
    assert b"hdeadline\x1b" + (2**32).to_bytes(8, "big") in frame
    assert b"jmax_tokens\x19\x01\x00" in frame
    # signature verifies under coincurve over the independently built JSON
    assert oracle.recover(oracle.digest(p), env["signature"]) == ADDR


def test_unsigned_request_and_response_frames_are_byte_identical() -> None:
    p = req_payload(system_prompt=None, temperature=None, max_tokens=None)
    frame = _native.encode_unsigned_request(*[p[f] for f in REQUEST_FIELDS])
    assert frame == oracle.cbor({"LlmRequest": p})
    r = {"content": "ok", "inbound_tokens": 3, "outbound_tokens": 0, "total_cost": "0", "model_used": "m", "error": None}
    assert _native.encode_unsigned_response(*[r[f] for f in RESPONSE_FIELDS]) == oracle.cbor({"LlmResponse": r})


def test_signed_response_frame_is_byte_identical_and_verifies() -> None:
    r = {
        "content": "Hello \u00e9\U0001f600\n",
        "inbound_tokens": 12,
        "outbound_tokens": U64,
        "total_cost": "123456789012345678901234567890",
        "model_used": "llama",
        "error": None,
    }
    frame = _native.encode_signed_response(KEY, *[r[f] for f in RESPONSE_FIELDS], TS, 9)
    assert frame == oracle_frame("SignedLlmResponse", r, nonce=9)
    env = cbor2.loads(frame)["SignedLlmResponse"]
    assert list(env["payload"]) == RESPONSE_FIELDS
    assert oracle.recover(oracle.digest(r), env["signature"]) == ADDR


def test_signed_ack_frame_is_byte_identical() -> None:
    ack = {"request_id": "q-1", "success": False, "message": "model queries are not served", "timestamp": TS}
    frame = _native.encode_signed_ack(KEY, "q-1", False, "model queries are not served", TS)
    assert frame == oracle_frame("AcknowledgmentResponse", ack)
    d = _native.decode_response(frame)
    assert d.variant == "AcknowledgmentResponse" and d.signature_valid and d.response is None
    assert d.payload == ack


# ---------------------------------------------------------------- round trips (hypothesis)

texts = st.text(max_size=60)
prices = st.text(alphabet="0123456789", min_size=1, max_size=80)
f32s = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=texts,
    prompt=st.text(max_size=300),
    system_prompt=st.none() | texts,
    temperature=st.none() | f32s,
    max_tokens=st.none() | st.integers(0, 2**32 - 1),
    executor_address=texts,
    inbound_price=prices,
    outbound_price=prices,
    nonce=st.integers(0, U64),
    deadline=st.integers(0, U64),
    timestamp=st.integers(0, U64),
    envelope_nonce=st.none() | st.integers(0, U64),
)
def test_request_round_trip_matches_oracle(
    model,
    prompt,
    system_prompt,
    temperature,
    max_tokens,
    executor_address,
    inbound_price,
    outbound_price,
    nonce,
    deadline,
    timestamp,
    envelope_nonce,
) -> None:
    p = req_payload(
        model, prompt, system_prompt, temperature, max_tokens, executor_address, inbound_price, outbound_price, nonce, deadline
    )
    frame = encode_req(p, timestamp, envelope_nonce)
    assert frame == oracle_frame("SignedLlmRequest", p, ts=timestamp, nonce=envelope_nonce)
    d = _native.decode_request(frame)
    assert d.variant == "SignedLlmRequest"
    assert_request_fields(d.request, p)
    assert d.payload_json == oracle.dumps(p)
    assert d.digest == oracle.digest(p)
    assert d.signature_valid and d.recovered == ADDR and d.signer == ADDR
    assert d.timestamp == timestamp and d.nonce == envelope_nonce
    assert oracle.recover(d.digest, d.signature) == ADDR


@settings(max_examples=60, deadline=None)
@given(
    content=st.text(max_size=200),
    error=st.none() | texts,
    tin=st.integers(0, U64),
    tout=st.integers(0, U64),
    cost=prices,
    model=texts,
    nonce=st.none() | st.integers(0, U64),
)
def test_response_round_trip_matches_oracle(content, error, tin, tout, cost, model, nonce) -> None:
    r = {
        "content": content,
        "inbound_tokens": tin,
        "outbound_tokens": tout,
        "total_cost": cost,
        "model_used": model,
        "error": error,
    }
    frame = _native.encode_signed_response(KEY, content, tin, tout, cost, model, error, TS, nonce)
    assert frame == oracle_frame("SignedLlmResponse", r, nonce=nonce)
    d = _native.decode_response(frame)
    assert d.variant == "SignedLlmResponse" and d.signature_valid and d.recovered == ADDR
    for f in RESPONSE_FIELDS:
        assert getattr(d.response, f) == r[f] == getattr(d, f)
    assert d.digest == oracle.digest(r)


# ---------------------------------------------------------------- digests of tricky payloads

TRICKY_STRINGS = [
    "".join(chr(c) for c in range(0x20)) + "\x7f",
    'quote " backslash \\ slash / tab\t',
    "non-ASCII é ß 中文 \u2028 \u2029 \ufeff",
    "emoji \U0001f600\U0001f44d\U0001f3fd",
    "",
]


@pytest.mark.parametrize("temperature", [0.7, 1e-7, 3.4e38, 1.0, 0.1, 0.0, -0.0, 2.0, 1e-45, 123456.7, None])
def test_digest_of_f32_temperatures(temperature) -> None:
    p = req_payload(temperature=temperature)
    d = _native.decode_request(encode_req(p))
    assert d.payload_json == oracle.dumps(p)
    assert d.digest == oracle.digest(p)
    assert d.signature_valid


def test_serde_float_spellings_seen_in_payload_json() -> None:
    for t, text in [
        (0.7, b'"temperature":0.7,'),
        (1.0, b'"temperature":1.0,'),
        (1e-7, b'"temperature":1e-7,'),
        (0.1, b'"temperature":0.1,'),
        (3.4e38, b'"temperature":3.4e+38,'),
    ]:
        assert text in _native.decode_request(encode_req(req_payload(temperature=t))).payload_json


@pytest.mark.parametrize("text", TRICKY_STRINGS)
def test_digest_of_tricky_strings(text: str) -> None:
    p = req_payload(model=text, prompt=text * 3, system_prompt=text, executor_address=text)
    d = _native.decode_request(encode_req(p))
    assert d.payload_json == oracle.dumps(p)
    assert d.digest == oracle.digest(p)
    assert d.signature_valid and d.request.prompt == text * 3


def test_serde_json_escaping_rules() -> None:
    p = req_payload(prompt='\x00\x01\x08\x0c\n\r\t\x1f\x7f/"\\é')
    js = _native.decode_request(encode_req(p)).payload_json
    assert b'"prompt":"\\u0000\\u0001\\b\\f\\n\\r\\t\\u001f\x7f/\\"\\\\\xc3\xa9"' in js


def test_none_fields_are_null() -> None:
    p = req_payload(system_prompt=None, temperature=None, max_tokens=None)
    d = _native.decode_request(encode_req(p))
    assert b'"system_prompt":null,"temperature":null,"max_tokens":null' in d.payload_json
    assert d.request.system_prompt is None and d.request.temperature is None and d.request.max_tokens is None
    assert d.digest == oracle.digest(p) and d.signature_valid


# ---------------------------------------------------------------- independently built frames


def test_frame_signed_by_coincurve_verifies() -> None:
    p = req_payload(prompt="from an independent client")
    frame = oracle_frame("SignedLlmRequest", p, secret=OTHER_SECRET, nonce=3)
    d = _native.decode_request(frame)
    other = bytes.fromhex(Account.from_key(OTHER_SECRET).address[2:])
    assert d.signature_valid and d.recovered == other and d.signer == other and d.nonce == 3
    assert_request_fields(d.request, p)


def test_hex_text_signer_and_signature_f64_temperature_and_unknown_keys() -> None:
    p = req_payload(temperature=0.7)
    env = oracle.signed_envelope(SECRET, p, TS, None)
    raw = oracle.strip_f32(p)
    raw["temperature"] = 0.7  # cbor2 writes an f64 (0xfb)
    raw["future_field"] = {"nested": [1, 2, {"x": b"\x00"}]}
    frame = cbor2.dumps(
        {
            "SignedLlmRequest": {
                "payload": raw,
                "signer": "0x" + env["signer"].hex(),
                "signature": "0x" + env["signature"].hex(),
                "timestamp": TS,
                "nonce": None,
                "receipt": {"anything": True},
            }
        }
    )
    assert b"\xfb" + struct.pack(">d", 0.7) in frame
    d = _native.decode_request(frame)
    assert d.signature_valid and d.recovered == ADDR
    assert d.request.temperature == to_f32(0.7)
    assert d.payload_json == oracle.dumps(p)  # unknown keys are not part of the signed payload


def test_half_float_integer_temperature_and_mixed_case_hex() -> None:
    p = req_payload(temperature=0.5)
    env = oracle.signed_envelope(SECRET, p, TS, None)
    raw = oracle.strip_f32(p)
    frame = cbor2.dumps(
        {
            "SignedLlmRequest": {
                "payload": raw,
                "signer": "0X" + env["signer"].hex().upper(),
                "signature": env["signature"].hex(),
                "timestamp": TS,
                "nonce": None,
            }
        },
        canonical=True,
    )  # canonical: 0.5 becomes a half float
    assert b"\xf9\x38\x00" in frame
    d = _native.decode_request(frame)
    assert d.signature_valid and d.request.temperature == 0.5
    p1 = req_payload(temperature=1.0)
    raw1 = oracle.strip_f32(p1) | {"temperature": 1}
    env1 = oracle.signed_envelope(SECRET, p1, TS, None)
    d1 = _native.decode_request(cbor2.dumps({"SignedLlmRequest": env1 | {"payload": raw1}}))
    assert d1.signature_valid and d1.request.temperature == 1.0


def test_missing_optional_fields_decode_as_none() -> None:
    p = req_payload(system_prompt=None, temperature=None, max_tokens=None)
    env = oracle.signed_envelope(SECRET, p, TS, None)
    raw = {k: v for k, v in p.items() if v is not None}
    del env["nonce"]
    d = _native.decode_request(cbor2.dumps({"SignedLlmRequest": env | {"payload": raw}}))
    assert d.signature_valid and d.nonce is None and d.request.system_prompt is None


@pytest.mark.parametrize("v_offset", [27])
def test_recovery_id_27_28_accepted(v_offset: int) -> None:
    p = req_payload()
    env = oracle.signed_envelope(SECRET, p, TS, None)
    sig = env["signature"]
    env["signature"] = sig[:64] + bytes([sig[64] + v_offset])
    d = _native.decode_request(oracle.cbor({"SignedLlmRequest": env}))
    assert d.signature_valid and d.recovered == ADDR


def test_unsigned_request_decodes_with_digest() -> None:
    p = req_payload()
    d = _native.decode_request(oracle.cbor({"LlmRequest": p}))
    assert d.variant == "LlmRequest" and not d.is_signed
    assert d.signer is None and d.signature is None and d.timestamp is None and d.nonce is None
    assert not d.signature_valid and d.recovered is None
    assert d.digest == oracle.digest(p)
    assert_request_fields(d.request, p)


def test_ryu_style_float_signature_also_verifies() -> None:
    """A peer built on serde_json's older ryu output writes 3.4e38, not 3.4e+38."""
    p = req_payload(temperature=3.4e38)
    assert b"3.4e38" in oracle.dumps(p, plus=False)
    for plus in (True, False):
        d = _native.decode_request(oracle_frame("SignedLlmRequest", p, plus=plus))
        assert d.signature_valid and d.recovered == ADDR
        assert d.payload_json == oracle.dumps(p, plus=plus)
        assert d.digest == oracle.digest(p, plus=plus)


# ---------------------------------------------------------------- bad signatures are results


def test_bad_signatures_are_not_exceptions() -> None:
    p = req_payload()
    env = oracle.signed_envelope(SECRET, p, TS, None)
    cases = {
        "flipped": env["signature"][:10] + bytes([env["signature"][10] ^ 1]) + env["signature"][11:],
        "short": env["signature"][:64],
        "empty": b"",
        "bad_v": env["signature"][:64] + b"\x05",
        "zero": bytes(65),
    }
    for name, sig in cases.items():
        d = _native.decode_request(oracle.cbor({"SignedLlmRequest": env | {"signature": sig}}))
        assert not d.signature_valid, name
        assert d.recovered != ADDR, name
        assert d.signature == sig
    wrong_signer = oracle.address_of_secret(OTHER_SECRET)
    d = _native.decode_request(oracle.cbor({"SignedLlmRequest": env | {"signer": wrong_signer}}))
    assert not d.signature_valid and d.recovered == ADDR and d.signer == wrong_signer


def test_high_s_signature_is_refused() -> None:
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    p = req_payload()
    env = oracle.signed_envelope(SECRET, p, TS, None)
    sig = env["signature"]
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (n - s).to_bytes(32, "big") + bytes([sig[64] ^ 1])
    assert oracle.recover(oracle.digest(p), twin) == ADDR  # mathematically valid twin
    d = _native.decode_request(oracle.cbor({"SignedLlmRequest": env | {"signature": twin}}))
    assert not d.signature_valid


def test_tampered_response_fails_verification() -> None:
    frame = _native.encode_signed_response(KEY, "the answer", 1, 2, "3", "m", None, TS)
    obj = cbor2.loads(frame)
    obj["SignedLlmResponse"]["payload"]["content"] = "a forged answer"
    d = _native.decode_response(cbor2.dumps(obj))
    assert d.content == "a forged answer" and not d.signature_valid and d.recovered != ADDR
    assert _native.decode_response(frame).signature_valid


# ---------------------------------------------------------------- other variants


def test_model_query_update_and_query_response_decode_and_verify() -> None:
    payload = {
        "query_type": {"ByModel": "llama"},
        "filters": [1, -2, 0.25, None, True],
        "query_id": "q-7",
        "nested": {"z": 1, "a": {"k": "v"}},
        "timestamp": TS,
    }
    for variant in ("ModelQuery", "ModelUpdate"):
        d = _native.decode_request(oracle_frame(variant, payload, nonce=4))
        assert d.variant == variant and d.request is None
        assert d.signature_valid and d.recovered == ADDR
        assert d.payload_json == oracle.dumps(payload)  # received order kept, not sorted
        assert d.payload == payload
    d = _native.decode_response(oracle_frame("ModelQueryResponse", {"Error": "unsupported"}))
    assert d.variant == "ModelQueryResponse" and d.signature_valid and d.response is None and d.content is None


def test_opaque_payload_keeps_f32_and_bytes_json_forms() -> None:
    payload = {"score": F32(to_f32(0.7)), "who": ADDR, "ratio": 0.25}
    d = _native.decode_request(oracle_frame("ModelQuery", payload))
    assert d.payload_json == oracle.dumps(payload)
    assert b'"score":0.7,"who":"0x' + ADDR.hex().encode() + b'"' in d.payload_json
    assert d.signature_valid


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=10), json_values, max_size=6), variant=st.sampled_from(["ModelQuery", "ModelUpdate"])
)
def test_opaque_payload_property(payload: dict, variant: str) -> None:
    """Any payload signed over its JSON in the order it is sent verifies."""
    d = _native.decode_request(oracle_frame(variant, payload))
    assert d.payload_json == oracle.dumps(payload)
    assert d.signature_valid and d.recovered == ADDR
    assert d.payload == payload


def announcement(executor_address=ADDR, metadata=None, announcement_type="Heartbeat") -> dict:
    """A ModelAnnouncement in declared field order."""
    return {
        "executor_peer_id": KEY.peer_id,
        "executor_address": executor_address,
        "models": [
            {
                "model_id": "llama-3-8b",
                "backend_type": "lmstudio",
                "capabilities": {
                    "max_context_length": 8192,
                    "features": ["chat", "streaming"],
                    "architecture": None,
                    "model_size": "8B",
                    "performance": {
                        "avg_tokens_per_second": 42.5,
                        "avg_time_to_first_token": 1e-7,
                        "success_rate": 1.0,
                        "avg_latency_ms": 120,
                    },
                    "metadata": {"backend_type": "lmstudio"} if metadata is None else metadata,
                },
                "is_available": True,
                "pricing": {"input_token_price": "1000", "output_token_price": "2000", "minimum_fee": None},
            },
            {
                "model_id": "tiny",
                "backend_type": "echo",
                "capabilities": {
                    "max_context_length": 512,
                    "features": [],
                    "architecture": "echo",
                    "model_size": None,
                    "performance": None,
                    "metadata": {},
                },
                "is_available": False,
                "pricing": None,
            },
        ],
        "announcement_type": announcement_type,
        "timestamp": TS,
        "nonce": 7,
        "protocol_version": 1,
    }


def test_model_announcement_in_cbor_request_verifies() -> None:
    a = announcement(metadata={"z_first": [1, {"b": 2, "a": None}], "a_second": "x"})  # received order kept
    d = _native.decode_request(oracle_frame("ModelAnnouncement", a))
    assert d.variant == "ModelAnnouncement" and d.signature_valid and d.recovered == ADDR
    assert d.payload_json == oracle.dumps(a)
    assert d.payload["executor_address"] == "0x" + ADDR.hex()


# ---------------------------------------------------------------- gossip JSON


def shuffled(obj):
    if isinstance(obj, dict):
        items = list(obj.items())
        random.Random(len(items)).shuffle(items)
        return {k: shuffled(v) for k, v in reversed(items)}
    if isinstance(obj, list):
        return [shuffled(v) for v in obj]
    return obj


def test_gossip_announcement_json_is_exact_and_verifies() -> None:
    a = announcement()
    given_dict = a | {"executor_address": Account.from_key(SECRET).address}  # checksummed text in
    out = _native.encode_model_announcement_json(KEY, given_dict, TS + 1, 11)
    expected = oracle.dumps(oracle.signed_envelope(SECRET, a, TS + 1, 11))
    assert out == expected
    msg = json.loads(out)
    assert list(msg) == ENVELOPE_FIELDS
    assert msg["signer"] == "0x" + ADDR.hex() and msg["signature"].startswith("0x") and len(msg["signature"]) == 132
    assert list(msg["payload"]) == list(a)
    assert msg["payload"]["executor_address"] == "0x" + ADDR.hex()
    assert oracle.recover(oracle.digest(a), bytes.fromhex(msg["signature"][2:])) == ADDR
    # the input dict's key order is irrelevant
    assert _native.encode_model_announcement_json(KEY, shuffled(given_dict), TS + 1, 11) == out
    d = _native.decode_model_announcement_json(out)
    assert d.signature_valid and d.recovered == ADDR and d.digest == oracle.digest(a)
    assert d.announcement == json.loads(oracle.dumps(a))
    assert d.timestamp == TS + 1 and d.nonce == 11


@pytest.mark.parametrize("kind", ["Initial", "Update", "Removal", "Heartbeat"])
def test_gossip_announcement_types(kind: str) -> None:
    out = _native.encode_model_announcement_json(KEY, announcement(announcement_type=kind), TS)
    assert json.loads(out)["payload"]["announcement_type"] == kind


def test_gossip_refuses_multi_key_metadata_and_bad_dicts() -> None:
    with pytest.raises(ValueError, match="metadata"):
        _native.encode_model_announcement_json(KEY, announcement(metadata={"a": 1, "b": 2}), TS)
    bad = announcement()
    del bad["executor_peer_id"]
    with pytest.raises(ValueError, match="executor_peer_id"):
        _native.encode_model_announcement_json(KEY, bad, TS)
    with pytest.raises(ValueError, match="announcement_type|Sometimes"):
        _native.encode_model_announcement_json(KEY, announcement(announcement_type="Sometimes"), TS)
    with pytest.raises(ValueError, match="executor_address"):
        _native.encode_model_announcement_json(KEY, announcement(executor_address="0x1234"), TS)
    with pytest.raises(ValueError):
        _native.encode_model_announcement_json(KEY, announcement() | {"protocol_version": 256}, TS)


@settings(max_examples=100, deadline=None)
@given(
    meta=st.dictionaries(st.text(max_size=10), json_values, max_size=1),
    perf=st.none() | st.tuples(st.none() | st.floats(allow_nan=False, allow_infinity=False), st.none() | st.integers(0, U64)),
    ts=st.integers(0, U64),
    nonce=st.none() | st.integers(0, U64),
)
def test_gossip_round_trip_property(meta, perf, ts, nonce) -> None:
    a = announcement(metadata=meta)
    caps = a["models"][0]["capabilities"]
    caps["performance"] = (
        None
        if perf is None
        else {
            "avg_tokens_per_second": perf[0],
            "avg_time_to_first_token": None,
            "success_rate": perf[0],
            "avg_latency_ms": perf[1],
        }
    )
    given_dict = shuffled(a)  # struct key order must not matter...
    for model, original in zip(given_dict["models"], a["models"], strict=True):
        model["capabilities"]["metadata"] = original["capabilities"]["metadata"]  # ...map order is data
    out = _native.encode_model_announcement_json(KEY, given_dict, ts, nonce)
    assert out == oracle.dumps(oracle.signed_envelope(SECRET, a, ts, nonce))
    d = _native.decode_model_announcement_json(out)
    assert d.signature_valid and d.digest == oracle.digest(a)
    assert d.announcement == json.loads(oracle.dumps(a))


def test_gossip_decode_of_independent_json_with_two_metadata_keys() -> None:
    """Verification uses the metadata key order as received."""
    a = announcement(metadata={"zeta": 1, "alpha": {"y": 2, "x": [0.5]}})
    data = oracle.dumps(oracle.signed_envelope(OTHER_SECRET, a, TS, None))
    d = _native.decode_model_announcement_json(data)
    assert d.signature_valid and d.recovered == oracle.address_of_secret(OTHER_SECRET)
    assert list(d.announcement["models"][0]["capabilities"]["metadata"]) == ["zeta", "alpha"]
    tampered = data.replace(b'"zeta":1', b'"zeta":2')
    assert not _native.decode_model_announcement_json(tampered).signature_valid
    with pytest.raises(ValueError):
        _native.decode_model_announcement_json(data[:-1])
    with pytest.raises(ValueError):
        _native.decode_model_announcement_json(b"[" * 100_000)


# ---------------------------------------------------------------- malformed frames


def valid_frame() -> bytes:
    return encode_req(req_payload(prompt="truncate me \u00e9"), envelope_nonce=77)


def test_truncated_at_every_offset_is_value_error() -> None:
    frame = valid_frame()
    for cut in range(len(frame)):
        with pytest.raises(ValueError):
            _native.decode_request(frame[:cut])
    with pytest.raises(ValueError, match="truncated"):
        _native.decode_request(frame[: len(frame) // 2])
    with pytest.raises(ValueError, match="truncated"):
        _native.decode_request(b"")


def test_trailing_bytes_are_refused() -> None:
    frame = valid_frame()
    with pytest.raises(ValueError, match="trailing"):
        _native.decode_request(frame + b"\x00")
    with pytest.raises(ValueError, match="trailing"):
        _native.decode_request(frame + frame)


def frame_with_payload(**changes) -> bytes:
    p = oracle.strip_f32(req_payload())
    p.update(changes)
    return cbor2.dumps(
        {"SignedLlmRequest": {"payload": p, "signer": ADDR, "signature": bytes(65), "timestamp": TS, "nonce": None}}
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": 5}, "model"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_tokens": 2**32}, "max_tokens"),
        ({"nonce": -1}, "nonce"),
        ({"deadline": 1.5}, "deadline"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 1e300}, "temperature"),
        ({"system_prompt": b"bytes"}, "system_prompt"),
    ],
)
def test_wrong_types_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _native.decode_request(frame_with_payload(**change))


def test_structural_errors_are_named() -> None:
    good = cbor2.loads(valid_frame())
    with pytest.raises(ValueError, match="unknown variant"):
        _native.decode_request(cbor2.dumps({"SignedLlmBanana": good["SignedLlmRequest"]}))
    env = copy.deepcopy(good["SignedLlmRequest"])
    del env["payload"]["prompt"]
    with pytest.raises(ValueError, match="missing field `prompt`"):
        _native.decode_request(cbor2.dumps({"SignedLlmRequest": env}))
    with pytest.raises(ValueError, match="signer"):
        _native.decode_request(cbor2.dumps({"SignedLlmRequest": good["SignedLlmRequest"] | {"signer": b"\x01" * 19}}))
    with pytest.raises(ValueError, match="signer"):
        _native.decode_request(cbor2.dumps({"SignedLlmRequest": good["SignedLlmRequest"] | {"signer": "0xzz"}}))
    with pytest.raises(ValueError):
        _native.decode_request(cbor2.dumps([1, 2, 3]))
    with pytest.raises(ValueError):
        _native.decode_request(cbor2.dumps({"SignedLlmRequest": good["SignedLlmRequest"], "Extra": 1}))
    with pytest.raises(ValueError):  # invalid UTF-8 in a text string
        _native.decode_request(valid_frame().replace(b"truncate me", b"truncate m\xff"))
    with pytest.raises(ValueError):  # a map key that is not text
        _native.decode_request(cbor2.dumps({"SignedLlmRequest": {1: 2}}))


def deep_nesting_frame(depth: int, where: str = "payload") -> bytes:
    """A valid signed request with `depth` nested arrays in an unknown field."""
    marker = b"\xde\xad\xbe\xef" * 4
    p = oracle.strip_f32(req_payload())
    env = {"payload": p, "signer": ADDR, "signature": bytes(65), "timestamp": TS, "nonce": None}
    (p if where == "payload" else env)["zz_unknown"] = marker
    frame = cbor2.dumps({"SignedLlmRequest": env})
    return frame.replace(cbor2.dumps(marker), b"\x81" * depth + b"\x00")


def test_deep_nesting_is_a_value_error_not_a_crash() -> None:
    assert _native.decode_request(deep_nesting_frame(100)).request.model == "llama-3-8b"
    assert _native.decode_request(deep_nesting_frame(250)).signature_valid is False  # deep but legal
    for where in ("payload", "envelope"):
        with pytest.raises(ValueError, match="nesting too deep"):
            _native.decode_request(deep_nesting_frame(100_000, where))
    deep_map = b"\xa1\x61k" * 100_000 + b"\x00"
    with pytest.raises(ValueError, match="nesting too deep"):
        _native.decode_request(
            oracle_frame("ModelQuery", {"marker": "MARKER-VALUE"}).replace(cbor2.dumps("MARKER-VALUE"), deep_map)
        )


def test_deep_nesting_in_a_small_thread_stack(tmp_path: Path) -> None:
    """Decoding runs on whatever thread calls it (trio/asyncio workers): the
    depth limit must hold on a small stack too, both for hostile nesting and
    for the deepest nesting we accept (a generic payload walked by every
    stage: decode, JSON, drop). Run in a subprocess so a stack overflow fails
    this test instead of killing the test run."""
    # Generic values take two levels per container (as in the reference's cbor4ii);
    # the enum, the envelope and the payload map take the rest.
    max_ok = _native.MAX_CBOR_DEPTH // 2 - 2
    marker = {"marker": "MARKER-VALUE"}
    deep_ok = oracle_frame("ModelQuery", marker).replace(cbor2.dumps("MARKER-VALUE"), b"\x81" * max_ok + b"\x00")
    assert _native.decode_request(deep_ok).variant == "ModelQuery"
    frames = {
        "deep_ok": deep_ok,
        "hostile_array": deep_nesting_frame(100_000),
        "hostile_map": oracle_frame("ModelQuery", marker).replace(cbor2.dumps("MARKER-VALUE"), b"\xa1\x61k" * 100_000 + b"\x00"),
        "hostile_response": oracle_frame("ModelQueryResponse", marker).replace(
            cbor2.dumps("MARKER-VALUE"), b"\x81" * 100_000 + b"\x00"
        ),
    }
    for name, frame in frames.items():
        (tmp_path / name).write_bytes(frame)
    script = textwrap.dedent(f"""
        import sys, threading
        from pathlib import Path
        sys.path[:0] = {sys.path!r}  # import the very lloom_executor this test run uses
        from lloom_executor import _native
        out = []
        def work():
            for name in {sorted(frames)!r}:
                frame = (Path({str(tmp_path)!r}) / name).read_bytes()
                decode = _native.decode_response if "response" in name else _native.decode_request
                try:
                    out.append(name + ":" + decode(frame).variant)
                except ValueError as e:
                    out.append(name + ":ValueError:" + ("deep" if "too deep" in str(e) else str(e)))
        threading.stack_size(256 * 1024)
        t = threading.Thread(target=work); t.start(); t.join()
        print(" ".join(out))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [
        "deep_ok:ModelQuery",
        "hostile_array:ValueError:deep",
        "hostile_map:ValueError:deep",
        "hostile_response:ValueError:deep",
    ]


def test_size_limits() -> None:
    big = "x" * (1 << 20)
    with pytest.raises(ValueError, match="limit"):
        _native.decode_request(encode_req(req_payload(prompt=big)))
    just_under = encode_req(req_payload(prompt="x" * ((1 << 20) - 600)))
    assert len(just_under) <= 1 << 20
    assert _native.decode_request(just_under).signature_valid
    with pytest.raises(ValueError, match="limit"):
        _native.decode_request(bytearray(encode_req(req_payload(prompt=big))))
    two_mib = _native.encode_signed_response(KEY, "y" * (2 << 20), 1, 1, "1", "m", None, TS)
    assert _native.decode_response(two_mib).signature_valid  # above the request limit, below 10 MiB
    with pytest.raises(ValueError, match="limit"):
        _native.decode_response(_native.encode_signed_response(KEY, "y" * (10 << 20), 1, 1, "1", "m", None, TS))


def test_accepts_bytearray_and_memoryview() -> None:
    frame = valid_frame()
    for buf in (bytearray(frame), memoryview(frame)):
        assert _native.decode_request(buf).signature_valid
    with pytest.raises(TypeError):
        _native.decode_request("not bytes")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_value_error(data: bytes) -> None:
    for decode in (_native.decode_request, _native.decode_response, _native.decode_model_announcement_json):
        try:
            decode(data)
        except ValueError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_frames_only_value_error(data) -> None:
    frame = bytearray(valid_frame())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    try:
        d = _native.decode_request(bytes(frame))
    except ValueError:
        return
    assert isinstance(d.signature_valid, bool)


def test_encode_argument_errors() -> None:
    with pytest.raises(ValueError, match="temperature"):
        encode_req(req_payload() | {"temperature": F32(float("nan"))})
    with pytest.raises(ValueError, match="temperature"):
        encode_req(req_payload() | {"temperature": F32(1e300)})
    with pytest.raises(OverflowError):
        encode_req(req_payload(max_tokens=2**32))
