"""A RequestHandler wired with replay protection, pricing, metrics and a dispatcher,
signed frames for it, and a backend that records (and can hold) its calls: shared by
the scheduling tests (test_dispatch.py) and the per-model limit tests (test_model_limits.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from lloom_executor import _native
from lloom_executor._fast.scheduler import Scheduler
from lloom_executor.backends.base import Completion, CompletionRequest, LlmBackend
from lloom_executor.config import ModelConfig, RequestHandlingConfig
from lloom_executor.metrics import Metrics
from lloom_executor.p2p.llm_protocol import RequestContext
from lloom_executor.pipeline.dispatch import Dispatcher
from lloom_executor.pipeline.replay import ReplayGuard
from lloom_executor.pipeline.resources import ResourceGovernor
from lloom_executor.serving import RequestHandler, build_request_handler
from service_rig import until  # noqa: F401  (re-exported: the one async wait of the tests)

EXECUTOR = _native.PrivateKey.generate()
CLIENT = _native.PrivateKey.generate()
CTX = RequestContext("16Uiu2HAmTestPeer", "127.0.0.1", 0, 0.0)
PRICE = 2  # wei per token, both sides, for every model here


def frame(model: str = "m", prompt: str = "hello", *, price: int = PRICE, signed: bool = True, deadline_in: int = 300) -> bytes:
    now = int(time.time())
    if not signed:
        return _native.encode_unsigned_request(
            model, prompt, None, None, None, EXECUTOR.peer_id, str(price), str(price), 1, now + deadline_in
        )
    return _native.encode_signed_request(
        CLIENT, model, prompt, None, None, None, EXECUTOR.peer_id, str(price), str(price), 1, now + deadline_in, now
    )


def answer(raw: bytes) -> _native.DecodedResponse:
    decoded = _native.decode_response(raw)
    assert decoded.signature_valid and decoded.recovered == EXECUTOR.address_bytes
    return decoded


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recording(LlmBackend):
    """Records each call (model, prompt, clock reading) and holds it until `gate` opens."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, gated: bool = False) -> None:
        self.clock = clock
        self.calls: list[tuple[str, str, float]] = []
        self.gate = asyncio.Event() if gated else None
        self.running = 0
        self.peak = 0

    async def complete(self, request: CompletionRequest) -> Completion:
        model, prompt = request.model, request.prompt
        self.calls.append((model, prompt, self.clock()))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.running -= 1
        return Completion(content=f"done {prompt}", model=model)

    async def list_models(self) -> list[str]:
        return []


def models(*names: str, **per_model: Any) -> list[ModelConfig]:
    return [ModelConfig(n, inbound_price_wei=PRICE, outbound_price_wei=PRICE, **per_model) for n in names or ("m",)]


def build(
    backend: LlmBackend,
    *,
    served: list[ModelConfig] | None = None,
    max_concurrent: int = 10,
    queue_sizes: dict[str, int] | None = None,
    batch: tuple[int, float] = (1, 0.0),
    priority: float | None = 1.5,
    clock: Callable[[], float] | None = None,
    resources: ResourceGovernor | None = None,
    queued: bool = True,
    timeout: float = 600.0,
    allow_unsigned: bool = False,
) -> RequestHandler:
    """A handler with replay protection, metrics and (queued=True) a dispatcher."""
    served = served or models()
    clock = clock or time.monotonic
    metrics = Metrics()
    # queued=False: the direct path, i.e. the dispatcher without [priority] and [batching]
    scheduler = (
        Scheduler(batch[0], batch[1], True, queue_sizes, clock=clock)
        if queued
        else Scheduler(1, 0, True, queue_sizes, clock=clock)
    )
    dispatcher = Dispatcher(
        scheduler,
        max_concurrent,
        priority_multiplier=priority if queued else None,
        resources=resources,
        on_sizes=metrics.set_queue_sizes,
        on_throttled=metrics.set_throttled,
        clock=clock,
    )
    handling = RequestHandlingConfig(max_concurrent_requests=max_concurrent, request_timeout_secs=timeout)
    return build_request_handler(
        EXECUTOR,
        served,
        backend,
        handling=handling,
        dispatcher=dispatcher,
        replay=ReplayGuard(),
        metrics=metrics,
        resources=resources,
        allow_unsigned=allow_unsigned,
    )
