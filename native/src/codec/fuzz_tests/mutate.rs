//! Hostile inputs: mutations of valid frames (truncations, bit flips,
//! splices of two frames, inserted and deleted runs, huge declared lengths,
//! deep nesting) and random CBOR item trees that are well-formed but of any
//! shape. Positions are drawn as `usize` and taken modulo the input length,
//! so one mutation list applies to any frame and shrinks well.

use proptest::collection::vec;
use proptest::prelude::*;

/// Argument bytes that sit on the edges of what a head can say.
const INTERESTING: &[u8] = &[0x00, 0x17, 0x18, 0x1b, 0x1f, 0x5f, 0x7f, 0x9f, 0xbf, 0xc0, 0xf6, 0xf7, 0xfb, 0xff];

/// Units that open one nesting level each (array, indefinite array, one-entry
/// map with key "k", indefinite map with key "k", a tag).
const NESTERS: &[&[u8]] = &[b"\x81", b"\x9f", b"\xa1\x61k", b"\xbf\x61k", b"\xc6"];

#[derive(Debug, Clone)]
pub enum Mutation {
    Truncate(usize),
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
    /// This frame up to `cut`, then `other` from `from`.
    Splice { cut: usize, other: Vec<u8>, from: usize },
    /// A head at `at` replaced by one of the same major type declaring `len` items/bytes.
    HugeLength { at: usize, len: u64 },
    /// `depth` nesting units inserted at `at`, closed by one integer.
    Nest { at: usize, unit: usize, depth: usize },
}

impl Mutation {
    pub fn apply(&self, frame: &mut Vec<u8>) {
        let len = frame.len();
        let pos = |p: usize| if len == 0 { 0 } else { p % len };
        let cut = |p: usize| p % (len + 1);
        match self {
            Mutation::Truncate(at) => frame.truncate(cut(*at)),
            Mutation::FlipBit(at, bit) if len > 0 => frame[pos(*at)] ^= 1 << (bit % 8),
            Mutation::SetByte(at, byte) if len > 0 => frame[pos(*at)] = *byte,
            Mutation::Insert(at, bytes) => {
                let at = cut(*at);
                frame.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let at = cut(*at);
                frame.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate(at, n) => {
                let at = cut(*at);
                let run: Vec<u8> = frame[at..(at + n).min(len)].to_vec();
                frame.splice(at..at, run);
            }
            Mutation::Splice { cut: c, other, from } => {
                frame.truncate(cut(*c));
                frame.extend_from_slice(&other[from % (other.len() + 1)..]);
            }
            Mutation::HugeLength { at, len: declared } if len > 0 => {
                let at = pos(*at);
                let major = frame[at] & 0xe0;
                let mut head = vec![major | 27];
                head.extend_from_slice(&declared.to_be_bytes());
                frame.splice(at..at + 1, head);
            }
            Mutation::Nest { at, unit, depth } => {
                let at = cut(*at);
                let unit = NESTERS[unit % NESTERS.len()];
                let mut run: Vec<u8> = unit.iter().copied().cycle().take(unit.len() * depth).collect();
                run.push(0x00);
                frame.splice(at..at, run);
            }
            _ => {}
        }
    }
}

pub fn mutation(other: impl Strategy<Value = Vec<u8>> + 'static) -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![prop::sample::select(INTERESTING), any::<u8>()];
    let declared = prop_oneof![Just(u64::MAX), Just(1u64 << 32), Just(1u64 << 20), any::<u64>()];
    prop_oneof![
        3 => any::<usize>().prop_map(Mutation::Truncate),
        4 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::FlipBit(a, b)),
        3 => (any::<usize>(), byte.clone()).prop_map(|(a, b)| Mutation::SetByte(a, b)),
        2 => (any::<usize>(), vec(byte, 1..12)).prop_map(|(a, b)| Mutation::Insert(a, b)),
        2 => (any::<usize>(), 1..40usize).prop_map(|(a, n)| Mutation::Delete(a, n)),
        1 => (any::<usize>(), 1..64usize).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        2 => (any::<usize>(), other, any::<usize>()).prop_map(|(cut, other, from)| Mutation::Splice { cut, other, from }),
        2 => (any::<usize>(), declared).prop_map(|(at, len)| Mutation::HugeLength { at, len }),
        1 => (any::<usize>(), any::<usize>(), prop_oneof![1..40usize, 250..262usize, 1000..3000usize])
            .prop_map(|(at, unit, depth)| Mutation::Nest { at, unit, depth }),
    ]
}

/// One well-formed CBOR item of any shape (definite and indefinite
/// containers, every simple value and float width, tags), as bytes.
pub fn cbor_item() -> BoxedStrategy<Vec<u8>> {
    fn head(major: u8, arg: u64) -> Vec<u8> {
        let m = major << 5;
        match arg {
            0..=23 => vec![m | arg as u8],
            24..=0xff => vec![m | 24, arg as u8],
            0x100..=0xffff => [&[m | 25][..], &(arg as u16).to_be_bytes()].concat(),
            0x1_0000..=0xffff_ffff => [&[m | 26][..], &(arg as u32).to_be_bytes()].concat(),
            _ => [&[m | 27][..], &arg.to_be_bytes()].concat(),
        }
    }
    let int = prop_oneof![0..30u64, any::<u64>(), Just(u64::MAX)];
    let leaf = prop_oneof![
        (0..2u8, int).prop_map(|(major, arg)| head(major, arg)),
        vec(any::<u8>(), 0..20).prop_map(|b| [head(2, b.len() as u64), b].concat()),
        super::frames::text().prop_map(|t| [head(3, t.len() as u64), t.into_bytes()].concat()),
        vec(any::<u8>(), 0..12).prop_map(|b| [head(3, b.len() as u64), b].concat()), // maybe not UTF-8
        prop::sample::select(&[0xf4u8, 0xf5, 0xf6, 0xf7, 0xe0, 0xf0, 0xf8][..]).prop_map(|b| vec![b]),
        any::<u16>().prop_map(|h| [&[0xf9][..], &h.to_be_bytes()].concat()),
        any::<f32>().prop_map(|f| [&[0xfa][..], &f.to_be_bytes()].concat()),
        any::<f64>().prop_map(|f| [&[0xfb][..], &f.to_be_bytes()].concat()),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(|items| [head(4, items.len() as u64), items.concat()].concat()),
            vec(inner.clone(), 0..6).prop_map(|items| [vec![0x9f], items.concat(), vec![0xff]].concat()),
            vec((inner.clone(), inner.clone()), 0..5).prop_map(|kv| {
                let body: Vec<u8> = kv.iter().flat_map(|(k, v)| k.iter().chain(v)).copied().collect();
                [head(5, kv.len() as u64), body].concat()
            }),
            vec(inner.clone(), 0..4).prop_map(|chunks| [vec![0x5f], chunks.concat(), vec![0xff]].concat()),
            (int_tag(), inner).prop_map(|(tag, item)| [head(6, tag), item].concat()),
        ]
    })
    .boxed()
}

fn int_tag() -> impl Strategy<Value = u64> {
    prop_oneof![0..30u64, any::<u64>()]
}

/// A random item under a real variant name, so the decoder gets past the
/// enum layer and into the message structs: `{variant: item}`.
pub fn under_variant() -> impl Strategy<Value = Vec<u8>> {
    const VARIANTS: &[&str] = &[
        "LlmRequest",
        "SignedLlmRequest",
        "ModelAnnouncement",
        "ModelQuery",
        "ModelUpdate",
        "LlmResponse",
        "SignedLlmResponse",
        "ModelQueryResponse",
        "AcknowledgmentResponse",
    ];
    (prop::sample::select(VARIANTS), cbor_item()).prop_map(|(name, item)| {
        let mut out = vec![0xa1, 0x60 | name.len() as u8];
        out.extend_from_slice(name.as_bytes());
        out.extend(item);
        out
    })
}

/// Byte-level mutations of JSON plus JSON-specific hostility: deep arrays,
/// numbers beyond every integer and float type, lone surrogate escapes,
/// duplicate keys.
pub fn json_mutation() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let junk: Vec<Vec<u8>> = vec![
        b"[".repeat(200),
        b"[".repeat(5000),
        b"{\"a\":".repeat(300),
        b"1e999999".to_vec(),
        b"-1e-999999".to_vec(),
        b"18446744073709551616".to_vec(),
        b"-9223372036854775809".to_vec(),
        b"\"\\ud800\"".to_vec(),
        b"\"\\udc00\\ud800\"".to_vec(),
        b"\"timestamp\":1,\"timestamp\":2,".to_vec(),
        b"\"payload\":null,".to_vec(),
        b"null".to_vec(),
        b"\"\xff\xfe\"".to_vec(),
        b"\x00".to_vec(),
    ];
    (any::<usize>(), prop::sample::select(junk))
}
