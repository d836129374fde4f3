//! A strict, bounded serde `Deserializer` for CBOR frames.
//!
//! Why not cbor4ii's deserializer (which the reference uses): cbor4ii 0.3
//! checks an item's major type with a bit mask, so where it expects text it
//! also takes an unsigned integer as a string *length* or a byte string as
//! text, and where it expects an array or a map it takes an integer as the
//! element count. Such frames then fail later with a misleading message (or
//! are silently accepted). Nothing the reference *writes* depends on that,
//! so we decode strictly and say precisely what is wrong, and where. It also
//! accepts what PROTOCOL.md asks a decoder to accept: any float width
//! (f16/f32/f64, or an integer) where a float is expected; hex text for bytes
//! is handled by `lenient` through `deserialize_any`.
//!
//! Nesting is bounded (`MAX_DEPTH`, the reference decoder's own limit), so
//! hostile input cannot overflow the stack; every length is checked against
//! the bytes actually present before anything is allocated.

use serde::de::{self, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, VariantAccess, Visitor};

pub use super::decode_error::DecodeError;

pub const MAX_DEPTH: usize = 256;

type Result<T> = std::result::Result<T, DecodeError>;

/// The break marker ending an indefinite-length item.
pub(super) const BREAK: u8 = 0xff;

/// One item header: major type and argument (`None`: indefinite length).
#[derive(Clone, Copy)]
struct Head {
    major: u8,
    arg: Option<u64>,
}

fn f16_to_f32(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let magnitude = match exp {
        0 => mant as f32 / 16_777_216.0, // subnormal (and zero): mant · 2^-24
        31 => f32::from_bits(0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(((exp + 112) << 23) | (mant << 13)),
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

pub struct Deserializer<'de> {
    buf: &'de [u8],
    pub pos: usize,
    depth_left: usize,
    /// Deepest nesting reached so far (decides whether a failed decode may
    /// be re-run with path tracking, which costs more stack per level).
    pub deepest: usize,
}

impl<'de> Deserializer<'de> {
    pub fn new(buf: &'de [u8]) -> Self {
        Deserializer {
            buf,
            pos: 0,
            depth_left: MAX_DEPTH,
            deepest: 0,
        }
    }

    fn eof(&self, what: &'static str) -> DecodeError {
        DecodeError::Eof {
            len: self.buf.len(),
            reading: what,
        }
    }

    fn peek(&self, what: &'static str) -> Result<u8> {
        self.buf.get(self.pos).copied().ok_or_else(|| self.eof(what))
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'de [u8]> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(DecodeError::Short {
                what,
                needed: n,
                left,
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn head(&mut self, what: &'static str) -> Result<Head> {
        let byte = self.peek(what)?;
        let major = byte >> 5;
        let info = byte & 0x1f;
        self.pos += 1;
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => {
                let raw = self.take(1 << (info - 24), what)?;
                Some(raw.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
            }
            31 if matches!(major, 2..=5) => None,
            _ => {
                return Err(DecodeError::InitialByte { byte, reading: what })
            }
        };
        Ok(Head { major, arg })
    }

    /// Enter one nesting level; the guard is released by `leave`.
    fn enter(&mut self) -> Result<()> {
        self.depth_left = self
            .depth_left
            .checked_sub(1)
            .ok_or(DecodeError::TooDeep)?;
        self.deepest = self.deepest.max(MAX_DEPTH - self.depth_left);
        Ok(())
    }

    fn leave(&mut self) {
        self.depth_left += 1;
    }

    fn mismatch(&self, expected: &'static str) -> DecodeError {
        match self.buf.get(self.pos) {
            Some(&byte) => DecodeError::WrongType { expected, byte },
            None => self.eof(expected),
        }
    }

    fn expect_major(&self, major: u8, expected: &'static str) -> Result<()> {
        match self.buf.get(self.pos) {
            Some(&b) if b >> 5 == major && b != BREAK => Ok(()),
            _ => Err(self.mismatch(expected)),
        }
    }

    fn read_uint(&mut self, expected: &'static str) -> Result<u64> {
        self.expect_major(0, expected)?;
        Ok(self.head(expected)?.arg.unwrap_or(0))
    }

    fn read_int(&mut self, expected: &'static str) -> Result<i128> {
        match self.peek(expected)? >> 5 {
            0 => Ok(i128::from(self.head(expected)?.arg.unwrap_or(0))),
            1 => Ok(-1 - i128::from(self.head(expected)?.arg.unwrap_or(0))),
            _ => Err(self.mismatch(expected)),
        }
    }

    fn read_float(&mut self) -> Result<f64> {
        let what = "a float";
        match self.peek(what)? {
            0xf9 => {
                self.pos += 1;
                let b = self.take(2, what)?;
                Ok(f64::from(f16_to_f32(u16::from_be_bytes([b[0], b[1]]))))
            }
            0xfa => {
                self.pos += 1;
                let b = self.take(4, what)?;
                Ok(f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])))
            }
            0xfb => {
                self.pos += 1;
                let b = self.take(8, what)?;
                Ok(f64::from_be_bytes(b.try_into().expect("8 bytes")))
            }
            b if b >> 5 <= 1 => Ok(self.read_int(what)? as f64),
            _ => Err(self.mismatch(what)),
        }
    }

    /// Definite or indefinite (chunked) string of `major` 2 or 3.
    fn read_chunks(&mut self, head: Head, what: &'static str) -> Result<std::borrow::Cow<'de, [u8]>> {
        match head.arg {
            Some(n) => Ok(self.take(n, what)?.into()),
            None => {
                let mut out = Vec::new();
                loop {
                    if self.peek(what)? == BREAK {
                        self.pos += 1;
                        return Ok(out.into());
                    }
                    self.expect_major(head.major, what)?;
                    let chunk = self.head(what)?;
                    let n = chunk
                        .arg
                        .ok_or(DecodeError::NestedIndefinite { what })?;
                    out.extend_from_slice(self.take(n, what)?);
                }
            }
        }
    }

    fn read_text(&mut self) -> Result<std::borrow::Cow<'de, str>> {
        let what = "a text string";
        self.expect_major(3, what)?;
        let head = self.head(what)?;
        let start = self.pos;
        match self.read_chunks(head, what)? {
            std::borrow::Cow::Borrowed(b) => std::str::from_utf8(b)
                .map(Into::into)
                .map_err(|_| DecodeError::Utf8 { at: start }),
            std::borrow::Cow::Owned(v) => String::from_utf8(v)
                .map(Into::into)
                .map_err(|_| DecodeError::Utf8 { at: start }),
        }
    }

    /// Skip one item of any type (unknown fields), bounded like everything else.
    fn skip(&mut self) -> Result<()> {
        let what = "an ignored value";
        let byte = self.peek(what)?;
        match byte >> 5 {
            0 | 1 => {
                self.head(what)?;
            }
            2 | 3 => {
                let head = self.head(what)?;
                self.read_chunks(head, what)?;
            }
            4 | 5 => {
                let head = self.head(what)?;
                let per_entry = if head.major == 5 { 2 } else { 1 };
                self.enter()?;
                match head.arg {
                    Some(n) => {
                        for _ in 0..n {
                            for _ in 0..per_entry {
                                self.skip()?;
                            }
                        }
                    }
                    None => loop {
                        if self.peek(what)? == BREAK {
                            self.pos += 1;
                            break;
                        }
                        for _ in 0..per_entry {
                            self.skip()?;
                        }
                    },
                }
                self.leave();
            }
            6 => {
                self.head(what)?;
                self.enter()?;
                self.skip()?;
                self.leave();
            }
            _ => match byte {
                0xf4..=0xf7 => self.pos += 1,
                0xf9 => {
                    self.pos += 1;
                    self.take(2, what)?;
                }
                0xfa => {
                    self.pos += 1;
                    self.take(4, what)?;
                }
                0xfb => {
                    self.pos += 1;
                    self.take(8, what)?;
                }
                _ => return Err(DecodeError::Simple { byte }),
            },
        }
        Ok(())
    }

    fn visit_container<V: Visitor<'de>>(&mut self, visitor: V, major: u8, what: &'static str) -> Result<V::Value> {
        self.expect_major(major, what)?;
        let head = self.head(what)?;
        self.enter()?;
        let mut access = Access {
            de: self,
            left: head.arg,
        };
        let value = if major == 4 {
            visitor.visit_seq(&mut access)?
        } else {
            visitor.visit_map(&mut access)?
        };
        access.finish(what)?;
        self.leave();
        Ok(value)
    }
}

/// Elements of an array or entries of a map, definite or indefinite.
struct Access<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: Option<u64>,
}

impl<'de> Access<'_, 'de> {
    fn has_next(&mut self) -> Result<bool> {
        match self.left.as_mut() {
            Some(0) => Ok(false),
            Some(n) => {
                *n -= 1;
                Ok(true)
            }
            None => {
                if self.de.peek("an element or a break marker")? == BREAK {
                    self.de.pos += 1;
                    self.left = Some(0);
                    Ok(false)
                } else {
                    Ok(true)
                }
            }
        }
    }

    /// A visitor that stopped early (a fixed-size tuple) leaves items behind.
    fn finish(&mut self, what: &'static str) -> Result<()> {
        if self.has_next()? {
            return Err(DecodeError::ExtraEntries { what });
        }
        Ok(())
    }
}

impl<'de> SeqAccess<'de> for &mut Access<'_, 'de> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.has_next()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        // Only a hint: serde caps pre-allocation, and a lying length fails
        // on the bytes that are not there.
        self.left.map(|n| n.min(4096) as usize)
    }
}

impl<'de> MapAccess<'de> for &mut Access<'_, 'de> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.has_next()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        self.left.map(|n| n.min(4096) as usize)
    }
}

/// An externally tagged enum: `"Variant"` or `{"Variant": value}`.
struct Enum<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    has_value: bool,
}

impl<'de> EnumAccess<'de> for Enum<'_, 'de> {
    type Error = DecodeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let name = self.de.read_text()?;
        let variant = seed.deserialize(name.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> for Enum<'_, 'de> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<()> {
        if self.has_value {
            // {"Variant": null} or {"Variant": []} as serde writes a unit.
            match self.de.peek("a unit value")? {
                0xf6 | 0xf7 | 0x80 => {
                    self.de.pos += 1;
                    Ok(())
                }
                _ => Err(self.de.mismatch("null for a variant without data")),
            }
        } else {
            Ok(())
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        if !self.has_value {
            return Err(DecodeError::Enum(
                "variant with data written as bare text (expected a one-entry map)",
            ));
        }
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        if !self.has_value {
            return Err(DecodeError::Enum("tuple variant written as bare text"));
        }
        self.de.visit_container(visitor, 4, "an array")
    }

    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], visitor: V) -> Result<V::Value> {
        if !self.has_value {
            return Err(DecodeError::Enum("struct variant written as bare text"));
        }
        self.de.visit_container(visitor, 5, "a map")
    }
}

macro_rules! uint {
    ($method:ident, $visit:ident, $ty:ty, $name:literal) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            let n = self.read_uint(concat!("an unsigned integer (", $name, ")"))?;
            let v = <$ty>::try_from(n).map_err(|_| DecodeError::IntRange { arg: n, negative: false, ty: $name })?;
            visitor.$visit(v)
        }
    };
}

/// An integer read by `read_int` that does not fit its target.
fn int_range(n: i128, ty: &'static str) -> DecodeError {
    if n < 0 {
        DecodeError::IntRange { arg: (-1 - n) as u64, negative: true, ty }
    } else {
        DecodeError::IntRange { arg: n as u64, negative: false, ty }
    }
}

macro_rules! sint {
    ($method:ident, $visit:ident, $ty:ty, $name:literal) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            let n = self.read_int(concat!("an integer (", $name, ")"))?;
            let v = <$ty>::try_from(n).map_err(|_| int_range(n, $name))?;
            visitor.$visit(v)
        }
    };
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let what = "a value";
        let byte = self.peek(what)?;
        match byte >> 5 {
            0 => visitor.visit_u64(self.read_uint(what)?),
            1 => {
                let n = self.read_int(what)?;
                match i64::try_from(n) {
                    Ok(v) => visitor.visit_i64(v),
                    Err(_) => visitor.visit_i128(n),
                }
            }
            2 => {
                let head = self.head(what)?;
                match self.read_chunks(head, "a byte string")? {
                    std::borrow::Cow::Borrowed(b) => visitor.visit_borrowed_bytes(b),
                    std::borrow::Cow::Owned(v) => visitor.visit_byte_buf(v),
                }
            }
            3 => match self.read_text()? {
                std::borrow::Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
                std::borrow::Cow::Owned(s) => visitor.visit_string(s),
            },
            // A generic value costs two levels per container, as in cbor4ii
            // (its `deserialize_any` and `deserialize_seq` each step in):
            // generic values nest at most MAX_DEPTH / 2 deep, exactly what
            // the reference accepts for its `serde_json::Value` fields, and
            // their deeper per-level stack use stays bounded.
            4 | 5 => {
                self.enter()?;
                let (major, what) = if byte >> 5 == 4 { (4, "an array") } else { (5, "a map") };
                let value = self.visit_container(visitor, major, what);
                self.leave();
                value
            }
            6 => Err(DecodeError::Tag { byte }),
            _ => match byte {
                0xf4 => {
                    self.pos += 1;
                    visitor.visit_bool(false)
                }
                0xf5 => {
                    self.pos += 1;
                    visitor.visit_bool(true)
                }
                0xf6 | 0xf7 => {
                    self.pos += 1;
                    visitor.visit_none()
                }
                0xf9 | 0xfa => visitor.visit_f32(self.read_float()? as f32),
                0xfb => visitor.visit_f64(self.read_float()?),
                _ => Err(DecodeError::Simple { byte }),
            },
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek("a bool")? {
            0xf4 => {
                self.pos += 1;
                visitor.visit_bool(false)
            }
            0xf5 => {
                self.pos += 1;
                visitor.visit_bool(true)
            }
            _ => Err(self.mismatch("a bool")),
        }
    }

    uint!(deserialize_u8, visit_u8, u8, "u8");
    uint!(deserialize_u16, visit_u16, u16, "u16");
    uint!(deserialize_u32, visit_u32, u32, "u32");
    uint!(deserialize_u64, visit_u64, u64, "u64");
    sint!(deserialize_i8, visit_i8, i8, "i8");
    sint!(deserialize_i16, visit_i16, i16, "i16");
    sint!(deserialize_i32, visit_i32, i32, "i32");
    sint!(deserialize_i64, visit_i64, i64, "i64");
    sint!(deserialize_i128, visit_i128, i128, "i128");
    sint!(deserialize_u128, visit_u128, u128, "u128");

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let v = self.read_float()?;
        let n = v as f32;
        if v.is_finite() && !n.is_finite() {
            return Err(DecodeError::F32Range { value: v });
        }
        visitor.visit_f32(n)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(self.read_float()?)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let s = self.read_text()?;
        let mut chars = s.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(DecodeError::NotOneChar),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.read_text()? {
            std::borrow::Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
            std::borrow::Cow::Owned(s) => visitor.visit_string(s),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.expect_major(2, "a byte string")?;
        let head = self.head("a byte string")?;
        match self.read_chunks(head, "a byte string")? {
            std::borrow::Cow::Borrowed(b) => visitor.visit_borrowed_bytes(b),
            std::borrow::Cow::Owned(v) => visitor.visit_byte_buf(v),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek("an optional value")? {
            0xf6 | 0xf7 => {
                self.pos += 1;
                visitor.visit_none()
            }
            _ => {
                self.enter()?;
                let v = visitor.visit_some(&mut *self)?;
                self.leave();
                Ok(v)
            }
        }
    }

    /// serde's unit: cbor4ii writes it as an empty array; null is accepted too.
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek("a unit value")? {
            0xf6 | 0xf7 | 0x80 => {
                self.pos += 1;
                visitor.visit_unit()
            }
            _ => Err(self.mismatch("a unit value (null or an empty array)")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.visit_container(visitor, 4, "an array")
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        self.expect_major(4, "an array")?;
        if let Some(&b) = self.buf.get(self.pos) {
            let info = b & 0x1f;
            if info < 24 && usize::from(info) != len {
                return Err(DecodeError::ArrayLength { expected: len, found: info });
            }
        }
        self.visit_container(visitor, 4, "an array")
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.visit_container(visitor, 5, "a map")
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.visit_container(visitor, 5, "a map")
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let what = "an enum (a variant name or a one-entry map)";
        let byte = self.peek(what)?;
        self.enter()?;
        let value = match byte {
            b if b >> 5 == 3 => visitor.visit_enum(Enum {
                de: &mut *self,
                has_value: false,
            })?,
            0xa1 => {
                self.pos += 1;
                visitor.visit_enum(Enum {
                    de: &mut *self,
                    has_value: true,
                })?
            }
            b if b >> 5 == 5 => {
                return Err(DecodeError::Enum("an enum must be a one-entry map {\"Variant\": value}"));
            }
            _ => return Err(self.mismatch(what)),
        };
        self.leave();
        Ok(value)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.skip()?;
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn half_floats() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0x3800), 0.5);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
