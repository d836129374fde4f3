//! `DecodeError`: why the strict CBOR deserializer (`cbor_de`) refused a
//! frame. Its own type (not a String) so `wire` can wrap it in a
//! `CodecError` that keeps the class (truncated, invalid CBOR, too deep,
//! wrong shape, out of range) and so tests can match on it.

use serde::de;
use std::fmt;

use super::cbor_de::{BREAK, MAX_DEPTH};
use crate::error::ErrorClass;

/// Why a frame does not decode; `wire` adds the message name, the field
/// path and the byte offset. Small and allocation-free except `Custom`
/// (serde's own messages: missing field, unknown variant, ...).
#[derive(Debug)]
pub enum DecodeError {
    /// The input ends (at byte `len`, its length) while reading `reading`.
    Eof { len: usize, reading: &'static str },
    /// A length prefix asks for `needed` bytes where only `left` remain.
    Short { what: &'static str, needed: u64, left: u64 },
    /// An initial byte with a reserved or misplaced additional-information value.
    InitialByte { byte: u8, reading: &'static str },
    /// An indefinite-length chunk inside an indefinite-length string.
    NestedIndefinite { what: &'static str },
    /// A text string (starting at byte `at`) that is not UTF-8.
    Utf8 { at: usize },
    /// A CBOR tag (major type 6) where a value is read.
    Tag { byte: u8 },
    /// A simple value other than false/true/null/undefined/floats.
    Simple { byte: u8 },
    /// More than `MAX_DEPTH` nested containers.
    TooDeep,
    /// The item starting with `byte` is not `expected`.
    WrongType { expected: &'static str, byte: u8 },
    /// A container with more entries than its fixed-size target takes.
    ExtraEntries { what: &'static str },
    /// An array of `found` elements for a tuple of `expected`.
    ArrayLength { expected: usize, found: u8 },
    /// An integer (`-1 - arg` when `negative`, else `arg`) outside `ty`.
    IntRange { arg: u64, negative: bool, ty: &'static str },
    /// A finite float too large for the f32 it is read into.
    F32Range { value: f64 },
    /// A `char` that is not exactly one character.
    NotOneChar,
    /// An enum written in a shape serde cannot take.
    Enum(&'static str),
    /// A message from serde or a `Deserialize` impl.
    Custom(String),
}

impl DecodeError {
    /// The failure class this error belongs to.
    pub fn class(&self) -> ErrorClass {
        use DecodeError::*;
        match self {
            Eof { .. } | Short { .. } => ErrorClass::Truncated,
            InitialByte { .. } | NestedIndefinite { .. } | Utf8 { .. } | Tag { .. } | Simple { .. } => {
                ErrorClass::InvalidCbor
            }
            TooDeep => ErrorClass::TooDeep,
            IntRange { .. } | F32Range { .. } => ErrorClass::OutOfRange,
            WrongType { .. } | ExtraEntries { .. } | ArrayLength { .. } | NotOneChar | Enum(_) | Custom(_) => {
                ErrorClass::Shape
            }
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeError::*;
        match self {
            Eof { len, reading } => write!(f, "truncated frame: input ends at byte {len} while reading {reading}"),
            Short { what, needed, left } => {
                write!(f, "truncated frame: {what} needs {needed} bytes, only {left} remain")
            }
            InitialByte { byte, reading } => write!(f, "invalid CBOR initial byte 0x{byte:02x} while reading {reading}"),
            NestedIndefinite { what } => write!(f, "nested indefinite chunk in {what}"),
            Utf8 { at } => write!(f, "text string at byte {at} is not valid UTF-8"),
            Tag { byte } => write!(f, "unsupported CBOR tag (initial byte 0x{byte:02x})"),
            Simple { byte } => write!(f, "unsupported CBOR simple value 0x{byte:02x}"),
            TooDeep => write!(f, "nesting too deep: more than {MAX_DEPTH} levels"),
            WrongType { expected, byte } => write!(f, "wrong type: expected {expected}, found {}", kind(*byte)),
            ExtraEntries { what } => write!(f, "{what} has more entries than expected"),
            ArrayLength { expected, found } => write!(f, "expected an array of {expected} elements, found {found}"),
            IntRange { arg, negative, ty } => {
                let value = if *negative { -1 - i128::from(*arg) } else { i128::from(*arg) };
                write!(f, "integer {value} out of range for {ty}")
            }
            F32Range { value } => write!(f, "{value:e} is out of the f32 range"),
            NotOneChar => f.write_str("expected a single character"),
            Enum(msg) => f.write_str(msg),
            Custom(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError::Custom(msg.to_string())
    }
}

/// What an item starting with `byte` is, for "wrong type" messages.
fn kind(byte: u8) -> &'static str {
    match byte >> 5 {
        0 => "an unsigned integer",
        1 => "a negative integer",
        2 => "a byte string",
        3 => "a text string",
        4 => "an array",
        5 => "a map",
        6 => "a tag",
        _ => match byte {
            0xf4 | 0xf5 => "a bool",
            0xf6 => "null",
            0xf7 => "undefined",
            0xf9..=0xfb => "a float",
            BREAK => "a break marker",
            _ => "a simple value",
        },
    }
}
