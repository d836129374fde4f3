"""Independent Python oracle for the Lloom wire codec (PROTOCOL.md §3-§4).

Written from the protocol text and serde_json's documented output rules, with
no code shared with the Rust codec: compact JSON via Python's `json` (whose
string escaping is serde_json's: \\" \\\\ \\b \\f \\n \\r \\t, other controls as
lowercase \\u00XX, '/', DEL and non-ASCII raw), floats laid out the way
serde_json 1.0.154 does (shortest round-trip digits; fixed notation for
decimal exponents -6..=12 (f32) / -5..=15 (f64), else `d.ddde+X` / `de-X`),
keccak from eth-hash, recoverable ECDSA from coincurve, CBOR from cbor2.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import cbor2
import coincurve
from eth_hash.auto import keccak


@dataclass(frozen=True)
class F32:
    """A value that serde holds as an f32: CBOR 0xfa, JSON shortest-f32 text."""

    value: float


def to_f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _f32_from_bits(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b))[0]


def _floor_log10(q: Fraction) -> int:
    e = math.floor(math.log10(q.numerator) - math.log10(q.denominator))
    while Fraction(10) ** e > q:
        e -= 1
    while Fraction(10) ** (e + 1) <= q:
        e += 1
    return e


def f32_shortest_digits(x: float) -> tuple[str, int]:
    """(digits, exponent of the first digit) of the shortest decimal that reads
    back as the f32 `x` (closest one if several), by exact rational arithmetic."""
    bits = _f32_bits(x)
    exact = Fraction(x)
    prev = Fraction(_f32_from_bits(bits - 1)) if bits > 0 else -exact
    nxt_f = _f32_from_bits(bits + 1)
    nxt = Fraction(nxt_f) if math.isfinite(nxt_f) else exact + (exact - prev)
    low, high = (exact + prev) / 2, (exact + nxt) / 2
    inclusive = bits % 2 == 0  # round-half-even reads a tie back as the even mantissa

    def inside(v: Fraction) -> bool:
        return (low <= v <= high) if inclusive else (low < v < high)

    e10 = _floor_log10(exact)
    for p in range(1, 10):
        unit = Fraction(10) ** (e10 - p + 1)
        base = math.floor(exact / unit)
        cands = [c for c in (base, base + 1) if c > 0 and inside(c * unit)]
        if cands:
            c = min(cands, key=lambda c: (abs(c * unit - exact), c % 2))
            digits, exp = str(c), e10 - p + 1 + len(str(c)) - 1
            return digits.rstrip("0") or "0", exp
    raise AssertionError(f"no shortest form found for {x!r}")


def f64_shortest_digits(x: float) -> tuple[str, int]:
    """Python's repr is the shortest round-trip form of an f64."""
    r = repr(x)
    if "e" in r:
        m, _, e = r.partition("e")
        digits, point = m.replace(".", ""), m.find(".")
        exp10 = int(e) + ((point if point >= 0 else len(m)) - 1)
    else:
        ip, _, fp = r.partition(".")
        allds = (ip + fp).lstrip("0")
        exp10 = len(ip) - 1 if ip != "0" else -(len(fp) - len(fp.lstrip("0")) + 1)
        digits = allds
    digits = digits.lstrip("0").rstrip("0") or "0"
    return digits, exp10


def layout(digits: str, exp: int, fixed: range, plus: bool = True) -> str:
    if exp in fixed:
        if exp >= len(digits) - 1:
            return digits + "0" * (exp - len(digits) + 1) + ".0"
        if exp >= 0:
            return digits[: exp + 1] + "." + digits[exp + 1 :]
        return "0." + "0" * (-exp - 1) + digits
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sign = "-" if exp < 0 else ("+" if plus else "")
    return f"{mant}e{sign}{abs(exp)}"


def float_text(x: float, f32: bool, plus: bool = True) -> str:
    """serde_json's text for a finite float (`plus=False`: the older ryu style)."""
    if not math.isfinite(x):
        return "null"
    if x == 0:
        return "-0.0" if math.copysign(1, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    if f32:
        digits, exp = f32_shortest_digits(abs(x))
        return sign + layout(digits, exp, range(-6, 13), plus)
    digits, exp = f64_shortest_digits(abs(x))
    return sign + layout(digits, exp, range(-5, 16), plus)


def dumps(value: Any, plus: bool = True) -> bytes:
    """Compact serde_json-equivalent JSON of a Python value; dict order kept,
    F32 wrappers as f32, bytes as lowercase 0x-hex (alloy's human-readable form)."""
    out: list[str] = []

    def emit(v: Any) -> None:
        if isinstance(v, F32):
            out.append(float_text(v.value, True, plus))
        elif isinstance(v, float):
            out.append(float_text(v, False, plus))
        elif isinstance(v, (bytes, bytearray)):
            out.append('"0x' + bytes(v).hex() + '"')
        elif isinstance(v, dict):
            out.append("{")
            for i, (k, item) in enumerate(v.items()):
                if i:
                    out.append(",")
                out.append(json.dumps(k, ensure_ascii=False))
                out.append(":")
                emit(item)
            out.append("}")
        elif isinstance(v, (list, tuple)):
            out.append("[")
            for i, item in enumerate(v):
                if i:
                    out.append(",")
                emit(item)
            out.append("]")
        else:
            out.append(json.dumps(v, ensure_ascii=False, separators=(",", ":")))

    emit(value)
    return "".join(out).encode("utf-8")


def digest(payload: Any, plus: bool = True) -> bytes:
    return keccak(dumps(payload, plus))


def sign(secret: bytes, dig: bytes) -> bytes:
    """65 bytes r||s||v, v in {0,1}, over the raw digest (no EIP-191 prefix)."""
    return coincurve.PrivateKey(secret).sign_recoverable(dig, hasher=None)


def address_of_secret(secret: bytes) -> bytes:
    pub = coincurve.PrivateKey(secret).public_key.format(compressed=False)[1:]
    return keccak(pub)[12:]


def recover(dig: bytes, sig: bytes) -> bytes:
    v = sig[64] - 27 if sig[64] >= 27 else sig[64]
    pub = coincurve.PublicKey.from_signature_and_message(sig[:64] + bytes([v]), dig, hasher=None)
    return keccak(pub.format(compressed=False)[1:])[12:]


def _cbor_default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    if isinstance(value, F32):
        encoder.write(b"\xfa" + struct.pack(">f", value.value))
    else:
        raise TypeError(f"cannot encode {type(value)}")


def cbor(value: Any) -> bytes:
    """CBOR as serde+cbor4ii writes it: definite maps in insertion order,
    shortest ints, F32 as single floats (cbor2 itself never picks 0xfa here)."""
    return cbor2.dumps(value, default=_cbor_default)


def strip_f32(value: Any) -> Any:
    """The same value with F32 wrappers as plain floats (for cbor2 comparisons)."""
    if isinstance(value, F32):
        return value.value
    if isinstance(value, dict):
        return {k: strip_f32(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_f32(v) for v in value]
    return value


def signed_envelope(secret: bytes, payload: Any, timestamp: int, nonce: int | None, plus: bool = True) -> dict:
    sig = sign(secret, digest(payload, plus))
    return {
        "payload": payload,
        "signer": address_of_secret(secret),
        "signature": sig,
        "timestamp": timestamp,
        "nonce": nonce,
    }
