"""AccountingV2 EIP-712 digests against eth-account's typed-data encoder.

The oracle message is built here from the spec (PROTOCOL.md §7): texts hashed
with eth-hash, temperature rounded half away from zero with `decimal`, and
`encode_typed_data(full_message=...)` gives the domain separator (`.header`)
and struct hash (`.body`).
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak
from eth_keys import KeyAPI
from eth_keys.backends import NativeECCBackend
from eth_utils import to_checksum_address
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lloom_executor import _native as n

U256_MAX = 2**256 - 1
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ZERO32 = bytes(32)

DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
REQUEST_FIELDS = [
    {"name": "executor", "type": "address"},
    {"name": "model", "type": "string"},
    {"name": "promptHash", "type": "bytes32"},
    {"name": "systemPromptHash", "type": "bytes32"},
    {"name": "maxTokens", "type": "uint32"},
    {"name": "temperature", "type": "uint32"},
    {"name": "inboundPrice", "type": "uint256"},
    {"name": "outboundPrice", "type": "uint256"},
    {"name": "nonce", "type": "uint64"},
    {"name": "deadline", "type": "uint64"},
]
RESPONSE_FIELDS = [
    {"name": "requestHash", "type": "bytes32"},
    {"name": "client", "type": "address"},
    {"name": "model", "type": "string"},
    {"name": "contentHash", "type": "bytes32"},
    {"name": "inboundTokens", "type": "uint32"},
    {"name": "outboundTokens", "type": "uint32"},
    {"name": "inboundPrice", "type": "uint256"},
    {"name": "outboundPrice", "type": "uint256"},
    {"name": "timestamp", "type": "uint64"},
    {"name": "success", "type": "bool"},
]

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

addresses = st.binary(min_size=20, max_size=20)
texts = st.text(max_size=300) | st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)
models = st.sampled_from(["gpt-4o", "llama3.2:3b", "", "模型-ü"]) | st.text(max_size=40)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
prices = st.integers(min_value=0, max_value=U256_MAX) | st.sampled_from([0, 1, 10**18, U256_MAX, 2**255])
edge_temps = st.sampled_from([0.0, 0.7, 1.0, 2.0, 0.00005, 0.00015, 0.12345, 1.99995, 429496.7295, -0.00004])
temperatures = edge_temps | st.floats(min_value=0.0, max_value=2.0) | st.floats(min_value=0.0, max_value=429496.0)


def spec_temperature(t: float) -> int:
    """round(t * 10000), half away from zero, on the same IEEE double product."""
    return int(Decimal(t * 10000).to_integral_value(rounding=ROUND_HALF_UP))


def domain_dict(chain_id: int, contract: bytes) -> dict:
    return {
        "name": "Lloom Network",
        "version": "1.0.0",
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(contract),
    }


def oracle(primary: str, fields: list, domain: dict, message: dict) -> tuple[bytes, bytes, bytes]:
    """(separator, struct hash, digest) from eth-account."""
    signable = encode_typed_data(
        full_message={
            "types": {"EIP712Domain": DOMAIN_FIELDS, primary: fields},
            "primaryType": primary,
            "domain": domain,
            "message": message,
        }
    )
    return signable.header, signable.body, keccak(b"\x19\x01" + signable.header + signable.body)


def test_type_strings_are_the_spec() -> None:
    assert n.EIP712_DOMAIN_TYPE == ("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    assert n.LLM_REQUEST_COMMITMENT_TYPE == (
        "LlmRequestCommitment(address executor,string model,bytes32 promptHash,bytes32 systemPromptHash,"
        "uint32 maxTokens,uint32 temperature,uint256 inboundPrice,uint256 outboundPrice,uint64 nonce,"
        "uint64 deadline)"
    )
    assert n.LLM_RESPONSE_COMMITMENT_TYPE == (
        "LlmResponseCommitment(bytes32 requestHash,address client,string model,bytes32 contentHash,"
        "uint32 inboundTokens,uint32 outboundTokens,uint256 inboundPrice,uint256 outboundPrice,"
        "uint64 timestamp,bool success)"
    )
    assert n.EIP712_DOMAIN_NAME == "Lloom Network"
    assert n.EIP712_DOMAIN_VERSION == "1.0.0"


@SETTINGS
@given(
    chain_id=st.integers(min_value=0, max_value=U256_MAX) | st.sampled_from([1, 8453, 31337, 11155111]),
    contract=addresses,
    as_text=st.booleans(),
)
def test_domain_separator(chain_id: int, contract: bytes, as_text: bool) -> None:
    arg = to_checksum_address(contract) if as_text else contract
    domain = n.Eip712Domain(chain_id, arg)
    header, _, _ = oracle(
        "LlmResponseCommitment",
        RESPONSE_FIELDS,
        domain_dict(chain_id, contract),
        {
            "requestHash": ZERO32,
            "client": to_checksum_address(bytes(20)),
            "model": "",
            "contentHash": ZERO32,
            "inboundTokens": 0,
            "outboundTokens": 0,
            "inboundPrice": 0,
            "outboundPrice": 0,
            "timestamp": 0,
            "success": False,
        },
    )
    assert domain.separator == header
    assert domain.chain_id == chain_id
    assert domain.verifying_contract == to_checksum_address(contract)


@SETTINGS
@given(
    chain_id=st.sampled_from([1, 8453, 31337, U256_MAX]),
    contract=addresses,
    executor=addresses,
    model=models,
    prompt=texts,
    system_prompt=st.none() | texts,
    max_tokens=u32,
    temperature=temperatures,
    inbound=prices,
    outbound=prices,
    nonce=u64,
    deadline=u64,
    executor_as_text=st.booleans(),
)
def test_request_commitment_digest(
    chain_id,
    contract,
    executor,
    model,
    prompt,
    system_prompt,
    max_tokens,
    temperature,
    inbound,
    outbound,
    nonce,
    deadline,
    executor_as_text,
) -> None:
    temp = spec_temperature(temperature)
    assume(0 <= temp <= 2**32 - 1)
    domain = n.Eip712Domain(chain_id, contract)
    executor_arg = ("0x" + executor.hex()) if executor_as_text else executor
    ours = domain.request_commitment_digest(
        executor_arg,
        model,
        prompt,
        system_prompt,
        max_tokens,
        temperature,
        str(inbound),
        str(outbound),
        nonce,
        deadline,
    )
    _, _, want = oracle(
        "LlmRequestCommitment",
        REQUEST_FIELDS,
        domain_dict(chain_id, contract),
        {
            "executor": to_checksum_address(executor),
            "model": model,
            "promptHash": keccak(prompt.encode()),
            "systemPromptHash": ZERO32 if system_prompt is None else keccak(system_prompt.encode()),
            "maxTokens": max_tokens,
            "temperature": temp,
            "inboundPrice": inbound,
            "outboundPrice": outbound,
            "nonce": nonce,
            "deadline": deadline,
        },
    )
    assert ours == want
    # Precomputed hashes and int prices give the same digest.
    again = domain.request_commitment_digest(
        executor=executor,
        model=model,
        prompt=keccak(prompt.encode()),
        system_prompt=None if system_prompt is None else keccak(system_prompt.encode()),
        max_tokens=max_tokens,
        temperature=temperature,
        inbound_price=inbound,
        outbound_price=outbound,
        nonce=nonce,
        deadline=deadline,
    )
    assert again == want


def response_oracle(
    chain_id, contract, request_hash, client, model, content, tin, tout, inbound, outbound, timestamp, success
) -> bytes:
    return oracle(
        "LlmResponseCommitment",
        RESPONSE_FIELDS,
        domain_dict(chain_id, contract),
        {
            "requestHash": request_hash,
            "client": to_checksum_address(client),
            "model": model,
            "contentHash": keccak(content.encode()),
            "inboundTokens": tin,
            "outboundTokens": tout,
            "inboundPrice": inbound,
            "outboundPrice": outbound,
            "timestamp": timestamp,
            "success": success,
        },
    )[2]


@SETTINGS
@given(
    chain_id=st.sampled_from([1, 8453, 31337]),
    contract=addresses,
    request_hash=st.binary(min_size=32, max_size=32),
    client=addresses,
    model=models,
    content=texts,
    tin=u32,
    tout=u32,
    inbound=prices,
    outbound=prices,
    timestamp=u64,
    success=st.booleans(),
)
def test_response_commitment_digest(
    chain_id, contract, request_hash, client, model, content, tin, tout, inbound, outbound, timestamp, success
) -> None:
    domain = n.Eip712Domain(chain_id, "0x" + contract.hex())
    ours = domain.response_commitment_digest(
        request_hash, client, model, content, tin, tout, str(inbound), str(outbound), timestamp, success
    )
    want = response_oracle(
        chain_id, contract, request_hash, client, model, content, tin, tout, inbound, outbound, timestamp, success
    )
    assert ours == want
    assert (
        domain.response_commitment_digest(
            request_hash,
            to_checksum_address(client),
            model,
            keccak(content.encode()),
            tin,
            tout,
            inbound,
            outbound,
            timestamp,
            success,
        )
        == want
    )


@settings(max_examples=60, deadline=None)
@given(
    request_hash=st.binary(min_size=32, max_size=32),
    client=addresses,
    content=texts,
    tin=u32,
    tout=u32,
    inbound=prices,
    timestamp=u64,
    success=st.booleans(),
    secret=st.integers(min_value=1, max_value=SECP256K1_N - 1),
)
def test_sign_response_receipt_recovers(request_hash, client, content, tin, tout, inbound, timestamp, success, secret) -> None:
    key = n.PrivateKey.from_bytes(secret.to_bytes(32, "big"))
    domain = n.Eip712Domain(8453, b"\x42" * 20)
    digest, sig = domain.sign_response_receipt(
        key, request_hash, client, "m", content, tin, tout, str(inbound), "7", timestamp, success
    )
    assert digest == response_oracle(
        8453, b"\x42" * 20, request_hash, client, "m", content, tin, tout, inbound, 7, timestamp, success
    )
    assert len(sig) == 65 and sig[64] in (0, 1)
    assert Account._recover_hash(digest, signature=sig[:64] + bytes([sig[64] + 27])) == key.address
    pure = KeyAPI(NativeECCBackend)
    assert pure.ecdsa_recover(digest, pure.Signature(sig)).to_checksum_address() == key.address


def test_request_digest_chains_into_response() -> None:
    """requestHash is the request digest; the receipt signs over it."""
    domain = n.Eip712Domain(1, "0x" + "ab" * 20)
    key = n.PrivateKey.generate()
    req = domain.request_commitment_digest(key.address, "gpt-4o", "hi", None, 256, 0.7, "1000", "2000", 1, 2)
    _, _, want_req = oracle(
        "LlmRequestCommitment",
        REQUEST_FIELDS,
        domain_dict(1, b"\xab" * 20),
        {
            "executor": key.address,
            "model": "gpt-4o",
            "promptHash": keccak(b"hi"),
            "systemPromptHash": ZERO32,
            "maxTokens": 256,
            "temperature": 7000,
            "inboundPrice": 1000,
            "outboundPrice": 2000,
            "nonce": 1,
            "deadline": 2,
        },
    )
    assert req == want_req
    digest, sig = domain.sign_response_receipt(key, req, b"\x01" * 20, "gpt-4o", "hello", 3, 5, "1000", "2000", 99, True)
    assert n.recover_address(digest, sig) == key.address_bytes


def test_large_texts_hash_correctly() -> None:
    """Above the GIL-release threshold the same digest comes out."""
    domain = n.Eip712Domain(1, b"\x01" * 20)
    content = "Ω≈ç√ lorem ipsum 🧑‍🚀 " * 20_000
    ours = domain.response_commitment_digest(b"\x02" * 32, b"\x03" * 20, "m", content, 1, 2, "3", "4", 5, True)
    assert ours == response_oracle(1, b"\x01" * 20, b"\x02" * 32, b"\x03" * 20, "m", content, 1, 2, 3, 4, 5, True)
    prompt = "x" * 1_000_000
    system = "y" * 5_000
    req = domain.request_commitment_digest(b"\x03" * 20, "m", prompt, system, 1, 1.0, "1", "1", 1, 1)
    assert req == domain.request_commitment_digest(
        b"\x03" * 20, "m", keccak(prompt.encode()), keccak(system.encode()), 1, 1.0, "1", "1", 1, 1
    )


def test_empty_system_prompt_is_not_missing() -> None:
    domain = n.Eip712Domain(1, b"\x01" * 20)
    args = dict(
        executor=b"\x02" * 20,
        model="m",
        prompt="p",
        max_tokens=1,
        temperature=0.0,
        inbound_price="1",
        outbound_price="1",
        nonce=1,
        deadline=1,
    )
    missing = domain.request_commitment_digest(system_prompt=None, **args)
    empty = domain.request_commitment_digest(system_prompt="", **args)
    assert missing != empty
    assert empty == domain.request_commitment_digest(system_prompt=keccak(b""), **args)
    assert missing == domain.request_commitment_digest(system_prompt=ZERO32, **args)


# --- invalid input -----------------------------------------------------------

DOMAIN = n.Eip712Domain(1, b"\x01" * 20)
GOOD_REQ = dict(
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
GOOD_RESP = dict(
    request_hash=b"\x00" * 32,
    client=b"\x02" * 20,
    model="m",
    content="c",
    inbound_tokens=1,
    outbound_tokens=1,
    inbound_price="1",
    outbound_price="1",
    timestamp=1,
    success=True,
)

BAD_PRICES = ["-1", "1.5", "1e3", "", " 1", "1_000", "0x10", "+1", str(2**256), "١٢", -1, 2**256, 2**300]
BAD_ADDRESSES = [
    b"\x01" * 19,
    b"\x01" * 21,
    b"",
    "0x1234",
    "0x" + "zz" * 20,
    "0x" + "ab" * 21,
    # a mixed-case address whose EIP-55 checksum is wrong
    "0x" + to_checksum_address(b"\xab" * 20)[2:].swapcase(),
]


@pytest.mark.parametrize("price", BAD_PRICES)
@pytest.mark.parametrize("field", ["inbound_price", "outbound_price"])
def test_bad_prices_rejected(field: str, price) -> None:
    with pytest.raises(ValueError):
        DOMAIN.request_commitment_digest(**{**GOOD_REQ, field: price})
    with pytest.raises(ValueError):
        DOMAIN.response_commitment_digest(**{**GOOD_RESP, field: price})


def test_max_price_accepted() -> None:
    DOMAIN.request_commitment_digest(**{**GOOD_REQ, "inbound_price": str(U256_MAX), "outbound_price": U256_MAX})
    DOMAIN.response_commitment_digest(**{**GOOD_RESP, "inbound_price": "0" * 90 + "1"})


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_bad_addresses_rejected(address) -> None:
    with pytest.raises(ValueError):
        DOMAIN.request_commitment_digest(**{**GOOD_REQ, "executor": address})
    with pytest.raises(ValueError):
        DOMAIN.response_commitment_digest(**{**GOOD_RESP, "client": address})
    with pytest.raises(ValueError):
        n.Eip712Domain(1, address)


@pytest.mark.parametrize("temperature", [429496.73, 1e12, -0.1, -1.0, math.inf, -math.inf, math.nan])
def test_bad_temperatures_rejected(temperature: float) -> None:
    with pytest.raises(ValueError):
        DOMAIN.request_commitment_digest(**{**GOOD_REQ, "temperature": temperature})


def test_largest_temperature_accepted() -> None:
    # 429496.7295 * 10000 rounds to exactly 2**32 - 1.
    assert spec_temperature(429496.7295) == 2**32 - 1
    DOMAIN.request_commitment_digest(**{**GOOD_REQ, "temperature": 429496.7295})


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_tokens", 2**32),
        ("max_tokens", -1),
        ("nonce", 2**64),
        ("nonce", -1),
        ("deadline", 2**64),
        ("prompt", b"\x00" * 31),
        ("prompt", "\ud800"),
        ("system_prompt", b"\x00" * 33),
        ("model", "\udfff"),
    ],
)
def test_bad_request_fields_rejected(field: str, value) -> None:
    with pytest.raises(ValueError):
        DOMAIN.request_commitment_digest(**{**GOOD_REQ, field: value})


@pytest.mark.parametrize(
    "field,value",
    [
        ("request_hash", b"\x00" * 31),
        ("request_hash", b"\x00" * 33),
        ("inbound_tokens", 2**32),
        ("outbound_tokens", -1),
        ("timestamp", 2**64),
        ("content", b"\x00" * 5),
        ("content", "\ud800"),
    ],
)
def test_bad_response_fields_rejected(field: str, value) -> None:
    with pytest.raises(ValueError):
        DOMAIN.response_commitment_digest(**{**GOOD_RESP, field: value})
    with pytest.raises(ValueError):
        DOMAIN.sign_response_receipt(n.PrivateKey.generate(), **{**GOOD_RESP, field: value})


@pytest.mark.parametrize(
    "field,value",
    [
        ("prompt", None),
        ("prompt", 5),
        ("max_tokens", 1.5),
        ("max_tokens", "1"),
        ("inbound_price", 1.0),
        ("executor", 12),
        ("model", b"m"),
    ],
)
def test_wrong_types_rejected(field: str, value) -> None:
    with pytest.raises(TypeError):
        DOMAIN.request_commitment_digest(**{**GOOD_REQ, field: value})


def test_domain_rejects_bad_chain_id() -> None:
    for bad in (-1, 2**256):
        with pytest.raises(ValueError):
            n.Eip712Domain(bad, b"\x01" * 20)
    with pytest.raises(TypeError):
        n.Eip712Domain("1", b"\x01" * 20)
