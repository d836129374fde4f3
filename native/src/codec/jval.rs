//! `JVal`: a JSON-like value that keeps map keys in the order they arrived.
//!
//! Why not `serde_json::Value`: without serde_json's `preserve_order` feature
//! its maps sort their keys, and a signature over a map (the reference's
//! `ModelCapabilities.metadata`, or a payload we have no struct for) can only
//! be checked by re-serializing the keys in the order the signer wrote them,
//! which is the order they arrive in. Turning `preserve_order` on for the whole
//! crate would silently change every other user of `serde_json::Value`.
//!
//! It also keeps two distinctions that `serde_json::Value` loses and that
//! change the signed JSON text: a CBOR single float stays an `f32` (written in
//! its shortest f32 form), and a CBOR byte string stays bytes (written as
//! lowercase `0x…` hex in JSON, as alloy's `Address`/`Bytes`/`B256` do).

use indexmap::IndexMap;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum JVal {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Str(String),
    Bytes(Vec<u8>),
    Array(Vec<JVal>),
    Object(IndexMap<String, JVal>),
}

impl Serialize for JVal {
    /// Mirrors `serde_json::Value`'s `Serialize`, plus the f32 and bytes cases
    /// above, and one fix: in CBOR a null is written as CBOR null (0xf6).
    /// serde_json::Value writes a unit, which cbor4ii encodes as an empty
    /// array, so a null did not survive a CBOR trip and a signature over it no
    /// longer verified (found by `fuzz_tests`). JSON is unchanged (`null`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            JVal::Null if s.is_human_readable() => s.serialize_unit(),
            JVal::Null => s.serialize_none(),
            JVal::Bool(b) => s.serialize_bool(*b),
            JVal::U64(n) => s.serialize_u64(*n),
            JVal::I64(n) => s.serialize_i64(*n),
            JVal::F32(f) => s.serialize_f32(*f),
            JVal::F64(f) => s.serialize_f64(*f),
            JVal::Str(t) => s.serialize_str(t),
            JVal::Bytes(b) => {
                if s.is_human_readable() {
                    s.serialize_str(&format!("0x{}", hex::encode(b)))
                } else {
                    s.serialize_bytes(b)
                }
            }
            JVal::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            JVal::Object(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

struct JValVisitor;

impl<'de> Visitor<'de> for JValVisitor {
    type Value = JVal;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-compatible value (null, bool, number, text, bytes, array or map with text keys)")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<JVal, E> {
        Ok(JVal::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<JVal, E> {
        Ok(JVal::U64(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<JVal, E> {
        // serde_json keeps non-negative integers as u64 whatever visitor saw them.
        Ok(if v >= 0 { JVal::U64(v as u64) } else { JVal::I64(v) })
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<JVal, E> {
        Ok(JVal::F32(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<JVal, E> {
        Ok(JVal::F64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<JVal, E> {
        Ok(JVal::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<JVal, E> {
        Ok(JVal::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<JVal, E> {
        Ok(JVal::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<JVal, E> {
        Ok(JVal::Bytes(v))
    }
    fn visit_none<E: de::Error>(self) -> Result<JVal, E> {
        Ok(JVal::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<JVal, E> {
        Ok(JVal::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<JVal, D::Error> {
        JVal::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JVal, A::Error> {
        // Cap the pre-allocation: the length prefix is attacker-controlled.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<JVal>()? {
            items.push(item);
        }
        Ok(JVal::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JVal, A::Error> {
        let mut out = IndexMap::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<JVal>()?;
            // A repeated key keeps its first position and takes the last value,
            // as serde_json's order-preserving map does.
            out.insert(key, value);
        }
        Ok(JVal::Object(out))
    }
}

impl<'de> Deserialize<'de> for JVal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JVal, D::Error> {
        d.deserialize_any(JValVisitor)
    }
}
