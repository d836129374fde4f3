"""The served model's own tokenizer, asked over HTTP where the server offers one.

Why: a server that reports no `usage` would otherwise be charged by our native
count (cl100k_base), which is not the model's tokenizer and knows nothing of the
chat template; and the context check at admission has the same blind spot. Several
servers expose their tokenizer; each OpenAI-compatible backend instance owns one
`ServerTokenizer` that finds out once which of these answers, and remembers it:

| server | endpoint (at the server's root, not under /v1) | chat template counted |
|---|---|---|
| llama.cpp `llama-server` | `POST /tokenize {"content", "add_special"}` -> `{"tokens": [...]}`; `POST /apply-template {"messages"}` -> `{"prompt"}` | yes: the template is applied by the server, then tokenized with BOS, exactly as its chat endpoint does |
| vLLM | `POST /tokenize {"model", "messages"}` or `{"model", "prompt", "add_special_tokens"}` -> `{"count", "tokens", "max_model_len"}` | yes: the chat form applies the model's template with the generation prompt |
| llama-cpp-python's server | `POST /extras/tokenize {"input", "model"}` -> `{"tokens": [...]}` | no: the texts only (system + "\\n" + prompt); admission adds its template margin |
| LM Studio, OpenAI, others | none (404) | -- |

Detection, on the first count an instance is asked for: `POST /tokenize` in llama.cpp's shape (a
short probe text); a 200 with a token list is llama.cpp; a 4xx (vLLM rejects a body without
`prompt` or `messages`) is followed by the vLLM shape, whose answer carries `count`; a 404 there
too is followed by `/extras/tokenize`. A definite answer (4xx: the endpoint is absent or refuses
us) is remembered for the instance's life, so a server without a tokenizer costs these probes once;
a transient failure (connection, 5xx, timeout) is not remembered, and that one count falls back
to the native count. Every call lies inside the caller's deadline.

A count never raises: it returns None and the caller counts natively (`native:<encoding>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
import orjson

from .base import CompletionRequest, PromptCount

log = logging.getLogger(__name__)

LLAMACPP, VLLM, LLAMA_CPP_PYTHON, NONE = "llama.cpp", "vllm", "llama-cpp-python", "none"
PROBE_TEXT = "lloom tokenizer probe"
ABSENT_STATUSES = frozenset({400, 401, 403, 404, 405, 415, 422, 501})
"""Answers that say the endpoint is not there (or not for us): remembered, not retried."""


class _Absent(Exception):
    """The endpoint answered a definite no (`ABSENT_STATUSES`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Transient(Exception):
    """No usable answer this time (connection, 5xx, timeout, a body of the wrong shape)."""


def chat_messages(request: CompletionRequest) -> list[dict[str, str]]:
    """The chat messages the backend sends for `request` (system first when there is one)."""
    messages = []
    if request.system_prompt:
        messages.append({"role": "system", "content": request.system_prompt})
    messages.append({"role": "user", "content": request.prompt})
    return messages


def joined_prompt(request: CompletionRequest) -> str:
    """The text counted where no template can be: system + "\\n" + prompt (admission's rule)."""
    return request.prompt if request.system_prompt is None else request.system_prompt + "\n" + request.prompt


def _token_list(data: Any) -> list[Any] | None:
    tokens = data.get("tokens") if isinstance(data, dict) else None
    return tokens if isinstance(tokens, list) else None


def _count_of(data: Any) -> int:
    """vLLM's `count` (else the length of `tokens`); _Transient for another shape."""
    if isinstance(data, dict):
        count = data.get("count")
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            return count
    tokens = _token_list(data)
    if tokens is None:
        raise _Transient(f"no token count in {str(data)[:120]!r}")
    return len(tokens)


class ServerTokenizer:
    """The tokenizer endpoint of one server (see the module doc); `kind` is None until detected."""

    def __init__(self, client: httpx.AsyncClient, root_url: str) -> None:
        self._client = client
        self.root_url = root_url.rstrip("/")
        self.kind: str | None = None
        self.applies_template: bool | None = None  # llama.cpp: whether /apply-template answers
        self._detecting = asyncio.Lock()

    async def count_prompt(self, request: CompletionRequest, deadline: float) -> PromptCount | None:
        """The prompt's tokens as the server counts them for a chat call, template included where
        the server can apply it; None: no tokenizer here, or it failed this time."""
        try:
            kind = await self._kind(request.model, deadline)
            if kind == LLAMACPP:
                return await self._llamacpp_prompt(request, deadline)
            if kind == VLLM:
                data = await self._post("/tokenize", {"model": request.model, "messages": chat_messages(request)}, deadline)
                return PromptCount(_count_of(data), templated=True)
            if kind == LLAMA_CPP_PYTHON:
                return PromptCount(await self._extras(request.model, joined_prompt(request), deadline), templated=False)
        except (_Absent, _Transient) as exc:
            log.debug("%s: no prompt count from the server's tokenizer: %s", self.root_url, exc)
        return None

    async def count_text(self, model: str, text: str, deadline: float) -> int | None:
        """The tokens of `text` (an answer: no BOS or other special tokens added); None as above."""
        try:
            kind = await self._kind(model, deadline)
            if kind == LLAMACPP:
                return len(await self._llamacpp_tokens(text, False, deadline))
            if kind == VLLM:
                body = {"model": model, "prompt": text, "add_special_tokens": False}
                return _count_of(await self._post("/tokenize", body, deadline))
            if kind == LLAMA_CPP_PYTHON:
                return await self._extras(model, text, deadline)
        except (_Absent, _Transient) as exc:
            log.debug("%s: no text count from the server's tokenizer: %s", self.root_url, exc)
        return None

    # ------------------------------------------------------------------ per server

    async def _llamacpp_tokens(self, text: str, add_special: bool, deadline: float) -> list[Any]:
        tokens = _token_list(await self._post("/tokenize", {"content": text, "add_special": add_special}, deadline))
        if tokens is None:
            raise _Transient("llama.cpp /tokenize answered without a token list")
        return tokens

    async def _llamacpp_prompt(self, request: CompletionRequest, deadline: float) -> PromptCount:
        """/apply-template, then /tokenize with the special tokens (BOS) the model adds: what
        llama-server's chat endpoint does. A build without /apply-template: the texts only."""
        if self.applies_template is not False:
            try:
                data = await self._post("/apply-template", {"messages": chat_messages(request)}, deadline)
            except _Absent:
                self.applies_template = False
            else:
                prompt = data.get("prompt") if isinstance(data, dict) else None
                if not isinstance(prompt, str):
                    raise _Transient("llama.cpp /apply-template answered without a prompt")
                self.applies_template = True
                return PromptCount(len(await self._llamacpp_tokens(prompt, True, deadline)), templated=True)
        return PromptCount(len(await self._llamacpp_tokens(joined_prompt(request), True, deadline)), templated=False)

    async def _extras(self, model: str, text: str, deadline: float) -> int:
        tokens = _token_list(await self._post("/extras/tokenize", {"input": text, "model": model}, deadline))
        if tokens is None:
            raise _Transient("/extras/tokenize answered without a token list")
        return len(tokens)

    # ------------------------------------------------------------------ detection and transport

    async def _kind(self, model: str, deadline: float) -> str:
        if self.kind is not None:
            return self.kind
        async with self._detecting:  # one detection per instance, however many requests wait for it
            if self.kind is None:
                self.kind = await self._detect(model, deadline)
                log.info("%s: token counts by the server's tokenizer: %s", self.root_url, self.kind)
            return self.kind

    async def _detect(self, model: str, deadline: float) -> str:
        """The kind of tokenizer endpoint the server answers on; _Transient leaves it unknown."""
        try:
            data = await self._post("/tokenize", {"content": PROBE_TEXT, "add_special": False}, deadline)
        except _Absent as exc:
            if exc.status != 404:  # the path exists but wants another body: vLLM's shape
                body = {"model": model, "prompt": PROBE_TEXT, "add_special_tokens": False}
                with contextlib.suppress(_Absent):
                    answer = await self._post("/tokenize", body, deadline)
                    if isinstance(answer, dict) and isinstance(answer.get("count"), int):
                        return VLLM
        else:
            if isinstance(data, dict) and isinstance(data.get("count"), int):
                return VLLM
            if _token_list(data):
                return LLAMACPP
        try:
            if _token_list(await self._post("/extras/tokenize", {"input": PROBE_TEXT, "model": model}, deadline)):
                return LLAMA_CPP_PYTHON
        except _Absent:
            pass
        return NONE

    async def _post(self, path: str, body: dict[str, Any], deadline: float) -> Any:
        url = self.root_url + path
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Transient(f"no time left for {url}")
        try:
            async with asyncio.timeout(remaining):
                resp = await self._client.post(url, content=orjson.dumps(body), headers={"Content-Type": "application/json"})
        except (TimeoutError, httpx.HTTPError) as exc:
            raise _Transient(f"{url}: {type(exc).__name__}") from exc
        if resp.status_code in ABSENT_STATUSES:
            raise _Absent(f"{url} answered {resp.status_code}", resp.status_code)
        if resp.status_code != 200:
            raise _Transient(f"{url} answered {resp.status_code}")
        try:
            return orjson.loads(resp.content)
        except ValueError as exc:
            raise _Transient(f"{url} answered malformed JSON") from exc


__all__ = ["LLAMACPP", "LLAMA_CPP_PYTHON", "NONE", "VLLM", "ServerTokenizer", "chat_messages", "joined_prompt"]
