"""`PluginHost`: the started `[[plugins]]` and every call the node makes into them.

Why it fails the way it does (the hook API itself is docs/plugins.md): a plugin
that cannot be loaded or started stops the node's start, since the operator
configured it and running without a filter would be worse than not running; once
running, no hook can take the node down. A check hook that fails refuses the
request (fail closed: a broken filter must not let everything through); an
observer's failure is only logged. Failures are logged at most once per interval
per plugin, hook and kind, so a plugin failing on every request cannot flood the log.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..config.rules import plugin_location
from ..config.schema import PluginConfig
from ..event_queue import EventQueue
from ..events import RequestView
from ..outcome import Refusal, RefusalCode
from .calls import HookFailed, WorkerThreads, call_bounded, is_async
from .context import PluginContext
from .loading import FACTORY, PluginError, load_module, module_name, unload

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("lloom_executor.plugins")

CHECK_HOOKS = ("check_request", "check_response")
HOOKS = (*CHECK_HOOKS, "on_request_finished", "on_start", "on_stop")
WORKER_THREADS = 4
EVENT_QUEUE_SIZE = 1000
LIFECYCLE_TIMEOUT_SECS = 30.0
FLUSH_TIMEOUT_SECS = 2.0
LOG_INTERVAL_SECS = 60.0
MAX_REASON_CHARS = 1000

Finished = tuple[str, int, Mapping[str, Any]]  # (event name, unix seconds, data) for on_request_finished


class _Throttle:
    """At most one log line per `interval` seconds; counts what it held back."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = -math.inf
        self.held_back = 0

    def ready(self, now: float) -> int | None:
        """None: stay quiet; else how many were held back since the last line."""
        if now < self.next_at:
            self.held_back += 1
            return None
        held, self.held_back = self.held_back, 0
        self.next_at = now + self.interval
        return held


class _Plugin:
    """One entry: its config, its threads, the object its factory returned and its hooks."""

    def __init__(self, index: int, config: PluginConfig, workers: int, queue_size: int) -> None:
        self.index = index
        self.config = config
        self.name = config.name
        self.path = config.path
        self.timeout = config.timeout_secs
        self.where = f"plugins[{index}] {config.name!r} ({config.path})"
        self.logger = logging.getLogger(f"lloom_executor.plugins.{config.name}")
        self.threads = WorkerThreads(config.name, workers)
        self.instance: Any = None
        self.hooks: dict[str, tuple[Callable[..., Any], bool]] = {}  # hook -> (function, is a coroutine function)
        self.queue_size = queue_size
        self.events: EventQueue[Finished] | None = None  # on_request_finished's, once started
        self.throttles: dict[str, _Throttle] = {}


class PluginHost:
    """The loaded [[plugins]] entries and the calls into them (docs/plugins.md).

    `start()` loads and starts them (PluginError on the first failure, after stopping
    those already started); the request path calls `check_request`, `check_response`
    and `request_finished`; `stop()` flushes the event queues and stops them. Timings
    are keyword arguments so tests can shorten them.
    """

    def __init__(
        self,
        configs: Iterable[PluginConfig],
        *,
        metrics: Metrics | None = None,
        peer_id: str = "",
        evm_address: str = "",
        workers: int = WORKER_THREADS,
        queue_size: int = EVENT_QUEUE_SIZE,
        lifecycle_timeout_secs: float = LIFECYCLE_TIMEOUT_SECS,
        flush_timeout_secs: float = FLUSH_TIMEOUT_SECS,
        log_interval_secs: float = LOG_INTERVAL_SECS,
        node_lifecycle: bool = True,
        worker: tuple[int, int] = (0, 1),
    ) -> None:
        """`node_lifecycle`: call `on_start` / `on_stop` here. They are node events: with
        `--workers N` only the lead calls them, while every worker loads the plugins (their
        checks run on every request) and tells them which worker they are in (`worker`:
        index, count, in `PluginContext`)."""
        if queue_size < 1 or lifecycle_timeout_secs <= 0 or flush_timeout_secs < 0 or log_interval_secs < 0:
            raise ValueError("queue_size >= 1, lifecycle_timeout_secs > 0 and non-negative flush and log intervals, please")
        self.plugins = [_Plugin(i, c, workers, queue_size) for i, c in enumerate(configs)]
        self.metrics = metrics
        self.peer_id = peer_id
        self.evm_address = evm_address
        self.lifecycle_timeout_secs = float(lifecycle_timeout_secs)
        self.flush_timeout_secs = float(flush_timeout_secs)
        self.log_interval_secs = float(log_interval_secs)
        self.node_lifecycle = node_lifecycle
        self.worker = worker
        self._started: list[_Plugin] = []
        self._request_checks: list[_Plugin] = []
        self._response_checks: list[_Plugin] = []
        self._observers: list[_Plugin] = []
        self._closed = False

    @property
    def names(self) -> list[str]:
        """The plugins started, in config order."""
        return [p.name for p in self._started]

    def get(self, name: str) -> Any:
        """The object plugin `name`'s create_plugin returned (KeyError if it was not started)."""
        for plugin in self._started:
            if plugin.name == name:
                return plugin.instance
        raise KeyError(name)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load, create and start every plugin in config order; PluginError names the first that fails."""
        try:
            for plugin in self.plugins:
                await self._start_one(plugin)
                self._started.append(plugin)
        except BaseException:
            await self.stop()
            raise
        self._request_checks = [p for p in self._started if "check_request" in p.hooks]
        self._response_checks = [p for p in self._started if "check_response" in p.hooks]
        self._observers = [p for p in self._started if "on_request_finished" in p.hooks]
        for plugin in self._observers:
            plugin.events = EventQueue(plugin.queue_size, self._on_drop(plugin), name=f"plugin-{plugin.name}-events")
            plugin.events.start(self._observer(plugin))

    def _lifecycle_timeout(self, plugin: _Plugin) -> float:
        return max(plugin.timeout, self.lifecycle_timeout_secs)

    async def _start_one(self, plugin: _Plugin) -> None:
        kind, _ = plugin_location(plugin.path)
        try:
            module = load_module(plugin.name, plugin.path)
        except Exception as exc:
            raise PluginError(f"{plugin.where}: failed to load: {type(exc).__name__}: {exc}") from exc
        except SystemExit as exc:  # a module calling sys.exit() at import must not end start quietly
            raise PluginError(f"{plugin.where}: failed to load: the module called sys.exit({exc.code!r})") from None
        try:
            plugin.instance = await self._create(plugin, module)
            self._bind_hooks(plugin)
            if "on_start" in plugin.hooks and self.node_lifecycle:
                try:
                    await self._call(plugin, "on_start", (), self._lifecycle_timeout(plugin))
                except HookFailed as failure:
                    raise PluginError(f"{plugin.where}: on_start failed: {failure.detail}") from failure.error
        except BaseException:
            unload(module_name(plugin.name))
            raise
        log.info(
            "plugin %s: loaded from %s (%s); hooks: %s",
            plugin.name,
            plugin.path,
            kind,
            ", ".join(h for h in HOOKS if h in plugin.hooks) or "none",
        )

    async def _create(self, plugin: _Plugin, module: Any) -> Any:
        """The plugin object from the module's factory, called with a copy of the entry's config."""
        factory = getattr(module, FACTORY, None)
        if not callable(factory):
            raise PluginError(f"{plugin.where}: the module defines no {FACTORY}(config, context) function")
        context = PluginContext(plugin.name, plugin.logger, self.peer_id, self.evm_address, plugin.timeout, *self.worker)
        try:
            instance = factory(copy.deepcopy(plugin.config.config), context)
            if inspect.isawaitable(instance):
                async with asyncio.timeout(self._lifecycle_timeout(plugin)):
                    instance = await instance
        except TimeoutError:
            raise PluginError(f"{plugin.where}: {FACTORY} did not return within its time bound") from None
        except Exception as exc:
            raise PluginError(f"{plugin.where}: {FACTORY} failed: {type(exc).__name__}: {exc}") from exc
        if instance is None:
            raise PluginError(f"{plugin.where}: {FACTORY} returned None instead of the plugin object")
        return instance

    def _bind_hooks(self, plugin: _Plugin) -> None:
        for hook in HOOKS:
            fn = getattr(plugin.instance, hook, None)
            if fn is None:
                continue
            if not callable(fn):
                raise PluginError(f"{plugin.where}: {hook} is a {type(fn).__name__}, not a method")
            plugin.hooks[hook] = (fn, is_async(fn))
        for attr in dir(plugin.instance):
            if attr.startswith(("check_", "on_")) and attr not in HOOKS:
                log.warning("plugin %s: %s is not a hook and is never called (hooks: %s)", plugin.name, attr, ", ".join(HOOKS))

    async def stop(self) -> None:
        """Deliver what is queued (up to `flush_timeout_secs`), then on_stop each started plugin
        (reverse order; failures logged), then release threads and modules. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + self.flush_timeout_secs  # one flush time for all plugins (they drain together)
        for plugin in self._observers:
            if plugin.events is None:
                continue
            left = await plugin.events.drain(deadline - time.monotonic())
            if left:
                self._failed(
                    plugin,
                    "on_request_finished",
                    HookFailed("dropped", f"{len(left)} event(s) not delivered within {self.flush_timeout_secs:g} s of stopping"),
                    count=len(left),
                )
        for plugin in reversed(self._started):
            if "on_stop" in plugin.hooks and self.node_lifecycle:
                try:
                    await self._call(plugin, "on_stop", (), self._lifecycle_timeout(plugin))
                except HookFailed as failure:
                    self._failed(plugin, "on_stop", failure)
        for plugin in self.plugins:
            plugin.threads.close()
            unload(module_name(plugin.name))
        self._request_checks = self._response_checks = self._observers = []

    # -- calls -------------------------------------------------------------------------

    async def _call(self, plugin: _Plugin, hook: str, args: Sequence[Any], timeout: float) -> Any:
        """One hook call within `timeout`, counted; HookFailed when it raised or ran over."""
        fn, run_on_loop = plugin.hooks[hook]
        if self.metrics is not None:
            self.metrics.plugin_call(plugin.name, hook)
        return await call_bounded(fn, run_on_loop, plugin.threads, args, timeout)

    def _failed(self, plugin: _Plugin, hook: str, failure: HookFailed, count: int = 1) -> None:
        if self.metrics is not None:
            for _ in range(count):
                self.metrics.plugin_error(plugin.name, hook, failure.kind)
        throttle = plugin.throttles.setdefault(f"{hook}:{failure.kind}", _Throttle(self.log_interval_secs))
        held = throttle.ready(time.monotonic())
        if held is None:
            return
        more = f" ({held} more since the last report)" if held else ""
        error = failure.error
        log.warning(
            "plugin %s: %s failed (%s): %s%s",
            plugin.name,
            hook,
            failure.kind,
            failure.detail,
            more,
            exc_info=(type(error), error, error.__traceback__) if error is not None and not held else None,
        )

    async def _check(self, plugin: _Plugin, hook: str, args: Sequence[Any]) -> Refusal | None:
        """One check hook's answer as a refusal: PLUGIN_REFUSED for a reason string,
        PLUGIN_ERROR when the hook failed (fail closed); None lets the request through."""
        try:
            result = await self._call(plugin, hook, args, plugin.timeout)
        except HookFailed as failure:
            self._failed(plugin, hook, failure)
            why = ": no verdict within its time bound" if failure.kind == "timeout" else ""
            return Refusal(
                f"plugin {plugin.name} failed{why}", RefusalCode.PLUGIN_ERROR, f"{hook} {failure.kind}: {failure.detail}"
            )
        if result is None:
            return None
        if not isinstance(result, str):
            bad = HookFailed("bad_result", f"returned {type(result).__name__}, expected a reason string or None")
            self._failed(plugin, hook, bad)
            return Refusal(f"plugin {plugin.name} failed", RefusalCode.PLUGIN_ERROR, f"{hook} bad_result: {bad.detail}")
        if self.metrics is not None:
            self.metrics.plugin_refusal(plugin.name, hook)
        reason = result.strip() or f"refused by plugin {plugin.name}"
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "\u2026"
        return Refusal(reason, RefusalCode.PLUGIN_REFUSED)

    async def check_request(self, request: RequestView) -> Refusal | None:
        """The first refusal (or failure) of the plugins' check_request, in config order; None: admitted."""
        for plugin in self._request_checks:
            refusal = await self._check(plugin, "check_request", (request,))
            if refusal is not None:
                return refusal
        return None

    async def check_response(self, request: RequestView, content: str) -> Refusal | None:
        """As `check_request`, for the answer's content."""
        for plugin in self._response_checks:
            refusal = await self._check(plugin, "check_response", (request, content))
            if refusal is not None:
                return refusal
        return None

    @property
    def checks_requests(self) -> bool:
        return bool(self._request_checks)

    @property
    def checks_responses(self) -> bool:
        return bool(self._response_checks)

    @property
    def observes(self) -> bool:
        """Whether `request_finished` would queue anything: a cheap test before building an event."""
        return bool(self._observers) and not self._closed

    # -- events ------------------------------------------------------------------------

    def request_finished(self, event: str, data: Mapping[str, Any]) -> None:
        """Queue an answered request's event (`events.request_event`) for every
        on_request_finished (event loop thread; never blocks)."""
        if self._closed or not self._observers:
            return
        item: Finished = (event, int(time.time()), data)
        for plugin in self._observers:
            if plugin.events is not None:
                plugin.events.put(item)

    def _on_drop(self, plugin: _Plugin) -> Callable[[Finished, bool], None]:
        def dropped(_item: Finished, _first: bool) -> None:
            self._failed(
                plugin,
                "on_request_finished",
                HookFailed("dropped", f"event queue full ({plugin.queue_size}); dropped the oldest"),
            )

        return dropped

    def _observer(self, plugin: _Plugin) -> Callable[[Finished], Awaitable[None]]:
        async def deliver(item: Finished) -> None:
            """The plugin's queue worker: one on_request_finished call."""
            event, timestamp, data = item
            try:
                await self._call(
                    plugin, "on_request_finished", ({"event": event, "timestamp": timestamp, "data": dict(data)},), plugin.timeout
                )
            except HookFailed as failure:
                self._failed(plugin, "on_request_finished", failure)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end delivery for good
                log.exception("plugin %s: unexpected error delivering an event", plugin.name)

        return deliver
