//! The Lloom wire codec (PROTOCOL.md §3, §4, §6), byte-compatible with the
//! reference network.
//!
//! - `types`: serde mirrors of the reference messages, fields in declared order;
//! - `jval`: an order-preserving JSON-like value for maps and unknown payloads;
//! - `lenient`: the decoder's tolerances (hex text for bytes, any float width);
//! - `cbor_de`: a strict, depth-bounded CBOR deserializer;
//! - `decode_error`: its typed errors;
//! - `wire`: CBOR frames (limits, trailing bytes, error messages);
//! - `sign`: signing digests and signature checks;
//! - `ops`: one operation per Python call, pure Rust (runs GIL-released);
//! - `gossip`: model announcements as JSON;
//! - `py`: the Python classes and functions.
//!
//! Python API (`lloom_executor._native`), one native call per operation:
//! `decode_request(frame) -> DecodedRequest`, `decode_response(frame) ->
//! DecodedResponse`, `encode_signed_request(...)`, `encode_unsigned_request(...)`,
//! `encode_signed_response(...)`, `encode_unsigned_response(...)`,
//! `encode_signed_ack(...)`, `encode_model_announcement_json(key, dict, ts, nonce)`,
//! `decode_model_announcement_json(data) -> DecodedAnnouncement`. Decoding
//! never checks time (admission does); a bad signature is a result
//! (`signature_valid=False`), a malformed frame a `CodecError` (a `ValueError`).

mod cbor_de;
mod decode_error;
mod gossip;
mod jval;
mod lenient;
mod ops;
mod py;
mod sign;
mod types;
mod wire;

pub use decode_error::DecodeError;
pub use py::register;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz_tests;
