//! The codec's fuzz harness: property tests over the pure-Rust functions the
//! Python layer calls (`ops::decode_request`, `ops::decode_response`,
//! `gossip::decode`, `ops::encode_*`, `gossip::encode`), on stable Rust.
//!
//! Why here and not only in Python: a Rust panic inside a `#[pyfunction]`
//! reaches Python as `pyo3_runtime.PanicException`, a `BaseException`, so
//! the request handler's `except ValueError` (and any `except Exception`)
//! would not catch it and the stream would die unanswered. The properties:
//!
//! - no input panics (proptest catches a panic as a failure and shrinks the input);
//! - every failure is one of the codec's frame errors (`CodecError::MalformedCbor`,
//!   `EmptyFrame`, `TrailingBytes`, `FrameTooLarge`, `MalformedJson`, ...), of
//!   a decoding class, with the message Python will show;
//! - whatever decodes re-encodes to a frame that decodes to the same value
//!   (`encode(decode(x))` is a fixed point) with the same digest and the same
//!   verdict on its signature; a mutated frame that still verifies carries the
//!   payload that was signed;
//! - whatever the encoders build decodes back to exactly what they were given.
//!
//! Inputs: valid frames of every message (`frames`), and their truncations,
//! bit flips, splices with a second frame, inserted/deleted/duplicated runs,
//! huge declared lengths and deep nesting (`mutate`); random bytes and random
//! well-formed CBOR, bare and under a real variant name; JSON for gossip.
//!
//! Size: each property runs its smoke count of cases in `cargo test`;
//! `PROPTEST_CASES=N` runs N each (`benches/fuzz_long.py`, in release mode).
//! With `--nocapture` each property prints how many inputs it ran.

mod frames;
mod mutate;

use super::ops;
use super::types::{RequestMessage, ResponseMessage, SignedMessage, ModelAnnouncement};
use super::wire::{self, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use super::{gossip, jval::JVal};
use crate::crypto::keccak;
use crate::error::{CodecError, ErrorClass};
use mutate::Mutation;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::sync::atomic::{AtomicU64, Ordering};

/// Cases per property: `PROPTEST_CASES` when set, else the smoke size.
fn cases(smoke: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(smoke)
}

/// Run one property on a thread with a big stack (debug builds take several
/// times the stack per nesting level that the release extension does).
/// Failures are not persisted to files: the report prints the shrunk input.
fn fuzz<S, F>(name: &'static str, smoke: u32, strategy: impl FnOnce() -> S + Send + 'static, test: F)
where
    S: Strategy + 'static,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
{
    let run = move || {
        let config = Config { cases: cases(smoke), failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new(config.clone());
        let inputs = AtomicU64::new(0);
        let result = runner.run(&strategy(), |value| {
            inputs.fetch_add(1, Ordering::Relaxed);
            test(value)
        });
        println!("fuzz {name}: {} cases, {} inputs run", config.cases, inputs.load(Ordering::Relaxed));
        if let Err(e) = result {
            panic!("fuzz {name} failed: {e}");
        }
    };
    let handle = std::thread::Builder::new().stack_size(64 << 20).spawn(run).expect("fuzz thread");
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// A decode failure must be one of the frame errors, of a decoding class,
/// with the message prefix the Python side reports to the client.
fn typed_failure(e: &CodecError, what: &str) -> Result<(), TestCaseError> {
    let frame_error = matches!(
        e,
        CodecError::MalformedCbor(_)
            | CodecError::EmptyFrame { .. }
            | CodecError::TrailingBytes { .. }
            | CodecError::FrameTooLarge { .. }
            | CodecError::DocumentTooLarge { .. }
            | CodecError::MalformedJson { .. }
    );
    prop_assert!(frame_error, "{what}: not a frame error: {e:?}");
    let class = e.class();
    prop_assert!(
        matches!(
            class,
            ErrorClass::Truncated
                | ErrorClass::InvalidCbor
                | ErrorClass::InvalidJson
                | ErrorClass::TooDeep
                | ErrorClass::Size
                | ErrorClass::Shape
                | ErrorClass::OutOfRange
        ),
        "{what}: class {class:?}: {e}"
    );
    let text = e.to_string();
    prop_assert!(
        text.starts_with("malformed ") || text.starts_with("truncated frame") || text.starts_with("trailing bytes") || text.contains("size limit"),
        "{what}: message {text:?}"
    );
    Ok(())
}

/// What a decode told Python, compared across a re-encoding.
fn same_opening(a: &ops::Opened, b: &ops::Opened) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.variant, b.variant);
    prop_assert_eq!(&a.check.payload_json, &b.check.payload_json);
    prop_assert_eq!(a.check.digest, b.check.digest);
    prop_assert_eq!(a.check.valid, b.check.valid);
    prop_assert_eq!(a.check.recovered, b.check.recovered);
    match (&a.envelope, &b.envelope) {
        (None, None) => {}
        (Some(x), Some(y)) => {
            prop_assert_eq!((x.signer, &x.signature, x.timestamp, x.nonce), (y.signer, &y.signature, y.timestamp, y.nonce));
            let receipt = |e: &ops::Envelope| e.receipt.as_ref().map(|r| wire::encode_cbor(r).expect("receipt CBOR"));
            prop_assert_eq!(receipt(x), receipt(y));
        }
        _ => prop_assert!(false, "envelope present on one side only"),
    }
    Ok(())
}

/// Invariants of any successful decode.
fn sound_opening(o: &ops::Opened) -> Result<(), TestCaseError> {
    prop_assert_eq!(keccak(&o.check.payload_json), o.check.digest, "the digest is of the JSON that was hashed");
    match &o.envelope {
        Some(e) => prop_assert_eq!(o.check.valid, o.check.recovered == Some(e.signer)),
        None => prop_assert!(!o.check.valid && o.check.recovered.is_none()),
    }
    Ok(())
}

/// `encode(decode(x))` decodes to the same message and the same verdict, and is a fixed point.
macro_rules! round_trip {
    ($input:expr, $opened:expr, $ty:ty, $what:expr, $limit:expr, $decode:path) => {{
        let msg: $ty = wire::decode_cbor($input, $what, $limit).expect("ops decoded this frame");
        let again = wire::encode_cbor(&msg).map_err(|e| TestCaseError::fail(format!("re-encoding failed: {e}")))?;
        let reread: $ty = wire::decode_cbor(&again, $what, usize::MAX)
            .map_err(|e| TestCaseError::fail(format!("re-encoded frame does not decode: {e}")))?;
        prop_assert_eq!(wire::encode_cbor(&reread).expect("encodes"), again.clone(), "encode(decode(x)) is a fixed point");
        let (_, reopened) = $decode(&again).map_err(|e| TestCaseError::fail(format!("ops refuses the re-encoded frame: {e}")))?;
        same_opening($opened, &reopened)?;
    }};
}

fn check_request(input: &[u8]) -> Result<Option<ops::Opened>, TestCaseError> {
    match ops::decode_request(input) {
        Ok((request, opened)) => {
            sound_opening(&opened)?;
            prop_assert_eq!(request.is_some(), matches!(opened.variant, "LlmRequest" | "SignedLlmRequest"));
            if input.len() <= MAX_REQUEST_BYTES / 2 {
                round_trip!(input, &opened, RequestMessage, "RequestMessage", MAX_REQUEST_BYTES, ops::decode_request);
            }
            Ok(Some(opened))
        }
        Err(e) => typed_failure(&e, "RequestMessage").map(|()| None),
    }
}

fn check_response(input: &[u8]) -> Result<Option<ops::Opened>, TestCaseError> {
    match ops::decode_response(input) {
        Ok((response, opened)) => {
            sound_opening(&opened)?;
            prop_assert_eq!(response.is_some(), matches!(opened.variant, "LlmResponse" | "SignedLlmResponse"));
            round_trip!(input, &opened, ResponseMessage, "ResponseMessage", MAX_RESPONSE_BYTES, ops::decode_response);
            Ok(Some(opened))
        }
        Err(e) => typed_failure(&e, "ResponseMessage").map(|()| None),
    }
}

/// Both decoders on any input: a peer may send either direction's bytes.
fn check_both(input: &[u8]) -> Result<(), TestCaseError> {
    check_request(input)?;
    check_response(input)?;
    Ok(())
}

fn check_gossip(input: &[u8]) -> Result<(), TestCaseError> {
    match gossip::decode(input) {
        Ok(opened) => {
            sound_opening(&opened)?;
            let msg: SignedMessage<ModelAnnouncement> =
                wire::decode_json(input, "announcement", usize::MAX).expect("gossip decoded it");
            let again = serde_json::to_vec(&msg).map_err(|e| TestCaseError::fail(format!("re-encoding: {e}")))?;
            let reopened = gossip::decode(&again).map_err(|e| TestCaseError::fail(format!("re-encoded JSON refused: {e}")))?;
            same_opening(&opened, &reopened)
        }
        Err(e) => typed_failure(&e, "announcement"),
    }
}

#[test]
fn mutated_frames_never_panic_and_fail_typed() {
    fuzz(
        "mutated_frames",
        96,
        || (frames::frame(), vec(mutate::mutation(frames::frame()), 1..=4)),
        |(original, mutations): (Vec<u8>, Vec<Mutation>)| {
            let mut frame = original.clone();
            for m in &mutations {
                m.apply(&mut frame);
            }
            let spliced = mutations.iter().any(|m| matches!(m, Mutation::Splice { .. }));
            for (mutated, pristine) in [(check_request(&frame)?, check_request(&original)?), (check_response(&frame)?, check_response(&original)?)] {
                // A mutation that still verifies changed nothing that was signed (no forgery).
                if let (Some(m), Some(p), false) = (mutated, pristine, spliced) {
                    if m.check.valid {
                        prop_assert_eq!(m.check.payload_json, p.check.payload_json);
                    }
                }
            }
            Ok(())
        },
    );
}

#[test]
fn random_bytes_and_random_cbor_never_panic() {
    fuzz(
        "random_input",
        256,
        || {
            prop_oneof![
                vec(any::<u8>(), 0..512),
                mutate::cbor_item(),
                mutate::under_variant(),
                mutate::under_variant().prop_map(|v| [&[0xa1, 0x70][..], b"SignedLlmRequest", &[0xa5, 0x67], b"payload", &v[1..]].concat()),
            ]
        },
        |input: Vec<u8>| check_both(&input),
    );
}

#[test]
fn deep_nesting_and_huge_lengths_are_bounded() {
    fuzz(
        "nesting_and_lengths",
        48,
        || {
            let hostile = prop_oneof![
                (any::<usize>(), any::<usize>(), 0..(3 * wire::MAX_DEPTH)).prop_map(|(at, unit, depth)| Mutation::Nest { at, unit, depth }),
                (any::<usize>(), prop_oneof![Just(u64::MAX), any::<u64>()]).prop_map(|(at, len)| Mutation::HugeLength { at, len }),
            ];
            (frames::frame(), hostile)
        },
        |(mut frame, m): (Vec<u8>, Mutation)| {
            m.apply(&mut frame);
            check_both(&frame)
        },
    );
}

#[test]
fn valid_messages_survive_encode_and_decode_exactly() {
    fuzz(
        "valid_messages",
        48,
        || (frames::request_message(), frames::response_message()),
        |(request, response): (RequestMessage, ResponseMessage)| {
            let frame = wire::encode_cbor(&request).expect("encodes");
            let decoded: RequestMessage = wire::decode_cbor(&frame, "RequestMessage", usize::MAX)
                .map_err(|e| TestCaseError::fail(format!("a valid request frame is refused: {e}")))?;
            prop_assert_eq!(wire::encode_cbor(&decoded).expect("encodes"), frame.clone());
            let opened = check_request(&frame)?.ok_or_else(|| TestCaseError::fail("ops refused a valid request"))?;
            prop_assert_eq!(opened.check.valid, opened.envelope.is_some(), "every signed frame we make verifies");
            let frame = wire::encode_cbor(&response).expect("encodes");
            let opened = check_response(&frame)?.ok_or_else(|| TestCaseError::fail("ops refused a valid response"))?;
            prop_assert_eq!(opened.check.valid, opened.envelope.is_some());
            Ok(())
        },
    );
}

#[test]
fn the_encoders_python_calls_round_trip() {
    fuzz(
        "encoders",
        48,
        || {
            (
                (frames::request(), 0..3u8, frames::int(), prop::option::of(frames::int())),
                (frames::response(), prop::option::of(frames::receipt())),
                frames::ack(),
            )
        },
        |((request, key, timestamp, nonce), (response, receipt), ack)| {
            let signer = frames::signer(key);
            let frame = ops::encode_request(Some(&signer), request.clone(), timestamp, nonce, None)
                .map_err(|e| TestCaseError::fail(format!("encode_request: {e}")))?;
            let (decoded, opened) = ops::decode_request(&frame).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let decoded = decoded.expect("an LLM request");
            // NaN != NaN: compare what goes on the wire.
            prop_assert_eq!(wire::encode_cbor(&decoded).unwrap(), wire::encode_cbor(&request).unwrap());
            prop_assert!(opened.check.valid);
            prop_assert_eq!(opened.check.recovered, Some(signer.address));
            let envelope = opened.envelope.expect("signed");
            prop_assert_eq!((envelope.timestamp, envelope.nonce), (timestamp, nonce));

            let frame = ops::encode_request(None, request.clone(), 0, None, None).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert!(check_request(&frame)?.is_some());

            let frame = ops::encode_response(Some(&signer), response.clone(), timestamp, nonce, receipt.clone())
                .map_err(|e| TestCaseError::fail(format!("encode_response: {e}")))?;
            let (decoded, opened) = ops::decode_response(&frame).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(decoded.as_ref(), Some(&response));
            prop_assert!(opened.check.valid);
            let envelope = opened.envelope.expect("signed");
            let expected = receipt.clone().map(super::types::EnvelopeReceipt::Typed);
            prop_assert_eq!(envelope.receipt, expected);
            prop_assert_eq!(
                ops::encode_response(None, response.clone(), 0, None, receipt.clone()).is_err(),
                receipt.is_some(),
                "an unsigned response refuses a receipt"
            );

            let frame = ops::encode_ack(&signer, ack, timestamp, nonce).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let opened = check_response(&frame)?.expect("an ack decodes");
            prop_assert!(opened.check.valid && opened.variant == "AcknowledgmentResponse");
            Ok(())
        },
    );
}

#[test]
fn gossip_announcements_round_trip_and_junk_fails_typed() {
    fuzz(
        "gossip",
        64,
        || {
            (
                frames::announcement(),
                0..3u8,
                frames::int(),
                frames::announcement_json(),
                vec(mutate::mutation(frames::announcement_json()), 0..3),
                mutate::json_mutation(),
            )
        },
        |(announcement, key, timestamp, json, mutations, (at, junk))| {
            // The encoder Python calls takes a generic value; it must give back the announcement.
            let signer = frames::signer(key);
            let value: JVal = serde_json::from_slice(&serde_json::to_vec(&announcement).unwrap()).unwrap();
            let out = gossip::encode(&signer, &value, timestamp, None)
                .map_err(|e| TestCaseError::fail(format!("gossip::encode: {e}")))?;
            let opened = gossip::decode(&out).map_err(|e| TestCaseError::fail(format!("own announcement refused: {e}")))?;
            prop_assert!(opened.check.valid);
            prop_assert_eq!(opened.check.recovered, Some(signer.address));
            let msg: SignedMessage<ModelAnnouncement> = wire::decode_json(&out, "announcement", usize::MAX).unwrap();
            prop_assert_eq!(msg.payload, announcement);

            let mut mutated = json.clone();
            for m in &mutations {
                m.apply(&mut mutated);
            }
            check_gossip(&json)?;
            check_gossip(&mutated)?;
            let at = at % (json.len() + 1);
            let injected = [&json[..at], &junk[..], &json[at..]].concat();
            check_gossip(&injected)?;
            check_gossip(&junk)
        },
    );
}

/// Found by this harness: a null inside a generic payload used to be written
/// as an empty array (serde's unit, which cbor4ii encodes as 0x80, as the
/// reference's `serde_json::Value::Null` is), so a `ModelQuery`/`ModelUpdate`/
/// `ModelQueryResponse` (or a metadata value) holding `null` came back holding
/// `[]` after a decode and re-encode, and its signature no longer verified.
/// `JVal` now writes CBOR null (0xf6), which every decoder reads as null.
#[test]
fn null_in_an_opaque_payload_survives_cbor() {
    let s = frames::signer(0);
    let payload = JVal::Array(vec![JVal::Null, JVal::Object([("k".to_string(), JVal::Null)].into_iter().collect())]);
    let signed = super::sign::signed(&s.secret, s.address, payload, 0, None).unwrap();
    let frame = wire::encode_cbor(&RequestMessage::ModelUpdate(signed)).unwrap();
    assert!(frame.windows(2).any(|w| w == [0x82, 0xf6]), "[null, ...] is written with CBOR null");
    let (_, opened) = ops::decode_request(&frame).unwrap();
    assert_eq!(opened.check.payload_json, br#"[null,{"k":null}]"#);
    assert!(opened.check.valid);
}
