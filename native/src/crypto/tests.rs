//! Keys, signatures and recovery: round trips, and every refusal class.

use super::*;
use crate::error::{KeyError, SignatureError};

/// secp256k1 group order n, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

fn key(byte: u8) -> SecretKey {
    parse_secret(&[byte; 32]).unwrap()
}

/// n - s, big-endian (s < n): the malleable twin of a signature's s.
fn negate_mod_order(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(ORDER[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = d.rem_euclid(256) as u8;
    }
    out
}

#[test]
fn known_answers() {
    // keccak-256 of nothing, and the address of the private key 1 (well-known vectors).
    assert_eq!(hex::encode(keccak(b"")), "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470");
    let mut one = [0u8; 32];
    one[31] = 1;
    let public = PublicKey::from_secret_key(SECP256K1, &parse_secret(&one).unwrap());
    assert_eq!(checksum(&address_of(&public)), "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf");
    assert!(peer_id_of(&public).starts_with("16Uiu2HA"));
}

#[test]
fn sign_then_recover_round_trips() {
    for (i, byte) in [1u8, 7, 0x42, 0x7f, 0xfe].into_iter().enumerate() {
        let secret = key(byte);
        let digest = keccak(&[i as u8; 3]);
        let sig = sign(&secret, &digest);
        let expected = address_of(&PublicKey::from_secret_key(SECP256K1, &secret));
        assert!(sig[64] <= 1);
        assert!(sig[32..64] <= HALF_ORDER[..], "libsecp256k1 signs low-s");
        assert_eq!(recover_signer(&digest, &sig).unwrap(), expected);
        // The Ethereum spelling of v (27/28) recovers the same address.
        let mut eth = sig;
        eth[64] += 27;
        assert_eq!(recover_signer(&digest, &eth).unwrap(), expected);
        // Deterministic (RFC 6979).
        assert_eq!(sign(&secret, &digest), sig);
    }
}

#[test]
fn bit_flips_never_recover_the_signer() {
    let secret = key(9);
    let digest = keccak(b"flip");
    let sig = sign(&secret, &digest);
    let signer = recover_signer(&digest, &sig).unwrap();
    for bit in 0..(65 * 8) {
        let mut bad = sig;
        bad[bit / 8] ^= 1 << (bit % 8);
        assert_ne!(recover_signer(&digest, &bad).ok(), Some(signer), "bit {bit}");
    }
    let mut other = digest;
    other[0] ^= 1;
    assert_ne!(recover_signer(&other, &sig).unwrap(), signer);
}

#[test]
fn invalid_recovery_ids_are_refused() {
    let digest = keccak(b"v");
    let sig = sign(&key(3), &digest);
    for v in [2u8, 3, 4, 26, 29, 35, 36, 255] {
        let mut bad = sig;
        bad[64] = v;
        assert_eq!(recover(&digest, &bad).unwrap_err(), SignatureError::RecoveryId(v));
    }
    // The other valid id recovers some key, but not the signer's.
    let mut flipped = sig;
    flipped[64] ^= 1;
    if let Ok(address) = recover_signer(&digest, &flipped) {
        assert_ne!(Some(address), recover_signer(&digest, &sig).ok());
    }
}

#[test]
fn high_s_is_refused() {
    let digest = keccak(b"malleable");
    let sig = sign(&key(5), &digest);
    let mut twin = sig;
    twin[32..64].copy_from_slice(&negate_mod_order(&sig[32..64]));
    twin[64] ^= 1;
    assert!(twin[32..64] > HALF_ORDER[..]);
    assert_eq!(recover(&digest, &twin).unwrap_err(), SignatureError::HighS);
    let err = CodecError::from(SignatureError::HighS);
    assert!(err.to_string().contains("malleable"));
}

#[test]
fn zero_or_oversized_scalars_are_refused() {
    let digest = keccak(b"scalars");
    let sig = sign(&key(6), &digest);
    // libsecp256k1 parses a zero r or s and refuses it when recovering.
    let mut zero_r = sig;
    zero_r[..32].fill(0);
    assert_eq!(recover(&digest, &zero_r).unwrap_err(), SignatureError::NoKey);
    let mut zero_s = sig;
    zero_s[32..64].fill(0);
    assert_eq!(recover(&digest, &zero_s).unwrap_err(), SignatureError::NoKey);
    // r at or above the order is refused when parsing (s is caught as high-s first).
    for r in [ORDER, [0xff; 32]] {
        let mut big_r = sig;
        big_r[..32].copy_from_slice(&r);
        assert_eq!(recover(&digest, &big_r).unwrap_err(), SignatureError::Scalar);
    }
}

#[test]
fn wrong_lengths_are_refused() {
    let digest = keccak(b"len");
    let sig = sign(&key(8), &digest);
    for n in [0usize, 1, 64, 66, 130] {
        let mut v = sig.to_vec();
        v.resize(n, 0);
        assert_eq!(recover(&digest, &v).unwrap_err(), SignatureError::Length(n));
    }
    assert!(matches!(digest32(&[0u8; 31]), Err(CodecError::Length { what: "digest", expected: 32, got: 31 })));
    assert!(digest32(&[0u8; 32]).is_ok());
    assert_eq!(
        CodecError::from(SignatureError::Length(64)).to_string(),
        "signature must be 65 bytes (r||s||v), got 64"
    );
}

#[test]
fn zero_and_out_of_range_keys_are_refused() {
    assert_eq!(parse_secret(&[0u8; 32]).unwrap_err(), KeyError::Scalar);
    assert_eq!(parse_secret(&ORDER).unwrap_err(), KeyError::Scalar);
    assert_eq!(parse_secret(&[0xff; 32]).unwrap_err(), KeyError::Scalar);
    let mut below = ORDER;
    below[31] -= 1;
    assert!(parse_secret(&below).is_ok(), "n - 1 is the largest key");
    for n in [0usize, 31, 33, 64] {
        assert_eq!(parse_secret(&vec![1u8; n]).unwrap_err(), KeyError::Length(n));
    }
}

#[test]
fn hex_keys() {
    let text = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
    let expected = parse_secret(&hex::decode(text).unwrap()).unwrap();
    for spelling in [text.to_string(), format!("0x{text}"), format!("0X{}", text.to_uppercase()), format!("  {text}\n")] {
        assert_eq!(parse_secret_hex(&spelling).unwrap(), expected, "{spelling:?}");
    }
    assert_eq!(parse_secret_hex(&text[1..]).unwrap_err(), KeyError::HexLength(63));
    assert_eq!(parse_secret_hex(&format!("0x{text}00")).unwrap_err(), KeyError::HexLength(66));
    assert_eq!(parse_secret_hex(&format!("g{}", &text[1..])).unwrap_err(), KeyError::HexDigit);
    assert_eq!(parse_secret_hex(&"0".repeat(64)).unwrap_err(), KeyError::Scalar);
}
