"""The built-in `echo` backend: deterministic text, not a model.

For the demo, tests and benchmarks: it answers "echo: <prompt>" (cut to
max_tokens words), after an optional fixed latency plus the time the answer
would take at `tokens_per_second`.
"""

from __future__ import annotations

import asyncio

from .base import BackendRequestError, Completion, CompletionRequest, LlmBackend

ECHO_PREFIX = "echo: "


class EchoBackend(LlmBackend):
    def __init__(self, models: list[str], latency_ms: float = 0.0, tokens_per_second: float | None = None) -> None:
        if latency_ms < 0 or (tokens_per_second is not None and tokens_per_second <= 0):
            raise ValueError("echo backend: latency_ms must be >= 0 and tokens_per_second > 0")
        self._models = list(models)
        self._latency = latency_ms / 1000.0
        self._tps = tokens_per_second

    async def complete(self, request: CompletionRequest) -> Completion:
        """The prompt's words behind ECHO_PREFIX. A negative max_tokens is the one request
        it cannot answer sensibly, refused as a backend error like a real server's 400
        (a slice with a negative bound would silently answer from the wrong end)."""
        max_tokens = request.max_tokens
        if max_tokens is not None and max_tokens < 0:
            raise BackendRequestError(f"echo backend: max_tokens must be >= 0, got {max_tokens}")
        words = request.prompt.split()
        if max_tokens is not None:
            words = words[:max_tokens]
        content = ECHO_PREFIX + " ".join(words)
        delay = self._latency + (len(words) / self._tps if self._tps else 0.0)
        if delay:
            await asyncio.sleep(delay)
        return Completion(content=content, model=request.model)

    async def list_models(self) -> list[str]:
        return list(self._models)
