"""AccountingV2 response-commitment digest and signed receipt: ours vs
eth-account (encode_typed_data + keccak, and Account.sign_message).

Groups:
- response-digest (x100): the EIP-712 digest of a LlmResponseCommitment from its
  field values, as the struct defines them (`contentHash` is a bytes32 field,
  so both sides are handed it): the typed-data hashing itself;
- response-digest-from-text-1KB / -short: the same digest with the answer
  text hashed inside the timed call on both sides (keccak of the text, which
  `keccak-1KiB` in bench_crypto.py measures on its own, then the digest);
- response-receipt-signed: digest from the 1 KB text plus the secp256k1
  signature, what the executor does per answer.

Run: PYTHONPATH=python pytest benches/bench_eip712.py --benchmark-only -q
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak

from lloom_executor import _native as n

CHAIN_ID = 8453
CONTRACT = "0x" + "42" * 20
CLIENT = "0x" + "ab" * 20
REQUEST_HASH = keccak(b"request")
CONTENT = "The quick brown fox jumps over the lazy dog. " * 20
SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
DOMAIN = n.Eip712Domain(CHAIN_ID, CONTRACT)
ARGS = (REQUEST_HASH, CLIENT, "llama3.2:3b", CONTENT, 512, 1024, "1000000000000", "2000000000000", 1_700_000_000, True)

TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "LlmResponseCommitment": [
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
    ],
}


def _full_message(content_hash: bytes | None = None) -> dict:
    """What a Python executor would build per response; the text is hashed
    here unless its hash is given."""
    return {
        "types": TYPES,
        "primaryType": "LlmResponseCommitment",
        "domain": {"name": "Lloom Network", "version": "1.0.0", "chainId": CHAIN_ID, "verifyingContract": CONTRACT},
        "message": {
            "requestHash": REQUEST_HASH,
            "client": CLIENT,
            "model": "llama3.2:3b",
            "contentHash": content_hash if content_hash is not None else keccak(CONTENT.encode()),
            "inboundTokens": 512,
            "outboundTokens": 1024,
            "inboundPrice": 1000000000000,
            "outboundPrice": 2000000000000,
            "timestamp": 1_700_000_000,
            "success": True,
        },
    }


def _eth_account_digest(content_hash: bytes | None = None) -> bytes:
    signable = encode_typed_data(full_message=_full_message(content_hash))
    return keccak(b"\x19\x01" + signable.header + signable.body)


EXPECTED = _eth_account_digest()

# The struct's own field values: contentHash given as the bytes32 it is.
CONTENT_HASH = keccak(CONTENT.encode())
FIELD_ARGS = ARGS[:3] + (CONTENT_HASH,) + ARGS[4:]


# The fixture costs ~80 ns per call (a tenth of our digest, nothing next to
# eth-account's), so this group times 100 digests per round on both sides.
CALLS = 100


@pytest.mark.benchmark(group="response-digest (x100)")
def test_fields_response_digest_ours(benchmark) -> None:
    digest = DOMAIN.response_commitment_digest

    def run() -> bytes:
        for _ in range(CALLS):
            out = digest(*FIELD_ARGS)
        return out

    assert benchmark(run) == EXPECTED


@pytest.mark.benchmark(group="response-digest (x100)")
def test_fields_response_digest_eth_account(benchmark) -> None:
    def run() -> bytes:
        for _ in range(CALLS):
            out = _eth_account_digest(CONTENT_HASH)
        return out

    assert benchmark(run) == EXPECTED


@pytest.mark.benchmark(group="response-digest-from-text-1KB")
def test_response_digest_ours(benchmark) -> None:
    assert benchmark(DOMAIN.response_commitment_digest, *ARGS) == EXPECTED


@pytest.mark.benchmark(group="response-digest-from-text-1KB")
def test_response_digest_eth_account(benchmark) -> None:
    assert benchmark(_eth_account_digest) == EXPECTED


KEY = n.PrivateKey.from_bytes(SECRET)


@pytest.mark.benchmark(group="response-receipt-signed")
def test_receipt_ours(benchmark) -> None:
    digest, sig = benchmark(DOMAIN.sign_response_receipt, KEY, *ARGS)
    assert digest == EXPECTED and n.recover_address(digest, sig) == KEY.address_bytes


@pytest.mark.benchmark(group="response-receipt-signed")
def test_receipt_eth_account(benchmark) -> None:
    signed = benchmark(lambda: Account.sign_message(encode_typed_data(full_message=_full_message()), SECRET))
    assert signed.message_hash == EXPECTED


# A short answer: the text adds one keccak permutation to the four of the digest.
SHORT_ARGS = (REQUEST_HASH, CLIENT, "llama3.2:3b", "OK.", 512, 1024, "1000000000000", "2000000000000", 1_700_000_000, True)


def _eth_account_short_digest() -> bytes:
    message = _full_message()
    message["message"]["contentHash"] = keccak(b"OK.")
    signable = encode_typed_data(full_message=message)
    return keccak(b"\x19\x01" + signable.header + signable.body)


SHORT_EXPECTED = _eth_account_short_digest()


@pytest.mark.benchmark(group="response-digest-from-text-short")
def test_short_response_digest_ours(benchmark) -> None:
    assert benchmark(DOMAIN.response_commitment_digest, *SHORT_ARGS) == SHORT_EXPECTED


@pytest.mark.benchmark(group="response-digest-from-text-short")
def test_short_response_digest_eth_account(benchmark) -> None:
    assert benchmark(_eth_account_short_digest) == SHORT_EXPECTED
