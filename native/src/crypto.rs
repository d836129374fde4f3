//! secp256k1 keys, keccak-256, recoverable ECDSA and the two public faces of
//! one key (EVM address and libp2p PeerId). libsecp256k1 (the C library that
//! coincurve also wraps) does the curve work; every call that costs more than
//! a hash releases the GIL.

use alloy_primitives::{keccak256 as alloy_keccak, Address};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, PublicKey, SecretKey, SECP256K1};

use crate::error::{CodecError, KeyError, SignatureError};

/// Inputs at least this long are hashed with the GIL released; below it the
/// release costs more than the hash.
const KECCAK_RELEASE_GIL_BYTES: usize = 4096;

/// Half the curve order n: an `s` above it is the malleable twin of a valid
/// signature, which the reference verifier (k256) rejects.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

pub fn keccak(data: &[u8]) -> [u8; 32] {
    alloy_keccak(data).0
}

pub fn address_of(public: &PublicKey) -> [u8; 20] {
    let uncompressed = public.serialize_uncompressed();
    let hash = keccak(&uncompressed[1..]);
    let mut out = [0u8; 20];
    out.copy_from_slice(&hash[12..]);
    out
}

pub fn checksum(address: &[u8; 20]) -> String {
    Address::from(*address).to_checksum(None)
}

/// PeerId text of a secp256k1 key: base58btc of the identity multihash of the
/// protobuf `PublicKey { Type = Secp256k1 (2), Data = compressed key }`.
pub fn peer_id_of(public: &PublicKey) -> String {
    let compressed = public.serialize();
    let mut buf = Vec::with_capacity(2 + 4 + 33);
    buf.extend_from_slice(&[0x00, 0x25, 0x08, 0x02, 0x12, 0x21]);
    buf.extend_from_slice(&compressed);
    bs58::encode(buf).into_string()
}

pub fn parse_secret(bytes: &[u8]) -> Result<SecretKey, KeyError> {
    let raw: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Length(bytes.len()))?;
    SecretKey::from_byte_array(raw).map_err(|_| KeyError::Scalar)
}

pub fn parse_secret_hex(text: &str) -> Result<SecretKey, KeyError> {
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    if body.len() != 64 {
        return Err(KeyError::HexLength(body.len()));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(body, &mut bytes).map_err(|_| KeyError::HexDigit)?;
    parse_secret(&bytes)
}

pub fn digest32(digest: &[u8]) -> Result<[u8; 32], CodecError> {
    digest.try_into().map_err(|_| CodecError::Length {
        what: "digest",
        expected: 32,
        got: digest.len(),
    })
}

/// r‖s‖v with v ∈ {0, 1}; libsecp256k1 signs deterministically (RFC 6979) and low-s.
pub fn sign(secret: &SecretKey, digest: &[u8; 32]) -> [u8; 65] {
    let msg = Message::from_digest(*digest);
    let sig = SECP256K1.sign_ecdsa_recoverable(msg, secret);
    let (recid, compact) = sig.serialize_compact();
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&compact);
    out[64] = i32::from(recid) as u8;
    out
}

/// Recover the signer's public key; v may be 0/1 or 27/28, high-s is refused.
pub fn recover(digest: &[u8; 32], signature: &[u8]) -> Result<PublicKey, SignatureError> {
    if signature.len() != 65 {
        return Err(SignatureError::Length(signature.len()));
    }
    let recid = match signature[64] {
        0 | 27 => RecoveryId::Zero,
        1 | 28 => RecoveryId::One,
        other => return Err(SignatureError::RecoveryId(other)),
    };
    if signature[32..64] > HALF_ORDER[..] {
        return Err(SignatureError::HighS);
    }
    let sig = RecoverableSignature::from_compact(&signature[..64], recid).map_err(|_| SignatureError::Scalar)?;
    SECP256K1
        .recover_ecdsa(Message::from_digest(*digest), &sig)
        .map_err(|_| SignatureError::NoKey)
}

pub fn recover_signer(digest: &[u8; 32], signature: &[u8]) -> Result<[u8; 20], SignatureError> {
    recover(digest, signature).map(|pk| address_of(&pk))
}

/// A secp256k1 private key: the node's Ethereum key and libp2p identity in one.
/// Its repr never shows the secret.
#[pyclass(module = "lloom_executor._native", frozen)]
pub struct PrivateKey {
    pub secret: SecretKey,
    public: PublicKey,
    address: [u8; 20],
}

impl PrivateKey {
    pub fn new(secret: SecretKey) -> Self {
        let public = PublicKey::from_secret_key(SECP256K1, &secret);
        let address = address_of(&public);
        PrivateKey { secret, public, address }
    }
}

#[pymethods]
impl PrivateKey {
    /// A fresh key from the operating system's random source.
    #[staticmethod]
    fn generate() -> PyResult<Self> {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes).map_err(|e| CodecError::Key(KeyError::Random(e.to_string())))?;
            if let Ok(secret) = SecretKey::from_byte_array(bytes) {
                return Ok(PrivateKey::new(secret));
            }
        }
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Ok(PrivateKey::new(parse_secret(data).map_err(CodecError::Key)?))
    }

    #[staticmethod]
    fn from_hex(text: &str) -> PyResult<Self> {
        Ok(PrivateKey::new(parse_secret_hex(text).map_err(CodecError::Key)?))
    }

    /// The 32 secret bytes. Handle with care: never log them.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.secret.secret_bytes())
    }

    /// The secret as 64 lowercase hex digits without prefix (the key-file format).
    fn to_hex(&self) -> String {
        hex::encode(self.secret.secret_bytes())
    }

    /// EIP-55 checksummed EVM address.
    #[getter]
    fn address(&self) -> String {
        checksum(&self.address)
    }

    #[getter]
    fn address_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.address)
    }

    /// 33-byte compressed public key.
    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.public.serialize())
    }

    /// 65-byte uncompressed public key (0x04 prefix).
    #[getter]
    fn public_key_uncompressed<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.public.serialize_uncompressed())
    }

    /// libp2p PeerId (`16Uiu2…`) of the same key.
    #[getter]
    fn peer_id(&self) -> String {
        peer_id_of(&self.public)
    }

    fn sign_digest<'py>(&self, py: Python<'py>, digest: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let d = digest32(digest)?;
        let sig = py.allow_threads(|| sign(&self.secret, &d));
        Ok(PyBytes::new(py, &sig))
    }

    fn __repr__(&self) -> String {
        format!("PrivateKey(address={})", checksum(&self.address))
    }
}

/// keccak-256 of `data` (Ethereum's, not NIST SHA3-256).
#[pyfunction]
fn keccak256<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    let hash = if data.len() >= KECCAK_RELEASE_GIL_BYTES {
        py.allow_threads(|| keccak(data))
    } else {
        keccak(data)
    };
    PyBytes::new(py, &hash)
}

/// Sign a 32-byte digest: 65 bytes r‖s‖v, v ∈ {0, 1}, low-s, RFC 6979.
#[pyfunction]
fn sign_digest<'py>(py: Python<'py>, key: &PrivateKey, digest: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    key.sign_digest(py, digest)
}

/// The 20-byte address that signed `digest`; v may be 0, 1, 27 or 28.
#[pyfunction]
fn recover_address<'py>(py: Python<'py>, digest: &[u8], signature: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let d = digest32(digest)?;
    let address = py.allow_threads(|| recover_signer(&d, signature)).map_err(CodecError::Signature)?;
    Ok(PyBytes::new(py, &address))
}

/// EIP-55 checksummed text of a 20-byte address.
#[pyfunction]
fn checksum_address(address: &[u8]) -> PyResult<String> {
    let raw: [u8; 20] = address.try_into().map_err(|_| CodecError::Length {
        what: "address",
        expected: 20,
        got: address.len(),
    })?;
    Ok(checksum(&raw))
}

/// PeerId text of a compressed (33-byte) or uncompressed (65-byte) public key.
#[pyfunction]
fn peer_id_from_public_key(public_key: &[u8]) -> PyResult<String> {
    let pk = PublicKey::from_slice(public_key).map_err(|_| CodecError::Key(KeyError::PublicKey))?;
    Ok(peer_id_of(&pk))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PrivateKey>()?;
    m.add_function(wrap_pyfunction!(keccak256, m)?)?;
    m.add_function(wrap_pyfunction!(sign_digest, m)?)?;
    m.add_function(wrap_pyfunction!(recover_address, m)?)?;
    m.add_function(wrap_pyfunction!(checksum_address, m)?)?;
    m.add_function(wrap_pyfunction!(peer_id_from_public_key, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests;
