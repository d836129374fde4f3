"""`[model_discovery]`: keep the served (and announced) model set in step with the backend.

`ModelDiscovery` polls `backend.model_details()` every `refresh_interval_secs`
and works out which models this executor serves:

* every enabled `[[models]]` entry the backend offers -- and, when the backend
  reports load state (LM Studio's `/api/v0/models`), only those it has loaded
  (`loaded is False` means not served; `None`, as on OpenAI, means offered);
* models the backend offers that are *not* configured are served only when a
  default price policy is given (`default_model`: a `ModelConfig` template whose
  prices and limits they get, with the backend's context length when it reports
  one). The config has no such policy, so by default they are not served: an
  unpriced model would be free work. Each is logged once as
  "offered by the backend but not configured: X". Embedding models are never added.

Backend status is "connected" after a successful poll and "disconnected" (with
`last_error`) after a failed one. A backend that is down at start does not stop
the node: nothing is served or announced, it is retried every interval, and its
models are served and announced as soon as it answers. After a backend that was
connected goes away, the last known set stays for `withdraw_after_failures`
failed polls in a row (default 3; a blip must not make announcements flap), then
the models are withdrawn until it comes back.

Whenever the set changes, `on_change(models)` is awaited (an exception there is
logged; the next change retries). `on_status(status, last_error)` (optional,
synchronous) is called when the backend status changes (connected/disconnected).
`service.py` wires both: the `ModelRegistry` takes the new set (requests for a
withdrawn model get the signed "not served here" refusal), with
`advertise_models = true` the gossip catalog follows, and `[webhooks]` hear
`model_loaded` / `model_unloaded` and `backend_unreachable`. asyncio only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from .backends.base import LlmBackend, ModelInfo
from .config import ModelConfig
from .config.schema import ModelDiscoveryConfig

log = logging.getLogger(__name__)

CONNECTED = "connected"
DISCONNECTED = "disconnected"
UNKNOWN = "unknown"
NON_CHAT_TYPES = frozenset({"embeddings", "embedding"})

OnChange = Callable[[list[ModelConfig]], Awaitable[Any]]
OnStatus = Callable[[str, "str | None"], Any]


class ModelDiscovery:
    """Polls the backend's models and calls `on_change(models)` when the served set changes.

    `models`: the configured `[[models]]` entries; `initial`: the set being served
    before the first poll (the first poll calls `on_change` if it differs; default:
    the enabled configured models). `interval` overrides `refresh_interval_secs`
    (tests use fractions of a second); `poll_timeout` bounds one poll. `backend_name`
    names the backend in log lines (with several backends, `DiscoverySet` runs one each).
    """

    def __init__(
        self,
        backend: LlmBackend,
        config: ModelDiscoveryConfig,
        on_change: OnChange,
        *,
        models: Iterable[ModelConfig] = (),
        initial: Iterable[ModelConfig] | None = None,
        default_model: ModelConfig | None = None,
        interval: float | None = None,
        poll_timeout: float = 30.0,
        withdraw_after_failures: int = 3,
        should_stop: Callable[[], bool] | None = None,
        on_status: OnStatus | None = None,
        backend_name: str | None = None,
    ) -> None:
        if withdraw_after_failures < 1:
            raise ValueError("withdraw_after_failures must be >= 1")
        self.backend = backend
        self.backend_name = backend_name
        self._who = f"model discovery ({backend_name})" if backend_name else "model discovery"
        self.config = config
        self.on_change = on_change
        self.configured = [m for m in models]
        self.default_model = default_model
        self.interval = float(interval if interval is not None else config.refresh_interval_secs)
        if self.interval <= 0:
            raise ValueError("interval must be > 0")
        self.poll_timeout = poll_timeout
        self.withdraw_after_failures = withdraw_after_failures
        self.should_stop = should_stop
        self.on_status = on_status
        self.served: list[ModelConfig] = list(initial) if initial is not None else [m for m in self.configured if m.enabled]
        self.offered: dict[str, ModelInfo] = {}
        self.backend_status = UNKNOWN
        self.last_error: str | None = None
        self.last_poll: float | None = None  # time.time() of the last poll (either outcome)
        self.last_success: float | None = None
        self.polls = 0
        self.failures = 0  # consecutive failed polls
        self.changes = 0  # on_change calls that succeeded
        self.ever_connected = False
        self._reported_unconfigured: set[str] = set()
        self._reported_unavailable: dict[str, str] = {}  # configured name -> why it is not served
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ computing the set
    def served_from(self, details: Sequence[ModelInfo]) -> list[ModelConfig]:
        """The model set to serve given the backend's listing (logs what it leaves out, once)."""
        offered = {info.id: info for info in details}
        served: list[ModelConfig] = []
        configured_names = {m.name for m in self.configured}
        for model in self.configured:
            if not model.enabled:
                continue
            info = offered.get(model.name)
            why = None
            if info is None:
                why = "not offered by the backend"
            elif info.loaded is False:
                why = "offered by the backend but not loaded"
            if why is None:
                served.append(model)
                if self._reported_unavailable.pop(model.name, None) is not None:
                    log.info("%s: configured model %s is available again", self._who, model.name)
            elif self._reported_unavailable.get(model.name) != why:
                self._reported_unavailable[model.name] = why
                log.warning("%s: configured model %s is %s; not serving it", self._who, model.name, why)
        extra = sorted(
            name
            for name, info in offered.items()
            if name not in configured_names and info.loaded is not False and (info.type or "").lower() not in NON_CHAT_TYPES
        )
        if self.default_model is not None:
            for name in extra:
                ctx = offered[name].context_length or self.default_model.context_length
                served.append(dataclasses.replace(self.default_model, name=name, enabled=True, context_length=ctx))
        else:
            new = [name for name in extra if name not in self._reported_unconfigured]
            if new:
                self._reported_unconfigured.update(new)
                log.info(
                    "%s: offered by the backend but not configured: %s "
                    "(not served without a price; add [[models]] entries to serve them)",
                    self._who,
                    ", ".join(new),
                )
        return served

    # ------------------------------------------------------------------ polling
    async def poll_once(self) -> bool:
        """One poll; True when the served set changed (and `on_change` was called)."""
        async with self._lock:
            self.polls += 1
            self.last_poll = time.time()
            try:
                async with asyncio.timeout(self.poll_timeout):
                    details = await self.backend.model_details()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: the node keeps running, we retry next interval
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if isinstance(exc, TimeoutError) and not str(exc):
                    self.last_error = f"no model listing within {self.poll_timeout:g} s"
                if self.backend_status != DISCONNECTED:
                    log.warning("%s: backend disconnected (%s); retrying every %g s", self._who, self.last_error, self.interval)
                    self._status_changed(DISCONNECTED)
                self.backend_status = DISCONNECTED
                if not self.ever_connected or self.failures >= self.withdraw_after_failures:
                    new = []
                else:
                    new = list(self.served)
            else:
                connected = self.backend_status != CONNECTED
                if connected:
                    log.info("%s: backend connected (%d model(s) offered)", self._who, len(details))
                self.backend_status = CONNECTED
                self.ever_connected = True
                self.failures = 0
                self.last_error = None
                if connected:
                    self._status_changed(CONNECTED)
                self.last_success = self.last_poll
                self.offered = {info.id: info for info in details}
                new = self.served_from(details)
            if new == self.served:
                return False
            before = {m.name for m in self.served}
            after = {m.name for m in new}
            try:
                await self.on_change(list(new))
            except Exception:
                log.exception("%s: applying the new model set failed; retrying at the next poll", self._who)
                return False
            self.served = list(new)
            self.changes += 1
            log.info(
                "%s: now serving %s (added: %s; removed: %s)",
                self._who,
                ", ".join(sorted(after)) or "no models",
                ", ".join(sorted(after - before)) or "-",
                ", ".join(sorted(before - after)) or "-",
            )
            return True

    def _status_changed(self, status: str) -> None:
        if self.on_status is None:
            return
        try:
            self.on_status(status, self.last_error)
        except Exception:
            log.exception("%s: on_status failed", self._who)

    async def run(self) -> None:
        """Poll until cancelled (or `should_stop()` turns true)."""
        while not (self.should_stop and self.should_stop()):
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end discovery silently
                log.exception("%s: poll failed unexpectedly", self._who)
            await asyncio.sleep(self.interval)

    def start(self) -> asyncio.Task:
        """Run as a task of the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="model-discovery")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def status(self) -> dict[str, Any]:
        """For status pages and `models list`: backend status, last error, what is served and offered."""
        return {
            "backend_status": self.backend_status,
            "last_error": self.last_error,
            "last_poll": self.last_poll,
            "last_success": self.last_success,
            "refresh_interval_secs": self.interval,
            "served_models": sorted(m.name for m in self.served),
            "offered_models": {
                name: ("loaded" if i.loaded else "not-loaded" if i.loaded is False else "listed")
                for name, i in sorted(self.offered.items())
            },
            "not_configured": sorted(self._reported_unconfigured - {m.name for m in self.served}),
        }


class DiscoverySet:
    """One `ModelDiscovery` per backend, their served sets merged: with several backends a
    backend that goes away withdraws only its own models (after its own
    `withdraw_after_failures`), and each is polled and logged under its name.

    `members` maps backend name -> (its backend, its configured models). `on_change` gets
    the merged set, in configured order, whenever one member's set changes; a member whose
    change fails to apply keeps its old set and retries at its next poll, as a lone
    `ModelDiscovery` does. Other keyword arguments go to every member.
    """

    def __init__(
        self,
        members: dict[str, tuple[LlmBackend, list[ModelConfig]]],
        config: ModelDiscoveryConfig,
        on_change: OnChange,
        *,
        initial: Iterable[ModelConfig] | None = None,
        **options: Any,
    ) -> None:
        self.on_change = on_change
        order = [m.name for _, models in members.values() for m in models]
        self._order = {name: i for i, name in enumerate(order)}
        start = list(initial) if initial is not None else None
        self.members: dict[str, ModelDiscovery] = {}
        for name, (backend, models) in members.items():
            names = {m.name for m in models}
            self.members[name] = ModelDiscovery(
                backend,
                config,
                self._member_changed(name),
                models=models,
                initial=None if start is None else [m for m in start if m.name in names],
                backend_name=name,
                **options,
            )

    def _member_changed(self, name: str) -> OnChange:
        async def changed(models: list[ModelConfig]) -> None:
            merged = [m for other, d in self.members.items() if other != name for m in d.served] + list(models)
            merged.sort(key=lambda m: self._order.get(m.name, len(self._order)))
            await self.on_change(merged)

        return changed

    @property
    def served(self) -> list[ModelConfig]:
        return [m for d in self.members.values() for m in d.served]

    @property
    def running(self) -> bool:
        return any(d.running for d in self.members.values())

    def start(self) -> None:
        for member in self.members.values():
            member.start()

    async def stop(self) -> None:
        for member in self.members.values():
            await member.stop()

    async def poll_once(self) -> bool:
        changed = False
        for member in self.members.values():
            changed = await member.poll_once() or changed
        return changed

    def status(self) -> dict[str, Any]:
        """Each backend's `ModelDiscovery.status()`, by name."""
        return {name: d.status() for name, d in self.members.items()}


__all__ = ["CONNECTED", "DISCONNECTED", "DiscoverySet", "ModelDiscovery"]
