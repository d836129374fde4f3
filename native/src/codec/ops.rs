//! The work of one Python call, with no Python in it (runs GIL-released):
//! decode a frame and check its signature, or build and sign a frame.

use super::sign::{self, Verification};
use super::jval::JVal;
use super::types::*;
use super::wire::{self, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use crate::error::CodecError;
use secp256k1::SecretKey;

/// The envelope fields of a `SignedMessage`, kept apart from its payload.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub signer: [u8; 20],
    pub signature: Vec<u8>,
    pub timestamp: u64,
    pub nonce: Option<u64>,
    /// The `receipt` entry, when the envelope carries one (responses).
    pub receipt: Option<EnvelopeReceipt>,
    /// The `commitment` entry, when the envelope carries one (requests).
    pub commitment: Option<JVal>,
}

/// What any decode yields besides the typed payload.
#[derive(Debug)]
pub struct Opened {
    pub variant: &'static str,
    pub envelope: Option<Envelope>,
    pub check: Verification,
}

/// Verify a `SignedMessage` and split it into its payload and what Python sees of the rest.
pub(super) fn open<T: serde::Serialize>(variant: &'static str, m: SignedMessage<T>) -> Result<(T, Opened), CodecError> {
    let check = sign::verify(&m.payload, &m.signer, &m.signature)?;
    let envelope = Envelope {
        signer: m.signer.0 .0,
        signature: m.signature.to_vec(),
        timestamp: m.timestamp,
        nonce: m.nonce,
        receipt: m.receipt,
        commitment: m.commitment,
    };
    Ok((
        m.payload,
        Opened {
            variant,
            envelope: Some(envelope),
            check,
        },
    ))
}

fn open_unsigned<T: serde::Serialize>(variant: &'static str, payload: T) -> Result<(T, Opened), CodecError> {
    let check = sign::unsigned(&payload)?;
    Ok((
        payload,
        Opened {
            variant,
            envelope: None,
            check,
        },
    ))
}

pub fn decode_request(frame: &[u8]) -> Result<(Option<LlmRequest>, Opened), CodecError> {
    let msg: RequestMessage = wire::decode_cbor(frame, "RequestMessage", MAX_REQUEST_BYTES)?;
    let variant = msg.variant();
    Ok(match msg {
        RequestMessage::LlmRequest(r) => {
            let (r, o) = open_unsigned(variant, r)?;
            (Some(r), o)
        }
        RequestMessage::SignedLlmRequest(m) => {
            let (r, o) = open(variant, m)?;
            (Some(r), o)
        }
        RequestMessage::ModelAnnouncement(m) => (None, open(variant, m)?.1),
        RequestMessage::ModelQuery(m) | RequestMessage::ModelUpdate(m) => (None, open(variant, m)?.1),
    })
}

pub fn decode_response(frame: &[u8]) -> Result<(Option<LlmResponse>, Opened), CodecError> {
    let msg: ResponseMessage = wire::decode_cbor(frame, "ResponseMessage", MAX_RESPONSE_BYTES)?;
    let variant = msg.variant();
    Ok(match msg {
        ResponseMessage::LlmResponse(r) => {
            let (r, o) = open_unsigned(variant, r)?;
            (Some(r), o)
        }
        ResponseMessage::SignedLlmResponse(m) => {
            let (r, o) = open(variant, m)?;
            (Some(r), o)
        }
        ResponseMessage::ModelQueryResponse(m) => (None, open(variant, m)?.1),
        ResponseMessage::AcknowledgmentResponse(m) => (None, open(variant, m)?.1),
    })
}

/// The signing key and its address (the address is looked up once by the
/// caller rather than re-derived from the key, which costs an EC multiply).
pub struct Signer {
    pub secret: SecretKey,
    pub address: [u8; 20],
}

/// `commitment` goes in the signed envelope (after `nonce`); an unsigned
/// request has no envelope, so a commitment there is an error.
pub fn encode_request(
    signer: Option<&Signer>,
    r: LlmRequest,
    timestamp: u64,
    nonce: Option<u64>,
    commitment: Option<JVal>,
) -> Result<Vec<u8>, CodecError> {
    let msg = match signer {
        None if commitment.is_some() => return Err(CodecError::ReceiptWithoutEnvelope),
        None => RequestMessage::LlmRequest(r),
        Some(s) => {
            let mut m = sign::signed(&s.secret, s.address, r, timestamp, nonce)?;
            m.commitment = commitment;
            RequestMessage::SignedLlmRequest(m)
        }
    };
    wire::encode_cbor(&msg)
}

/// `receipt` goes in the signed envelope (after `nonce`); an unsigned
/// response has no envelope, so a receipt there is an error.
pub fn encode_response(
    signer: Option<&Signer>,
    r: LlmResponse,
    timestamp: u64,
    nonce: Option<u64>,
    receipt: Option<Receipt>,
) -> Result<Vec<u8>, CodecError> {
    let msg = match signer {
        None if receipt.is_some() => return Err(CodecError::ReceiptWithoutEnvelope),
        None => ResponseMessage::LlmResponse(r),
        Some(s) => {
            let mut m = sign::signed(&s.secret, s.address, r, timestamp, nonce)?;
            m.receipt = receipt.map(EnvelopeReceipt::Typed);
            ResponseMessage::SignedLlmResponse(m)
        }
    };
    wire::encode_cbor(&msg)
}

pub fn encode_ack(
    s: &Signer,
    ack: AcknowledgmentResponse,
    timestamp: u64,
    nonce: Option<u64>,
) -> Result<Vec<u8>, CodecError> {
    let msg = ResponseMessage::AcknowledgmentResponse(sign::signed(&s.secret, s.address, ack, timestamp, nonce)?);
    wire::encode_cbor(&msg)
}
