"""`[[plugins]]`: operator-written Python extensions of the request path, loaded at start.

Python is this executor's extension language, so a plugin is a Python module:

    [[plugins]]
    name = "custom-filter"                        # unique; letters, digits, '-' and '_'
    path = "/usr/lib/lloom/plugins/filter.py"     # a .py file ...
    config = { threshold = 2, words = ["forbidden"] }
    timeout_secs = 1.0                            # time bound of each hook call (default 1 s)

    [[plugins]]
    name = "performance-monitor"
    path = "/usr/lib/lloom/plugins/monitor"       # ... a package directory (with __init__.py) ...
    # path = "/usr/lib/lloom/plugins/monitor.cpython-311-x86_64-linux-gnu.so"
    #   ... or a compiled CPython extension module built for this interpreter (Cython, PyO3,
    #   C): what the Rust manual's `.so` plugins are here. Its file name is `<module>.so` or
    #   `<module><suffix>` with a suffix this Python loads (importlib.machinery.EXTENSION_SUFFIXES).

Loading: at `start`, before the node listens, in config order. Each module is
imported from its path under a private name (`lloom_executor_plugins.<name>`, `-`
read as `_`; an extension module lives at `lloom_executor_plugins.<name>.<module>`,
as its PyInit_<module> requires), so plugins never shadow, or are shadowed by,
installed packages. A package may import its own submodules relatively. The
module must define the factory

    def create_plugin(config: dict, context: PluginContext) -> object

called once, on the event loop, with a copy of the entry's `config` table; it
returns the plugin object (it may be a coroutine function). A `.py` or package
plugin runs afresh at every start; an extension module is loaded once per
process (CPython cannot unload one) and its factory called again.

Hooks: methods of the plugin object, each optional, each a plain or an `async`
method:

  check_request(request: RequestView) -> str | None
      Admission: runs after every built-in check (signature, replay, price, rate limits,
      content filter ...) and before the cache and the backend. A string refuses the
      request: the client gets it as the reason of a signed error answer (code
      "plugin_refused" in metrics, ledger and webhooks); None lets it through. Plugins are
      asked in config order; the first refusal ends it. No receipt is signed for a request
      refused here, and its replay digest is forgotten (no work was done).
  check_response(request: RequestView, content: str) -> str | None
      The answer's content, from the backend or the cache, after the built-in response
      filter and before it is priced, signed, cached or sent. A string refuses it: the
      client gets a signed error, the ledger row records a refusal, nothing is charged.
      Runs once per answer, after `request_timeout_secs` stopped counting (with or
      without the cache): its own `timeout_secs` bounds it.
  on_request_finished(event: dict) -> None
      Observability, after the answer (served or refused) was recorded and signed:
      {"event": "request_completed" | "error", "timestamp": unix seconds, "data": {...}},
      `data` exactly as the webhook events' (`webhooks.py`; built by the same functions:
      never prompts, answers or keys). Frames that did not decode come as "error" events
      with code "malformed" (at most one per serving.MALFORMED_REPORT_INTERVAL_SECS, with
      the number held back in `suppressed`; `webhooks.py`). Delivered in order, one call
      at a time per plugin, from a queue of EVENT_QUEUE_SIZE events
      (`event_queue.EventQueue`; when full, the oldest is dropped and counted).
  on_start() -> None / on_stop() -> None
      Once after create_plugin (before the node listens), once after the node stopped
      (queued events delivered first, for up to FLUSH_TIMEOUT_SECS; those left, the one
      being delivered included, are counted as dropped). Time bound:
      LIFECYCLE_TIMEOUT_SECS (or timeout_secs if larger).

Unknown `check_*` / `on_*` attributes are reported in the log as probable typos.

Threads and time bounds: `async` hooks run on the node's event loop (never block in
them). Plain hooks run in WORKER_THREADS daemon threads of the plugin's own, so a
blocking hook (file, database, HTTP) stalls neither the node nor the other plugins,
and a hung one cannot keep the process from exiting; plain hooks of one plugin may
therefore run concurrently: guard shared state with a lock. Each call is bounded by
the entry's `timeout_secs` (queueing for a thread included).

Failure isolation: a plugin that cannot be loaded (missing file, import error, no
create_plugin, a failing factory or on_start) stops `start` with a PluginError naming
the entry and its path: the operator configured it, and running without a filter
would be worse than not running. Once running, a hook that raises, overruns its time
bound or returns something else than None or a string never takes the node down:
a check hook fails closed (the request gets the signed error "plugin <name> failed",
code "plugin_error"), an observer or on_stop failure is only logged. Failures are
logged once per LOG_INTERVAL_SECS per plugin and hook (with the number held back),
the first with its traceback.

Metrics (`metrics.py`): lloom_executor_plugin_calls_total{plugin,hook},
lloom_executor_plugin_refusals_total{plugin,hook} and
lloom_executor_plugin_errors_total{plugin,hook,kind}, kind exception, timeout,
bad_result or dropped. A plugin's own metrics: `context.register_counter`,
`register_gauge`, `register_histogram` (the functions of `lloom_executor.metrics`,
exported on /metrics and in pushes).

Trust: a plugin is code running inside the executor process with its privileges;
install only plugins you would run as the executor's user. What the hooks get holds
no key material: `RequestView` carries the request and who sent it, `PluginContext`
the executor's public identity.

A minimal plugin (`filter.py`):

    def create_plugin(config, context):
        return KeywordFilter(config.get("words", []), int(config.get("threshold", 1)), context)

    class KeywordFilter:
        def __init__(self, words, threshold, context):
            self.words, self.threshold = [w.lower() for w in words], threshold
            self.refused = context.register_counter("filter_refusals_total", "Prompts refused by keyword")

        def check_request(self, request):
            hits = sum(request.prompt.lower().count(w) for w in self.words)
            if hits >= self.threshold:
                self.refused.inc()
                return f"prompt refused: {hits} blocked word(s)"
            return None
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import importlib.machinery
import importlib.util
import inspect
import logging
import math
import os
import queue
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import metrics as _metrics
from .config.rules import plugin_location
from .config.schema import PluginConfig
from .event_queue import EventQueue
from .webhooks import client_address, digest_hex

if TYPE_CHECKING:
    from . import _native
    from .metrics import CustomCounter, CustomGauge, CustomHistogram, Metrics
    from .p2p.llm_protocol import RequestContext

log = logging.getLogger(__name__)

NAMESPACE = "lloom_executor_plugins"
FACTORY = "create_plugin"
CHECK_HOOKS = ("check_request", "check_response")
HOOKS = (*CHECK_HOOKS, "on_request_finished", "on_start", "on_stop")
REFUSED = "plugin_refused"  # the refusal code of a check hook's refusal
FAILED = "plugin_error"  # ... and of a check hook that failed (fail closed)
WORKER_THREADS = 4
EVENT_QUEUE_SIZE = 1000
LIFECYCLE_TIMEOUT_SECS = 30.0
FLUSH_TIMEOUT_SECS = 2.0
LOG_INTERVAL_SECS = 60.0
MAX_REASON_CHARS = 1000


class PluginError(RuntimeError):
    """A [[plugins]] entry could not be loaded or started; the message names it and its path."""


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a check hook sees of a request (read-only; no key material)."""

    model: str  # the served model (an alias resolved)
    requested_model: str  # as the client sent it
    prompt: str
    system_prompt: str | None
    max_tokens: int  # the output budget the backend gets (the request's, or this executor's default)
    requested_max_tokens: int | None  # as sent; None: not given
    prompt_tokens: int  # our count of the prompt (and system prompt), cl100k_base
    temperature: float | None
    client: str | None  # EIP-55 address of the request's signer; None when unsigned
    peer_id: str  # libp2p peer id of the connection it came on
    remote_ip: str | None
    inbound_price_wei: int  # offered, per input token
    outbound_price_wei: int  # offered, per output token
    deadline: int | None  # unix seconds; None: none
    request_digest: str  # 0x hex: the ledger's key, and `request_digest` in events

    @classmethod
    def of(
        cls, decoded: _native.DecodedRequest, ctx: RequestContext, model: str, prompt_tokens: int, max_tokens: int
    ) -> RequestView:
        """The view of an admitted request; its `client` and `request_digest` are reused for the
        request's event (`serving.py`), so they are computed once per request."""
        request = decoded.request
        return cls(
            model=model,
            requested_model=request.model,
            prompt=request.prompt,
            system_prompt=request.system_prompt,
            max_tokens=max_tokens,
            requested_max_tokens=request.max_tokens,
            prompt_tokens=prompt_tokens,
            temperature=request.temperature,
            client=client_address(decoded),
            peer_id=ctx.peer_id,
            remote_ip=ctx.remote_ip,
            inbound_price_wei=int(request.inbound_price),
            outbound_price_wei=int(request.outbound_price),
            deadline=request.deadline or None,
            request_digest=digest_hex(decoded),
        )


@dataclass(frozen=True)
class PluginContext:
    """What `create_plugin` gets besides its config: its name, its logger
    (`lloom_executor.plugins.<name>`, configured with the node's [logging]), the executor's
    public identity, its time bound, and the custom-metrics registration functions."""

    name: str
    logger: logging.Logger
    peer_id: str  # the executor's libp2p peer id
    evm_address: str  # the executor's EIP-55 address (answers, receipts and webhooks are signed by it)
    timeout_secs: float

    def register_counter(self, name: str, help: str, labels: Iterable[str] = ()) -> CustomCounter:
        return _metrics.register_counter(name, help, labels)

    def register_gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> CustomGauge:
        return _metrics.register_gauge(name, help, labels)

    def register_histogram(
        self, name: str, help: str, labels: Iterable[str] = (), buckets: Iterable[float] = _metrics.DEFAULT_BUCKETS
    ) -> CustomHistogram:
        return _metrics.register_histogram(name, help, labels, buckets)


@dataclass(frozen=True)
class Verdict:
    """A check hook's refusal (or failure) as the request path turns it into a signed error."""

    reason: str
    code: str  # REFUSED or FAILED


# -- loading ----------------------------------------------------------------------------

_extensions: dict[str, types.ModuleType] = {}  # real path -> module: CPython loads an extension once per process


def module_name(plugin_name: str) -> str:
    return f"{NAMESPACE}.{plugin_name.replace('-', '_')}"


def _namespace() -> None:
    if NAMESPACE not in sys.modules:
        package = types.ModuleType(NAMESPACE, "Modules of the [[plugins]] entries (lloom_executor.plugins).")
        package.__path__ = []  # nothing is found under it on disk
        sys.modules[NAMESPACE] = package


def unload(name: str) -> None:
    """Forget module `name` and its submodules (an extension module stays cached in `_extensions`)."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def load_module(plugin_name: str, path: str) -> types.ModuleType:
    """Import the plugin at `path` under its private name; raises what the import raised
    (ImportError for a location `plugin_location` rejects)."""
    kind, problem = plugin_location(path)
    if problem is not None:
        raise ImportError(problem)
    name = module_name(plugin_name)
    location = os.path.abspath(path)
    _namespace()
    unload(name)
    if kind == "extension":
        holder = types.ModuleType(name, f"Namespace of plugin {plugin_name}.")
        holder.__path__ = []
        sys.modules[name] = holder
        real = os.path.realpath(location)
        module = _extensions.get(real)
        if module is not None:
            sys.modules[module.__name__] = module
            return module
        full = f"{name}.{os.path.basename(location).partition('.')[0]}"
        spec = importlib.util.spec_from_file_location(
            full, location, loader=importlib.machinery.ExtensionFileLoader(full, location)
        )
    elif kind == "package":
        full = name
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(location, "__init__.py"), submodule_search_locations=[location]
        )
    else:
        full = name
        spec = importlib.util.spec_from_file_location(
            name, location, loader=importlib.machinery.SourceFileLoader(name, location)
        )
    if spec is None or spec.loader is None:  # pragma: no cover - plugin_location accepted it
        raise ImportError(f"cannot import {location}")
    try:
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    except BaseException:
        unload(name)
        raise
    if kind == "extension":
        _extensions[os.path.realpath(location)] = module
    return module


# -- running hooks ------------------------------------------------------------------------


class _Workers:
    """Daemon threads for a plugin's plain hooks: a hung hook holds one thread, never the
    event loop, the shared default executor (the ledger's) or the process's exit."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = max(1, size)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], args: tuple) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        if len(self._threads) < self.size:
            with self._lock:
                if len(self._threads) < self.size:
                    thread = threading.Thread(
                        target=self._run, name=f"lloom-plugin-{self.name}-{len(self._threads)}", daemon=True
                    )
                    self._threads.append(thread)
                    thread.start()
        return future

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # its caller stopped waiting before it started
            try:
                result = fn(*args)
            except Exception as exc:
                future.set_exception(exc)
            except BaseException as exc:  # SystemExit & co. must not travel to the event loop as such
                future.set_exception(RuntimeError(f"hook raised {type(exc).__name__}: {exc}"))
            else:
                future.set_result(result)

    def close(self) -> None:
        """Let idle threads end; a thread still inside a hook ends when the hook returns."""
        for _ in self._threads:
            self._jobs.put(None)


class _HookFailed(Exception):
    def __init__(self, kind: str, detail: str, error: BaseException | None = None) -> None:
        super().__init__(detail)
        self.kind = kind  # exception | timeout | bad_result | dropped
        self.detail = detail
        self.error = error


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
    def __init__(self, index: int, config: PluginConfig, workers: int, queue_size: int) -> None:
        self.index = index
        self.config = config
        self.name = config.name
        self.path = config.path
        self.timeout = config.timeout_secs
        self.where = f"plugins[{index}] {config.name!r} ({config.path})"
        self.logger = logging.getLogger(f"lloom_executor.plugins.{config.name}")
        self.workers = _Workers(config.name, workers)
        self.instance: Any = None
        self.hooks: dict[str, tuple[Callable[..., Any], bool]] = {}  # hook -> (function, is a coroutine function)
        self.queue_size = queue_size
        self.events: EventQueue[tuple[str, int, Mapping[str, Any]]] | None = None  # on_request_finished's, once started
        self.throttles: dict[str, _Throttle] = {}


def _is_async(fn: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose __call__ is one (anything else runs in a worker thread)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


class PluginHost:
    """The loaded [[plugins]] entries and the calls into them; see the module docstring.

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
    ) -> None:
        if queue_size < 1 or lifecycle_timeout_secs <= 0 or flush_timeout_secs < 0 or log_interval_secs < 0:
            raise ValueError("queue_size >= 1, lifecycle_timeout_secs > 0 and non-negative flush and log intervals, please")
        self.plugins = [_Plugin(i, c, workers, queue_size) for i, c in enumerate(configs)]
        self.metrics = metrics
        self.peer_id = peer_id
        self.evm_address = evm_address
        self.lifecycle_timeout_secs = float(lifecycle_timeout_secs)
        self.flush_timeout_secs = float(flush_timeout_secs)
        self.log_interval_secs = float(log_interval_secs)
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
            plugin.events = EventQueue(
                plugin.queue_size, lambda _item, _first, plugin=plugin: self._dropped(plugin), name=f"plugin-{plugin.name}-events"
            )
            plugin.events.start(lambda item, plugin=plugin: self._deliver(plugin, item))

    async def _start_one(self, plugin: _Plugin) -> None:
        kind, _ = plugin_location(plugin.path)
        try:
            module = load_module(plugin.name, plugin.path)
        except Exception as exc:
            raise PluginError(f"{plugin.where}: failed to load: {type(exc).__name__}: {exc}") from exc
        except SystemExit as exc:  # a module calling sys.exit() at import must not end start quietly
            raise PluginError(f"{plugin.where}: failed to load: the module called sys.exit({exc.code!r})") from None
        factory = getattr(module, FACTORY, None)
        if not callable(factory):
            unload(module_name(plugin.name))
            raise PluginError(f"{plugin.where}: the module defines no {FACTORY}(config, context) function")
        context = PluginContext(plugin.name, plugin.logger, self.peer_id, self.evm_address, plugin.timeout)
        try:
            instance = factory(copy.deepcopy(plugin.config.config), context)
            if inspect.isawaitable(instance):
                async with asyncio.timeout(max(plugin.timeout, self.lifecycle_timeout_secs)):
                    instance = await instance
        except TimeoutError:
            unload(module_name(plugin.name))
            raise PluginError(f"{plugin.where}: {FACTORY} did not return within its time bound") from None
        except Exception as exc:
            unload(module_name(plugin.name))
            raise PluginError(f"{plugin.where}: {FACTORY} failed: {type(exc).__name__}: {exc}") from exc
        if instance is None:
            unload(module_name(plugin.name))
            raise PluginError(f"{plugin.where}: {FACTORY} returned None instead of the plugin object")
        plugin.instance = instance
        for hook in HOOKS:
            fn = getattr(instance, hook, None)
            if fn is None:
                continue
            if not callable(fn):
                unload(module_name(plugin.name))
                raise PluginError(f"{plugin.where}: {hook} is a {type(fn).__name__}, not a method")
            plugin.hooks[hook] = (fn, _is_async(fn))
        for attr in dir(instance):
            if attr.startswith(("check_", "on_")) and attr not in HOOKS:
                log.warning("plugin %s: %s is not a hook and is never called (hooks: %s)", plugin.name, attr, ", ".join(HOOKS))
        if "on_start" in plugin.hooks:
            try:
                await self._call(plugin, "on_start", (), max(plugin.timeout, self.lifecycle_timeout_secs))
            except _HookFailed as failure:
                unload(module_name(plugin.name))
                raise PluginError(f"{plugin.where}: on_start failed: {failure.detail}") from failure.error
        log.info(
            "plugin %s: loaded from %s (%s); hooks: %s",
            plugin.name, plugin.path, kind, ", ".join(h for h in HOOKS if h in plugin.hooks) or "none",
        )

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
                self._failed(plugin, "on_request_finished", _HookFailed(
                    "dropped", f"{len(left)} event(s) not delivered within {self.flush_timeout_secs:g} s of stopping"
                ), count=len(left))
        for plugin in reversed(self._started):
            if "on_stop" in plugin.hooks:
                try:
                    await self._call(plugin, "on_stop", (), max(plugin.timeout, self.lifecycle_timeout_secs))
                except _HookFailed as failure:
                    self._failed(plugin, "on_stop", failure)
        for plugin in self.plugins:
            plugin.workers.close()
            unload(module_name(plugin.name))
        self._request_checks = self._response_checks = self._observers = []

    # -- calls -------------------------------------------------------------------------

    async def _call(self, plugin: _Plugin, hook: str, args: tuple, timeout: float) -> Any:
        """One hook call within `timeout`; _HookFailed when it raised or ran over."""
        fn, is_async = plugin.hooks[hook]
        if self.metrics is not None:
            self.metrics.plugin_call(plugin.name, hook)
        bound = asyncio.timeout(timeout)
        try:
            async with bound:
                if is_async:
                    result = await fn(*args)
                else:
                    result = await asyncio.wrap_future(plugin.workers.submit(fn, args))
                if inspect.isawaitable(result):  # a coroutine function we did not recognise (e.g. compiled)
                    result = await result
        except TimeoutError as exc:
            if bound.expired():
                raise _HookFailed("timeout", f"no result within {timeout:g} s") from None
            raise _HookFailed("exception", f"TimeoutError: {exc}", exc) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _HookFailed("exception", f"{type(exc).__name__}: {exc}", exc) from None
        return result

    def _failed(self, plugin: _Plugin, hook: str, failure: _HookFailed, count: int = 1) -> None:
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
            "plugin %s: %s failed (%s): %s%s", plugin.name, hook, failure.kind, failure.detail, more,
            exc_info=(type(error), error, error.__traceback__) if error is not None and not held else None,
        )

    async def _check(self, plugin: _Plugin, hook: str, args: tuple) -> Verdict | None:
        try:
            result = await self._call(plugin, hook, args, plugin.timeout)
        except _HookFailed as failure:
            self._failed(plugin, hook, failure)
            why = ": no verdict within its time bound" if failure.kind == "timeout" else ""
            return Verdict(f"plugin {plugin.name} failed{why}", FAILED)
        if result is None:
            return None
        if not isinstance(result, str):
            self._failed(plugin, hook, _HookFailed("bad_result", f"returned {type(result).__name__}, expected a reason string or None"))
            return Verdict(f"plugin {plugin.name} failed", FAILED)
        if self.metrics is not None:
            self.metrics.plugin_refusal(plugin.name, hook)
        reason = result.strip() or f"refused by plugin {plugin.name}"
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "\u2026"
        return Verdict(reason, REFUSED)

    async def check_request(self, request: RequestView) -> Verdict | None:
        """The first refusal (or failure) of the plugins' check_request, in config order; None: admitted."""
        for plugin in self._request_checks:
            verdict = await self._check(plugin, "check_request", (request,))
            if verdict is not None:
                return verdict
        return None

    async def check_response(self, request: RequestView, content: str) -> Verdict | None:
        """As `check_request`, for the answer's content."""
        for plugin in self._response_checks:
            verdict = await self._check(plugin, "check_response", (request, content))
            if verdict is not None:
                return verdict
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
        """Queue an answered request's event for every on_request_finished (event loop thread; never blocks)."""
        if self._closed or not self._observers:
            return
        item = (event, int(time.time()), data)
        for plugin in self._observers:
            if plugin.events is not None:
                plugin.events.put(item)

    def _dropped(self, plugin: _Plugin) -> None:
        self._failed(plugin, "on_request_finished", _HookFailed("dropped", f"event queue full ({plugin.queue_size}); dropped the oldest"))

    async def _deliver(self, plugin: _Plugin, item: tuple[str, int, Mapping[str, Any]]) -> None:
        """The plugin's queue worker: one on_request_finished call."""
        event, timestamp, data = item
        try:
            await self._call(plugin, "on_request_finished", ({"event": event, "timestamp": timestamp, "data": dict(data)},), plugin.timeout)
        except _HookFailed as failure:
            self._failed(plugin, "on_request_finished", failure)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not end delivery for good
            log.exception("plugin %s: unexpected error delivering an event", plugin.name)
