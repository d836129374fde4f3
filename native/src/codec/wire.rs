//! Frame-level CBOR decode/encode: size limits, trailing-byte rejection and
//! error messages that name the problem (decoding itself: `cbor_de`;
//! encoding: cbor4ii's serializer, exactly as the reference).
//!
//! Decoding runs once without bookkeeping (the hot path); only when it fails
//! is the frame decoded a second time through `serde_path_to_error`, so the
//! error can name the field (`SignedLlmRequest.payload.max_tokens`) at no cost
//! to well-formed frames.

use super::cbor_de::{DecodeError, Deserializer};
use crate::error::{CodecError, MalformedCbor};
use serde::{Deserialize, Serialize};

pub use super::cbor_de::MAX_DEPTH;

/// rust-libp2p's cbor codec limits (request-response 0.29): 1 MiB / 10 MiB.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
pub const MAX_RESPONSE_BYTES: usize = 10 << 20;

/// Decode one CBOR value that must fill `frame` exactly.
pub fn decode_cbor<'de, T: Deserialize<'de>>(
    frame: &'de [u8],
    what: &'static str,
    limit: usize,
) -> Result<T, CodecError> {
    if frame.len() > limit {
        return Err(CodecError::FrameTooLarge { what, size: frame.len(), limit });
    }
    if frame.is_empty() {
        return Err(CodecError::EmptyFrame { what });
    }
    let mut de = Deserializer::new(frame);
    match T::deserialize(&mut de) {
        Ok(value) if de.pos == frame.len() => Ok(value),
        Ok(_) => Err(CodecError::TrailingBytes { what, extra: frame.len() - de.pos, at: de.pos }),
        // Path tracking costs several times the stack per level; past this
        // depth the message gives the byte offset only.
        Err(cause) if de.deepest > EXPLAIN_MAX_DEPTH => Err(malformed(what, cause, None, de.pos)),
        Err(cause) => Err(explain::<T>(frame, what, cause, de.pos)),
    }
}

fn malformed(what: &'static str, cause: DecodeError, field: Option<String>, at: usize) -> CodecError {
    CodecError::MalformedCbor(Box::new(MalformedCbor { what, cause, field, at }))
}

/// Deepest failed frame that is re-decoded to name the failing field. Real
/// messages nest fewer than 10 levels; this keeps the re-decode's stack
/// within what the fast path needs at `MAX_DEPTH`.
const EXPLAIN_MAX_DEPTH: usize = 32;

/// Slow path: decode again with path tracking to say where it failed. The
/// first attempt's error stands in should the second one not fail (it is the
/// same decoder over the same bytes, so it always does).
#[cold]
fn explain<'de, T: Deserialize<'de>>(frame: &'de [u8], what: &'static str, first: DecodeError, first_at: usize) -> CodecError {
    let mut de = Deserializer::new(frame);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let pos = de.pos;
    match result {
        Ok(_) => malformed(what, first, None, first_at),
        Err(err) => {
            let path = err.path().to_string();
            let field = (!path.is_empty() && path != ".").then_some(path);
            malformed(what, err.into_inner(), field, pos)
        }
    }
}

/// CBOR exactly as rust-libp2p's codec writes it (`cbor4ii::serde::to_vec`).
pub fn encode_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    cbor4ii::serde::to_vec(Vec::with_capacity(512), value).map_err(|e| CodecError::Encode {
        context: "CBOR encoding failed",
        detail: e.to_string(),
    })
}

/// JSON decode with the same error style (path named) for gossip messages.
/// serde_json's own recursion limit (128) bounds the nesting.
pub fn decode_json<'de, T: Deserialize<'de>>(data: &'de [u8], what: &'static str, limit: usize) -> Result<T, CodecError> {
    if data.len() > limit {
        return Err(CodecError::DocumentTooLarge { what, size: data.len(), limit });
    }
    let first = match serde_json::from_slice::<T>(data) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let mut de = serde_json::Deserializer::from_slice(data);
    Err(match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(err) => {
            let path = err.path().to_string();
            let field = (!path.is_empty() && path != ".").then_some(path);
            CodecError::MalformedJson { what, cause: err.into_inner(), field }
        }
        // Only trailing characters are left for `from_slice` to refuse.
        Ok(_) => CodecError::MalformedJson { what, cause: de.end().err().unwrap_or(first), field: None },
    })
}
