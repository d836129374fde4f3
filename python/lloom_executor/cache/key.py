"""The response-cache key: which requests may share an answer, and under what name.

Two requests share a cached answer only when everything that shapes the backend's
output is identical: the (resolved) model name, the system prompt, the prompt, the
temperature and max_tokens. The key is SHA-256 over a canonical encoding of those
five fields, so it never depends on dict ordering, float formatting or the client's
JSON, and prompts that merely concatenate alike ("ab" + "c" vs "a" + "bc") differ:

    b"lloom-response-cache/v1\\x00"
    str(model)           u64 big-endian byte length + UTF-8 bytes
    opt str(system)      b"\\x00" when None, else b"\\x01" + str encoding ("" differs from None)
    str(prompt)
    opt f64(temperature) b"\\x00" when None, else b"\\x01" + IEEE-754 binary64 big-endian
                         (-0.0 is folded into 0.0, so 0 and 0.0 and -0.0 share a key)
    opt u64(max_tokens)  b"\\x00" when None, else b"\\x01" + u64 big-endian

Bumping the version tag invalidates every stored entry at once (a format change).

Which requests are cacheable: with `deterministic_only` (the default) only those with
temperature exactly 0; a request without a temperature (None) counts as
NON-deterministic, because the backend then samples with its own default (usually
1.0). With `deterministic_only = false` every request is cacheable, whatever its
temperature. A NaN or infinite temperature is never cacheable.
"""

from __future__ import annotations

import hashlib
import math
import struct

KEY_VERSION = b"lloom-response-cache/v1\x00"


def _text(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return struct.pack(">Q", len(raw)) + raw


def is_deterministic(temperature: float | None) -> bool:
    """Only temperature == 0 is deterministic; None means "the backend's default", which samples."""
    return temperature is not None and temperature == 0


def cache_key(
    model: str,
    system_prompt: str | None,
    prompt: str,
    temperature: float | None,
    max_tokens: int | None,
    *,
    deterministic_only: bool = True,
) -> bytes | None:
    """The 32-byte key for this request, or None when it must not be cached.

    `model` should be the resolved model name (not an alias), so an alias and its
    target share entries; `max_tokens` the effective limit the backend is called with.
    """
    if deterministic_only and not is_deterministic(temperature):
        return None
    parts = [KEY_VERSION, _text(model)]
    parts.append(b"\x00" if system_prompt is None else b"\x01" + _text(system_prompt))
    parts.append(_text(prompt))
    if temperature is None:
        parts.append(b"\x00")
    else:
        value = float(temperature)
        if not math.isfinite(value):
            return None
        parts.append(b"\x01" + struct.pack(">d", value + 0.0))
    if max_tokens is None:
        parts.append(b"\x00")
    else:
        if max_tokens < 0:
            return None
        parts.append(b"\x01" + struct.pack(">Q", max_tokens))
    return hashlib.sha256(b"".join(parts)).digest()
