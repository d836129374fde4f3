"""What `test-backend` and `models list` do, apart from printing: talk to the backend once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from .backends.base import BackendError, CompletionRequest, LlmBackend, ModelInfo
from .config import Config

TEST_PROMPT = "Reply with one short sentence: are you ready?"


@dataclass(frozen=True)
class ModelCheck:
    model: str
    ok: bool
    latency_s: float
    ttft_s: float | None
    tokens: int
    tokens_per_s: float | None
    detail: str


async def check_backend(backend: LlmBackend, config: Config, max_tokens: int = 16) -> tuple[list[str], list[ModelCheck]]:
    """List the backend's models, then one short streamed completion per enabled model.

    Raises BackendError (with the cause) when the backend cannot be reached at all.
    """
    available = await backend.list_models()
    checks = []
    for model in (m for m in config.models if m.enabled):
        started = time.perf_counter()
        try:
            answer = await backend.complete_streaming(CompletionRequest(model.name, TEST_PROMPT, None, 0.0, max_tokens))
        except BackendError as exc:
            elapsed = time.perf_counter() - started
            checks.append(ModelCheck(model.name, False, elapsed, None, 0, None, f"{type(exc).__name__}: {exc}"))
            continue
        elapsed = time.perf_counter() - started
        tokens = answer.outbound_tokens or 0
        generation = (answer.duration_secs or elapsed) - (answer.ttft_secs or 0.0)
        rate = tokens / generation if tokens and generation > 0 else None
        checks.append(ModelCheck(model.name, True, elapsed, answer.ttft_secs, tokens, rate, answer.content[:60]))
    return available, checks


@dataclass(frozen=True)
class ModelRow:
    name: str
    aliases: list[str]
    enabled: bool
    context_length: int
    inbound_price_wei: int
    outbound_price_wei: int
    backend_state: str  # loaded | not-loaded | listed | missing | unknown


class ModelLister(Protocol):
    """What `model_rows` asks of a backend: a backend itself, or the API's cached probe of one."""

    async def model_details(self) -> list[ModelInfo]: ...


async def model_rows(
    config: Config, backend: ModelLister | None, prices: dict[str, tuple[int, int]] | None = None
) -> tuple[list[ModelRow], str]:
    """Configured models joined with what the backend reports (when it can be reached).

    `prices`: a running node's current prices (dynamic or market pricing); config prices otherwise.
    """
    details: dict[str, ModelInfo] = {}
    status = "not checked"
    if backend is not None:
        try:
            details = {m.id: m for m in await backend.model_details()}
            status = "connected"
        except BackendError as exc:
            status = f"disconnected ({type(exc).__name__}: {exc})"
    rows = []
    for m in config.models:
        info = details.get(m.name)
        if backend is None or status != "connected":
            state = "unknown"
        elif info is None:
            state = "missing"
        elif info.loaded is None:
            state = "listed"
        else:
            state = "loaded" if info.loaded else "not-loaded"
        aliases = sorted(a for a, target in config.model_aliases.items() if target == m.name)
        price_in, price_out = (prices or {}).get(m.name, (m.inbound_price_wei, m.outbound_price_wei))
        rows.append(ModelRow(m.name, aliases, m.enabled, m.context_length, price_in, price_out, state))
    return rows, status
