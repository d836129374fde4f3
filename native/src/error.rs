//! `CodecError`: every way the native core refuses its input, as one typed
//! enum, and its Python face `lloom_executor._native.CodecError` (a
//! `ValueError` subclass, so callers that catch `ValueError` keep working).
//!
//! Why typed: the Rust tests (and any Rust caller) can tell a truncated frame
//! from a bad signature without parsing text, and Python callers can catch
//! exactly the codec's refusals instead of every `ValueError`. The Display
//! text is the human-readable message Python sees; it is built only when an
//! error is raised, so a successful call allocates nothing for errors.
//!
//! Only wrong *values* are `CodecError`; a wrong Python *type* stays a
//! `TypeError`, raised where the argument is read.

use std::fmt;

use pyo3::PyErr;

use crate::codec::DecodeError;

/// The Python exception class. In its own module so the Rust enum can keep
/// the same name.
pub mod py {
    pyo3::create_exception!(
        lloom_executor._native,
        CodecError,
        pyo3::exceptions::PyValueError,
        "Input the native codec refuses: malformed CBOR or JSON, a wrong shape or length, a value out of range, \
         bad hex, a signature that cannot be recovered or an EIP-712 field that cannot be encoded. \
         A ValueError subclass; the message names the problem and, where known, the field and byte offset."
    );
}

/// The failure classes, coarser than the variants: what a caller may want to
/// branch on (tests use it to check that a whole family of inputs fails the
/// same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input ends before a complete item.
    Truncated,
    /// Bytes that are not CBOR we accept (bad initial byte, tag, simple value, UTF-8).
    InvalidCbor,
    /// Text that is not JSON (syntax error or early end).
    InvalidJson,
    /// Nested deeper than the decoder allows.
    TooDeep,
    /// Over a size limit, or bytes after the one value a frame must hold.
    Size,
    /// Well-formed data of the wrong shape: wrong type, missing field, unknown variant.
    Shape,
    /// A number outside the range its field allows.
    OutOfRange,
    /// Wrong byte length, or text that is not the hex it should be.
    Bytes,
    /// A private or public key that is not one.
    Key,
    /// A signature that cannot be checked or recovered.
    Signature,
    /// A value that cannot be serialized (CBOR or JSON).
    Encode,
    /// A name the caller gave that we do not know (a token encoding).
    Unknown,
}

/// Why a signature is refused before (or instead of) recovering a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// Not 65 bytes `r‖s‖v`.
    Length(usize),
    /// `v` not in {0, 1, 27, 28}.
    RecoveryId(u8),
    /// `s` above n/2: the malleable twin of a valid signature.
    HighS,
    /// `r` or `s` zero or not below the curve order.
    Scalar,
    /// Well-formed, but no public key recovers from it.
    NoKey,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Length(n) => write!(f, "signature must be 65 bytes (r||s||v), got {n}"),
            SignatureError::RecoveryId(v) => write!(f, "signature recovery id v must be 0, 1, 27 or 28, got {v}"),
            SignatureError::HighS => {
                f.write_str("signature s value is in the upper half of the curve order (malleable)")
            }
            SignatureError::Scalar => f.write_str("signature r or s is zero or not below the curve order"),
            SignatureError::NoKey => f.write_str("signature does not recover to any public key"),
        }
    }
}

/// Why a key is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Private key bytes not 32 long.
    Length(usize),
    /// Private key hex of the wrong number of characters (after an optional `0x`).
    HexLength(usize),
    /// Private key hex with a non-hex character.
    HexDigit,
    /// Zero, or not below the curve order.
    Scalar,
    /// Bytes that are no secp256k1 public key.
    PublicKey,
    /// The operating system's random source failed (key generation).
    Random(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Length(n) => write!(f, "private key must be 32 bytes, got {n}"),
            KeyError::HexLength(n) => write!(
                f,
                "private key hex must be 64 hex digits (optionally 0x-prefixed), got {n} characters"
            ),
            KeyError::HexDigit => f.write_str("private key hex contains a non-hex character"),
            KeyError::Scalar => f.write_str("private key is zero or not below the secp256k1 curve order"),
            KeyError::PublicKey => f.write_str("not a valid secp256k1 public key"),
            KeyError::Random(e) => write!(f, "OS random source failed: {e}"),
        }
    }
}

/// Why an address text is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// Not 40 hex digits after an optional `0x`.
    Length(String),
    /// 40 characters, but not hex.
    NotHex(String),
    /// Mixed case whose EIP-55 checksum is wrong (a typo, most likely).
    Checksum(String),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Length(t) => write!(f, "address must be 40 hex digits, got {t:?}"),
            AddressError::NotHex(t) => write!(f, "address {t:?} is not hex"),
            AddressError::Checksum(t) => write!(f, "address {t:?} has a wrong EIP-55 checksum"),
        }
    }
}

/// Everything the native core refuses. Display is the message Python sees.
#[derive(Debug)]
pub enum CodecError {
    // ---- frames and documents
    /// A CBOR frame over its protocol limit (checked before any decoding).
    FrameTooLarge { what: &'static str, size: usize, limit: usize },
    /// A JSON document over its limit.
    DocumentTooLarge { what: &'static str, size: usize, limit: usize },
    /// A zero-length frame.
    EmptyFrame { what: &'static str },
    /// One complete value, then more bytes.
    TrailingBytes { what: &'static str, extra: usize, at: usize },
    /// A CBOR frame that does not decode to `what`; `field` is the serde path
    /// when it could be found, `at` the byte offset where decoding stopped.
    /// Boxed: the hot path returns `Result<_, CodecError>`, kept small.
    MalformedCbor(Box<MalformedCbor>),
    /// A JSON document that does not decode to `what`.
    MalformedJson { what: &'static str, cause: serde_json::Error, field: Option<String> },
    /// The stored payload JSON could not be turned back into Python values.
    PayloadJson(serde_json::Error),

    // ---- shape of Python-supplied values
    /// A required key is absent from a dict (`container` names the dict).
    MissingKey { container: &'static str, key: &'static str },
    /// A Python value nested deeper than `limit`.
    NestedTooDeep { limit: usize },
    /// An unsigned message has no envelope, so no receipt (response) or
    /// commitment (request) can travel with it.
    ReceiptWithoutEnvelope,
    /// A gossip model whose metadata has more than one key (unverifiable:
    /// the reference keeps metadata in a `HashMap`).
    MultiKeyMetadata { model: usize, keys: usize },

    // ---- numbers
    /// `value` (its text, when there is one to show) does not fit in `target`.
    DoesNotFit { value: Option<String>, target: &'static str },
    /// A negative number where only unsigned ones are allowed.
    Negative,
    /// An integer outside `0..=2**bits-1`.
    UintRange { bits: u32 },
    /// The receipt's `timestamp` outside a u64.
    ReceiptTimestamp,
    /// A wei amount that is not plain decimal digits.
    NotWei(String),
    /// NaN or infinite temperature (`context`: how the caller words it).
    TemperatureNotFinite { value: f64, context: TemperatureUse },
    /// A temperature whose wire form does not fit (`scaled` for EIP-712's
    /// `round(t × 10000)`, None for the request's f32).
    TemperatureRange { value: f64, scaled: Option<f64> },

    // ---- bytes and hex
    /// Bytes of the wrong length (`what` names them: digest, address).
    Length { what: &'static str, expected: usize, got: usize },
    /// Bytes of the wrong length, named by the enclosing `Field`.
    ByteCount { expected: usize, got: usize },
    /// A receipt byte field of the wrong length.
    ReceiptLength { key: &'static str, expected: usize, got: usize },
    /// A receipt byte field given as text that is not hex.
    ReceiptHex { key: &'static str, text: String },
    /// `PrivateKey.address_bytes` did not give 20 bytes (a subclass overriding it).
    SignerAddress,
    Address(AddressError),

    // ---- keys and signatures
    Key(KeyError),
    Signature(SignatureError),

    // ---- encoding
    /// Serialization failed (`context`: "CBOR encoding failed", ...).
    Encode { context: &'static str, detail: String },

    // ---- names
    UnknownEncoding { name: String, known: &'static [&'static str] },

    /// An EIP-712 argument (`field`) refused for `cause`.
    Field { field: &'static str, cause: Box<CodecError> },
}

/// Where a temperature was refused; the two callers word it differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemperatureUse {
    /// EIP-712 commitment (`round(t × 10000)` as uint32).
    Commitment,
    /// Request payload (f32 on the wire).
    Wire,
}

/// The payload of `CodecError::MalformedCbor`.
#[derive(Debug)]
pub struct MalformedCbor {
    pub what: &'static str,
    pub cause: DecodeError,
    pub field: Option<String>,
    pub at: usize,
}

impl CodecError {
    /// The same error, attributed to an EIP-712 argument.
    pub fn in_field(self, field: &'static str) -> CodecError {
        CodecError::Field { field, cause: Box::new(self) }
    }

    /// The failure class (see `ErrorClass`).
    pub fn class(&self) -> ErrorClass {
        use CodecError::*;
        match self {
            FrameTooLarge { .. } | DocumentTooLarge { .. } | TrailingBytes { .. } => ErrorClass::Size,
            EmptyFrame { .. } => ErrorClass::Truncated,
            MalformedCbor(m) => m.cause.class(),
            MalformedJson { cause, .. } | PayloadJson(cause) => match cause.classify() {
                serde_json::error::Category::Data => ErrorClass::Shape,
                serde_json::error::Category::Eof => ErrorClass::Truncated,
                _ if cause.to_string().starts_with("recursion limit") => ErrorClass::TooDeep,
                _ => ErrorClass::InvalidJson,
            },
            MissingKey { .. } | ReceiptWithoutEnvelope | MultiKeyMetadata { .. } => ErrorClass::Shape,
            NestedTooDeep { .. } => ErrorClass::TooDeep,
            DoesNotFit { .. }
            | Negative
            | UintRange { .. }
            | ReceiptTimestamp
            | TemperatureNotFinite { .. }
            | TemperatureRange { .. } => ErrorClass::OutOfRange,
            NotWei(_) => ErrorClass::Shape,
            Length { .. } | ByteCount { .. } | ReceiptLength { .. } | ReceiptHex { .. } | SignerAddress | Address(_) => ErrorClass::Bytes,
            Key(_) => ErrorClass::Key,
            Signature(_) => ErrorClass::Signature,
            Encode { .. } => ErrorClass::Encode,
            UnknownEncoding { .. } => ErrorClass::Unknown,
            Field { cause, .. } => cause.class(),
        }
    }
}

fn malformed_suffix(f: &mut fmt::Formatter<'_>, field: Option<&str>, at: Option<usize>) -> fmt::Result {
    match (field, at) {
        (Some(path), Some(at)) => write!(f, " (field `{path}`, at byte {at})"),
        (Some(path), None) => write!(f, " (field `{path}`)"),
        (None, Some(at)) => write!(f, " (at byte {at})"),
        (None, None) => Ok(()),
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CodecError::*;
        match self {
            FrameTooLarge { what, size, limit } => {
                write!(f, "{what} frame is {size} bytes, over the {limit} byte size limit")
            }
            DocumentTooLarge { what, size, limit } => {
                write!(f, "{what} is {size} bytes, over the {limit} byte size limit")
            }
            EmptyFrame { what } => write!(f, "truncated frame: empty {what} frame"),
            TrailingBytes { what, extra, at } => {
                write!(f, "trailing bytes: {extra} bytes after the end of the {what} at byte {at}")
            }
            MalformedCbor(m) => {
                write!(f, "malformed {}: {}", m.what, m.cause)?;
                malformed_suffix(f, m.field.as_deref(), Some(m.at))
            }
            MalformedJson { what, cause, field } => {
                write!(f, "malformed {what}: {cause}")?;
                malformed_suffix(f, field.as_deref(), None)
            }
            PayloadJson(e) => write!(f, "payload JSON cannot be converted: {e}"),
            MissingKey { container, key } => write!(f, "{container} is missing {key:?}"),
            NestedTooDeep { limit } => write!(f, "value nested deeper than {limit} levels"),
            ReceiptWithoutEnvelope => f.write_str("an unsigned message has no envelope to carry a receipt or a commitment"),
            MultiKeyMetadata { model, keys } => write!(
                f,
                "models[{model}].capabilities.metadata has {keys} keys; at most one may be emitted, \
                 since the reference's HashMap order makes a multi-key map unverifiable"
            ),
            DoesNotFit { value: Some(v), target } => write!(f, "{v} does not fit in {target}"),
            DoesNotFit { value: None, target } => write!(f, "does not fit in {target}"),
            Negative => f.write_str("must not be negative"),
            UintRange { bits } => write!(f, "must be an integer in 0..=2**{bits}-1"),
            ReceiptTimestamp => f.write_str("receipt \"timestamp\" must be in 0..=2**64-1"),
            NotWei(text) => write!(f, "must be a non-negative decimal integer string of wei, got {text:?}"),
            TemperatureNotFinite { value, context: TemperatureUse::Commitment } => {
                write!(f, "temperature must be a finite number, got {value}")
            }
            TemperatureNotFinite { value, context: TemperatureUse::Wire } => {
                write!(f, "temperature must be finite, got {value}")
            }
            TemperatureRange { value, scaled: Some(s) } => {
                write!(f, "temperature {value} gives round(t*10000) = {s}, outside uint32")
            }
            TemperatureRange { value, scaled: None } => write!(f, "temperature {value} is out of the f32 range"),
            Length { what, expected, got } => write!(f, "{what} must be {expected} bytes, got {got}"),
            ByteCount { expected, got } => write!(f, "must be {expected} bytes, got {got}"),
            ReceiptLength { key, expected, got } => write!(f, "receipt {key:?} must be {expected} bytes, got {got}"),
            ReceiptHex { key, text } => write!(f, "receipt {key:?} is not hex: {text:?}"),
            SignerAddress => f.write_str("PrivateKey.address_bytes is not 20 bytes"),
            Address(e) => e.fmt(f),
            Key(e) => e.fmt(f),
            Signature(e) => e.fmt(f),
            Encode { context, detail } => write!(f, "{context}: {detail}"),
            UnknownEncoding { name, known } => {
                write!(f, "unknown encoding {name:?}; known encodings: {}", known.join(", "))
            }
            Field { field, cause } => write!(f, "{field}: {cause}"),
        }
    }
}

impl std::error::Error for CodecError {}

impl From<SignatureError> for CodecError {
    fn from(e: SignatureError) -> Self {
        CodecError::Signature(e)
    }
}

impl From<KeyError> for CodecError {
    fn from(e: KeyError) -> Self {
        CodecError::Key(e)
    }
}

impl From<AddressError> for CodecError {
    fn from(e: AddressError) -> Self {
        CodecError::Address(e)
    }
}

/// Raised in Python as `lloom_executor._native.CodecError(message)`. The
/// message is formatted only here, on the error path.
impl From<CodecError> for PyErr {
    fn from(e: CodecError) -> PyErr {
        py::CodecError::new_err(e.to_string())
    }
}

/// Register the exception class on the module.
pub fn register(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    m.add("CodecError", m.py().get_type::<py::CodecError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Results of the hot path carry this type: keep it a few words wide.
    #[test]
    fn error_is_small() {
        assert!(std::mem::size_of::<CodecError>() <= 64, "{}", std::mem::size_of::<CodecError>());
    }

    #[test]
    fn messages_keep_their_wording() {
        let cases: Vec<(CodecError, &str)> = vec![
            (
                CodecError::FrameTooLarge { what: "RequestMessage", size: 9, limit: 8 },
                "RequestMessage frame is 9 bytes, over the 8 byte size limit",
            ),
            (CodecError::EmptyFrame { what: "ResponseMessage" }, "truncated frame: empty ResponseMessage frame"),
            (
                CodecError::TrailingBytes { what: "RequestMessage", extra: 2, at: 10 },
                "trailing bytes: 2 bytes after the end of the RequestMessage at byte 10",
            ),
            (SignatureError::Length(64).into(), "signature must be 65 bytes (r||s||v), got 64"),
            (KeyError::Length(31).into(), "private key must be 32 bytes, got 31"),
            (
                CodecError::UintRange { bits: 32 }.in_field("max_tokens"),
                "max_tokens: must be an integer in 0..=2**32-1",
            ),
            (
                CodecError::DoesNotFit { value: Some("1".repeat(3)), target: "uint256" }.in_field("inbound_price"),
                "inbound_price: 111 does not fit in uint256",
            ),
            (
                CodecError::MissingKey { container: "receipt", key: "digest" },
                "receipt is missing \"digest\"",
            ),
            (
                CodecError::UnknownEncoding { name: "x".into(), known: &["a", "b"] },
                "unknown encoding \"x\"; known encodings: a, b",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn field_keeps_the_class_of_its_cause() {
        let e = CodecError::from(AddressError::NotHex("0xzz".into())).in_field("executor");
        assert_eq!(e.class(), ErrorClass::Bytes);
        assert_eq!(e.to_string(), "executor: address \"0xzz\" is not hex");
    }
}
