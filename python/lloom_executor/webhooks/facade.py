"""`Webhooks`: what the rest of the node calls to report events; delivery is `delivery.py`'s.

`emit` never blocks and never fails its caller: it is called on the request path
and from the node's lifecycle, where a slow or dead receiver must cost nothing.
Each endpoint has a bounded queue that drops its oldest event when full (during a
long outage the newest events are the useful ones). The receiver's view is in
docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .. import _native
from ..config.schema import WEBHOOK_EVENTS, ModelConfig, WebhookEndpoint, WebhooksConfig
from ..events import ERROR, model_data
from ..outcome import RefusalCode
from .delivery import Delivery, Endpoint, EndpointStats, Event

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("lloom_executor.webhooks")

EVENTS = WEBHOOK_EVENTS
QUEUE_SIZE = 1000
TIMEOUT_SECS = 10.0
FLUSH_TIMEOUT_SECS = 5.0
BACKOFF_BASE_SECS = 1.0
BACKOFF_MAX_SECS = 60.0
MAX_RETRY_AFTER_SECS = 300.0


class Webhooks:
    """Delivers events to the `[[webhooks.endpoints]]` (docs/webhooks.md).

    `key` signs every body (the executor's Ethereum key); `peer_id` and the key's
    address name the executor in each payload. Timings are keyword arguments so
    tests can shorten them; the defaults are the documented ones.
    """

    def __init__(
        self,
        endpoints: Iterable[WebhookEndpoint],
        key: _native.PrivateKey,
        *,
        peer_id: str | None = None,
        metrics: Metrics | None = None,
        queue_size: int = QUEUE_SIZE,
        timeout_secs: float = TIMEOUT_SECS,
        flush_timeout_secs: float = FLUSH_TIMEOUT_SECS,
        backoff_base_secs: float = BACKOFF_BASE_SECS,
        backoff_max_secs: float = BACKOFF_MAX_SECS,
        max_retry_after_secs: float = MAX_RETRY_AFTER_SECS,
    ) -> None:
        if queue_size < 1 or timeout_secs <= 0 or flush_timeout_secs < 0 or backoff_base_secs < 0 or backoff_max_secs < 0:
            raise ValueError("queue_size >= 1, timeout_secs > 0 and non-negative flush and backoff times, please")
        self.executor = {"peer_id": peer_id or key.peer_id, "evm_address": key.address}
        self.flush_timeout_secs = float(flush_timeout_secs)
        self.delivery = Delivery(
            key,
            self.executor,
            metrics,
            timeout_secs=timeout_secs,
            backoff_base_secs=backoff_base_secs,
            backoff_max_secs=backoff_max_secs,
            max_retry_after_secs=max_retry_after_secs,
        )
        self.endpoints = [Endpoint(i, ep, queue_size, self._dropped) for i, ep in enumerate(endpoints)]
        self._subscribed = frozenset(name for ep in self.endpoints for name in ep.events)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: WebhooksConfig, key: _native.PrivateKey, **options: Any) -> Webhooks | None:
        """None unless `[webhooks]` is enabled with at least one endpoint."""
        if not config.enabled or not config.endpoints:
            return None
        return cls(config.endpoints, key, **options)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start one worker per endpoint on the running loop (events emitted before are kept)."""
        if self.delivery.is_open or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.delivery.open()
        for ep in self.endpoints:
            ep.queue.start(self._worker(ep))
        log.info("webhooks: %s", "; ".join(f"{ep.where}: {', '.join(sorted(ep.events)) or 'no events'}" for ep in self.endpoints))

    def _worker(self, ep: Endpoint) -> Callable[[Event], Awaitable[None]]:
        async def consume(event: Event) -> None:
            await self.delivery.send(ep, event)

        return consume

    async def stop(self, flush_timeout_secs: float | None = None) -> int:
        """Ignore new events, send what is queued for up to `flush_timeout_secs`, then give up on
        the rest (counted as dropped, logged). Returns how many events were given up."""
        if self._closed:
            return 0
        self._closed = True
        timeout = self.flush_timeout_secs if flush_timeout_secs is None else flush_timeout_secs
        deadline = time.monotonic() + timeout  # one flush time for all endpoints (they drain together)
        lost = 0
        for ep in self.endpoints:
            left = await ep.queue.drain(deadline - time.monotonic())
            for event in left:
                self.delivery.count(ep, event, "dropped")
            if left:
                log.warning(
                    "webhooks: %s: %d event(s) not delivered within %g s of stopping; given up", ep.where, len(left), timeout
                )
            lost += len(left)
        await self.delivery.aclose()
        return lost

    # -- emitting ----------------------------------------------------------------------

    def wants(self, event: str) -> bool:
        """Whether `emit(event, ...)` would queue anything: a cheap test before building its data."""
        return event in self._subscribed and not self._closed

    def emit(self, event: str, data: Mapping[str, Any]) -> None:
        """Queue `event` for every endpoint that wants it; never blocks, never raises for
        delivery reasons (an unknown event name is a programming error: ValueError).
        May be called from another thread once `start()` ran."""
        if event not in EVENTS:
            raise ValueError(f"unknown webhook event {event!r}; expected one of {', '.join(EVENTS)}")
        if self._closed:
            log.debug("webhooks: %s after stop, not sent", event)
            return
        targets = [ep for ep in self.endpoints if event in ep.events]
        if not targets:
            return
        item = Event(event, data)
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._enqueue_all, targets, item)
        else:
            self._enqueue_all(targets, item)

    def _enqueue_all(self, targets: list[Endpoint], item: Event) -> None:
        if self._closed:
            return
        for ep in targets:
            ep.queue.put(item)

    def _dropped(self, ep: Endpoint, event: Event, first: bool) -> None:
        self.delivery.count(ep, event, "dropped")
        if first:
            log.warning("webhooks: %s: queue full (%d events); dropping the oldest until it drains", ep.where, ep.queue.size)

    # -- what the node reports ---------------------------------------------------------

    def operational_error(self, code: RefusalCode, reason: str, **extra: Any) -> None:
        """An `error` event that is not about a request (e.g. `backend_unreachable`)."""
        self.emit(ERROR, {"model": None, "client": None, "code": str(code), "reason": reason, **extra})

    def models_changed(self, before: Iterable[ModelConfig], after: Iterable[ModelConfig], source: str) -> None:
        """`model_unloaded` for each model no longer served, `model_loaded` for each new one."""
        old = {m.name: m for m in before if m.enabled}
        new = {m.name: m for m in after if m.enabled}
        for name in sorted(old.keys() - new.keys()):
            self.emit("model_unloaded", model_data(old[name], source))
        for name in sorted(new.keys() - old.keys()):
            self.emit("model_loaded", model_data(new[name], source))

    @property
    def stats(self) -> list[EndpointStats]:
        """Per endpoint, in config order: events delivered, failed (retries exhausted) and dropped."""
        return [ep.stats for ep in self.endpoints]
