//! The Python face of the codec: one native call per operation, the GIL
//! released around decode, verify, encode and sign. Decoded values are
//! frozen objects holding Rust data; Python objects are made only when a
//! field is read.

use super::jval::JVal;
use super::ops::{self, Envelope, Opened, Signer};
use super::types::{AcknowledgmentResponse, EnvelopeReceipt, LlmRequest, LlmResponse, Receipt};
use alloy_primitives::{Address, Bytes, B256};
use super::{gossip, wire};
use crate::crypto::PrivateKey;
use indexmap::IndexMap;
use pyo3::buffer::PyBuffer;
use crate::error::{CodecError, TemperatureUse};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

/// Run `f` over the bytes of `frame` with the GIL released. `bytes` is read
/// in place; any other buffer (bytearray, memoryview) is copied first, since
/// its contents could change while the GIL is released.
fn with_frame<R: Send>(
    py: Python<'_>,
    frame: &Bound<'_, PyAny>,
    limit: usize,
    what: &'static str,
    f: impl FnOnce(&[u8]) -> Result<R, CodecError> + Send,
) -> PyResult<R> {
    if let Ok(b) = frame.downcast::<PyBytes>() {
        let data = b.as_bytes();
        return Ok(py.allow_threads(|| f(data))?);
    }
    let buf: PyBuffer<u8> = PyBuffer::get(frame)
        .map_err(|_| PyTypeError::new_err(format!("{what} frame must be bytes, bytearray or memoryview")))?;
    if buf.len_bytes() > limit {
        return Err(CodecError::FrameTooLarge { what, size: buf.len_bytes(), limit }.into());
    }
    let data = buf.to_vec(py)?;
    Ok(py.allow_threads(|| f(&data))?)
}

fn signer_of(key: &Bound<'_, PrivateKey>) -> PyResult<Signer> {
    let addr = key.getattr("address_bytes")?;
    let addr = addr.downcast::<PyBytes>()?.as_bytes();
    let address: [u8; 20] = addr.try_into().map_err(|_| CodecError::SignerAddress)?;
    Ok(Signer {
        secret: key.get().secret,
        address,
    })
}

// ---------------------------------------------------------------- JVal <-> Python

/// Nesting bound for Python input, matching serde_json's recursion limit.
const MAX_PY_DEPTH: usize = 128;

pub fn jval_to_py(py: Python<'_>, v: &JVal) -> PyResult<PyObject> {
    Ok(match v {
        JVal::Null => py.None(),
        JVal::Bool(b) => b.into_py_any(py)?,
        JVal::U64(n) => n.into_py_any(py)?,
        JVal::I64(n) => n.into_py_any(py)?,
        JVal::F32(f) => (*f as f64).into_py_any(py)?,
        JVal::F64(f) => f.into_py_any(py)?,
        JVal::Str(s) => s.into_py_any(py)?,
        JVal::Bytes(b) => PyBytes::new(py, b).into_any().unbind(),
        JVal::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(jval_to_py(py, item)?)?;
            }
            list.into_any().unbind()
        }
        JVal::Object(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, jval_to_py(py, item)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

pub fn py_to_jval(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<JVal> {
    if depth > MAX_PY_DEPTH {
        return Err(CodecError::NestedTooDeep { limit: MAX_PY_DEPTH }.into());
    }
    if obj.is_none() {
        return Ok(JVal::Null);
    }
    if let Ok(b) = obj.downcast::<PyBool>() {
        return Ok(JVal::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(n) = obj.extract::<u64>() {
            return Ok(JVal::U64(n));
        }
        if let Ok(n) = obj.extract::<i64>() {
            return Ok(JVal::I64(n));
        }
        return Err(CodecError::DoesNotFit { value: Some(format!("integer {obj}")), target: "64 bits" }.into());
    }
    if let Ok(f) = obj.downcast::<PyFloat>() {
        return Ok(JVal::F64(f.value()));
    }
    if let Ok(s) = obj.downcast::<PyString>() {
        return Ok(JVal::Str(s.to_str()?.to_owned()));
    }
    if let Ok(b) = obj.downcast::<PyBytes>() {
        return Ok(JVal::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.downcast::<PyByteArray>() {
        return Ok(JVal::Bytes(b.to_vec()));
    }
    if let Ok(d) = obj.downcast::<PyDict>() {
        let mut map = IndexMap::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = k
                .downcast::<PyString>()
                .map_err(|_| PyTypeError::new_err(format!("dict keys must be str, got {}", k.get_type())))?
                .to_str()?
                .to_owned();
            map.insert(key, py_to_jval(&v, depth + 1)?);
        }
        return Ok(JVal::Object(map));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for item in obj.try_iter()? {
            items.push(py_to_jval(&item?, depth + 1)?);
        }
        return Ok(JVal::Array(items));
    }
    Err(PyTypeError::new_err(format!(
        "cannot encode a value of type {} as JSON",
        obj.get_type()
    )))
}

// ---------------------------------------------------------------- classes

/// `LlmRequest` payload as decoded (or as it will be signed). `temperature`
/// is the f32 on the wire, widened: 0.7 reads back as 0.699999988079071.
#[pyclass(module = "lloom_executor._native", name = "LlmRequest", frozen)]
pub struct PyLlmRequest {
    inner: LlmRequest,
}

#[pymethods]
impl PyLlmRequest {
    #[getter]
    fn model(&self) -> &str {
        &self.inner.model
    }
    #[getter]
    fn prompt(&self) -> &str {
        &self.inner.prompt
    }
    #[getter]
    fn system_prompt(&self) -> Option<&str> {
        self.inner.system_prompt.as_deref()
    }
    #[getter]
    fn temperature(&self) -> Option<f64> {
        self.inner.temperature.map(f64::from)
    }
    #[getter]
    fn max_tokens(&self) -> Option<u32> {
        self.inner.max_tokens
    }
    #[getter]
    fn executor_address(&self) -> &str {
        &self.inner.executor_address
    }
    #[getter]
    fn inbound_price(&self) -> &str {
        &self.inner.inbound_price
    }
    #[getter]
    fn outbound_price(&self) -> &str {
        &self.inner.outbound_price
    }
    #[getter]
    fn nonce(&self) -> u64 {
        self.inner.nonce
    }
    #[getter]
    fn deadline(&self) -> u64 {
        self.inner.deadline
    }
    fn __repr__(&self) -> String {
        format!(
            "LlmRequest(model={:?}, prompt=<{} chars>, max_tokens={}, executor_address={:?}, nonce={}, deadline={})",
            self.inner.model,
            self.inner.prompt.chars().count(),
            self.inner.max_tokens.map_or("None".to_string(), |n| n.to_string()),
            self.inner.executor_address,
            self.inner.nonce,
            self.inner.deadline
        )
    }
}

/// `LlmResponse` payload as decoded.
#[pyclass(module = "lloom_executor._native", name = "LlmResponse", frozen)]
pub struct PyLlmResponse {
    inner: LlmResponse,
}

#[pymethods]
impl PyLlmResponse {
    #[getter]
    fn content(&self) -> &str {
        &self.inner.content
    }
    #[getter]
    fn inbound_tokens(&self) -> u64 {
        self.inner.inbound_tokens
    }
    #[getter]
    fn outbound_tokens(&self) -> u64 {
        self.inner.outbound_tokens
    }
    #[getter]
    fn total_cost(&self) -> &str {
        &self.inner.total_cost
    }
    #[getter]
    fn model_used(&self) -> &str {
        &self.inner.model_used
    }
    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner.error.as_deref()
    }
    fn __repr__(&self) -> String {
        format!(
            "LlmResponse(content=<{} chars>, inbound_tokens={}, outbound_tokens={}, total_cost={:?}, model_used={:?}, error={})",
            self.inner.content.chars().count(),
            self.inner.inbound_tokens,
            self.inner.outbound_tokens,
            self.inner.total_cost,
            self.inner.model_used,
            self.inner.error.as_ref().map_or("None".to_string(), |e| format!("{e:?}"))
        )
    }
}

/// What every decode yields: the variant, the exact JSON that was hashed, its
/// digest and the envelope with the outcome of the signature check. No time
/// checks here: the admission pipeline owns the clock. For unsigned variants
/// the envelope fields are None, `signature_valid` is False and `digest` is
/// still keccak256(payload_json), usable as a replay or cache key.
#[pyclass(module = "lloom_executor._native", subclass, frozen)]
pub struct Decoded {
    variant: &'static str,
    envelope: Option<Envelope>,
    payload_json: Vec<u8>,
    digest: [u8; 32],
    recovered: Option<[u8; 20]>,
    valid: bool,
}

impl Decoded {
    fn from_opened(o: Opened) -> Self {
        Decoded {
            variant: o.variant,
            envelope: o.envelope,
            payload_json: o.check.payload_json,
            digest: o.check.digest,
            recovered: o.check.recovered,
            valid: o.check.valid,
        }
    }
}

#[pymethods]
impl Decoded {
    #[getter]
    fn variant(&self) -> &'static str {
        self.variant
    }
    /// The serde_json bytes of the payload that were hashed.
    #[getter]
    fn payload_json<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.payload_json)
    }
    /// The payload as Python objects (dicts keep the signed key order).
    #[getter]
    fn payload(&self, py: Python<'_>) -> PyResult<PyObject> {
        let v: JVal = serde_json::from_slice(&self.payload_json).map_err(CodecError::PayloadJson)?;
        jval_to_py(py, &v)
    }
    #[getter]
    fn is_signed(&self) -> bool {
        self.envelope.is_some()
    }
    #[getter]
    fn signer<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.envelope.as_ref().map(|e| PyBytes::new(py, &e.signer))
    }
    #[getter]
    fn signature<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.envelope.as_ref().map(|e| PyBytes::new(py, &e.signature))
    }
    #[getter]
    fn timestamp(&self) -> Option<u64> {
        self.envelope.as_ref().map(|e| e.timestamp)
    }
    /// The envelope nonce (None when absent or unsigned).
    #[getter]
    fn nonce(&self) -> Option<u64> {
        self.envelope.as_ref().and_then(|e| e.nonce)
    }
    #[getter]
    fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.digest)
    }
    #[getter]
    fn signature_valid(&self) -> bool {
        self.valid
    }
    #[getter]
    fn recovered<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.recovered.as_ref().map(|r| PyBytes::new(py, r))
    }
    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let me = slf.get();
        let signer = me
            .envelope
            .as_ref()
            .map(|e| format!("'0x{}'", hex::encode(e.signer)))
            .unwrap_or_else(|| "None".into());
        Ok(format!(
            "{}(variant='{}', signer={}, signature_valid={})",
            slf.get_type().name()?,
            me.variant,
            signer,
            if me.valid { "True" } else { "False" }
        ))
    }
}

/// A decoded `RequestMessage`; `request` is set for the two LLM variants.
#[pyclass(module = "lloom_executor._native", extends = Decoded, frozen)]
pub struct DecodedRequest {
    request: Option<Py<PyLlmRequest>>,
}

#[pymethods]
impl DecodedRequest {
    #[getter]
    fn request(&self, py: Python<'_>) -> Option<Py<PyLlmRequest>> {
        self.request.as_ref().map(|r| r.clone_ref(py))
    }
    /// The envelope's `commitment` extension (see `encode_signed_request`) as
    /// received: a dict (byte strings as bytes) or any other value for the
    /// caller to judge; None when absent or the message is unsigned.
    #[getter]
    fn commitment(slf: PyRef<'_, Self>, py: Python<'_>) -> PyResult<PyObject> {
        match slf.as_super().envelope.as_ref().and_then(|e| e.commitment.as_ref()) {
            None => Ok(py.None()),
            Some(v) => jval_to_py(py, v),
        }
    }
}

/// A decoded `ResponseMessage`; `response` and the flat LLM fields are set
/// for the two LLM variants, None otherwise.
#[pyclass(module = "lloom_executor._native", extends = Decoded, frozen)]
pub struct DecodedResponse {
    response: Option<Py<PyLlmResponse>>,
}

impl DecodedResponse {
    fn inner(&self) -> Option<&LlmResponse> {
        self.response.as_ref().map(|r| &r.get().inner)
    }
}

#[pymethods]
impl DecodedResponse {
    #[getter]
    fn response(&self, py: Python<'_>) -> Option<Py<PyLlmResponse>> {
        self.response.as_ref().map(|r| r.clone_ref(py))
    }
    #[getter]
    fn content(&self) -> Option<&str> {
        self.inner().map(|r| r.content.as_str())
    }
    #[getter]
    fn inbound_tokens(&self) -> Option<u64> {
        self.inner().map(|r| r.inbound_tokens)
    }
    #[getter]
    fn outbound_tokens(&self) -> Option<u64> {
        self.inner().map(|r| r.outbound_tokens)
    }
    #[getter]
    fn total_cost(&self) -> Option<&str> {
        self.inner().map(|r| r.total_cost.as_str())
    }
    #[getter]
    fn model_used(&self) -> Option<&str> {
        self.inner().map(|r| r.model_used.as_str())
    }
    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner().and_then(|r| r.error.as_deref())
    }
    /// The envelope's `receipt` (see `encode_signed_response`): a dict
    /// `{request_hash, client, timestamp, success, digest, signature}` (bytes,
    /// int, bool) when well-formed; a malformed one comes back as received
    /// (any value) for the caller to report; None when absent.
    #[getter]
    fn receipt(slf: PyRef<'_, Self>, py: Python<'_>) -> PyResult<PyObject> {
        let base = slf.as_super();
        match base.envelope.as_ref().and_then(|e| e.receipt.as_ref()) {
            None => Ok(py.None()),
            Some(EnvelopeReceipt::Raw(v)) => jval_to_py(py, v),
            Some(EnvelopeReceipt::Typed(r)) => {
                let d = PyDict::new(py);
                d.set_item("request_hash", PyBytes::new(py, r.request_hash.as_slice()))?;
                d.set_item("client", PyBytes::new(py, r.client.as_slice()))?;
                d.set_item("timestamp", r.timestamp)?;
                d.set_item("success", r.success)?;
                d.set_item("digest", PyBytes::new(py, r.digest.as_slice()))?;
                d.set_item("signature", PyBytes::new(py, &r.signature))?;
                Ok(d.into_any().unbind())
            }
        }
    }
}

/// A decoded gossip `SignedMessage<ModelAnnouncement>` (JSON).
#[pyclass(module = "lloom_executor._native", extends = Decoded, frozen)]
pub struct DecodedAnnouncement {}

#[pymethods]
impl DecodedAnnouncement {
    /// The announcement payload as a dict (addresses as 0x-hex text).
    #[getter]
    fn announcement(slf: PyRef<'_, Self>, py: Python<'_>) -> PyResult<PyObject> {
        slf.as_super().payload(py)
    }
}

// ---------------------------------------------------------------- functions

/// Decode a `/lloom/llm/1.0.0` request frame (one CBOR `RequestMessage`,
/// at most 1 MiB) and check its signature. Malformed → CodecError; a bad
/// signature is `signature_valid=False`, not an error.
#[pyfunction]
fn decode_request(py: Python<'_>, frame: &Bound<'_, PyAny>) -> PyResult<Py<DecodedRequest>> {
    let (request, opened) = with_frame(
        py,
        frame,
        wire::MAX_REQUEST_BYTES,
        "RequestMessage",
        ops::decode_request,
    )?;
    let request = request.map(|inner| Py::new(py, PyLlmRequest { inner })).transpose()?;
    let init = PyClassInitializer::from(Decoded::from_opened(opened)).add_subclass(DecodedRequest { request });
    Py::new(py, init)
}

/// Decode a response frame (one CBOR `ResponseMessage`, at most 10 MiB).
#[pyfunction]
fn decode_response(py: Python<'_>, frame: &Bound<'_, PyAny>) -> PyResult<Py<DecodedResponse>> {
    let (response, opened) = with_frame(
        py,
        frame,
        wire::MAX_RESPONSE_BYTES,
        "ResponseMessage",
        ops::decode_response,
    )?;
    let response = response.map(|inner| Py::new(py, PyLlmResponse { inner })).transpose()?;
    let init = PyClassInitializer::from(Decoded::from_opened(opened)).add_subclass(DecodedResponse { response });
    Py::new(py, init)
}

fn narrow_temperature(t: Option<f64>) -> Result<Option<f32>, CodecError> {
    match t {
        None => Ok(None),
        Some(t) if !t.is_finite() => Err(CodecError::TemperatureNotFinite { value: t, context: TemperatureUse::Wire }),
        Some(t) => {
            let n = t as f32;
            if n.is_finite() {
                Ok(Some(n))
            } else {
                Err(CodecError::TemperatureRange { value: t, scaled: None })
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_request(
    model: String,
    prompt: String,
    system_prompt: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    executor_address: String,
    inbound_price: String,
    outbound_price: String,
    nonce: u64,
    deadline: u64,
) -> PyResult<LlmRequest> {
    Ok(LlmRequest {
        model,
        prompt,
        system_prompt,
        temperature: narrow_temperature(temperature)?,
        max_tokens,
        executor_address,
        inbound_price,
        outbound_price,
        nonce,
        deadline,
    })
}

/// Client side: a `SignedLlmRequest` frame signed by `key`. `temperature`
/// travels as an f32 (CBOR 0xfa). `nonce` is the payload's, `envelope_nonce`
/// the `SignedMessage`'s (reference clients send none). `commitment`: an
/// optional JSON-like dict written as the envelope's `commitment` entry
/// (bytes stay CBOR byte strings); it is outside the signed payload.
#[pyfunction]
#[pyo3(signature = (key, model, prompt, system_prompt, temperature, max_tokens, executor_address,
                    inbound_price, outbound_price, nonce, deadline, timestamp, envelope_nonce=None, commitment=None))]
#[allow(clippy::too_many_arguments)]
fn encode_signed_request<'py>(
    py: Python<'py>,
    key: &Bound<'py, PrivateKey>,
    model: String,
    prompt: String,
    system_prompt: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    executor_address: String,
    inbound_price: String,
    outbound_price: String,
    nonce: u64,
    deadline: u64,
    timestamp: u64,
    envelope_nonce: Option<u64>,
    commitment: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let signer = signer_of(key)?;
    let commitment = match commitment {
        Some(obj) if !obj.is_none() => Some(py_to_jval(obj, 0)?),
        _ => None,
    };
    let r = build_request(
        model,
        prompt,
        system_prompt,
        temperature,
        max_tokens,
        executor_address,
        inbound_price,
        outbound_price,
        nonce,
        deadline,
    )?;
    let frame = py.allow_threads(|| ops::encode_request(Some(&signer), r, timestamp, envelope_nonce, commitment))?;
    Ok(PyBytes::new(py, &frame))
}

/// Client side: an unsigned `LlmRequest` frame (refused by default by us,
/// served with a warning by the reference).
#[pyfunction]
#[pyo3(signature = (model, prompt, system_prompt, temperature, max_tokens, executor_address,
                    inbound_price, outbound_price, nonce, deadline))]
#[allow(clippy::too_many_arguments)]
fn encode_unsigned_request<'py>(
    py: Python<'py>,
    model: String,
    prompt: String,
    system_prompt: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    executor_address: String,
    inbound_price: String,
    outbound_price: String,
    nonce: u64,
    deadline: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let r = build_request(
        model,
        prompt,
        system_prompt,
        temperature,
        max_tokens,
        executor_address,
        inbound_price,
        outbound_price,
        nonce,
        deadline,
    )?;
    let frame = py.allow_threads(|| ops::encode_request(None, r, 0, None, None))?;
    Ok(PyBytes::new(py, &frame))
}

fn receipt_item<'py>(d: &Bound<'py, PyDict>, key: &'static str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(key)?
        .ok_or_else(|| CodecError::MissingKey { container: "receipt", key }.into())
}

fn receipt_bytes(d: &Bound<'_, PyDict>, key: &'static str, len: usize) -> PyResult<Vec<u8>> {
    let v = receipt_item(d, key)?;
    let raw = if let Ok(b) = v.downcast::<PyBytes>() {
        b.as_bytes().to_vec()
    } else if let Ok(t) = v.downcast::<PyString>() {
        let t = t.to_str()?;
        let body = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
        hex::decode(body).map_err(|_| CodecError::ReceiptHex { key, text: t.to_owned() })?
    } else {
        return Err(PyTypeError::new_err(format!("receipt {key:?} must be bytes or 0x-hex str")));
    };
    if raw.len() != len {
        return Err(CodecError::ReceiptLength { key, expected: len, got: raw.len() }.into());
    }
    Ok(raw)
}

/// A receipt dict (as `DecodedResponse.receipt` returns it) to the wire struct.
fn receipt_arg(obj: &Bound<'_, PyAny>) -> PyResult<Receipt> {
    let d = obj
        .downcast::<PyDict>()
        .map_err(|_| PyTypeError::new_err("receipt must be a dict"))?;
    let timestamp = receipt_item(d, "timestamp")?;
    if !timestamp.is_instance_of::<PyInt>() || timestamp.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err("receipt \"timestamp\" must be an int"));
    }
    let timestamp: u64 = timestamp
        .extract()
        .map_err(|_| CodecError::ReceiptTimestamp)?;
    let success = receipt_item(d, "success")?;
    let success = success
        .downcast::<PyBool>()
        .map_err(|_| PyTypeError::new_err("receipt \"success\" must be a bool"))?
        .is_true();
    Ok(Receipt {
        request_hash: B256::from_slice(&receipt_bytes(d, "request_hash", 32)?),
        client: Address::from_slice(&receipt_bytes(d, "client", 20)?),
        timestamp,
        success,
        digest: B256::from_slice(&receipt_bytes(d, "digest", 32)?),
        signature: Bytes::from(receipt_bytes(d, "signature", 65)?),
    })
}

/// Executor side: the `SignedLlmResponse` frame answering a request.
/// `receipt`: an optional dict `{request_hash: bytes32, client: address
/// (20 bytes or 0x-hex), timestamp: int, success: bool, digest: bytes32,
/// signature: bytes65}` written in the envelope after `nonce` (wire shape:
/// `codec::types::Receipt`); byte fields may also be 0x-hex text.
#[pyfunction]
#[pyo3(signature = (key, content, inbound_tokens, outbound_tokens, total_cost, model_used, error, timestamp, nonce=None, receipt=None))]
#[allow(clippy::too_many_arguments)]
fn encode_signed_response<'py>(
    py: Python<'py>,
    key: &Bound<'py, PrivateKey>,
    content: String,
    inbound_tokens: u64,
    outbound_tokens: u64,
    total_cost: String,
    model_used: String,
    error: Option<String>,
    timestamp: u64,
    nonce: Option<u64>,
    receipt: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let signer = signer_of(key)?;
    let receipt = match receipt {
        Some(obj) if !obj.is_none() => Some(receipt_arg(obj)?),
        _ => None,
    };
    let r = LlmResponse {
        content,
        inbound_tokens,
        outbound_tokens,
        total_cost,
        model_used,
        error,
    };
    let frame = py.allow_threads(|| ops::encode_response(Some(&signer), r, timestamp, nonce, receipt))?;
    Ok(PyBytes::new(py, &frame))
}

/// An unsigned `LlmResponse` frame (for completeness; we always sign).
#[pyfunction]
#[pyo3(signature = (content, inbound_tokens, outbound_tokens, total_cost, model_used, error=None))]
fn encode_unsigned_response<'py>(
    py: Python<'py>,
    content: String,
    inbound_tokens: u64,
    outbound_tokens: u64,
    total_cost: String,
    model_used: String,
    error: Option<String>,
) -> PyResult<Bound<'py, PyBytes>> {
    let r = LlmResponse {
        content,
        inbound_tokens,
        outbound_tokens,
        total_cost,
        model_used,
        error,
    };
    let frame = py.allow_threads(|| ops::encode_response(None, r, 0, None, None))?;
    Ok(PyBytes::new(py, &frame))
}

/// A signed `AcknowledgmentResponse` frame: how an executor answers a
/// `ModelQuery`/`ModelUpdate` it does not serve (never by dropping the
/// stream). `timestamp` goes in both the payload and the envelope.
#[pyfunction]
#[pyo3(signature = (key, request_id, success, message, timestamp, nonce=None))]
fn encode_signed_ack<'py>(
    py: Python<'py>,
    key: &Bound<'py, PrivateKey>,
    request_id: String,
    success: bool,
    message: Option<String>,
    timestamp: u64,
    nonce: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let signer = signer_of(key)?;
    let ack = AcknowledgmentResponse {
        request_id,
        success,
        message,
        timestamp,
    };
    let frame = py.allow_threads(|| ops::encode_ack(&signer, ack, timestamp, nonce))?;
    Ok(PyBytes::new(py, &frame))
}

/// The gossip JSON of a `SignedMessage<ModelAnnouncement>`. `announcement`
/// mirrors the struct (executor_peer_id, executor_address, models,
/// announcement_type, timestamp, nonce, protocol_version); its key order is
/// irrelevant, the output follows the struct. A model whose metadata has
/// more than one key is refused (CodecError): see PROTOCOL.md §3.
#[pyfunction]
#[pyo3(signature = (key, announcement, timestamp, nonce=None))]
fn encode_model_announcement_json<'py>(
    py: Python<'py>,
    key: &Bound<'py, PrivateKey>,
    announcement: &Bound<'py, PyAny>,
    timestamp: u64,
    nonce: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    if !announcement.is_instance_of::<PyDict>() {
        return Err(PyTypeError::new_err("announcement must be a dict"));
    }
    let signer = signer_of(key)?;
    let value = py_to_jval(announcement, 0)?;
    let out = py
        .allow_threads(|| gossip::encode(&signer, &value, timestamp, nonce))?;
    Ok(PyBytes::new(py, &out))
}

/// Decode and verify a gossip `SignedMessage<ModelAnnouncement>` (JSON).
/// Metadata keys are verified in received order.
#[pyfunction]
fn decode_model_announcement_json(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<Py<DecodedAnnouncement>> {
    let opened = with_frame(py, data, gossip::MAX_ANNOUNCEMENT_BYTES, "announcement", gossip::decode)?;
    let init = PyClassInitializer::from(Decoded::from_opened(opened)).add_subclass(DecodedAnnouncement {});
    Py::new(py, init)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLlmRequest>()?;
    m.add_class::<PyLlmResponse>()?;
    m.add_class::<Decoded>()?;
    m.add_class::<DecodedRequest>()?;
    m.add_class::<DecodedResponse>()?;
    m.add_class::<DecodedAnnouncement>()?;
    m.add_function(wrap_pyfunction!(decode_request, m)?)?;
    m.add_function(wrap_pyfunction!(decode_response, m)?)?;
    m.add_function(wrap_pyfunction!(encode_signed_request, m)?)?;
    m.add_function(wrap_pyfunction!(encode_unsigned_request, m)?)?;
    m.add_function(wrap_pyfunction!(encode_signed_response, m)?)?;
    m.add_function(wrap_pyfunction!(encode_unsigned_response, m)?)?;
    m.add_function(wrap_pyfunction!(encode_signed_ack, m)?)?;
    m.add_function(wrap_pyfunction!(encode_model_announcement_json, m)?)?;
    m.add_function(wrap_pyfunction!(decode_model_announcement_json, m)?)?;
    m.add("MAX_REQUEST_BYTES", wire::MAX_REQUEST_BYTES)?;
    m.add("MAX_RESPONSE_BYTES", wire::MAX_RESPONSE_BYTES)?;
    m.add("MAX_CBOR_DEPTH", wire::MAX_DEPTH)?;
    Ok(())
}
