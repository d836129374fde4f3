//! Strategies for *valid* messages and frames: what a well-behaved peer could
//! send, with adversarial but legal values (any Unicode, zero and maximal
//! integers, every float, empty and long strings). The mutations in
//! `mutate.rs` start from these, so most hostile inputs are one step away
//! from a frame the decoder accepts: that is where parsers break.

use crate::codec::jval::JVal;
use crate::codec::ops::Signer;
use crate::codec::types::*;
use crate::codec::{sign, wire};
use crate::crypto::{address_of, parse_secret};
use alloy_primitives::{Address, Bytes, B256};
use proptest::collection::vec;
use proptest::prelude::*;
use secp256k1::{PublicKey, SECP256K1};

/// Three fixed keys: signing with a random key would only test key parsing,
/// which `crypto`'s tests cover; what matters here is which key signed what.
pub fn signer(which: u8) -> Signer {
    let secret = parse_secret(&[0x11 + (which % 3); 32]).expect("a valid fixed key");
    let address = address_of(&PublicKey::from_secret_key(SECP256K1, &secret));
    Signer { secret, address }
}

/// Texts that have broken string handling elsewhere: NUL, bidi overrides,
/// combining marks, a BOM, astral characters, JSON escapes, long runs.
const ODD_TEXT: &[&str] = &[
    "",
    "\u{0}",
    "\u{202e}evil\u{202c}",
    "e\u{301}\u{301}\u{301}",
    "\u{feff}m",
    "🌍🏳️‍🌈",
    "\"\\/\u{8}\u{c}\n\r\t\u{1f}\u{7f}",
    "\u{10ffff}",
    "0x1111111111111111111111111111111111111111",
    "16Uiu2HAm",
];

pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9 .-]{0,24}",
        3 => any::<String>(),
        2 => prop::sample::select(ODD_TEXT).prop_map(String::from),
        1 => (prop::sample::select(ODD_TEXT), 1..300usize).prop_map(|(t, n)| t.repeat(n)),
    ]
}

pub fn int() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0..1_000u64, 2 => any::<u64>(), 1 => Just(u64::MAX), 1 => Just(1u64 << 53)]
}

/// Decimal wei (up to 80 digits, beyond uint256) or any text at all.
pub fn wei() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[0-9]{1,80}", 1 => text()]
}

/// Every f32, NaN and the infinities included (the encoder takes them; the
/// Python layer refuses non-finite temperatures before they get here).
pub fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![3 => -2.0f32..2.0, 2 => any::<f32>(), 1 => prop::num::f32::ANY]
}

pub fn request() -> impl Strategy<Value = LlmRequest> {
    (
        (text(), text(), prop::option::of(text()), prop::option::of(any_f32())),
        (prop::option::of(any::<u32>()), text(), wei(), wei(), int(), int()),
    )
        .prop_map(|((model, prompt, system_prompt, temperature), rest)| {
            let (max_tokens, executor_address, inbound_price, outbound_price, nonce, deadline) = rest;
            LlmRequest {
                model,
                prompt,
                system_prompt,
                temperature,
                max_tokens,
                executor_address,
                inbound_price,
                outbound_price,
                nonce,
                deadline,
            }
        })
}

pub fn response() -> impl Strategy<Value = LlmResponse> {
    (text(), int(), int(), wei(), text(), prop::option::of(text())).prop_map(
        |(content, inbound_tokens, outbound_tokens, total_cost, model_used, error)| LlmResponse {
            content,
            inbound_tokens,
            outbound_tokens,
            total_cost,
            model_used,
            error,
        },
    )
}

pub fn receipt() -> impl Strategy<Value = Receipt> {
    (any::<[u8; 32]>(), any::<[u8; 20]>(), int(), any::<bool>(), any::<[u8; 32]>(), vec(any::<u8>(), 65)).prop_map(
        |(request_hash, client, timestamp, success, digest, signature)| Receipt {
            request_hash: B256::from(request_hash),
            client: Address::from(client),
            timestamp,
            success,
            digest: B256::from(digest),
            signature: Bytes::from(signature),
        },
    )
}

pub fn ack() -> impl Strategy<Value = AcknowledgmentResponse> {
    (text(), any::<bool>(), prop::option::of(text()), int()).prop_map(|(request_id, success, message, timestamp)| {
        AcknowledgmentResponse { request_id, success, message, timestamp }
    })
}

/// Any value of the generic payload type. `json_only`: only what JSON keeps
/// as it is (no bytes, no f32, finite floats), for values that cross JSON.
pub fn jval(json_only: bool) -> BoxedStrategy<JVal> {
    let float = if json_only {
        prop::num::f64::NORMAL.prop_map(JVal::F64).boxed()
    } else {
        prop_oneof![any::<f32>().prop_map(JVal::F32), any::<f64>().prop_map(JVal::F64)].boxed()
    };
    let bytes = if json_only {
        text().prop_map(JVal::Str).boxed()
    } else {
        vec(any::<u8>(), 0..40).prop_map(JVal::Bytes).boxed()
    };
    let leaf = prop_oneof![
        Just(JVal::Null),
        any::<bool>().prop_map(JVal::Bool),
        int().prop_map(JVal::U64),
        (i64::MIN..0i64).prop_map(JVal::I64),
        float,
        text().prop_map(JVal::Str),
        bytes,
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(JVal::Array),
            vec((text(), inner), 0..6).prop_map(|kv| JVal::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// An announcement whose every value survives JSON and CBOR unchanged (at
/// most one metadata key: the encoder refuses more, see
/// `gossip::check_metadata`).
pub fn announcement() -> impl Strategy<Value = ModelAnnouncement> {
    let performance = (
        prop::option::of(prop::num::f64::NORMAL | prop::num::f64::ZERO),
        prop::option::of(prop::num::f64::NORMAL),
        prop::option::of(0.0f64..1.0),
        prop::option::of(int()),
    )
        .prop_map(|(a, b, c, d)| PerformanceMetrics {
            avg_tokens_per_second: a,
            avg_time_to_first_token: b,
            success_rate: c,
            avg_latency_ms: d,
        });
    let capabilities = (
        any::<u32>(),
        vec(text(), 0..4),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(performance),
        prop::option::of((text(), jval(true))),
    )
        .prop_map(|(max_context_length, features, architecture, model_size, performance, meta)| ModelCapabilities {
            max_context_length,
            features,
            architecture,
            model_size,
            performance,
            metadata: meta.into_iter().collect(),
        });
    let pricing = (wei(), wei(), prop::option::of(wei())).prop_map(|(i, o, m)| ModelPricing {
        input_token_price: i,
        output_token_price: o,
        minimum_fee: m,
    });
    let model = (text(), text(), capabilities, any::<bool>(), prop::option::of(pricing)).prop_map(
        |(model_id, backend_type, capabilities, is_available, pricing)| ModelDescriptor {
            model_id,
            backend_type,
            capabilities,
            is_available,
            pricing,
        },
    );
    let kind = prop::sample::select(&[
        AnnouncementType::Initial,
        AnnouncementType::Update,
        AnnouncementType::Removal,
        AnnouncementType::Heartbeat,
    ][..]);
    (text(), any::<[u8; 20]>(), vec(model, 0..3), kind, int(), int(), any::<u8>()).prop_map(
        |(executor_peer_id, address, models, announcement_type, timestamp, nonce, protocol_version)| ModelAnnouncement {
            executor_peer_id,
            executor_address: Address::from(address),
            models,
            announcement_type,
            timestamp,
            nonce,
            protocol_version,
        },
    )
}

fn signed<T: serde::Serialize>(key: u8, payload: T, timestamp: u64, nonce: Option<u64>) -> SignedMessage<T> {
    let s = signer(key);
    sign::signed(&s.secret, s.address, payload, timestamp, nonce).expect("signing a generated payload")
}

/// Which of `signer`'s keys signs, the envelope timestamp and nonce.
fn envelope() -> impl Strategy<Value = (u8, u64, Option<u64>)> {
    (0..3u8, int(), prop::option::of(int()))
}

/// Every request-side message the protocol has, signed by one of `signer`'s keys.
pub fn request_message() -> impl Strategy<Value = RequestMessage> {
    prop_oneof![
        6 => (request(), envelope()).prop_map(|(r, (k, t, n))| RequestMessage::SignedLlmRequest(signed(k, r, t, n))),
        2 => request().prop_map(RequestMessage::LlmRequest),
        1 => (announcement(), envelope())
            .prop_map(|(a, (k, t, n))| RequestMessage::ModelAnnouncement(signed(k, a, t, n))),
        1 => (jval(false), envelope()).prop_map(|(v, (k, t, n))| RequestMessage::ModelQuery(signed(k, v, t, n))),
        1 => (jval(false), envelope()).prop_map(|(v, (k, t, n))| RequestMessage::ModelUpdate(signed(k, v, t, n))),
    ]
}

/// Every response-side message, receipts in typed and raw (non-null) form.
pub fn response_message() -> impl Strategy<Value = ResponseMessage> {
    let envelope_receipt = prop_oneof![
        2 => Just(None),
        2 => receipt().prop_map(|r| Some(EnvelopeReceipt::Typed(r))),
        1 => jval(false)
            .prop_filter("null is an absent receipt", |v| *v != JVal::Null)
            .prop_map(|v| Some(EnvelopeReceipt::from_jval(v))),
    ];
    prop_oneof![
        6 => (response(), envelope(), envelope_receipt).prop_map(|(r, (k, t, n), receipt)| {
            let mut m = signed(k, r, t, n);
            m.receipt = receipt;
            ResponseMessage::SignedLlmResponse(m)
        }),
        2 => response().prop_map(ResponseMessage::LlmResponse),
        1 => (ack(), envelope()).prop_map(|(a, (k, t, n))| ResponseMessage::AcknowledgmentResponse(signed(k, a, t, n))),
        1 => (jval(false), envelope()).prop_map(|(v, (k, t, n))| ResponseMessage::ModelQueryResponse(signed(k, v, t, n))),
    ]
}

/// A valid frame of either direction (decoders are fed both: a peer may send anything).
pub fn frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        request_message().prop_map(|m| wire::encode_cbor(&m).expect("encoding a generated request")),
        response_message().prop_map(|m| wire::encode_cbor(&m).expect("encoding a generated response")),
    ]
}

/// A valid gossip announcement as it travels: JSON of a signed message.
pub fn announcement_json() -> impl Strategy<Value = Vec<u8>> {
    (announcement(), 0..3u8, int(), prop::option::of(int()))
        .prop_map(|(a, k, t, n)| serde_json::to_vec(&signed(k, a, t, n)).expect("announcement JSON"))
}
