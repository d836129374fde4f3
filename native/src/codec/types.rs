//! serde mirrors of the reference message types (PROTOCOL.md §3).
//!
//! Field order is the contract: it is the CBOR map order on the wire and the
//! JSON key order of the signing digest, so each struct lists its fields
//! exactly as the reference declares them. Serialization is plain derived
//! serde over the reference's own crates (cbor4ii, serde_json,
//! alloy-primitives), which is what makes our bytes identical to theirs.
//! Deserialization is derived too, with the lenient helpers of `lenient` on
//! the fields whose wire form may vary (bytes vs hex text, float widths);
//! unknown map keys are ignored, as serde does by default.

use super::jval::JVal;
use super::lenient;
use alloy_primitives::{Address, Bytes, B256};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    pub model: String,
    pub prompt: String,
    pub system_prompt: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_f32")]
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub executor_address: String,
    pub inbound_price: String,
    pub outbound_price: String,
    pub nonce: u64,
    pub deadline: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmResponse {
    pub content: String,
    pub inbound_tokens: u64,
    pub outbound_tokens: u64,
    pub total_cost: String,
    pub model_used: String,
    pub error: Option<String>,
}

/// The signed envelope. Extra data may only ever be added here, never to a
/// payload: receivers re-serialize the payload they decoded to verify it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedMessage<T> {
    pub payload: T,
    #[serde(deserialize_with = "lenient::address")]
    pub signer: Address,
    #[serde(deserialize_with = "lenient::bytes")]
    pub signature: Bytes,
    pub timestamp: u64,
    pub nonce: Option<u64>,
    /// Our envelope extension (see `Receipt`): written only when set, so every
    /// other message is byte-identical to the reference's; `null` reads as absent.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::receipt")]
    pub receipt: Option<EnvelopeReceipt>,
    /// Our request-side envelope extension: the client's EIP-712
    /// `LlmRequestCommitment` signature and the commitment fields the request
    /// does not carry (PROTOCOL.md §7), for on-chain settlement. Kept as the
    /// JSON-like value it is (its meaning is the executor's business, not the
    /// codec's); written only when set, `null` reads as absent, and reference
    /// decoders ignore the unknown key, as they ignore `receipt`.
    ///
    /// ```text
    /// SignedLlmRequest = { "payload": LlmRequest, "signer": bytes(20), "signature": bytes(65),
    ///                      "timestamp": uint, "nonce": uint / null,
    ///                      ? "commitment": { "executor": bytes(20), "signature": bytes(65) } }
    /// ```
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::extension")]
    pub commitment: Option<JVal>,
}

/// The executor's EIP-712 `LlmResponseCommitment` receipt (PROTOCOL.md §7),
/// carried in the `SignedLlmResponse` envelope after the standard fields.
/// It is outside the signed payload and reference decoders ignore unknown
/// envelope keys (PROTOCOL.md §4), so reference verifiers still verify.
///
/// ```text
/// SignedLlmResponse = { "payload": LlmResponse, "signer": bytes(20), "signature": bytes(65),
///                       "timestamp": uint, "nonce": uint / null,
///                       ? "receipt": Receipt }          ; absent when there is no receipt
/// Receipt = {                     ; definite-length map, text keys, in this order
///   "request_hash": bytes(32),    ; EIP-712 digest of the request's LlmRequestCommitment
///   "client":       bytes(20),    ; the commitment's `client`: the request's signer
///   "timestamp":    uint,         ; the commitment's `timestamp` (unix seconds)
///   "success":      bool,         ; the commitment's `success` (false for a signed error)
///   "digest":       bytes(32),    ; EIP-712 digest of the LlmResponseCommitment
///   "signature":    bytes(65),    ; r‖s‖v, v ∈ {0, 1}, by the executor's key over `digest`
/// }
/// ```
/// The other commitment fields are not repeated: `model` is the request's
/// model, `contentHash`/tokens come from the signed payload, prices from the
/// request. In JSON the byte strings are lowercase `0x…` hex; a decoder
/// accepts hex text for bytes, as everywhere (PROTOCOL.md §3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Receipt {
    pub request_hash: B256,
    pub client: Address,
    pub timestamp: u64,
    pub success: bool,
    pub digest: B256,
    pub signature: Bytes,
}

/// A received `receipt` entry: typed when it has the shape above, else kept
/// as it came (a receipt never makes a frame malformed; the client reports it).
#[derive(Debug, Clone, PartialEq)]
pub enum EnvelopeReceipt {
    Typed(Receipt),
    Raw(JVal),
}

impl Serialize for EnvelopeReceipt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EnvelopeReceipt::Typed(r) => r.serialize(s),
            EnvelopeReceipt::Raw(v) => v.serialize(s),
        }
    }
}

impl EnvelopeReceipt {
    /// Typed when `value` is a map holding the six fields with the right
    /// types and sizes (extra keys ignored), raw otherwise.
    pub fn from_jval(value: JVal) -> Self {
        match Receipt::from_jval(&value) {
            Some(r) => EnvelopeReceipt::Typed(r),
            None => EnvelopeReceipt::Raw(value),
        }
    }
}

impl Receipt {
    fn from_jval(value: &JVal) -> Option<Receipt> {
        let JVal::Object(map) = value else { return None };
        let bytes = |key: &str, len: usize| -> Option<Vec<u8>> {
            let raw = match map.get(key)? {
                JVal::Bytes(b) => b.clone(),
                JVal::Str(t) => {
                    let body = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
                    hex::decode(body).ok()?
                }
                _ => return None,
            };
            (raw.len() == len).then_some(raw)
        };
        let timestamp = match map.get("timestamp")? {
            JVal::U64(n) => *n,
            _ => return None,
        };
        let success = match map.get("success")? {
            JVal::Bool(b) => *b,
            _ => return None,
        };
        Some(Receipt {
            request_hash: B256::from_slice(&bytes("request_hash", 32)?),
            client: Address::from_slice(&bytes("client", 20)?),
            timestamp,
            success,
            digest: B256::from_slice(&bytes("digest", 32)?),
            signature: Bytes::from(bytes("signature", 65)?),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnnouncementType {
    Initial,
    Update,
    Removal,
    Heartbeat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAnnouncement {
    pub executor_peer_id: String,
    #[serde(deserialize_with = "lenient::address")]
    pub executor_address: Address,
    pub models: Vec<ModelDescriptor>,
    pub announcement_type: AnnouncementType,
    pub timestamp: u64,
    pub nonce: u64,
    pub protocol_version: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDescriptor {
    pub model_id: String,
    pub backend_type: String,
    pub capabilities: ModelCapabilities,
    pub is_available: bool,
    pub pricing: Option<ModelPricing>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCapabilities {
    pub max_context_length: u32,
    pub features: Vec<String>,
    pub architecture: Option<String>,
    pub model_size: Option<String>,
    pub performance: Option<PerformanceMetrics>,
    /// A `HashMap` in the reference, so its order there is random: kept here
    /// in received order (the order that was signed). We emit at most one key.
    #[serde(default)]
    pub metadata: IndexMap<String, JVal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformanceMetrics {
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub avg_tokens_per_second: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub avg_time_to_first_token: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub success_rate: Option<f64>,
    pub avg_latency_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPricing {
    pub input_token_price: String,
    pub output_token_price: String,
    pub minimum_fee: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcknowledgmentResponse {
    pub request_id: String,
    pub success: bool,
    pub message: Option<String>,
    pub timestamp: u64,
}

/// `ModelQuery`, `ModelUpdate` and `ModelQueryResponse` payloads are not
/// specified field by field (PROTOCOL.md lists only their names), so they are
/// decoded as an order-preserving generic value. Limitation: their signature
/// is checked over the payload re-serialized in *received* key order, which
/// equals the signer's order for any serde struct (the CBOR map and the
/// signed JSON come from the same field list), but a reference field whose
/// JSON form differs from its CBOR form in a way we cannot see (e.g. a
/// `Vec<u8>` vs bytes, an enum we would not recognise) could make a valid
/// signature look invalid. It never makes an invalid one look valid.
pub type OpaquePayload = JVal;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequestMessage {
    LlmRequest(LlmRequest),
    SignedLlmRequest(SignedMessage<LlmRequest>),
    ModelAnnouncement(SignedMessage<ModelAnnouncement>),
    ModelQuery(SignedMessage<OpaquePayload>),
    ModelUpdate(SignedMessage<OpaquePayload>),
}

/// Variant names are the protocol's (they are the CBOR map keys).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResponseMessage {
    LlmResponse(LlmResponse),
    SignedLlmResponse(SignedMessage<LlmResponse>),
    ModelQueryResponse(SignedMessage<OpaquePayload>),
    AcknowledgmentResponse(SignedMessage<AcknowledgmentResponse>),
}

impl RequestMessage {
    pub fn variant(&self) -> &'static str {
        match self {
            RequestMessage::LlmRequest(_) => "LlmRequest",
            RequestMessage::SignedLlmRequest(_) => "SignedLlmRequest",
            RequestMessage::ModelAnnouncement(_) => "ModelAnnouncement",
            RequestMessage::ModelQuery(_) => "ModelQuery",
            RequestMessage::ModelUpdate(_) => "ModelUpdate",
        }
    }
}

impl ResponseMessage {
    pub fn variant(&self) -> &'static str {
        match self {
            ResponseMessage::LlmResponse(_) => "LlmResponse",
            ResponseMessage::SignedLlmResponse(_) => "SignedLlmResponse",
            ResponseMessage::ModelQueryResponse(_) => "ModelQueryResponse",
            ResponseMessage::AcknowledgmentResponse(_) => "AcknowledgmentResponse",
        }
    }
}
