"""A real OpenAI-wire-format HTTP server for tests (stdlib only: asyncio streams).

It runs on 127.0.0.1:<ephemeral port> in its own thread with its own plain
asyncio loop, so it works whatever the test runs on (asyncio.run, uvloop,
trio via the bridge, or no loop at all):

    with OpenAIServer() as srv:              # or: async with OpenAIServer() as srv:
        backend = OpenAICompatibleBackend(srv.base_url)   # http://127.0.0.1:PORT/v1
        ...
        srv.chat_requests[-1].json["temperature"]

Endpoints
  POST /v1/chat/completions   non-stream (with `usage`) or SSE (`stream: true`):
                              `data: {chunk}` events (role chunk, one chunk per word,
                              a finish chunk, a usage chunk when
                              `stream_options.include_usage`), then `data: [DONE]`;
                              chunked transfer encoding, so a drop mid-stream is a
                              truncated body to the client.
  GET  /v1/models             OpenAI listing of `models`.
  GET  /api/v0/models         LM Studio REST listing (id, type, arch, state,
                              max_context_length, quantization ...); 404 when
                              `lmstudio_api=False`, as on a plain OpenAI server.
  POST /tokenize              only with `tokenizer=` (else 404, as on OpenAI or LM Studio):
                              vLLM's documented shape -- {"model", "prompt",
                              "add_special_tokens"} or {"model", "messages",
                              "add_generation_prompt"} -> {"count", "max_model_len",
                              "tokens", "token_strs"}; the chat form renders the messages
                              with `chat_template` first; a body with neither is a 400,
                              an unknown model a 404, as vLLM answers. `tokenizer` is a
                              real tokenizer the test trusts (tiktoken), so the counts
                              have an oracle independent of the executor.

Deterministic content and usage rule
  answer words = ["echo:"] + the last user message split on whitespace, cut to
  `max_tokens` words (finish_reason "length" when cut, else "stop");
  content = " ".join(answer words);
  prompt_tokens = total whitespace-separated words over all message contents;
  completion_tokens = number of answer words.
  (`echo_content` / `usage_for` below compute the same.)

Models
  `models` is a list of LM Studio-style dicts; chat to a model that is not in it,
  or whose state is "not-loaded", answers 404 with an LM Studio-like
  {"error": {"message": ..., "code": "model_not_found"}} (set strict_models=False
  to answer for any model name).

Injectable behaviour (per request, first match wins, consumed `times` times;
times=None applies forever): see `Behaviour` and the helpers `fail`, `hang`,
`malformed`, `drop_mid_stream`, `truncate`, `drop_connection`, `slow`, `no_usage`.
Server-wide: `latency` (seconds before every answer), `api_key` (401 unless
`Authorization: Bearer <api_key>`; the 401 quotes the key it refused, as some
servers do), `omit_usage`. `fail(..., echo_credentials=True)` makes an error
answer quote the request's credential headers (Authorization, *-key): the worst
a backend can do to the executor's logs.

Every request is recorded (`requests`, `chat_requests`) with method, path,
lower-cased headers, raw body, parsed JSON and `time` (time.monotonic() when
its head arrived, comparable with the test's own clock). Chat calls are also
logged as they begin and end (`chat_events`: (time.monotonic(), "start" |
"end", model, last user message)): "start" when the request has been read,
"end" just before the first byte of a non-stream answer is written (so before
the client can have it; a stream ends when it has been sent), so a call's
logged span lies inside the client's. `in_flight_at_starts()` replays that
log into the calls in flight, per model, as each call began.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

CHAT_PATH = "/v1/chat/completions"

DEFAULT_MODELS: list[dict[str, Any]] = [
    {
        "id": "test-model",
        "object": "model",
        "type": "llm",
        "publisher": "lloom",
        "arch": "llama",
        "compatibility_type": "gguf",
        "quantization": "Q4_K_M",
        "state": "loaded",
        "max_context_length": 8192,
    },
    {
        "id": "unloaded-model",
        "object": "model",
        "type": "llm",
        "publisher": "lloom",
        "arch": "mistral",
        "compatibility_type": "gguf",
        "quantization": "Q8_0",
        "state": "not-loaded",
        "max_context_length": 32768,
    },
    {
        "id": "text-embedding-test",
        "object": "model",
        "type": "embeddings",
        "publisher": "lloom",
        "arch": "nomic-bert",
        "compatibility_type": "gguf",
        "quantization": "Q4_0",
        "state": "not-loaded",
        "max_context_length": 2048,
    },
]


def echo_words(messages: list[dict], max_tokens: int | None = None) -> tuple[list[str], bool]:
    prompt = ""
    for message in messages:
        if message.get("role") == "user":
            prompt = message.get("content") or ""
    words = ["echo:"] + prompt.split()
    if max_tokens is not None and len(words) > max_tokens:
        return words[:max_tokens], True
    return words, False


def echo_content(prompt: str, max_tokens: int | None = None) -> str:
    return " ".join(echo_words([{"role": "user", "content": prompt}], max_tokens)[0])


def usage_for(messages: list[dict], max_tokens: int | None = None) -> dict[str, int]:
    prompt_tokens = sum(len((m.get("content") or "").split()) for m in messages)
    completion_tokens = len(echo_words(messages, max_tokens)[0])
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Behaviour:
    """What to do for the next matching request(s) instead of (or on top of) the normal answer."""

    path: str = CHAT_PATH  # request path it applies to ("*" = any)
    times: int | None = 1  # how many requests it applies to; None = all
    latency: float = 0.0  # seconds before answering (before the first stream byte)
    status: int | None = None  # answer this error status with an OpenAI-style error body
    message: str | None = None  # the error body's message
    code: str | None = None  # the error body's code
    retry_after: str | float | None = None  # Retry-After header (seconds or HTTP date)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # answer `status` (default 200) with exactly these bytes (application/json unless headers say)
    echo_credentials: bool = False  # the error answer quotes the request's Authorization and *-key headers
    truncate_after: int | None = None  # non-stream: close the connection after this many body bytes
    hang: bool = False  # read the request and never answer
    drop_connection: bool = False  # close the connection without answering
    drop_after_chunks: int | None = None  # streaming: close after this many `data:` events
    chunk_delay: float = 0.0  # streaming: seconds between events
    omit_usage: bool = False  # no `usage` in the answer / no usage chunk


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    time: float
    connection: int

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        return value[len("Bearer ") :] if value.startswith("Bearer ") else None


def unresolvable_url() -> str:
    """A base URL whose host no resolver can look up: a name longer than DNS's 253-character
    limit, which the C library rejects itself without sending a query, so the lookup fails
    the same way on every machine, with or without a network."""
    host = ".".join(["a" * 60] * 5) + ".invalid"
    return f"http://{host}:8080/v1"


def refused_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class _TrackedStreamProtocol(asyncio.StreamReaderProtocol):
    """`asyncio.start_server`'s protocol, keeping each connection's transport in `transports`
    while it is open (so that stopping the server can reset every one of them)."""

    def __init__(self, handle: Any, transports: set[asyncio.BaseTransport], stopping: asyncio.Event) -> None:
        super().__init__(asyncio.StreamReader(), handle)
        self._tracked = transports
        self._stopping = stopping
        self._own: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._stopping.is_set():  # accepted by the kernel before the stop, set up by asyncio after it
            transport.abort()
            return
        self._own = transport
        self._tracked.add(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._own is not None:
            self._tracked.discard(self._own)
        super().connection_lost(exc)


class OpenAIServer:
    def __init__(
        self,
        models: list[dict[str, Any]] | None = None,
        *,
        api_key: str | None = None,
        lmstudio_api: bool = True,
        strict_models: bool = True,
        latency: float = 0.0,
        omit_usage: bool = False,
        port: int = 0,
        tokenizer: Callable[[str], list[int]] | None = None,
        chat_template: Callable[[list[dict[str, Any]], bool], str] | None = None,
    ) -> None:
        self.models = [dict(m) for m in (models if models is not None else DEFAULT_MODELS)]
        self.api_key = api_key
        self.lmstudio_api = lmstudio_api
        self.strict_models = strict_models
        self.latency = latency
        self.omit_usage = omit_usage
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.requests: list[RecordedRequest] = []
        self.fixed_port = port  # 0: an ephemeral port (the usual case)
        self.port: int | None = None
        self._behaviours: list[Behaviour] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()
        self._connections = 0
        self._completions = 0
        self.chat_events: list[tuple[float, str, str, str]] = []
        self._open_calls: dict[int, tuple[str, str]] = {}  # id(writer) -> (model, prompt) of its chat call

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OpenAIServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._run, name="openai-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")
        if self._error is not None:
            raise RuntimeError("test server failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> OpenAIServer:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ behaviour injection

    def add(self, behaviour: Behaviour) -> Behaviour:
        with self._lock:
            self._behaviours.append(behaviour)
        return behaviour

    def clear(self) -> None:
        with self._lock:
            self._behaviours.clear()

    def fail(
        self,
        status: int,
        times: int | None = 1,
        *,
        retry_after: str | float | None = None,
        message: str | None = None,
        code: str | None = None,
        path: str = CHAT_PATH,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        echo_credentials: bool = False,
    ) -> Behaviour:
        """Answer `status`: an OpenAI-style error body, or exactly `body` when given."""
        return self.add(
            Behaviour(
                path=path,
                times=times,
                status=status,
                retry_after=retry_after,
                message=message,
                code=code,
                body=body,
                headers=dict(headers or {}),
                echo_credentials=echo_credentials,
            )
        )

    def hang(self, times: int | None = None, path: str = CHAT_PATH) -> Behaviour:
        return self.add(Behaviour(path=path, times=times, hang=True))

    def malformed(self, body: bytes = b'{"choices": [{"message": ', times: int | None = 1, path: str = CHAT_PATH) -> Behaviour:
        return self.add(Behaviour(path=path, times=times, body=body))

    def drop_mid_stream(self, after_chunks: int = 2, times: int | None = 1) -> Behaviour:
        return self.add(Behaviour(times=times, drop_after_chunks=after_chunks))

    def truncate(self, after_bytes: int = 20, times: int | None = 1) -> Behaviour:
        """A non-stream answer whose connection closes after `after_bytes` of its body."""
        return self.add(Behaviour(times=times, truncate_after=after_bytes))

    def drop_connection(self, times: int | None = 1, path: str = CHAT_PATH) -> Behaviour:
        return self.add(Behaviour(path=path, times=times, drop_connection=True))

    def slow(self, latency: float, times: int | None = 1, chunk_delay: float = 0.0) -> Behaviour:
        return self.add(Behaviour(times=times, latency=latency, chunk_delay=chunk_delay))

    def no_usage(self, times: int | None = None) -> Behaviour:
        return self.add(Behaviour(times=times, omit_usage=True))

    def _take(self, path: str) -> Behaviour | None:
        with self._lock:
            for b in self._behaviours:
                if b.path in ("*", path) and (b.times is None or b.times > 0):
                    if b.times is not None:
                        b.times -= 1
                        if b.times == 0:
                            self._behaviours.remove(b)
                    return b
        return None

    # ------------------------------------------------------------------ recorded requests

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if r.path == CHAT_PATH]

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if r.path == path]

    def in_flight_at_starts(self) -> list[tuple[str, dict[str, int]]]:
        """For each chat call in the order they began: (its prompt, {model: calls in flight then, itself included})."""
        running: dict[str, int] = {}
        out = []
        for _, kind, model, prompt in list(self.chat_events):
            running[model] = running.get(model, 0) + (1 if kind == "start" else -1)
            if kind == "start":
                out.append((prompt, {m: n for m, n in running.items() if n}))
        return out

    # ------------------------------------------------------------------ server internals

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported through start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        transports: set[asyncio.BaseTransport] = set()
        stopping = asyncio.Event()
        server = await loop.create_server(
            lambda: _TrackedStreamProtocol(self._handle, transports, stopping), "127.0.0.1", self.fixed_port
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            stopping.set()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            # As a killed process does: every connection still open is reset, including one
            # accepted in the last instant whose handler never started (it would otherwise keep
            # its socket open, and a client's request on it would wait for its timeout).
            for transport in list(transports):
                transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._connections += 1
        conn = self._connections
        try:
            while True:
                request = await self._read_request(reader, conn)
                if request is None:
                    break
                keep_alive = await self._dispatch(request, writer)
                if not keep_alive or request.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader, conn: int) -> RecordedRequest | None:
        line = await reader.readline()
        if not line:
            return None
        arrived = time.monotonic()
        method, target, _version = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        path = target.split("?", 1)[0]
        request = RecordedRequest(method, path, headers, body, parsed, arrived, conn)
        self.requests.append(request)
        return request

    @staticmethod
    def _head(status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        headers: dict | None = None,
        truncate_after: int | None = None,
    ) -> bool:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        head = {"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "keep-alive"}
        head.update(headers or {})
        self._end_call(writer)
        if truncate_after is not None:
            writer.write(self._head(status, head) + body[:truncate_after])
            await writer.drain()
            writer.transport.abort()
            return False
        writer.write(self._head(status, head) + body)
        await writer.drain()
        return True

    @staticmethod
    def _error_body(message: str, code: str | None, type_: str = "invalid_request_error", param: str | None = None) -> dict:
        return {"error": {"message": message, "type": type_, "param": param, "code": code}}

    async def _dispatch(self, req: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        body = req.json
        if req.method != "POST" or req.path != CHAT_PATH or not isinstance(body, dict):
            return await self._answer(req, writer)
        model = str(body.get("model"))
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        prompt = next((str(m.get("content")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), "")
        self.chat_events.append((time.monotonic(), "start", model, prompt))
        self._open_calls[id(writer)] = (model, prompt)
        try:
            return await self._answer(req, writer)
        finally:
            self._end_call(writer)

    def _end_call(self, writer: asyncio.StreamWriter) -> None:
        call = self._open_calls.pop(id(writer), None)
        if call is not None:
            self.chat_events.append((time.monotonic(), "end", *call))

    async def _answer(self, req: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        b = self._take(req.path) or Behaviour(times=None)
        delay = self.latency + b.latency
        if delay:
            await asyncio.sleep(delay)
        if b.hang:
            await asyncio.Event().wait()  # until the server stops
        if b.drop_connection:
            return False
        if self.api_key is not None and req.headers.get("authorization") != f"Bearer {self.api_key}":
            presented = req.bearer or req.headers.get("authorization", "none")
            return await self._send(
                writer, 401, self._error_body(f"Incorrect API key provided: {presented}.", "invalid_api_key"), b.headers
            )
        quoted = ""
        if b.echo_credentials:
            sent = ", ".join(f"{k}={v}" for k, v in req.headers.items() if k == "authorization" or k.endswith("-key"))
            quoted = f" (you sent {sent})"
        if b.body is not None:
            return await self._send(writer, b.status or 200, b.body + quoted.encode(), b.headers)
        if b.status is not None:
            headers = dict(b.headers)
            if b.retry_after is not None:
                headers["Retry-After"] = str(b.retry_after)
            message = (b.message or f"injected {b.status} {HTTPStatus(b.status).phrase}") + quoted
            kind = "server_error" if b.status >= 500 else "invalid_request_error"
            return await self._send(writer, b.status, self._error_body(message, b.code, kind), headers)

        if req.method == "GET" and req.path == "/v1/models":
            data = [{"id": m["id"], "object": "model", "owned_by": m.get("publisher", "organization_owner")} for m in self.models]
            return await self._send(writer, 200, {"object": "list", "data": data})
        if req.method == "GET" and req.path == "/api/v0/models":
            if not self.lmstudio_api:
                return await self._send(writer, 404, {"error": f"Unexpected endpoint or method. (GET {req.path})"})
            return await self._send(writer, 200, {"object": "list", "data": self.models})
        if req.method == "POST" and req.path == CHAT_PATH:
            return await self._chat(req, writer, b)
        if req.method == "POST" and req.path == "/tokenize" and self.tokenizer is not None:
            return await self._tokenize(req, writer, self.tokenizer)
        return await self._send(writer, 404, {"error": f"Unexpected endpoint or method. ({req.method} {req.path})"})

    async def _tokenize(self, req: RecordedRequest, writer: asyncio.StreamWriter, tokenize: Callable[[str], list[int]]) -> bool:
        """vLLM's POST /tokenize (the module doc): a prompt, or chat messages through the template."""
        body = req.json if isinstance(req.json, dict) else {}
        known = {m["id"]: m for m in self.models}
        model = body.get("model")
        if self.strict_models and model is not None and model not in known:
            error = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError", "param": None, "code": 404}
            return await self._send(writer, 404, {"error": error})
        if isinstance(body.get("messages"), list) and self.chat_template is not None:
            text = self.chat_template(body["messages"], bool(body.get("add_generation_prompt", True)))
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
        else:
            return await self._send(writer, 400, self._error_body("1 validation error: 'prompt' or 'messages' required", None))
        tokens = tokenize(text)
        length = known.get(model, {}).get("max_context_length", 8192)
        return await self._send(
            writer, 200, {"count": len(tokens), "max_model_len": length, "tokens": tokens, "token_strs": None}
        )

    async def _chat(self, req: RecordedRequest, writer: asyncio.StreamWriter, b: Behaviour) -> bool:
        body = req.json
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            return await self._send(writer, 400, self._error_body("'messages' and 'model' are required", None))
        model = body["model"]
        if self.strict_models:
            known = {m["id"]: m for m in self.models}
            if model not in known:
                return await self._send(
                    writer,
                    404,
                    self._error_body(f'Model "{model}" not found. Please check the model id.', "model_not_found", param="model"),
                )
            if known[model].get("state") == "not-loaded":
                return await self._send(
                    writer,
                    404,
                    self._error_body(
                        f'Model "{model}" is not loaded. Load it in LM Studio first.', "model_not_found", param="model"
                    ),
                )
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        words, cut = echo_words(body["messages"], max_tokens)
        content = " ".join(words)
        usage = usage_for(body["messages"], max_tokens)
        finish = "length" if cut else "stop"
        self._completions += 1
        ident = f"chatcmpl-{self._completions}"
        created = int(time.time())
        omit_usage = self.omit_usage or b.omit_usage
        if not body.get("stream"):
            answer: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            }
            if not omit_usage:
                answer["usage"] = usage
            return await self._send(writer, 200, answer, b.headers, b.truncate_after)

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        events: list[dict] = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        events.append(chunk({}, finish))
        include_usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")
        if include_usage and not omit_usage:
            events.append(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        head = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Transfer-Encoding": "chunked",
            "Connection": "keep-alive",
        }
        head.update(b.headers)
        writer.write(self._head(200, head))
        await writer.drain()

        async def send_event(data: str) -> None:
            piece = f"data: {data}\n\n".encode()
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()

        for n, event in enumerate(events):
            if b.drop_after_chunks is not None and n >= b.drop_after_chunks:
                writer.transport.abort()
                return False
            if n and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            await send_event(json.dumps(event))
        await send_event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


class GatedServer(OpenAIServer):
    """The OpenAI-wire test server holding every chat answer until `open_gate()`: requests stay
    in flight for exactly as long as the test needs, not for a guessed latency."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate: asyncio.Event | None = None  # made on the server's own loop, at its first chat

    async def _dispatch(self, req: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        if req.path == CHAT_PATH:
            if self._gate is None:
                self._gate = asyncio.Event()
            await self._gate.wait()
        return await super()._dispatch(req, writer)

    def open_gate(self) -> None:
        def release() -> None:
            if self._gate is None:
                self._gate = asyncio.Event()
            self._gate.set()

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(release)
