"""secp256k1 sign / recover: ours vs coincurve (the same libsecp256k1 via cffi).

Recover is compared as "signature -> 20-byte address", so coincurve's side
adds the keccak of the public key (eth-hash) to do the same work.
"""

from __future__ import annotations

import os

import coincurve
import pytest
from eth_hash.auto import keccak

from lloom_executor import _native as n

SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
DIGEST = keccak(b"lloom benchmark digest")
KEY = n.PrivateKey.from_bytes(SECRET)
CC_KEY = coincurve.PrivateKey(SECRET)
SIG = KEY.sign_digest(DIGEST)


@pytest.mark.benchmark(group="sign")
def test_sign_ours(benchmark) -> None:
    assert benchmark(KEY.sign_digest, DIGEST) == SIG


@pytest.mark.benchmark(group="sign")
def test_sign_coincurve(benchmark) -> None:
    assert benchmark(CC_KEY.sign_recoverable, DIGEST, hasher=None) == SIG


@pytest.mark.benchmark(group="recover-address")
def test_recover_ours(benchmark) -> None:
    assert benchmark(n.recover_address, DIGEST, SIG) == KEY.address_bytes


def _coincurve_recover_address(digest: bytes, sig: bytes) -> bytes:
    pub = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    return keccak(pub.format(compressed=False)[1:])[12:]


@pytest.mark.benchmark(group="recover-address")
def test_recover_coincurve(benchmark) -> None:
    assert benchmark(_coincurve_recover_address, DIGEST, SIG) == KEY.address_bytes


@pytest.mark.benchmark(group="keccak-1KiB")
def test_keccak_ours(benchmark) -> None:
    data = os.urandom(1024)
    assert benchmark(n.keccak256, data) == keccak(data)


@pytest.mark.benchmark(group="keccak-1KiB")
def test_keccak_eth_hash(benchmark) -> None:
    data = os.urandom(1024)
    assert benchmark(keccak, data) == n.keccak256(data)
