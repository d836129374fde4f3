//! `lloom/model-announcements` gossip: the JSON (not CBOR) of a
//! `SignedMessage<ModelAnnouncement>` (PROTOCOL.md §6). In JSON the signer and
//! signature are lowercase `0x…` hex, as alloy writes them human-readably.

use super::jval::JVal;
use super::ops::{self, Opened, Signer};
use super::sign;
use super::types::{ModelAnnouncement, SignedMessage};
use super::wire;
use crate::error::CodecError;

/// Gossip messages are far below this; it only bounds hostile input.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 1 << 20;

/// The reference keeps metadata in a `HashMap`, whose order is random, so a
/// signature over two or more keys cannot be checked reliably by anyone.
fn check_metadata(a: &ModelAnnouncement) -> Result<(), CodecError> {
    for (i, m) in a.models.iter().enumerate() {
        let n = m.capabilities.metadata.len();
        if n > 1 {
            return Err(CodecError::MultiKeyMetadata { model: i, keys: n });
        }
    }
    Ok(())
}

/// Build the announcement from a generic (Python-derived) value: its field
/// order does not matter, the struct's does.
pub fn encode(signer: &Signer, announcement: &JVal, timestamp: u64, nonce: Option<u64>) -> Result<Vec<u8>, CodecError> {
    let json = serde_json::to_vec(announcement).map_err(|e| CodecError::Encode {
        context: "announcement is not JSON-encodable",
        detail: e.to_string(),
    })?;
    let a: ModelAnnouncement = wire::decode_json(&json, "ModelAnnouncement", usize::MAX)?;
    check_metadata(&a)?;
    let msg = sign::signed(&signer.secret, signer.address, a, timestamp, nonce)?;
    serde_json::to_vec(&msg).map_err(|e| CodecError::Encode {
        context: "JSON encoding failed",
        detail: e.to_string(),
    })
}

pub fn decode(data: &[u8]) -> Result<Opened, CodecError> {
    let m: SignedMessage<ModelAnnouncement> =
        wire::decode_json(data, "SignedMessage<ModelAnnouncement>", MAX_ANNOUNCEMENT_BYTES)?;
    ops::open("ModelAnnouncement", m).map(|(_, opened)| opened)
}
