//! EIP-712 digests against fixed vectors computed outside this crate, and
//! the argument parsers' refusals.

use super::*;
use crate::crypto::{parse_secret, recover_signer};
use crate::error::{AddressError, CodecError, ErrorClass};

fn hex32(text: &str) -> [u8; 32] {
    hex::decode(text).unwrap().try_into().unwrap()
}

/// The vectors below were computed with eth-account 0.13 (the oracle of
/// tests/test_eip712.py), independently of this crate:
///
/// ```python
/// from eth_account import Account
/// from eth_account.messages import encode_typed_data
/// from eth_utils import keccak
/// domain = {"name": "Lloom Network", "version": "1.0.0", "chainId": 8453,
///           "verifyingContract": "0x00000000000000000000000000000000000000A1"}
/// # types: EIP712Domain and LlmRequestCommitment / LlmResponseCommitment
/// # field by field as in DOMAIN_TYPE, REQUEST_TYPE and RESPONSE_TYPE
/// m = encode_typed_data(full_message={"types": ..., "primaryType": "LlmRequestCommitment",
///                                     "domain": domain, "message": REQUEST})
/// m.header.hex()                                       # DOMAIN_SEPARATOR
/// keccak(b"\x19" + m.version + m.header + m.body).hex() # REQUEST_DIGEST
/// Account.sign_typed_data(KEY, full_message=...).signature.hex()  # RESPONSE_SIGNATURE (v = 27)
/// ```
/// with REQUEST and RESPONSE holding the values of `request()` and
/// `response()` (the prompt, system prompt and content as keccak hashes of
/// "Hello", nothing, "World").
const DOMAIN_SEPARATOR: &str = "ffe504946ab674c19a3dd49201c7cda0308373cf8ef8bd70d308dbec979cd333";
const REQUEST_DIGEST: &str = "86398612a481cb05cff16853fe5cb47a40efe63ac80a0de306c58c6269fe26b6";
const RESPONSE_DIGEST: &str = "78366bceb2b95b2d16150acb5038dcfe00350e44ee78ed3055d36d3d8cb640f4";
const KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
const KEY_ADDRESS: &str = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";
const RESPONSE_SIGNATURE: &str = "f8475c44d4a2673ba74020728fd7d90105c5af4a38ac0941112f4725aecdbf54\
                                  3f62fa3d17a5beb5366a8fc463a9d675cce93522a5429bec1a2826a3f093b855";

fn domain() -> Eip712Domain {
    let contract = parse_address("0x00000000000000000000000000000000000000A1").unwrap();
    Eip712Domain::new(U256::from(8453u64), contract)
}

fn request() -> RequestCommitment {
    RequestCommitment {
        executor: parse_address("0x1111111111111111111111111111111111111111").unwrap(),
        model_hash: model_hash("llama-3-8b"),
        prompt_hash: keccak(b"Hello"),
        system_prompt_hash: [0u8; 32],
        max_tokens: 256,
        temperature: temperature_to_u32(0.7).unwrap(),
        inbound_price: parse_wei(&U256::MAX.to_string()).unwrap(),
        outbound_price: parse_wei("1000000000000").unwrap(),
        nonce: u64::MAX,
        deadline: 1_700_000_000,
    }
}

fn response() -> ResponseCommitment {
    ResponseCommitment {
        request_hash: hex32(REQUEST_DIGEST),
        client: parse_address("0x2222222222222222222222222222222222222222").unwrap(),
        model_hash: model_hash("llama-3-8b"),
        content_hash: keccak(b"World"),
        inbound_tokens: 12,
        outbound_tokens: u32::MAX,
        inbound_price: parse_wei("5").unwrap(),
        outbound_price: parse_wei("1000000000000000000000000000000").unwrap(),
        timestamp: 1_700_000_001,
        success: true,
    }
}

#[test]
fn domain_separator_matches_eth_account() {
    assert_eq!(domain().separator, hex32(DOMAIN_SEPARATOR));
}

#[test]
fn request_digest_matches_eth_account() {
    assert_eq!(request().temperature, 7000);
    assert_eq!(domain().request_digest(&request()), hex32(REQUEST_DIGEST));
}

#[test]
fn response_digest_and_signature_match_eth_account() {
    let digest = domain().response_digest(&response());
    assert_eq!(digest, hex32(RESPONSE_DIGEST));
    let key = parse_secret(&hex::decode(KEY).unwrap()).unwrap();
    let sig = sign(&key, &digest);
    // RFC 6979 and low-s on both sides: byte-identical r‖s; eth-account's v is 27.
    assert_eq!(hex::encode(&sig[..64]), RESPONSE_SIGNATURE);
    assert_eq!(sig[64], 0);
    assert_eq!(checksum(&recover_signer(&digest, &sig).unwrap()), KEY_ADDRESS);
}

#[test]
fn every_field_changes_the_digest() {
    let base = domain().request_digest(&request());
    let mut variants = Vec::new();
    let mut r = request();
    r.executor[19] ^= 1;
    variants.push(r);
    let mut r = request();
    r.model_hash = model_hash("llama-3-8b ");
    variants.push(r);
    let mut r = request();
    r.system_prompt_hash = keccak(b"");
    variants.push(r);
    let mut r = request();
    r.max_tokens += 1;
    variants.push(r);
    let mut r = request();
    r.inbound_price -= U256::from(1u8);
    variants.push(r);
    let mut r = request();
    r.nonce -= 1;
    variants.push(r);
    for r in variants {
        assert_ne!(domain().request_digest(&r), base);
    }
    let other_chain = Eip712Domain::new(U256::from(1u8), domain().verifying_contract);
    assert_ne!(other_chain.request_digest(&request()), base);
}

#[test]
fn model_hash_cache_agrees_with_keccak() {
    // More distinct names than the cache holds, twice: hits and evictions.
    for _ in 0..2 {
        for i in 0..(MODEL_CACHE_ENTRIES * 2) {
            let name = format!("model-{i}");
            assert_eq!(model_hash(&name), keccak(name.as_bytes()));
        }
    }
    let long = "m".repeat(MODEL_CACHE_MAX_LEN + 1);
    assert_eq!(model_hash(&long), keccak(long.as_bytes()));
}

#[test]
fn prices_at_or_above_2_pow_256_are_refused() {
    let max = U256::MAX.to_string();
    assert_eq!(parse_wei(&max).unwrap(), U256::MAX);
    // 2**256 and 2**300: digits only, but too large.
    let two_256 = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
    for text in [two_256, &"9".repeat(91)] {
        let err = parse_wei(text).unwrap_err();
        assert!(matches!(err, CodecError::DoesNotFit { target: "uint256", .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("{text} does not fit in uint256"));
    }
    // Leading zeros are still the same number.
    assert_eq!(parse_wei(&format!("{}1", "0".repeat(90))).unwrap(), U256::from(1u8));
    assert_eq!(parse_wei("18446744073709551615").unwrap(), U256::from(u64::MAX));
    assert_eq!(parse_wei("18446744073709551616").unwrap(), U256::from(u64::MAX) + U256::from(1u8));
}

#[test]
fn prices_that_are_not_plain_decimal_are_refused() {
    for text in ["", "-1", "+1", "1.5", "1e3", " 1", "1 ", "1_000", "0x10", "١٢"] {
        let err = parse_wei(text).unwrap_err();
        assert!(matches!(err, CodecError::NotWei(_)), "{text:?}: {err:?}");
        assert!(err.to_string().contains("decimal integer string of wei"));
    }
}

#[test]
fn temperatures_outside_uint32_are_refused() {
    assert_eq!(temperature_to_u32(0.0).unwrap(), 0);
    assert_eq!(temperature_to_u32(429_496.729_5).unwrap(), u32::MAX);
    // Half away from zero, as f64::round in the reference client.
    assert_eq!(temperature_to_u32(0.00005).unwrap(), 1);
    for t in [429_496.73, 1e12, -0.1, -1.0] {
        let err = temperature_to_u32(t).unwrap_err();
        assert!(matches!(err, CodecError::TemperatureRange { scaled: Some(_), .. }), "{t}: {err:?}");
    }
    for t in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = temperature_to_u32(t).unwrap_err();
        assert_eq!(err.class(), ErrorClass::OutOfRange);
        assert!(err.to_string().starts_with("temperature must be a finite number"));
    }
}

#[test]
fn addresses_are_checked() {
    let lower = "0xab5801a7d398351b8be11c439e05c5b3259aec9b";
    let checksummed = "0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B";
    assert_eq!(parse_address(lower).unwrap(), parse_address(checksummed).unwrap());
    assert_eq!(parse_address(&lower.to_uppercase().replace("0X", "0x")).unwrap(), parse_address(lower).unwrap());
    assert_eq!(parse_address(&lower[2..]).unwrap(), parse_address(lower).unwrap());
    assert_eq!(checksum(&parse_address(lower).unwrap()), checksummed);

    let swapped: String = checksummed[2..]
        .chars()
        .map(|c| if c.is_ascii_uppercase() { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() })
        .collect();
    let cases = [
        ("0x1234", AddressError::Length("0x1234".into())),
        (&*format!("{lower}00"), AddressError::Length(format!("{lower}00"))),
        (&*format!("0x{}", "zz".repeat(20)), AddressError::NotHex(format!("0x{}", "zz".repeat(20)))),
        (&*format!("0x{swapped}"), AddressError::Checksum(format!("0x{swapped}"))),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_address(text).unwrap_err(), expected, "{text}");
    }
}
