"""Native secp256k1/keccak core against independent oracles.

Oracles: coincurve (libsecp256k1 through cffi), eth-keys' pure-Python native
backend (no libsecp256k1 at all), eth-account, eth-hash (pycryptodome keccak)
and a PeerId built here from the libp2p spec (protobuf + identity multihash +
base58btc), never from our own code.
"""

from __future__ import annotations

import os

import coincurve
import pytest
from eth_account import Account
from eth_hash.auto import keccak
from eth_keys import KeyAPI
from eth_keys.backends import NativeECCBackend
from eth_utils import to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lloom_executor import _native as n

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
PURE = KeyAPI(NativeECCBackend)

secrets = st.integers(min_value=1, max_value=N - 1).map(lambda i: i.to_bytes(32, "big"))
digests = st.binary(min_size=32, max_size=32)
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None)

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    """Bitcoin base58 (libp2p's base58btc), written from its definition."""
    num = int.from_bytes(data, "big")
    out = ""
    while num:
        num, rem = divmod(num, 58)
        out = B58[rem] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def spec_peer_id(compressed: bytes) -> str:
    """PeerId per the libp2p peer-ids spec: identity multihash of the
    protobuf PublicKey{Type=Secp256k1(2), Data=33-byte compressed key}."""
    proto = b"\x08\x02\x12\x21" + compressed
    return b58encode(b"\x00" + bytes([len(proto)]) + proto)


@FAST
@given(secret=secrets)
def test_key_faces_match_coincurve_and_eth_account(secret: bytes) -> None:
    key = n.PrivateKey.from_bytes(secret)
    cc = coincurve.PrivateKey(secret)
    assert key.to_bytes() == secret
    assert key.to_hex() == secret.hex()
    assert key.public_key == cc.public_key.format(compressed=True)
    assert key.public_key_uncompressed == cc.public_key.format(compressed=False)
    expected_addr = Account.from_key(secret).address
    assert key.address == expected_addr
    assert key.address_bytes == bytes.fromhex(expected_addr[2:])
    assert key.address_bytes == keccak(key.public_key_uncompressed[1:])[12:]
    peer = spec_peer_id(cc.public_key.format(compressed=True))
    assert key.peer_id == peer
    # Every secp256k1 PeerId starts "16Uiu2HA"; the ninth character is "m"
    # for most keys but "k" for 0x02-prefixed keys with a small x coordinate.
    assert peer.startswith("16Uiu2HA") and peer[8] in "km"
    assert n.peer_id_from_public_key(key.public_key) == peer
    assert n.peer_id_from_public_key(key.public_key_uncompressed) == peer


@FAST
@given(secret=secrets, digest=digests)
def test_sign_equals_coincurve_and_recovers(secret: bytes, digest: bytes) -> None:
    key = n.PrivateKey.from_bytes(secret)
    sig = key.sign_digest(digest)
    # Both RFC 6979 and low-s: byte-identical signatures.
    assert sig == coincurve.PrivateKey(secret).sign_recoverable(digest, hasher=None)
    assert n.sign_digest(key, digest) == sig
    assert sig[64] in (0, 1)
    recovered = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    assert recovered.format(compressed=True) == key.public_key
    assert n.recover_address(digest, sig) == key.address_bytes
    v27 = sig[:64] + bytes([sig[64] + 27])
    assert n.recover_address(digest, v27) == key.address_bytes
    assert Account._recover_hash(digest, signature=v27) == key.address


@SLOW
@given(secret=secrets, digest=digests)
def test_sign_and_recover_against_pure_python_ecdsa(secret: bytes, digest: bytes) -> None:
    """eth-keys' native backend shares no code with libsecp256k1."""
    pk = PURE.PrivateKey(secret)
    ref = PURE.ecdsa_sign(digest, pk)
    sig = n.sign_digest(n.PrivateKey.from_bytes(secret), digest)
    assert sig == ref.to_bytes()  # r || s || v with v in {0, 1}
    assert n.recover_address(digest, ref.to_bytes()) == pk.public_key.to_canonical_address()


def test_sign_via_eth_account_rsv() -> None:
    for _ in range(50):
        secret = os.urandom(32)
        if not 0 < int.from_bytes(secret, "big") < N:
            continue
        digest = os.urandom(32)
        signed = Account.unsafe_sign_hash(digest, secret)
        sig = n.PrivateKey.from_bytes(secret).sign_digest(digest)
        assert int.from_bytes(sig[:32], "big") == signed.r
        assert int.from_bytes(sig[32:64], "big") == signed.s
        assert sig[64] == signed.v - 27


@FAST
@given(data=st.binary(max_size=10_000))
def test_keccak_matches_eth_hash(data: bytes) -> None:
    assert n.keccak256(data) == keccak(data)


def test_keccak_large_input_releases_gil_path() -> None:
    data = os.urandom(1 << 20)
    assert n.keccak256(data) == keccak(data)
    assert n.keccak256(b"") == keccak(b"")


@FAST
@given(raw=st.binary(min_size=20, max_size=20))
def test_checksum_address_matches_eth_utils(raw: bytes) -> None:
    assert n.checksum_address(raw) == to_checksum_address(raw)


def test_hex_forms_accepted() -> None:
    secret = bytes(range(1, 33))
    want = Account.from_key(secret).address
    for text in (secret.hex(), "0x" + secret.hex(), "0X" + secret.hex().upper(), f"  {secret.hex()}\n"):
        assert n.PrivateKey.from_hex(text).address == want


def test_generate_gives_distinct_valid_keys() -> None:
    keys = {n.PrivateKey.generate().to_bytes() for _ in range(64)}
    assert len(keys) == 64
    for secret in keys:
        assert 0 < int.from_bytes(secret, "big") < N
        assert n.PrivateKey.from_bytes(secret).address == Account.from_key(secret).address


@pytest.mark.parametrize(
    "secret",
    [
        bytes(32),
        N.to_bytes(32, "big"),
        (N + 1).to_bytes(32, "big"),
        b"\xff" * 32,
        b"\x01" * 31,
        b"\x01" * 33,
        b"",
    ],
)
def test_invalid_secret_bytes_rejected(secret: bytes) -> None:
    with pytest.raises(ValueError):
        n.PrivateKey.from_bytes(secret)


@pytest.mark.parametrize(
    "text",
    ["", "0x", "zz" * 32, "0x" + "00" * 32, "0x" + "11" * 31, "11" * 33, "0x" + f"{N:064x}", "0x0x" + "11" * 31],
)
def test_invalid_secret_hex_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        n.PrivateKey.from_hex(text)


def test_repr_hides_secret() -> None:
    for _ in range(20):
        key = n.PrivateKey.generate()
        secret = key.to_hex()
        for shown in (repr(key), str(key)):
            assert secret not in shown.lower()
            assert secret[:16] not in shown.lower()
        assert key.address in repr(key)


def test_sign_rejects_bad_digest_length() -> None:
    key = n.PrivateKey.generate()
    for bad in (b"", b"\0" * 31, b"\0" * 33):
        with pytest.raises(ValueError):
            key.sign_digest(bad)
        with pytest.raises(ValueError):
            n.sign_digest(key, bad)


def test_recover_rejects_malformed_signatures() -> None:
    key = n.PrivateKey.generate()
    digest = os.urandom(32)
    sig = key.sign_digest(digest)
    r, s, v = sig[:32], sig[32:64], sig[64]
    high_s = (N - int.from_bytes(s, "big")).to_bytes(32, "big")
    bad = [
        sig[:64],
        sig + b"\0",
        b"",
        r + s + bytes([2]),
        r + s + bytes([3]),
        r + s + bytes([26]),
        r + s + bytes([29]),
        r + s + bytes([255]),
        r + high_s + bytes([v ^ 1]),  # the malleable twin of a valid signature
        bytes(32) + s + bytes([v]),  # r = 0
        r + bytes(32) + bytes([v]),  # s = 0
        N.to_bytes(32, "big") + s + bytes([v]),  # r = n
    ]
    for signature in bad:
        with pytest.raises(ValueError):
            n.recover_address(digest, signature)
    for d in (b"", digest[:31], digest + b"\0"):
        with pytest.raises(ValueError):
            n.recover_address(d, sig)
    # The high-s twin really is valid for libsecp256k1's lax verify: we refuse it on purpose.
    twin = coincurve.PublicKey.from_signature_and_message(r + high_s + bytes([v ^ 1]), digest, hasher=None)
    assert twin.format() == key.public_key


@FAST
@given(junk=st.binary(min_size=65, max_size=65), digest=digests)
def test_recover_never_crashes_on_junk(junk: bytes, digest: bytes) -> None:
    try:
        addr = n.recover_address(digest, junk)
    except ValueError:
        return
    pub = coincurve.PublicKey.from_signature_and_message(
        junk[:64] + bytes([junk[64] % 27 if junk[64] >= 27 else junk[64]]), digest, hasher=None
    )
    assert addr == keccak(pub.format(compressed=False)[1:])[12:]


@pytest.mark.parametrize("v", [0, 1, 27, 28])
def test_recover_accepts_both_v_conventions(v: int) -> None:
    for _ in range(20):
        key = n.PrivateKey.generate()
        digest = os.urandom(32)
        sig = key.sign_digest(digest)
        if sig[64] != v % 27:
            continue
        assert n.recover_address(digest, sig[:64] + bytes([v])) == key.address_bytes


def test_checksum_and_peer_id_reject_bad_input() -> None:
    for bad in (b"", b"\0" * 19, b"\0" * 21):
        with pytest.raises(ValueError):
            n.checksum_address(bad)
    for bad in (b"", b"\x02" + b"\0" * 32, b"\x05" + b"\x11" * 32, b"\x04" + b"\0" * 64, b"\x02" * 34):
        with pytest.raises(ValueError):
            n.peer_id_from_public_key(bad)
