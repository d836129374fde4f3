//! Token counting for limits and fallback pricing, with OpenAI's BPE
//! encodings (cl100k_base, o200k_base) from tiktoken-rs, whose rank tables are
//! compiled into the binary: nothing is downloaded at run time.
//!
//! Counting is `encode_ordinary` (special-token text such as `<|endoftext|>`
//! is ordinary text, as a backend's tokenizer treats user content) without
//! ever materialising the ids on the Python side. Each encoding is built once,
//! lazily, by tiktoken-rs' singletons.

use std::borrow::Cow;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use rayon::prelude::*;
use tiktoken_rs::{cl100k_base_singleton, o200k_base_singleton, CoreBPE};

use crate::error::CodecError;

pub const ENCODINGS: [&str; 2] = ["cl100k_base", "o200k_base"];

/// Below this many bytes in a whole batch, one thread is faster than fanning
/// out to rayon's pool.
const PARALLEL_MIN_BYTES: usize = 16 * 1024;

/// Which encoding a name means; resolving it builds nothing yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Cl100kBase,
    O200kBase,
}

impl Encoding {
    pub fn from_name(name: &str) -> Result<Self, CodecError> {
        match name {
            "cl100k_base" => Ok(Encoding::Cl100kBase),
            "o200k_base" => Ok(Encoding::O200kBase),
            other => Err(CodecError::UnknownEncoding { name: other.to_owned(), known: &ENCODINGS }),
        }
    }

    /// The shared BPE; the first call per encoding parses its rank table (~0.1-0.3 s).
    pub fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::Cl100kBase => cl100k_base_singleton(),
            Encoding::O200kBase => o200k_base_singleton(),
        }
    }

    pub fn count(self, text: &str) -> usize {
        if text.is_empty() {
            return 0;
        }
        self.bpe().encode_ordinary(text).len()
    }
}

fn encoding_arg(name: &str) -> PyResult<Encoding> {
    Ok(Encoding::from_name(name)?)
}

/// The UTF-8 text of a str, borrowed. A str with surrogates (not UTF-8) is
/// first repaired exactly as tiktoken's `encode_ordinary` does: a round trip
/// through UTF-16 that joins surrogate pairs and turns lone ones into U+FFFD.
fn text_of<'a>(s: &'a Bound<'_, PyString>) -> PyResult<Cow<'a, str>> {
    if let Ok(text) = s.to_str() {
        return Ok(Cow::Borrowed(text));
    }
    let repaired = s
        .call_method1("encode", ("utf-16", "surrogatepass"))?
        .call_method1("decode", ("utf-16", "replace"))?;
    Ok(Cow::Owned(repaired.downcast_into::<PyString>()?.to_str()?.to_owned()))
}

/// Number of tokens `text` encodes to (as tiktoken's `encode_ordinary`).
#[pyfunction]
fn count_tokens(py: Python<'_>, text: &Bound<'_, PyString>, encoding: &str) -> PyResult<usize> {
    let enc = encoding_arg(encoding)?;
    let text = text_of(text)?;
    Ok(py.allow_threads(|| enc.count(&text)))
}

/// Token counts of many texts at once, spread over all cores with the GIL
/// released. The strs are borrowed, not copied: `held` keeps every one alive
/// while Rust reads them, even if the caller's list changes meanwhile.
#[pyfunction]
fn count_tokens_batch(py: Python<'_>, texts: &Bound<'_, PyAny>, encoding: &str) -> PyResult<Vec<usize>> {
    let enc = encoding_arg(encoding)?;
    if texts.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("texts must be a sequence of str, not a single str"));
    }
    let held: Vec<Bound<'_, PyString>> = texts
        .try_iter()?
        .enumerate()
        .map(|(i, item)| {
            item?
                .downcast_into::<PyString>()
                .map_err(|_| PyTypeError::new_err(format!("texts[{i}] is not a str")))
        })
        .collect::<PyResult<_>>()?;
    let strs: Vec<Cow<'_, str>> = held.iter().map(text_of).collect::<PyResult<_>>()?;
    let total: usize = strs.iter().map(|s| s.len()).sum();
    Ok(py.allow_threads(|| {
        if strs.len() > 1 && total >= PARALLEL_MIN_BYTES {
            strs.par_iter().map(|s| enc.count(s)).collect()
        } else {
            strs.iter().map(|s| enc.count(s)).collect()
        }
    }))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(count_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(count_tokens_batch, m)?)?;
    m.add("TOKEN_ENCODINGS", PyTuple::new(m.py(), ENCODINGS)?)?;
    Ok(())
}
