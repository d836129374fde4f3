//! The codec on its own (no Python): round trips, and what hostile or broken
//! frames do: truncation, bit flips, deep nesting, huge declared lengths,
//! non-canonical encodings, trailing bytes, wrong shapes.

use super::cbor_de::DecodeError;
use super::jval::JVal;
use super::ops::{self, Signer};
use super::types::*;
use super::{gossip, wire};
use crate::crypto::{address_of, parse_secret};
use crate::error::{CodecError, ErrorClass};
use alloy_primitives::{Address, Bytes, B256};
use secp256k1::{PublicKey, SECP256K1};

fn signer() -> Signer {
    let secret = parse_secret(&[0x42; 32]).unwrap();
    let address = address_of(&PublicKey::from_secret_key(SECP256K1, &secret));
    Signer { secret, address }
}

fn request() -> LlmRequest {
    LlmRequest {
        model: "llama-3-8b".into(),
        prompt: "Grüße, 世界 🌍".into(),
        system_prompt: None,
        temperature: Some(0.7),
        max_tokens: Some(256),
        executor_address: "0x1111111111111111111111111111111111111111".into(),
        inbound_price: "1000".into(),
        outbound_price: "2000".into(),
        nonce: 7,
        deadline: 1_700_000_060,
    }
}

fn response() -> LlmResponse {
    LlmResponse {
        content: "hello".into(),
        inbound_tokens: 3,
        outbound_tokens: 1,
        total_cost: "5000".into(),
        model_used: "llama-3-8b".into(),
        error: None,
    }
}

fn signed_request_frame() -> Vec<u8> {
    ops::encode_request(Some(&signer()), request(), 1_700_000_000, None, None).unwrap()
}

/// The class of a failed request decode (panics on success).
fn request_error(frame: &[u8]) -> CodecError {
    match ops::decode_request(frame) {
        Ok((_, o)) => panic!("decoded a {} from a broken frame", o.variant),
        Err(e) => e,
    }
}

/// Run `f` on a thread with a large stack: debug builds use several times
/// the stack per nesting level that release builds (the extension) do.
fn on_big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(64 << 20).spawn(f).unwrap().join().unwrap();
}

#[test]
fn signed_request_round_trips_and_verifies() {
    let frame = signed_request_frame();
    let (decoded, opened) = ops::decode_request(&frame).unwrap();
    assert_eq!(decoded.unwrap(), request());
    assert_eq!(opened.variant, "SignedLlmRequest");
    assert!(opened.check.valid);
    assert_eq!(opened.check.recovered, Some(signer().address));
    let envelope = opened.envelope.unwrap();
    assert_eq!((envelope.timestamp, envelope.nonce), (1_700_000_000, None));
    // Encoding is deterministic (RFC 6979 signatures, fixed field order).
    assert_eq!(signed_request_frame(), frame);
}

#[test]
fn unsigned_messages_round_trip_with_a_digest() {
    let frame = ops::encode_request(None, request(), 0, None, None).unwrap();
    let (decoded, opened) = ops::decode_request(&frame).unwrap();
    assert_eq!(decoded.unwrap(), request());
    assert!(opened.envelope.is_none() && !opened.check.valid);
    assert_eq!(opened.check.digest, crate::crypto::keccak(&opened.check.payload_json));

    let frame = ops::encode_response(None, response(), 0, None, None).unwrap();
    let (decoded, opened) = ops::decode_response(&frame).unwrap();
    assert_eq!((decoded.unwrap(), opened.variant), (response(), "LlmResponse"));
}

#[test]
fn signed_response_with_receipt_round_trips() {
    let receipt = Receipt {
        request_hash: B256::repeat_byte(1),
        client: Address::repeat_byte(2),
        timestamp: 9,
        success: true,
        digest: B256::repeat_byte(3),
        signature: Bytes::from(vec![4u8; 65]),
    };
    let frame = ops::encode_response(Some(&signer()), response(), 10, Some(11), Some(receipt.clone())).unwrap();
    let (decoded, opened) = ops::decode_response(&frame).unwrap();
    assert_eq!(decoded.unwrap(), response());
    assert!(opened.check.valid);
    let envelope = opened.envelope.unwrap();
    assert_eq!(envelope.nonce, Some(11));
    assert_eq!(envelope.receipt, Some(EnvelopeReceipt::Typed(receipt.clone())));

    let err = ops::encode_response(None, response(), 0, None, Some(receipt)).unwrap_err();
    assert!(matches!(err, CodecError::ReceiptWithoutEnvelope));
}

#[test]
fn signed_request_with_commitment_round_trips_and_keeps_the_digest() {
    let mut ext = indexmap::IndexMap::new();
    ext.insert("executor".to_string(), JVal::Bytes(vec![7u8; 20]));
    ext.insert("signature".to_string(), JVal::Bytes(vec![8u8; 65]));
    let commitment = JVal::Object(ext);
    let plain = ops::encode_request(Some(&signer()), request(), 10, None, None).unwrap();
    let frame = ops::encode_request(Some(&signer()), request(), 10, None, Some(commitment.clone())).unwrap();
    assert!(frame.len() > plain.len());
    let (decoded, opened) = ops::decode_request(&frame).unwrap();
    assert_eq!(decoded.unwrap(), request());
    assert!(opened.check.valid);
    let (_, plain_opened) = ops::decode_request(&plain).unwrap();
    assert_eq!(opened.check.digest, plain_opened.check.digest); // the payload's signature is untouched
    assert_eq!(opened.envelope.unwrap().commitment, Some(commitment.clone()));
    assert_eq!(plain_opened.envelope.unwrap().commitment, None);

    let err = ops::encode_request(None, request(), 0, None, Some(commitment)).unwrap_err();
    assert!(matches!(err, CodecError::ReceiptWithoutEnvelope));
}

#[test]
fn ack_round_trips() {
    let ack = AcknowledgmentResponse { request_id: "r1".into(), success: false, message: Some("no".into()), timestamp: 5 };
    let frame = ops::encode_ack(&signer(), ack, 5, None).unwrap();
    let (decoded, opened) = ops::decode_response(&frame).unwrap();
    assert!(decoded.is_none());
    assert_eq!(opened.variant, "AcknowledgmentResponse");
    assert!(opened.check.valid);
}

fn announcement(metadata: &str) -> JVal {
    let text = format!(
        r#"{{"announcement_type": "Heartbeat", "executor_peer_id": "16Uiu2HAm", "protocol_version": 1,
            "executor_address": "0x1111111111111111111111111111111111111111", "timestamp": 5, "nonce": 7,
            "models": [{{"model_id": "m", "backend_type": "echo", "is_available": true, "pricing": null,
                         "capabilities": {{"max_context_length": 512, "features": [], "architecture": null,
                                           "model_size": null, "performance": null, "metadata": {metadata}}}}}]}}"#
    );
    serde_json::from_str(&text).unwrap()
}

#[test]
fn gossip_announcement_round_trips_and_refuses_bad_input() {
    let json = gossip::encode(&signer(), &announcement(r#"{"k": 1}"#), 5, None).unwrap();
    let opened = gossip::decode(&json).unwrap();
    assert!(opened.check.valid);
    assert_eq!(opened.check.recovered, Some(signer().address));

    let err = gossip::encode(&signer(), &announcement(r#"{"a": 1, "b": 2}"#), 5, None).unwrap_err();
    assert!(matches!(err, CodecError::MultiKeyMetadata { model: 0, keys: 2 }), "{err:?}");

    let err = gossip::decode(&json[..json.len() - 1]).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Truncated, "{err}");
    let err = gossip::decode(b"{\"payload\": nope}").unwrap_err();
    assert_eq!(err.class(), ErrorClass::InvalidJson, "{err}");
    let mut wrong = json.clone();
    wrong.extend_from_slice(b" x");
    assert_eq!(gossip::decode(&wrong).unwrap_err().class(), ErrorClass::InvalidJson);
    let text = String::from_utf8(json).unwrap().replace("\"Heartbeat\"", "\"Sometimes\"");
    let err = gossip::decode(text.as_bytes()).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Shape);
    let message = err.to_string();
    assert!(message.starts_with("malformed SignedMessage<ModelAnnouncement>: unknown variant `Sometimes`"), "{message}");
    assert!(message.contains("(field `payload.announcement_type`)"), "{message}");
}

#[test]
fn every_truncation_is_a_truncated_frame() {
    let frame = signed_request_frame();
    assert!(matches!(request_error(&[]), CodecError::EmptyFrame { .. }));
    for n in 1..frame.len() {
        let err = request_error(&frame[..n]);
        assert_eq!(err.class(), ErrorClass::Truncated, "prefix of {n} bytes: {err}");
        assert!(err.to_string().starts_with("malformed RequestMessage: truncated frame"), "{err}");
    }
}

#[test]
fn trailing_bytes_and_size_limits() {
    let mut frame = signed_request_frame();
    let len = frame.len();
    frame.push(0);
    let err = request_error(&frame);
    assert!(matches!(err, CodecError::TrailingBytes { extra: 1, at, .. } if at == len), "{err:?}");
    assert_eq!(err.to_string(), format!("trailing bytes: 1 bytes after the end of the RequestMessage at byte {len}"));

    let huge = vec![0u8; wire::MAX_REQUEST_BYTES + 1];
    let err = request_error(&huge);
    assert!(matches!(err, CodecError::FrameTooLarge { limit: wire::MAX_REQUEST_BYTES, .. }));
    assert_eq!(err.class(), ErrorClass::Size);
}

#[test]
fn no_bit_flip_makes_a_different_payload_verify() {
    let frame = signed_request_frame();
    let (_, original) = ops::decode_request(&frame).unwrap();
    for bit in 0..frame.len() * 8 {
        let mut flipped = frame.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        // Whatever happens, it is a result: never a panic.
        if let Ok((_, opened)) = ops::decode_request(&flipped) {
            if opened.check.valid {
                // Only envelope fields outside the signature (timestamp) may change.
                assert_eq!(opened.check.payload_json, original.check.payload_json, "bit {bit}");
            }
        }
    }
}

#[test]
fn huge_declared_lengths_fail_without_allocating() {
    let cases: [(&[u8], &str); 5] = [
        (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "a byte string"),
        (b"\x7b\xff\xff\xff\xff\xff\xff\xff\xff", "a text string"),
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "array"),
        (b"\xbb\xff\xff\xff\xff\xff\xff\xff\xff", "map"),
        (b"\x5f\x5b\x7f\xff\xff\xff\xff\xff\xff\xff", "chunk"),
    ];
    for (bytes, what) in cases {
        let err = wire::decode_cbor::<JVal>(bytes, "value", usize::MAX).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Truncated, "{what}: {err}");
    }
    // As the length of a request field, inside a real frame.
    let mut frame = signed_request_frame();
    let at = frame.windows(6).position(|w| w == b"\x65model").unwrap() + 6;
    assert_eq!(frame[at], 0x6a); // "llama-3-8b", 10 bytes
    frame.splice(at..at + 1, *b"\x7b\xff\xff\xff\xff\xff\xff\xff\xff");
    let err = request_error(&frame);
    let CodecError::MalformedCbor(m) = &err else { panic!("{err:?}") };
    assert!(matches!(m.cause, DecodeError::Short { needed: u64::MAX, .. }), "{err}");
    assert!(err.to_string().contains("field `SignedLlmRequest.payload.model`"), "{err}");
}

#[test]
fn nesting_is_bounded() {
    on_big_stack(|| {
        // Generic values take two levels per container: MAX_DEPTH / 2 containers fit.
        let containers = wire::MAX_DEPTH / 2;
        let mut ok = vec![0x81u8; containers - 1];
        ok.push(0x80);
        assert!(wire::decode_cbor::<JVal>(&ok, "value", usize::MAX).is_ok());
        ok.insert(0, 0x81);
        let err = wire::decode_cbor::<JVal>(&ok, "value", usize::MAX).unwrap_err();
        assert_eq!(err.class(), ErrorClass::TooDeep, "{err}");

        for unit in [&b"\x81"[..], b"\x9f", b"\xa1\x61k", b"\xbf\x61k", b"\xc1"] {
            let hostile: Vec<u8> = unit.iter().copied().cycle().take(unit.len() * 100_000).collect();
            let err = wire::decode_cbor::<JVal>(&hostile, "value", usize::MAX).unwrap_err();
            let class = err.class();
            // A tag is refused as such (we accept none), not walked.
            assert!(class == ErrorClass::TooDeep || class == ErrorClass::InvalidCbor, "{unit:x?}: {err}");
            assert!(err.to_string().contains(if unit == b"\xc1" { "tag" } else { "nesting too deep" }));
        }

        // Deep nesting in a field that is skipped (unknown key) is bounded too.
        let frame = signed_request_frame();
        let at = frame.windows(6).position(|w| w == b"\x65model").unwrap();
        let mut hostile = frame.clone();
        let mut extra = b"\x62zz".to_vec();
        extra.extend(std::iter::repeat_n(0x81u8, 100_000));
        extra.push(0);
        hostile.splice(at..at, extra);
        let map_head = hostile.iter().position(|&b| b == 0xaa).unwrap(); // payload: 10-entry map
        hostile[map_head] = 0xab;
        let err = request_error(&hostile);
        assert_eq!(err.class(), ErrorClass::TooDeep, "{err}");
    });
}

/// Canonical CBOR re-encoded the longest legal way: every argument in its
/// 8-byte form, arrays and maps indefinite, strings as two indefinite chunks,
/// f32 as f64. The root stays a one-entry map (serde's enum shape).
fn noncanonical(input: &[u8]) -> Vec<u8> {
    fn head(input: &[u8], pos: &mut usize) -> (u8, u64) {
        let byte = input[*pos];
        *pos += 1;
        let info = byte & 0x1f;
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let n = 1 << (info - 24);
                let v = input[*pos..*pos + n].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
                *pos += n;
                v
            }
            _ => panic!("canonical input has no indefinite items"),
        };
        (byte >> 5, arg)
    }
    fn wide(out: &mut Vec<u8>, major: u8, arg: u64) {
        out.push((major << 5) | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
    fn item(input: &[u8], pos: &mut usize, out: &mut Vec<u8>, root: bool) {
        match input[*pos] {
            0xfa => {
                let f = f32::from_be_bytes(input[*pos + 1..*pos + 5].try_into().unwrap());
                out.push(0xfb);
                out.extend_from_slice(&f64::from(f).to_be_bytes());
                *pos += 5;
                return;
            }
            b if b >> 5 == 7 => {
                let len = match b {
                    0xf9 => 3,
                    0xfb => 9,
                    _ => 1,
                };
                out.extend_from_slice(&input[*pos..*pos + len]);
                *pos += len;
                return;
            }
            _ => {}
        }
        let (major, arg) = head(input, pos);
        match major {
            0 | 1 => wide(out, major, arg),
            2 | 3 => {
                let body = &input[*pos..*pos + arg as usize];
                *pos += arg as usize;
                let mut cut = body.len() / 2;
                while major == 3 && !std::str::from_utf8(body).unwrap().is_char_boundary(cut) {
                    cut -= 1;
                }
                out.push((major << 5) | 31);
                for chunk in [&body[..cut], &body[cut..]] {
                    wide(out, major, chunk.len() as u64);
                    out.extend_from_slice(chunk);
                }
                out.push(0xff);
            }
            4 | 5 => {
                let entries = if major == 5 { arg * 2 } else { arg };
                if root {
                    out.push((major << 5) | arg as u8);
                } else {
                    out.push((major << 5) | 31);
                }
                for _ in 0..entries {
                    item(input, pos, out, false);
                }
                if !root {
                    out.push(0xff);
                }
            }
            _ => panic!("no tags in our frames"),
        }
    }
    let mut out = Vec::new();
    let mut pos = 0;
    item(input, &mut pos, &mut out, true);
    assert_eq!(pos, input.len());
    out
}

#[test]
fn non_canonical_encodings_decode_to_the_same_signed_message() {
    let frame = signed_request_frame();
    let loose = noncanonical(&frame);
    assert!(loose.len() > frame.len() * 2);
    let (decoded, opened) = ops::decode_request(&loose).unwrap();
    let (_, original) = ops::decode_request(&frame).unwrap();
    assert_eq!(decoded.unwrap(), request());
    assert!(opened.check.valid, "the signature is over the payload's JSON, not its CBOR");
    assert_eq!(opened.check.digest, original.check.digest);

    // The root enum must still be a definite one-entry map.
    let mut indefinite_root = loose.clone();
    indefinite_root[0] = 0xbf;
    indefinite_root.push(0xff);
    let err = request_error(&indefinite_root);
    assert!(err.to_string().contains("one-entry map"), "{err}");
}

#[test]
fn wrong_shapes_name_the_field() {
    let frame = signed_request_frame();
    // max_tokens: 256 (0x19 0x01 0x00) as text "x".
    let at = frame.windows(11).position(|w| w == b"\x6amax_tokens").unwrap() + 11;
    assert_eq!(&frame[at..at + 3], b"\x19\x01\x00");
    let mut bad = frame.clone();
    bad.splice(at..at + 3, *b"\x61x");
    let err = request_error(&bad);
    assert_eq!(err.class(), ErrorClass::Shape);
    assert_eq!(
        err.to_string(),
        format!(
            "malformed RequestMessage: wrong type: expected an unsigned integer (u32), found a text string \
             (field `SignedLlmRequest.payload.max_tokens`, at byte {at})"
        )
    );
    // 2**32 does not fit the u32.
    let mut big = frame.clone();
    big.splice(at..at + 3, *b"\x1b\x00\x00\x00\x01\x00\x00\x00\x00");
    let err = request_error(&big);
    assert_eq!(err.class(), ErrorClass::OutOfRange);
    assert!(err.to_string().contains("integer 4294967296 out of range for u32"), "{err}");

    // Invalid UTF-8 in the prompt, and an unknown variant.
    let mut utf8 = frame.clone();
    let p = utf8.windows(4).position(|w| w == "Grü".as_bytes()).unwrap();
    utf8[p + 2] = 0xff;
    assert_eq!(request_error(&utf8).class(), ErrorClass::InvalidCbor);
    let renamed: Vec<u8> = {
        let mut f = frame.clone();
        let v = f.windows(16).position(|w| w == b"SignedLlmRequest").unwrap();
        f[v] = b'Z';
        f
    };
    let err = request_error(&renamed);
    assert!(err.to_string().contains("unknown variant `ZignedLlmRequest`"), "{err}");
}
