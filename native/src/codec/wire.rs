//! Frame-level CBOR decode/encode: size limits, trailing-byte rejection and
//! error messages that name the problem (decoding itself: `cbor_de`;
//! encoding: cbor4ii's serializer, exactly as the reference).
//!
//! Decoding runs once without bookkeeping (the hot path); only when it fails
//! is the frame decoded a second time through `serde_path_to_error`, so the
//! error can name the field (`SignedLlmRequest.payload.max_tokens`) at no cost
//! to well-formed frames.

use super::cbor_de::Deserializer;
use serde::{Deserialize, Serialize};

pub use super::cbor_de::MAX_DEPTH;

/// rust-libp2p's cbor codec limits (request-response 0.29): 1 MiB / 10 MiB.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
pub const MAX_RESPONSE_BYTES: usize = 10 << 20;

/// Decode one CBOR value that must fill `frame` exactly.
pub fn decode_cbor<'de, T: Deserialize<'de>>(frame: &'de [u8], what: &str, limit: usize) -> Result<T, String> {
    if frame.len() > limit {
        return Err(format!(
            "{what} frame is {} bytes, over the {} byte size limit",
            frame.len(),
            limit
        ));
    }
    if frame.is_empty() {
        return Err(format!("truncated frame: empty {what} frame"));
    }
    let mut de = Deserializer::new(frame);
    match T::deserialize(&mut de) {
        Ok(value) if de.pos == frame.len() => Ok(value),
        Ok(_) => Err(format!(
            "trailing bytes: {} bytes after the end of the {what} at byte {}",
            frame.len() - de.pos,
            de.pos
        )),
        // Path tracking costs several times the stack per level; past this
        // depth the message gives the byte offset only.
        Err(err) if de.deepest > EXPLAIN_MAX_DEPTH => Err(format!("malformed {what}: {err} (at byte {})", de.pos)),
        Err(_) => Err(explain::<T>(frame, what)),
    }
}

/// Deepest failed frame that is re-decoded to name the failing field. Real
/// messages nest fewer than 10 levels; this keeps the re-decode's stack
/// within what the fast path needs at `MAX_DEPTH`.
const EXPLAIN_MAX_DEPTH: usize = 32;

/// Slow path: decode again with path tracking to say where it failed.
#[cold]
fn explain<'de, T: Deserialize<'de>>(frame: &'de [u8], what: &str) -> String {
    let mut de = Deserializer::new(frame);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let pos = de.pos;
    match result {
        Ok(_) => format!("malformed {what}"),
        Err(err) => {
            let path = err.path().to_string();
            if path.is_empty() || path == "." {
                format!("malformed {what}: {} (at byte {pos})", err.inner())
            } else {
                format!("malformed {what}: {} (field `{path}`, at byte {pos})", err.inner())
            }
        }
    }
}

/// CBOR exactly as rust-libp2p's codec writes it (`cbor4ii::serde::to_vec`).
pub fn encode_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    cbor4ii::serde::to_vec(Vec::with_capacity(512), value).map_err(|e| format!("CBOR encoding failed: {e}"))
}

/// JSON decode with the same error style (path named) for gossip messages.
/// serde_json's own recursion limit (128) bounds the nesting.
pub fn decode_json<'de, T: Deserialize<'de>>(data: &'de [u8], what: &str, limit: usize) -> Result<T, String> {
    if data.len() > limit {
        return Err(format!(
            "{what} is {} bytes, over the {} byte size limit",
            data.len(),
            limit
        ));
    }
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(data);
    let message = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(err) => {
            let path = err.path().to_string();
            if path.is_empty() || path == "." {
                format!("malformed {what}: {}", err.inner())
            } else {
                format!("malformed {what}: {} (field `{path}`)", err.inner())
            }
        }
        Ok(_) => match de.end() {
            Err(e) => format!("malformed {what}: {e}"),
            Ok(()) => format!("malformed {what}"),
        },
    };
    Err(message)
}
