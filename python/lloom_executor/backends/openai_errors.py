"""How an OpenAI-wire server's failures become our typed `BackendError`s, with credentials redacted.

Split from `openai_compat.py` (which sends and parses) because the classification is
a table of its own: HTTP status and body words -> error class (auth, rate limit with
its Retry-After, server error, model missing, context exceeded with the server's
figures, timeout), transport exceptions -> unavailable (no answer began: safe to
retry elsewhere) or protocol error (an answer had begun: never retried). A backend
may echo our credentials back, so every message passes through `redact` with the
API key, credential-like headers and any password or key in `base_url`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson

from ..retry_after import parse_retry_after
from .base import (
    BackendAuthError,
    BackendContextExceeded,
    BackendError,
    BackendProtocolError,
    BackendRateLimited,
    BackendRequestError,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    ModelNotAvailable,
    excerpt,
    redact,
)

BODY_EXCERPT_CHARS = 300  # of a backend's answer quoted in an error message
_MODEL_MISSING = re.compile(r"model.*(not (found|loaded|exist)|does not exist|no such)|no models? (is )?loaded", re.IGNORECASE)
_SECRET_NAME = re.compile(r"auth|key|token|secret|cookie|signature|password", re.IGNORECASE)
# A prompt too long for the context: llama.cpp's exceed_context_size_error, OpenAI's context_length_exceeded, vLLM's words
_CONTEXT_EXCEEDED = re.compile(r"exceed_context_size|context_length_exceeded|maximum context length", re.IGNORECASE)


def int_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _describe(exc: BaseException) -> str:
    """httpx's own text, or the exception's class when it has none (a bare timeout)."""
    return str(exc) or type(exc).__name__


def credential_values(api_key: str | None, base_url: str, headers: dict[str, str]) -> list[str]:
    """What must never appear in a message: the API key, the value of every header named
    like a credential (and its token without the "Bearer "/"Basic " scheme), and the
    password and key-like query values of `base_url`."""
    secrets = [api_key] if api_key else []
    for name, value in headers.items():
        if _SECRET_NAME.search(name) and value:
            secrets.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.isalpha():
                secrets.append(token.strip())
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, ValueError):
        return secrets
    if url.password:
        secrets.append(url.password)
    secrets += [value for name, value in url.params.multi_items() if _SECRET_NAME.search(name) and value]
    return secrets


class ErrorMapper:
    """One backend's error classification and redaction (`base_url` names it in messages)."""

    def __init__(self, secrets: list[str], base_url: str, timeout_secs: float) -> None:
        self.secrets = secrets
        self.base_url = base_url
        self.timeout_secs = timeout_secs

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def quote(self, text: str, limit: int = BODY_EXCERPT_CHARS) -> str:
        """A bounded excerpt of backend-supplied text, redacted before it is cut (a key
        cut in half at the edge would no longer match)."""
        return excerpt(self.redact(text), limit)

    @contextmanager
    def failures(self) -> Iterator[None]:
        """Around every public call: its `BackendError` leaves with the message redacted,
        and anything else (an httpx surprise, a bug of ours) as a plain `BackendError`
        chaining it, so a caller needs to handle one family only."""
        try:
            yield
        except BackendError as exc:
            exc.args = tuple(self.redact(a) if isinstance(a, str) else a for a in exc.args)
            raise
        except Exception as exc:
            raise BackendError(self.redact(f"{self.base_url}: unexpected {type(exc).__name__}: {exc}")) from exc

    def _detail(self, resp: httpx.Response) -> tuple[str, str | None]:
        """(message, code) from an error body in OpenAI / LM Studio shape, else the raw
        text; the message whole (for matching), not yet redacted or cut."""
        try:
            data = orjson.loads(resp.content)
        except ValueError:
            return resp.text.strip() or resp.reason_phrase, None
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict):
                message = err.get("message") or err.get("detail") or str(err)
                code = err.get("code") or err.get("type")
                return str(message), str(code) if code is not None else None
            if isinstance(err, str):
                return err, None
        return str(data), None

    def status_error(self, resp: httpx.Response, url: str, *, chat: bool, attempts: int) -> BackendError:
        status = resp.status_code
        message, code = self._detail(resp)
        text = f"{url} answered {status}: {self.quote(message)}"
        if status < 400:
            location = self.redact(resp.headers.get("location", "?"))
            return BackendRequestError(
                f"{url} answered {status}, a redirect to {location}; set base_url to the API's own address",
                status=status,
                attempts=attempts,
            )
        if status in (401, 403):
            return BackendAuthError(text, status=status, attempts=attempts)
        if status == 429:
            return BackendRateLimited(
                text, retry_after=parse_retry_after(resp.headers.get("retry-after")), status=status, attempts=attempts
            )
        if status >= 500:
            return BackendServerError(text, status=status, attempts=attempts)
        if chat and (status == 404 or code == "model_not_found" or _MODEL_MISSING.search(message)):
            return ModelNotAvailable(text, status=status, attempts=attempts)
        if status == 408:
            return BackendTimeout(text, status=status, attempts=attempts)
        if chat and status in (400, 413) and _CONTEXT_EXCEEDED.search(f"{code or ''} {message} {resp.text[:2000]}"):
            err = orjson.loads(resp.content).get("error") if code else None  # code: the body was JSON
            figures = err if isinstance(err, dict) else {}
            return BackendContextExceeded(
                text,
                prompt_tokens=int_or_none(figures.get("n_prompt_tokens")),
                context_length=int_or_none(figures.get("n_ctx")),
                status=status,
                attempts=attempts,
            )
        return BackendRequestError(text, status=status, attempts=attempts)

    def transport_error(self, exc: Exception, url: str, resp: httpx.Response | None) -> BackendError:
        """The `BackendError` for an exception while talking to `url`; `resp` is the
        answer whose head had arrived (None: it had not)."""
        status = resp.status_code if resp is not None else None
        if isinstance(exc, (TimeoutError, httpx.TimeoutException)) and not isinstance(exc, httpx.ConnectTimeout):
            what = "no complete answer" if resp is not None else "no answer"
            return BackendTimeout(f"{what} from {url} within {self.timeout_secs:g} s", status=status)
        if resp is None:
            if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                return BackendUnavailable(f"cannot connect to {url}: {_describe(exc)}")
            if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError)):
                return BackendUnavailable(f"connection to {url} lost before an answer: {_describe(exc)}")
        elif isinstance(exc, httpx.DecodingError):
            return BackendProtocolError(f"answer from {url} could not be decoded: {_describe(exc)}", status=status)
        elif isinstance(exc, httpx.TransportError):
            return BackendProtocolError(f"answer from {url} cut short: {_describe(exc)}", status=status)
        if isinstance(exc, httpx.HTTPError):
            return BackendError(f"request to {url} failed: {type(exc).__name__}: {_describe(exc)}", status=status)
        return BackendError(f"request to {url} failed unexpectedly: {type(exc).__name__}: {exc}", status=status)
