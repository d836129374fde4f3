//! Deserializers that accept what the protocol says a decoder should accept
//! (PROTOCOL.md §3): `0x…` hex text where bytes are expected, and any float
//! width (or an integer) where a float is expected.
//!
//! alloy's own `Deserialize` for `Address`/`Bytes` only reads a CBOR byte
//! string from a non-human-readable deserializer, and cbor4ii's `f32` only
//! reads a `0xfa` single float; these helpers go through `deserialize_any`
//! instead, so both CBOR and JSON inputs take the same lenient path.
//! Serialization is untouched: the derived impls write what the reference writes.

use super::jval::JVal;
use super::types::EnvelopeReceipt;
use alloy_primitives::{Address, Bytes};
use serde::Deserialize;
use serde::de::{self, SeqAccess, Visitor};
use serde::Deserializer;
use std::fmt;

/// Hex text with or without `0x`, either case.
fn parse_hex<E: de::Error>(text: &str) -> Result<Vec<u8>, E> {
    let body = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    hex::decode(body).map_err(|_| E::custom(format!("invalid hex text {:?}", truncate(text))))
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Raw bytes, hex text or an array of small integers.
struct ByteVisitor {
    exact_len: Option<usize>,
}

impl<'de> Visitor<'de> for ByteVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.exact_len {
            Some(n) => write!(f, "{n} bytes as a byte string or 0x-hex text"),
            None => f.write_str("bytes as a byte string or 0x-hex text"),
        }
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        self.check(v.to_vec())
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        self.check(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        self.check(parse_hex(v)?)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        self.check(out)
    }
}

impl ByteVisitor {
    fn check<E: de::Error>(&self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        match self.exact_len {
            Some(n) if v.len() != n => Err(E::custom(format!("expected {n} bytes, got {}", v.len()))),
            _ => Ok(v),
        }
    }
}

pub fn address<'de, D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
    let raw = d.deserialize_any(ByteVisitor { exact_len: Some(20) })?;
    Ok(Address::from_slice(&raw))
}

/// Any length: a signature of the wrong length is a bad signature, not a
/// malformed frame (it makes `signature_valid` false).
pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    d.deserialize_any(ByteVisitor { exact_len: None }).map(Bytes::from)
}

/// A float of any CBOR width (f16/f32/f64) or an integer.
struct FloatVisitor;

impl<'de> Visitor<'de> for FloatVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
}

fn narrow<E: de::Error>(v: f64) -> Result<f32, E> {
    let n = v as f32;
    if v.is_finite() && !n.is_finite() {
        return Err(E::custom(format!("{v:e} is out of the f32 range")));
    }
    Ok(n)
}

macro_rules! opt_visitor {
    ($name:ident, $ty:ty, $conv:expr) => {
        pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Option<$ty>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("null or a number")
                }
                fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                    let v = d.deserialize_any(FloatVisitor)?;
                    let conv: fn(f64) -> Result<$ty, D2::Error> = $conv;
                    conv(v).map(Some)
                }
            }
            d.deserialize_option(V)
        }
    };
}

opt_visitor!(opt_f32, f32, narrow);
opt_visitor!(opt_f64, f64, Ok);

/// The envelope's optional `receipt`: any JSON-like value; `null` is absent.
/// Never fails on the receipt's *shape* (see `EnvelopeReceipt`).
pub fn receipt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<EnvelopeReceipt>, D::Error> {
    Ok(match JVal::deserialize(d)? {
        JVal::Null => None,
        value => Some(EnvelopeReceipt::from_jval(value)),
    })
}

/// An envelope extension kept as any JSON-like value; `null` is absent.
pub fn extension<'de, D: Deserializer<'de>>(d: D) -> Result<Option<JVal>, D::Error> {
    Ok(match JVal::deserialize(d)? {
        JVal::Null => None,
        value => Some(value),
    })
}
