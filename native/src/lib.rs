//! `lloom_executor._native`: the compiled core. One Python call per operation;
//! Rust does the bytes, the GIL is released while it works.

use pyo3::prelude::*;

mod codec;
mod crypto;
mod eip712;
mod error;
mod tokens;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    error::register(m)?;
    crypto::register(m)?;
    eip712::register(m)?;
    codec::register(m)?;
    tokens::register(m)?;
    Ok(())
}
