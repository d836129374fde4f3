//! Wire types of the Lloom protocol (PROTOCOL.md §3), mirrored field by field
//! and in the same order as the reference, because that order is the JSON order
//! that signatures cover and the CBOR map order on the wire.

use alloy_primitives::{Address, Bytes};
use serde::{Deserialize, Serialize};

/// Opaque payloads that only validators use; kept as JSON values so that an
/// unexpected shape never makes us drop a stream.
pub type Opaque = serde_json::Value;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum RequestMessage {
    LlmRequest(LlmRequest),
    SignedLlmRequest(SignedMessage<LlmRequest>),
    ModelAnnouncement(SignedMessage<ModelAnnouncement>),
    ModelQuery(SignedMessage<Opaque>),
    ModelUpdate(SignedMessage<Opaque>),
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ResponseMessage {
    LlmResponse(LlmResponse),
    SignedLlmResponse(SignedMessage<LlmResponse>),
    ModelQueryResponse(SignedMessage<Opaque>),
    AcknowledgmentResponse(SignedMessage<AcknowledgmentResponse>),
}

impl ResponseMessage {
    pub fn variant(&self) -> &'static str {
        match self {
            Self::LlmResponse(_) => "LlmResponse",
            Self::SignedLlmResponse(_) => "SignedLlmResponse",
            Self::ModelQueryResponse(_) => "ModelQueryResponse",
            Self::AcknowledgmentResponse(_) => "AcknowledgmentResponse",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LlmRequest {
    pub model: String,
    pub prompt: String,
    pub system_prompt: Option<String>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub executor_address: String,
    pub inbound_price: String,
    pub outbound_price: String,
    pub nonce: u64,
    pub deadline: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LlmResponse {
    pub content: String,
    pub inbound_tokens: u64,
    pub outbound_tokens: u64,
    pub total_cost: String,
    pub model_used: String,
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SignedMessage<T> {
    pub payload: T,
    pub signer: Address,
    pub signature: Bytes,
    pub timestamp: u64,
    pub nonce: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnouncementType {
    Initial,
    Update,
    Removal,
    Heartbeat,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ModelAnnouncement {
    pub executor_peer_id: String,
    pub executor_address: Address,
    pub models: Vec<ModelDescriptor>,
    pub announcement_type: AnnouncementType,
    pub timestamp: u64,
    pub nonce: u64,
    pub protocol_version: u8,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ModelDescriptor {
    pub model_id: String,
    pub backend_type: String,
    pub capabilities: ModelCapabilities,
    pub is_available: bool,
    pub pricing: Option<ModelPricing>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ModelCapabilities {
    pub max_context_length: u32,
    pub features: Vec<String>,
    pub architecture: Option<String>,
    pub model_size: Option<String>,
    pub performance: Option<PerformanceMetrics>,
    /// serde_json is built with `preserve_order`, so the key order as received
    /// is the order re-serialized for verification (PROTOCOL.md §3).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PerformanceMetrics {
    pub avg_tokens_per_second: Option<f64>,
    pub avg_time_to_first_token: Option<f64>,
    pub success_rate: Option<f64>,
    pub avg_latency_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ModelPricing {
    pub input_token_price: String,
    pub output_token_price: String,
    pub minimum_fee: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AcknowledgmentResponse {
    pub request_id: String,
    pub success: bool,
    pub message: Option<String>,
    pub timestamp: u64,
}

/// Gossipsub topics of the reference network (PROTOCOL.md §6).
pub const TOPICS: [&str; 5] = [
    "lloom/announcements",
    "lloom/executor-updates",
    "lloom/executor-announcements",
    "lloom/model-announcements",
    "lloom/model-queries",
];
pub const TOPIC_EXECUTOR_ANN: &str = "lloom/executor-announcements";
pub const TOPIC_MODEL_ANN: &str = "lloom/model-announcements";
pub const LLM_PROTOCOL: &str = "/lloom/llm/1.0.0";
pub const KAD_PROTOCOL: &str = "/ipfs/kad/1.0.0";
pub const EXECUTOR_KEY: &[u8] = b"lloom/executor";
pub const MAX_MESSAGE_AGE_SECS: u64 = 300;
