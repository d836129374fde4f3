"""Several backends at once: each model goes to the backend its `[[models]]` entry names.

`BackendSet` is the one `LlmBackend` the request path holds: it forwards each
call to the backend serving the request's model (`[llm_client]`, named
`llm_client`, unless the model's entry says `backend = "<[[llm_backends]] name>"`),
so an OpenAI account, an LM Studio box and a vLLM pool can serve side by side
while the request path stays unaware of them. It also owns what belongs to
the backends as a group: starting and stopping their pools' probes, closing
them, and reporting their health (`health()`, read by /health/detailed and
the metrics).

`Bounded` caps one backend's calls in flight (`max_concurrent_requests` of a
`[[llm_backends]]` entry): a call over the cap waits for a slot, inside the
request's own deadline, instead of reaching a server that is full already.
The slots are an `asyncio.Semaphore` in one process and the node's
(`workers.shared_limits`) with several workers: the cap is the server's, not a worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..config.schema import DEFAULT_BACKEND
from .base import Completion, CompletionRequest, CompletionStream, LlmBackend, ModelInfo, PromptCount, Usage, WrappingBackend
from .pool import InstancePool
from .usage_book import Slots

log = logging.getLogger(__name__)


class Bounded(WrappingBackend):
    """`inner` with at most `limit` calls (streams included) in flight; the rest wait their turn."""

    def __init__(self, inner: LlmBackend, limit: int, slots: Slots | None = None) -> None:
        if limit < 1:
            raise ValueError("max_concurrent_requests must be >= 1")
        super().__init__(inner)
        self.limit = limit
        self._slots: Slots = slots if slots is not None else asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()

    async def complete(self, request: CompletionRequest) -> Completion:
        async with self._slot():
            return await self.inner.complete(request)

    def stream(self, request: CompletionRequest) -> CompletionStream:
        async def source(cs: CompletionStream) -> AsyncIterator[str | Usage]:
            async with self._slot(), self.inner.stream(request) as inner:
                async for delta in inner:
                    yield delta
                cs.model = inner.model
                done = inner.completion
            if done is not None:
                yield Usage(done.inbound_tokens, done.outbound_tokens, done.token_source)

        return CompletionStream(request.model, source)


@dataclass(frozen=True)
class BackendEntry:
    """One backend of the set: what serves calls (limits and bounds applied), its pool if it
    has one, and what describes it (kind, instance labels) for health pages and the CLI."""

    name: str
    kind: str
    serving: LlmBackend
    pool: InstancePool | None
    instances: tuple[str, ...]
    max_concurrent_requests: int | None = None


class BackendSet(LlmBackend):
    """Backends by name and the model -> backend routes (models not routed: `default`)."""

    def __init__(self, entries: Mapping[str, BackendEntry], routes: Mapping[str, str], default: str = DEFAULT_BACKEND) -> None:
        if default not in entries:
            raise ValueError(f"the default backend {default!r} is not among {sorted(entries)}")
        unknown = {m: b for m, b in routes.items() if b not in entries}
        if unknown:
            raise ValueError(f"models routed to backends that do not exist: {unknown}")
        self.entries = dict(entries)
        self.routes = dict(routes)
        self.default = default

    def __repr__(self) -> str:
        return f"BackendSet({sorted(self.entries)})"

    def backend_of(self, model: str) -> str:
        """The name of the backend serving `model`."""
        return self.routes.get(model, self.default)

    def models_of(self, backend: str) -> list[str]:
        return [m for m, b in self.routes.items() if b == backend]

    def _for(self, model: str) -> LlmBackend:
        return self.entries[self.backend_of(model)].serving

    async def complete(self, request: CompletionRequest) -> Completion:
        return await self._for(request.model).complete(request)

    def stream(self, request: CompletionRequest) -> CompletionStream:
        return self._for(request.model).stream(request)

    async def count_prompt(self, request: CompletionRequest, deadline: float) -> PromptCount | None:
        return await self._for(request.model).count_prompt(request, deadline)

    async def list_models(self) -> list[str]:
        return [info.id for info in await self.model_details()]

    async def model_details(self) -> list[ModelInfo]:
        """Each backend's listing, kept to the models routed to it (the default backend's also
        keeps what no model names, so discovery can say it is offered but not configured).
        Fails only when every backend fails; a failing one is logged and its models left out."""
        names = list(self.entries)
        results = await asyncio.gather(*(self.entries[n].serving.model_details() for n in names), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            raise errors[0]
        merged: list[ModelInfo] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("backend %s did not list its models: %s: %s", name, type(result).__name__, result)
                continue
            merged += [info for info in result if self.backend_of(info.id) == name]
        return merged

    def health(self) -> dict[str, dict[str, Any]]:
        """Per backend: kind, strategy, instances with up/in flight/failures (what /health/detailed shows)."""
        out: dict[str, dict[str, Any]] = {}
        for name, entry in self.entries.items():
            pool = entry.pool
            if pool is not None:
                instances = pool.health()
            else:
                instances = [{"instance": label, "up": None} for label in entry.instances]
            out[name] = {
                "kind": entry.kind,
                "strategy": pool.strategy if pool is not None else None,
                "models": self.models_of(name) if name != self.default else None,
                "max_concurrent_requests": entry.max_concurrent_requests,
                "instances": instances,
                "instances_up": sum(1 for i in instances if i["up"] is not False),
            }
        return out

    def unhealthy(self) -> list[str]:
        """Backends with an instance taken out now."""
        return [
            name
            for name, entry in self.entries.items()
            if entry.pool is not None and not all(i.up for i in entry.pool.instances.values())
        ]

    async def start(self) -> None:
        """Start every pool's probes (the service calls this once the node is up)."""
        for entry in self.entries.values():
            if entry.pool is not None:
                await entry.pool.start()

    async def close(self) -> None:
        results = await asyncio.gather(*(e.serving.close() for e in self.entries.values()), return_exceptions=True)
        for name, result in zip(self.entries, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("closing backend %s failed: %s: %s", name, type(result).__name__, result)


__all__ = ["DEFAULT_BACKEND", "BackendEntry", "BackendSet", "Bounded"]
