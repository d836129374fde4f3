//! EIP-712 digests of the AccountingV2 commitments (PROTOCOL.md §7).
//!
//! The executor signs a `LlmResponseCommitment` for every served request and
//! must reproduce the client's `LlmRequestCommitment` digest (it is the
//! response's `requestHash`). Both are fixed-shape structs of static fields, so
//! the encoding is written out by hand (11 words each) instead of going
//! through a generic typed-data encoder: one keccak per text, one per struct,
//! one for the final `\x19\x01` digest.

use std::cell::RefCell;
use std::sync::LazyLock;

use alloy_primitives::U256;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyInt, PyString, PyTuple};

use crate::crypto::{checksum, keccak, sign, PrivateKey};
use crate::error::{AddressError, CodecError, TemperatureUse};

pub const DOMAIN_TYPE: &str =
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";
pub const REQUEST_TYPE: &str = "LlmRequestCommitment(address executor,string model,bytes32 promptHash,bytes32 systemPromptHash,uint32 maxTokens,uint32 temperature,uint256 inboundPrice,uint256 outboundPrice,uint64 nonce,uint64 deadline)";
pub const RESPONSE_TYPE: &str = "LlmResponseCommitment(bytes32 requestHash,address client,string model,bytes32 contentHash,uint32 inboundTokens,uint32 outboundTokens,uint256 inboundPrice,uint256 outboundPrice,uint64 timestamp,bool success)";
pub const DOMAIN_NAME: &str = "Lloom Network";
pub const DOMAIN_VERSION: &str = "1.0.0";

static DOMAIN_TYPE_HASH: LazyLock<[u8; 32]> = LazyLock::new(|| keccak(DOMAIN_TYPE.as_bytes()));
static REQUEST_TYPE_HASH: LazyLock<[u8; 32]> = LazyLock::new(|| keccak(REQUEST_TYPE.as_bytes()));
static RESPONSE_TYPE_HASH: LazyLock<[u8; 32]> = LazyLock::new(|| keccak(RESPONSE_TYPE.as_bytes()));

/// Texts at least this long (all texts of one call together) are hashed with
/// the GIL released; below it the release costs more than the hashing.
const RELEASE_GIL_TEXT_BYTES: usize = 4096;

/// Model names repeat on nearly every request, so each thread keeps the last
/// few names' hashes: a hit costs a short scan instead of a keccak permutation
/// (~0.2 µs, a fifth of a digest). Per thread, so no lock on the hot path.
const MODEL_CACHE_ENTRIES: usize = 16;
const MODEL_CACHE_MAX_LEN: usize = 128;

thread_local! {
    static MODEL_HASHES: RefCell<Vec<(Box<str>, [u8; 32])>> = const { RefCell::new(Vec::new()) };
}

/// keccak256 of a model name, memoised for short names.
pub fn model_hash(model: &str) -> [u8; 32] {
    if model.len() > MODEL_CACHE_MAX_LEN {
        return keccak(model.as_bytes());
    }
    MODEL_HASHES.with_borrow_mut(|cache| {
        if let Some((_, hash)) = cache.iter().find(|(name, _)| **name == *model) {
            return *hash;
        }
        let hash = keccak(model.as_bytes());
        if cache.len() == MODEL_CACHE_ENTRIES {
            cache.remove(0);
        }
        cache.push((model.into(), hash));
        hash
    })
}

/// `abi.encode` of a fixed list of static words, written in place.
struct Words<const N: usize> {
    buf: [[u8; 32]; N],
    at: usize,
}

impl<const N: usize> Words<N> {
    fn new(type_hash: &[u8; 32]) -> Self {
        let mut w = Words { buf: [[0u8; 32]; N], at: 0 };
        w.bytes32(type_hash);
        w
    }
    fn bytes32(&mut self, v: &[u8; 32]) {
        self.buf[self.at] = *v;
        self.at += 1;
    }
    fn address(&mut self, v: &[u8; 20]) {
        self.buf[self.at][12..].copy_from_slice(v);
        self.at += 1;
    }
    fn uint(&mut self, v: u64) {
        self.buf[self.at][24..].copy_from_slice(&v.to_be_bytes());
        self.at += 1;
    }
    fn uint256(&mut self, v: &U256) {
        self.buf[self.at] = v.to_be_bytes::<32>();
        self.at += 1;
    }
    fn hash(&self) -> [u8; 32] {
        debug_assert_eq!(self.at, N);
        keccak(self.buf.as_flattened())
    }
}

/// `keccak256(abi.encode(DOMAIN_TYPEHASH, name, version, chainId, verifyingContract))`.
pub fn domain_separator(chain_id: &U256, verifying_contract: &[u8; 20]) -> [u8; 32] {
    let mut w = Words::<5>::new(&DOMAIN_TYPE_HASH);
    w.bytes32(&keccak(DOMAIN_NAME.as_bytes()));
    w.bytes32(&keccak(DOMAIN_VERSION.as_bytes()));
    w.uint256(chain_id);
    w.address(verifying_contract);
    w.hash()
}

/// `keccak256("\x19\x01" ‖ domainSeparator ‖ structHash)`: what gets signed.
pub fn typed_digest(separator: &[u8; 32], struct_hash: &[u8; 32]) -> [u8; 32] {
    let mut buf = [0u8; 66];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(separator);
    buf[34..].copy_from_slice(struct_hash);
    keccak(&buf)
}

/// A client's request commitment; texts already reduced to their keccak hashes
/// (`model_hash` is keccak of the model name, as EIP-712 encodes `string`).
#[derive(Clone, Debug)]
pub struct RequestCommitment {
    pub executor: [u8; 20],
    pub model_hash: [u8; 32],
    pub prompt_hash: [u8; 32],
    pub system_prompt_hash: [u8; 32],
    pub max_tokens: u32,
    pub temperature: u32,
    pub inbound_price: U256,
    pub outbound_price: U256,
    pub nonce: u64,
    pub deadline: u64,
}

impl RequestCommitment {
    pub fn struct_hash(&self) -> [u8; 32] {
        let mut w = Words::<11>::new(&REQUEST_TYPE_HASH);
        w.address(&self.executor);
        w.bytes32(&self.model_hash);
        w.bytes32(&self.prompt_hash);
        w.bytes32(&self.system_prompt_hash);
        w.uint(self.max_tokens.into());
        w.uint(self.temperature.into());
        w.uint256(&self.inbound_price);
        w.uint256(&self.outbound_price);
        w.uint(self.nonce);
        w.uint(self.deadline);
        w.hash()
    }
}

/// The executor's response commitment (the receipt it signs).
#[derive(Clone, Debug)]
pub struct ResponseCommitment {
    pub request_hash: [u8; 32],
    pub client: [u8; 20],
    pub model_hash: [u8; 32],
    pub content_hash: [u8; 32],
    pub inbound_tokens: u32,
    pub outbound_tokens: u32,
    pub inbound_price: U256,
    pub outbound_price: U256,
    pub timestamp: u64,
    pub success: bool,
}

impl ResponseCommitment {
    pub fn struct_hash(&self) -> [u8; 32] {
        let mut w = Words::<11>::new(&RESPONSE_TYPE_HASH);
        w.bytes32(&self.request_hash);
        w.address(&self.client);
        w.bytes32(&self.model_hash);
        w.bytes32(&self.content_hash);
        w.uint(self.inbound_tokens.into());
        w.uint(self.outbound_tokens.into());
        w.uint256(&self.inbound_price);
        w.uint256(&self.outbound_price);
        w.uint(self.timestamp);
        w.uint(self.success.into());
        w.hash()
    }
}

/// Wire temperature: `round(t × 10000)` (half away from zero, as Rust's
/// `f64::round` in the reference client), refused unless it fits a uint32.
pub fn temperature_to_u32(t: f64) -> Result<u32, CodecError> {
    if !t.is_finite() {
        return Err(CodecError::TemperatureNotFinite { value: t, context: TemperatureUse::Commitment });
    }
    let scaled = (t * 10000.0).round();
    if !(0.0..=u32::MAX as f64).contains(&scaled) {
        return Err(CodecError::TemperatureRange { value: t, scaled: Some(scaled) });
    }
    Ok(scaled as u32)
}

/// A wei amount from its decimal text: digits only (no sign, no `_`, no
/// exponent), below 2**256.
pub fn parse_wei(text: &str) -> Result<U256, CodecError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodecError::NotWei(text.to_owned()));
    }
    if text.len() <= 19 {
        // Fits a u64 (19 digits < 2**64): the common case, without the bignum parser.
        return Ok(U256::from(text.bytes().fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'))));
    }
    U256::from_str_radix(text, 10).map_err(|_| CodecError::DoesNotFit {
        value: Some(text.to_owned()),
        target: "uint256",
    })
}

/// 20 address bytes from `0x`-prefixed (or bare) hex; mixed-case text must
/// carry a valid EIP-55 checksum, which catches typos in hand-written configs.
pub fn parse_address(text: &str) -> Result<[u8; 20], AddressError> {
    let body = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    if body.len() != 40 {
        return Err(AddressError::Length(text.to_owned()));
    }
    let mut out = [0u8; 20];
    hex::decode_to_slice(body, &mut out).map_err(|_| AddressError::NotHex(text.to_owned()))?;
    let has_upper = body.bytes().any(|b| b.is_ascii_uppercase());
    let has_lower = body.bytes().any(|b| b.is_ascii_lowercase());
    if has_upper && has_lower && checksum(&out)[2..] != *body {
        return Err(AddressError::Checksum(text.to_owned()));
    }
    Ok(out)
}

fn address_arg(obj: &Bound<'_, PyAny>, what: &'static str) -> PyResult<[u8; 20]> {
    if let Ok(b) = obj.downcast::<PyBytes>() {
        let raw = b.as_bytes();
        return raw.try_into().map_err(|_| {
            CodecError::Length { what: "address", expected: 20, got: raw.len() }
                .in_field(what)
                .into()
        });
    }
    if let Ok(s) = obj.downcast::<PyString>() {
        return parse_address(s.to_str()?).map_err(|e| CodecError::from(e).in_field(what).into());
    }
    Err(PyTypeError::new_err(format!("{what}: address must be 20 bytes or 0x-hex str")))
}

fn bytes32_arg(obj: &Bound<'_, PyAny>, what: &'static str) -> PyResult<[u8; 32]> {
    let b = obj
        .downcast::<PyBytes>()
        .map_err(|_| PyTypeError::new_err(format!("{what}: expected 32 bytes")))?;
    let raw = b.as_bytes();
    raw.try_into()
        .map_err(|_| CodecError::ByteCount { expected: 32, got: raw.len() }.in_field(what).into())
}

/// A uint256 from a decimal string of wei or a Python int.
fn u256_arg(obj: &Bound<'_, PyAny>, what: &'static str) -> PyResult<U256> {
    if let Ok(s) = obj.downcast::<PyString>() {
        return parse_wei(s.to_str()?).map_err(|e| e.in_field(what).into());
    }
    if obj.is_instance_of::<PyInt>() && !obj.is_instance_of::<PyBool>() {
        if let Ok(v) = obj.extract::<u128>() {
            return Ok(U256::from(v));
        }
        if obj.lt(0)? {
            return Err(CodecError::Negative.in_field(what).into());
        }
        let raw = obj
            .call_method1("to_bytes", (32, "big"))
            .map_err(|_| CodecError::DoesNotFit { value: None, target: "uint256" }.in_field(what))?;
        return Ok(U256::from_be_slice(raw.downcast::<PyBytes>()?.as_bytes()));
    }
    Err(PyTypeError::new_err(format!("{what}: expected a decimal str of wei or an int")))
}

/// An unsigned int of `bits` bits; out of range is a CodecError (a
/// ValueError, not pyo3's OverflowError) so callers catch one exception type
/// for bad input.
fn uint_arg(obj: &Bound<'_, PyAny>, what: &'static str, bits: u32) -> PyResult<u64> {
    if !obj.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!("{what}: expected an int")));
    }
    match obj.extract::<u64>() {
        Ok(v) if bits == 64 || v >> bits == 0 => Ok(v),
        _ => Err(CodecError::UintRange { bits }.in_field(what).into()),
    }
}

/// A text field: UTF-8 text to hash, an already computed 32-byte keccak hash,
/// or (system prompt only) missing, which EIP-712 encodes as the zero hash.
enum Text<'a> {
    Str(&'a str),
    Hash([u8; 32]),
    Missing,
}

impl Text<'_> {
    fn len(&self) -> usize {
        match self {
            Text::Str(s) => s.len(),
            _ => 0,
        }
    }
    fn hash(&self) -> [u8; 32] {
        match self {
            Text::Str(s) => keccak(s.as_bytes()),
            Text::Hash(h) => *h,
            Text::Missing => [0u8; 32],
        }
    }
}

fn text_arg<'a>(obj: &'a Bound<'_, PyAny>, what: &'static str, optional: bool) -> PyResult<Text<'a>> {
    if let Ok(s) = obj.downcast::<PyString>() {
        return Ok(Text::Str(s.to_str()?));
    }
    if obj.is_instance_of::<PyBytes>() {
        return bytes32_arg(obj, what).map(Text::Hash);
    }
    if optional && obj.is_none() {
        return Ok(Text::Missing);
    }
    let allowed = if optional { "str, 32-byte hash or None" } else { "str or 32-byte hash" };
    Err(PyTypeError::new_err(format!("{what}: expected {allowed}")))
}

/// Run `work` with the GIL released when the texts are large enough to matter.
fn maybe_release<T: Send>(py: Python<'_>, text_bytes: usize, work: impl FnOnce() -> T + Send) -> T {
    if text_bytes >= RELEASE_GIL_TEXT_BYTES {
        py.allow_threads(work)
    } else {
        work()
    }
}

/// Request arguments after validation, texts not yet hashed.
struct RequestArgs<'a> {
    executor: [u8; 20],
    model: &'a str,
    prompt: Text<'a>,
    system_prompt: Text<'a>,
    max_tokens: u32,
    temperature: u32,
    inbound_price: U256,
    outbound_price: U256,
    nonce: u64,
    deadline: u64,
}

impl RequestArgs<'_> {
    fn text_bytes(&self) -> usize {
        self.model.len() + self.prompt.len() + self.system_prompt.len()
    }
    fn commitment(&self) -> RequestCommitment {
        RequestCommitment {
            executor: self.executor,
            model_hash: model_hash(self.model),
            prompt_hash: self.prompt.hash(),
            system_prompt_hash: self.system_prompt.hash(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            inbound_price: self.inbound_price,
            outbound_price: self.outbound_price,
            nonce: self.nonce,
            deadline: self.deadline,
        }
    }
}

struct ResponseArgs<'a> {
    request_hash: [u8; 32],
    client: [u8; 20],
    model: &'a str,
    content: Text<'a>,
    inbound_tokens: u32,
    outbound_tokens: u32,
    inbound_price: U256,
    outbound_price: U256,
    timestamp: u64,
    success: bool,
}

impl ResponseArgs<'_> {
    fn text_bytes(&self) -> usize {
        self.model.len() + self.content.len()
    }
    fn commitment(&self) -> ResponseCommitment {
        ResponseCommitment {
            request_hash: self.request_hash,
            client: self.client,
            model_hash: model_hash(self.model),
            content_hash: self.content.hash(),
            inbound_tokens: self.inbound_tokens,
            outbound_tokens: self.outbound_tokens,
            inbound_price: self.inbound_price,
            outbound_price: self.outbound_price,
            timestamp: self.timestamp,
            success: self.success,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn response_args<'a>(
    request_hash: &Bound<'_, PyAny>,
    client: &Bound<'_, PyAny>,
    model: &'a Bound<'_, PyString>,
    content: &'a Bound<'_, PyAny>,
    inbound_tokens: &Bound<'_, PyAny>,
    outbound_tokens: &Bound<'_, PyAny>,
    inbound_price: &Bound<'_, PyAny>,
    outbound_price: &Bound<'_, PyAny>,
    timestamp: &Bound<'_, PyAny>,
    success: bool,
) -> PyResult<ResponseArgs<'a>> {
    Ok(ResponseArgs {
        request_hash: bytes32_arg(request_hash, "request_hash")?,
        client: address_arg(client, "client")?,
        model: model.to_str()?,
        content: text_arg(content, "content", false)?,
        inbound_tokens: uint_arg(inbound_tokens, "inbound_tokens", 32)? as u32,
        outbound_tokens: uint_arg(outbound_tokens, "outbound_tokens", 32)? as u32,
        inbound_price: u256_arg(inbound_price, "inbound_price")?,
        outbound_price: u256_arg(outbound_price, "outbound_price")?,
        timestamp: uint_arg(timestamp, "timestamp", 64)?,
        success,
    })
}

/// The AccountingV2 EIP-712 domain of one chain and contract. Its separator
/// is computed once here, so each digest costs three or four keccaks.
#[pyclass(module = "lloom_executor._native", frozen)]
pub struct Eip712Domain {
    chain_id: U256,
    verifying_contract: [u8; 20],
    separator: [u8; 32],
}

impl Eip712Domain {
    pub fn new(chain_id: U256, verifying_contract: [u8; 20]) -> Self {
        let separator = domain_separator(&chain_id, &verifying_contract);
        Eip712Domain { chain_id, verifying_contract, separator }
    }

    pub fn request_digest(&self, c: &RequestCommitment) -> [u8; 32] {
        typed_digest(&self.separator, &c.struct_hash())
    }

    pub fn response_digest(&self, c: &ResponseCommitment) -> [u8; 32] {
        typed_digest(&self.separator, &c.struct_hash())
    }
}

#[pymethods]
impl Eip712Domain {
    /// `chain_id`: int (uint256); `verifying_contract`: 20 bytes or 0x-hex str.
    #[new]
    fn py_new(chain_id: &Bound<'_, PyAny>, verifying_contract: &Bound<'_, PyAny>) -> PyResult<Self> {
        if !chain_id.is_instance_of::<PyInt>() {
            return Err(PyTypeError::new_err("chain_id: expected an int"));
        }
        let chain_id = u256_arg(chain_id, "chain_id")?;
        let contract = address_arg(verifying_contract, "verifying_contract")?;
        Ok(Eip712Domain::new(chain_id, contract))
    }

    /// The 32-byte domain separator (`hashStruct(EIP712Domain)`).
    #[getter]
    fn separator<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.separator)
    }

    #[getter]
    fn chain_id<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let raw = PyBytes::new(py, &self.chain_id.to_be_bytes::<32>());
        py.get_type::<PyInt>().call_method1("from_bytes", (raw, "big"))
    }

    /// EIP-55 checksummed contract address.
    #[getter]
    fn verifying_contract(&self) -> String {
        checksum(&self.verifying_contract)
    }

    /// Digest of a `LlmRequestCommitment` (its `requestHash`). Texts are hashed
    /// here: pass `prompt`/`system_prompt` as str, or as a 32-byte keccak hash
    /// already computed; `system_prompt=None` means absent (zero hash).
    /// Prices: decimal str of wei (or int) below 2**256.
    #[pyo3(signature = (executor, model, prompt, system_prompt, max_tokens, temperature, inbound_price, outbound_price, nonce, deadline))]
    #[allow(clippy::too_many_arguments)]
    fn request_commitment_digest<'py>(
        &self,
        py: Python<'py>,
        executor: &Bound<'py, PyAny>,
        model: &Bound<'py, PyString>,
        prompt: &Bound<'py, PyAny>,
        system_prompt: &Bound<'py, PyAny>,
        max_tokens: &Bound<'py, PyAny>,
        temperature: f64,
        inbound_price: &Bound<'py, PyAny>,
        outbound_price: &Bound<'py, PyAny>,
        nonce: &Bound<'py, PyAny>,
        deadline: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let args = RequestArgs {
            executor: address_arg(executor, "executor")?,
            model: model.to_str()?,
            prompt: text_arg(prompt, "prompt", false)?,
            system_prompt: text_arg(system_prompt, "system_prompt", true)?,
            max_tokens: uint_arg(max_tokens, "max_tokens", 32)? as u32,
            temperature: temperature_to_u32(temperature).map_err(|e| e.in_field("temperature"))?,
            inbound_price: u256_arg(inbound_price, "inbound_price")?,
            outbound_price: u256_arg(outbound_price, "outbound_price")?,
            nonce: uint_arg(nonce, "nonce", 64)?,
            deadline: uint_arg(deadline, "deadline", 64)?,
        };
        let digest = maybe_release(py, args.text_bytes(), || self.request_digest(&args.commitment()));
        Ok(PyBytes::new(py, &digest))
    }

    /// Digest of a `LlmResponseCommitment`. `content` is the response text
    /// (or its 32-byte keccak hash); `request_hash` is the request digest.
    #[pyo3(signature = (request_hash, client, model, content, inbound_tokens, outbound_tokens, inbound_price, outbound_price, timestamp, success))]
    #[allow(clippy::too_many_arguments)]
    fn response_commitment_digest<'py>(
        &self,
        py: Python<'py>,
        request_hash: &Bound<'py, PyAny>,
        client: &Bound<'py, PyAny>,
        model: &Bound<'py, PyString>,
        content: &Bound<'py, PyAny>,
        inbound_tokens: &Bound<'py, PyAny>,
        outbound_tokens: &Bound<'py, PyAny>,
        inbound_price: &Bound<'py, PyAny>,
        outbound_price: &Bound<'py, PyAny>,
        timestamp: &Bound<'py, PyAny>,
        success: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let args = response_args(
            request_hash, client, model, content, inbound_tokens, outbound_tokens, inbound_price,
            outbound_price, timestamp, success,
        )?;
        let digest = maybe_release(py, args.text_bytes(), || self.response_digest(&args.commitment()));
        Ok(PyBytes::new(py, &digest))
    }

    /// Sign the response commitment with the executor's key: returns
    /// `(digest, signature)`, signature r‖s‖v with v ∈ {0, 1} (add 27 for
    /// contracts that expect 27/28). One call, GIL released for the curve work.
    #[pyo3(signature = (key, request_hash, client, model, content, inbound_tokens, outbound_tokens, inbound_price, outbound_price, timestamp, success))]
    #[allow(clippy::too_many_arguments)]
    fn sign_response_receipt<'py>(
        &self,
        py: Python<'py>,
        key: &PrivateKey,
        request_hash: &Bound<'py, PyAny>,
        client: &Bound<'py, PyAny>,
        model: &Bound<'py, PyString>,
        content: &Bound<'py, PyAny>,
        inbound_tokens: &Bound<'py, PyAny>,
        outbound_tokens: &Bound<'py, PyAny>,
        inbound_price: &Bound<'py, PyAny>,
        outbound_price: &Bound<'py, PyAny>,
        timestamp: &Bound<'py, PyAny>,
        success: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let args = response_args(
            request_hash, client, model, content, inbound_tokens, outbound_tokens, inbound_price,
            outbound_price, timestamp, success,
        )?;
        let (digest, signature) = py.allow_threads(|| {
            let digest = self.response_digest(&args.commitment());
            (digest, sign(&key.secret, &digest))
        });
        PyTuple::new(py, [PyBytes::new(py, &digest), PyBytes::new(py, &signature)])
    }

    fn __repr__(&self) -> String {
        format!(
            "Eip712Domain(chain_id={}, verifying_contract={})",
            self.chain_id,
            checksum(&self.verifying_contract)
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Eip712Domain>()?;
    m.add("EIP712_DOMAIN_TYPE", DOMAIN_TYPE)?;
    m.add("LLM_REQUEST_COMMITMENT_TYPE", REQUEST_TYPE)?;
    m.add("LLM_RESPONSE_COMMITMENT_TYPE", RESPONSE_TYPE)?;
    m.add("EIP712_DOMAIN_NAME", DOMAIN_NAME)?;
    m.add("EIP712_DOMAIN_VERSION", DOMAIN_VERSION)?;
    Ok(())
}

#[cfg(test)]
mod tests;
