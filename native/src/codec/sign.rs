//! Signing digests of `SignedMessage` payloads (PROTOCOL.md §4):
//! digest = keccak256(serde_json compact encoding of the payload), signature
//! = recoverable ECDSA over the raw digest, r‖s‖v with v ∈ {0, 1}.
//!
//! serde_json changed how it writes floats with a positive exponent: up to
//! its ryu-based releases `3.4e38`, since its zmij-based ones `3.4e+38`.
//! We sign with the serde_json we build with (the reference's own crate), and
//! when a signature does not verify over that text we also try the other
//! spelling, so a peer built with either serde_json verifies. Only payloads
//! holding a float ≥ 1e13 (f32) / 1e16 (f64) can differ at all.

use crate::crypto::{keccak, recover_signer, sign};
use crate::error::CodecError;
use alloy_primitives::Address;
use secp256k1::SecretKey;
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};
use std::io;

/// What a verifier learns from one signed payload.
#[derive(Debug)]
pub struct Verification {
    /// The exact JSON text that was hashed (and, when valid, was signed).
    pub payload_json: Vec<u8>,
    pub digest: [u8; 32],
    /// The address the signature recovers to over `digest`, if any.
    pub recovered: Option<[u8; 20]>,
    pub valid: bool,
}

pub fn payload_json<T: Serialize>(payload: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    serde_json::to_writer(&mut out, payload).map_err(|e| CodecError::Encode {
        context: "JSON encoding failed",
        detail: e.to_string(),
    })?;
    Ok(out)
}

/// Floats as the ryu-based serde_json wrote them: no `+` in the exponent.
struct RyuStyleFloats;

fn without_plus(buf: Vec<u8>) -> Vec<u8> {
    buf.into_iter().filter(|&b| b != b'+').collect()
}

impl Formatter for RyuStyleFloats {
    fn write_f32<W: ?Sized + io::Write>(&mut self, w: &mut W, v: f32) -> io::Result<()> {
        let mut buf = Vec::with_capacity(24);
        CompactFormatter.write_f32(&mut buf, v)?;
        w.write_all(&without_plus(buf))
    }
    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, v: f64) -> io::Result<()> {
        let mut buf = Vec::with_capacity(32);
        CompactFormatter.write_f64(&mut buf, v)?;
        w.write_all(&without_plus(buf))
    }
}

fn payload_json_ryu_style<T: Serialize>(payload: &T) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, RyuStyleFloats);
    payload.serialize(&mut ser).ok()?;
    Some(out)
}

/// Verify `signature` by `signer` over `payload`. A bad signature is a
/// result (`valid: false`), not an error; only an unencodable payload errors.
pub fn verify<T: Serialize>(payload: &T, signer: &Address, signature: &[u8]) -> Result<Verification, CodecError> {
    let json = payload_json(payload)?;
    let digest = keccak(&json);
    let recovered = recover_signer(&digest, signature).ok();
    let valid = recovered.as_ref() == Some(&signer.0 .0);
    if !valid {
        if let Some(alt) = payload_json_ryu_style(payload).filter(|alt| *alt != json) {
            let alt_digest = keccak(&alt);
            let alt_recovered = recover_signer(&alt_digest, signature).ok();
            if alt_recovered.as_ref() == Some(&signer.0 .0) {
                return Ok(Verification {
                    payload_json: alt,
                    digest: alt_digest,
                    recovered: alt_recovered,
                    valid: true,
                });
            }
        }
    }
    Ok(Verification {
        payload_json: json,
        digest,
        recovered,
        valid,
    })
}

/// Digest of an unsigned payload: no signature to check, but the digest is
/// still the natural replay/cache key.
pub fn unsigned<T: Serialize>(payload: &T) -> Result<Verification, CodecError> {
    let json = payload_json(payload)?;
    let digest = keccak(&json);
    Ok(Verification {
        payload_json: json,
        digest,
        recovered: None,
        valid: false,
    })
}

/// Sign `payload` the way the reference does; returns (signature, digest).
pub fn sign_payload<T: Serialize>(secret: &SecretKey, payload: &T) -> Result<([u8; 65], [u8; 32]), CodecError> {
    let json = payload_json(payload)?;
    let digest = keccak(&json);
    Ok((sign(secret, &digest), digest))
}

/// Sign and wrap in a `SignedMessage` (the caller picks the enum variant).
pub fn signed<T: Serialize>(
    secret: &SecretKey,
    signer: [u8; 20],
    payload: T,
    timestamp: u64,
    nonce: Option<u64>,
) -> Result<super::types::SignedMessage<T>, CodecError> {
    let (signature, _) = sign_payload(secret, &payload)?;
    Ok(super::types::SignedMessage {
        payload,
        signer: Address::from(signer),
        signature: signature.to_vec().into(),
        timestamp,
        nonce,
        receipt: None,
        commitment: None,
    })
}
