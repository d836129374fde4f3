"""Settlement's hand-written encodings against independent libraries: calldata against eth-abi,
EIP-712 digests against the native EIP-712 code and eth-account's, signed transactions against
eth-account's `sign_transaction` (RFC 6979 signatures are deterministic, so the bytes must match)."""

from __future__ import annotations

import json

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from lloom_executor import _native
from lloom_executor.settlement import abi
from lloom_executor.settlement.tx import Transaction, rlp

DOMAIN = _native.Eip712Domain(31337, "0x" + "42" * 20)
uint = st.integers(min_value=0, max_value=2**64 - 1)


@settings(max_examples=60, deadline=None)
@given(
    model=st.text(max_size=80),
    prompt=st.text(max_size=40),
    system=st.one_of(st.none(), st.text(max_size=20)),
    max_tokens=st.integers(min_value=0, max_value=2**32 - 1),
    temperature=st.one_of(st.none(), st.floats(min_value=0, max_value=2.0, width=32)),
    prices=st.tuples(st.integers(min_value=0, max_value=2**256 - 1), st.integers(min_value=0, max_value=2**256 - 1)),
    nonce=uint,
    deadline=uint,
    tokens=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)
def test_calldata_and_digests_match_eth_abi_and_native(
    model, prompt, system, max_tokens, temperature, prices, nonce, deadline, tokens
) -> None:
    executor, client = bytes(range(20)), bytes(range(20, 40))
    native_hash = bytes(
        DOMAIN.request_commitment_digest(
            executor, model, prompt, system, max_tokens, temperature or 0.0, str(prices[0]), str(prices[1]), nonce, deadline
        )
    )
    stored = {
        "model": model,
        "prompt_hash": "0x" + keccak(text=prompt).hex(),
        "system_prompt_hash": "0x" + (keccak(text=system) if system is not None else bytes(32)).hex(),
        "max_tokens": max_tokens,
        "temperature": temperature or 0.0,
        "inbound_price": str(prices[0]),
        "outbound_price": str(prices[1]),
        "nonce": nonce,
        "deadline": deadline,
        "content_hash": "0x" + keccak(text="answer").hex(),
        "inbound_tokens": tokens[0],
        "outbound_tokens": tokens[1],
        "timestamp": 1_800_000_000,
        "success": True,
    }
    request, response = abi.commitments_of(json.loads(json.dumps(stored)), executor, client, native_hash)
    assert abi.request_hash(DOMAIN, request) == native_hash
    native_response = bytes(
        DOMAIN.response_commitment_digest(
            native_hash, client, model, "answer", tokens[0], tokens[1], str(prices[0]), str(prices[1]), 1_800_000_000, True
        )
    )
    assert abi.response_hash(DOMAIN, response) == native_response
    sig_a, sig_b = bytes(range(65)), bytes(range(1, 66))
    data = abi.process_request_signed(request, response, sig_a, sig_b)
    assert data[:4] == keccak(text=abi.PROCESS_REQUEST_SIGNED)[:4]
    expected = abi_encode(
        [abi.REQUEST_TUPLE, abi.RESPONSE_TUPLE, "bytes", "bytes"],
        [
            (
                "0x" + executor.hex(),
                model,
                request.prompt_hash,
                request.system_prompt_hash,
                max_tokens,
                request.temperature,
                prices[0],
                prices[1],
                nonce,
                deadline,
            ),
            (
                native_hash,
                "0x" + client.hex(),
                model,
                response.content_hash,
                tokens[0],
                tokens[1],
                prices[0],
                prices[1],
                1_800_000_000,
                True,
            ),
            abi.signature_27(sig_a),
            abi.signature_27(sig_b),
        ],
    )
    assert data[4:] == expected
    assert abi_decode(["uint256"], abi.get_current_nonce(client)[4:]) == (int.from_bytes(client, "big"),)


def test_temperature_rounds_half_away_from_zero_like_the_native_code() -> None:
    for t in (0.0, 0.7, 0.00005, 0.00015, 1.23455, 2.0, 0.1 + 0.2):
        t32 = float(t)
        digest = bytes(DOMAIN.request_commitment_digest(b"\0" * 20, "m", "p", None, 0, t32, "0", "0", 1, 1))
        request = abi.RequestCommitment(b"\0" * 20, "m", keccak(text="p"), bytes(32), 0, abi.temperature_u32(t32), 0, 0, 1, 1)
        assert abi.request_hash(DOMAIN, request) == digest, t


def test_revert_reason_and_v_normalisation() -> None:
    data = keccak(text="Error(string)")[:4] + abi_encode(["string"], ["Invalid nonce"])
    assert abi.revert_reason(data) == "Invalid nonce"
    assert abi.revert_reason(b"\x12\x34") is None
    assert abi.signature_27(bytes(64) + b"\x01")[64] == 28 and abi.signature_27(bytes(64) + b"\x1b")[64] == 27
    with pytest.raises(ValueError):
        abi.signature_27(b"\0" * 10)


@pytest.mark.parametrize("dynamic_fee", [True, False])
def test_signed_transactions_match_eth_account(dynamic_fee: bool) -> None:
    key = _native.PrivateKey.generate()
    tx = Transaction(
        chain_id=131277322940537,
        nonce=7,
        gas=250_000,
        to=bytes.fromhex("f2e246bb76df876cef8b38ae84130f4f55de395b"),
        data=bytes(range(200)),
        max_fee=3 * 10**9,
        max_priority_fee=10**9 if dynamic_fee else None,
    )
    raw, tx_hash = tx.sign(key)
    fields = {
        "chainId": tx.chain_id,
        "nonce": tx.nonce,
        "gas": tx.gas,
        "to": to_checksum_address("0x" + tx.to.hex()),
        "value": 0,
        "data": tx.data,
    }
    if dynamic_fee:
        fields |= {"maxFeePerGas": tx.max_fee, "maxPriorityFeePerGas": tx.max_priority_fee, "type": 2}
    else:
        fields |= {"gasPrice": tx.max_fee}
    signed = Account.sign_transaction(fields, "0x" + bytes(key.to_bytes()).hex())
    assert raw == bytes(signed.raw_transaction)
    assert tx_hash == bytes(signed.hash)


def test_rlp_edge_cases() -> None:
    assert rlp(0) == b"\x80" and rlp(b"\x7f") == b"\x7f" and rlp(b"\x80") == b"\x81\x80"
    assert rlp([]) == b"\xc0" and rlp(b"a" * 56)[:2] == b"\xb8\x38"
    with pytest.raises(ValueError):
        rlp(-1)
