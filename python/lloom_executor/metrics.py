"""Prometheus metrics of the executor (`[metrics]`): what the manual lists, served and pushed.

Exposed families (names and labels as in the manual's "Monitoring > Prometheus Metrics"):

  lloom_executor_requests_total{model,status}                 counter
  lloom_executor_request_duration_seconds{model,quantile}     summary: quantile 0.5/0.9/0.99 over
                                                              a sliding window, plus _sum/_count
  lloom_executor_request_duration_histogram_seconds{model}    histogram of the same durations
                                                              (aggregatable across executors,
                                                              which quantiles are not)
  lloom_executor_queue_size{priority}                         gauge ("high", "normal")
  lloom_executor_throttled_requests{model}                    gauge: requests waiting for their model's
                                                              max_tokens_per_second (popped from the
                                                              queues, so not in queue_size; a model's
                                                              series stays, at 0, once it had one)
  lloom_executor_tokens_processed_total{model,type}           counter, type inbound|outbound
  lloom_executor_tokens_per_second{model}                     gauge: outbound tokens finished in
                                                              the last `rate_window_secs` / that window
  lloom_executor_revenue_total{currency="ETH"}                counter, from integer wei
  lloom_executor_revenue_per_request{model}                   gauge: ETH per successful request
  lloom_executor_gpu_utilization_percent{device}              gauge, only where NVML sees a GPU
  lloom_executor_memory_usage_bytes                           gauge: RSS of this process
  lloom_executor_model_load_time_seconds{model}               gauge, set by `model_loaded`
  lloom_executor_p2p_peers                                    gauge
  lloom_executor_rate_limited_total{rule}                     counter
  lloom_executor_cache_requests_total{result}                 counter, result hit|miss
  lloom_executor_webhook_events_total{endpoint,host,event,result}
                                                              counter, result delivered|failed|dropped
                                                              (`webhooks.py`; endpoint: index in
                                                              [[webhooks.endpoints]], host: its host)
  lloom_executor_plugin_calls_total{plugin,hook}              counter: hook calls of each [[plugins]] entry
  lloom_executor_plugin_refusals_total{plugin,hook}           counter: requests or answers a check hook refused
  lloom_executor_plugin_errors_total{plugin,hook,kind}        counter, kind exception|timeout|bad_result|dropped
                                                              (`plugins.py`)

Families appear once they have a sample (webhooks and plugins only when configured,
throttled_requests once a model with max_tokens_per_second has had a throttled request).

Custom metrics (the manual's "Custom Metrics"): `register_counter`,
`register_gauge` and `register_histogram` define process-wide families that
every `Metrics` collector exports after its own, on /metrics and in pushes.
Plugins (`PluginContext.register_*`), custom backends or any other code of the
process may call them, at import time or later:

    from lloom_executor.metrics import register_counter, register_histogram

    custom_latency = register_histogram("custom_processing_latency", "Custom processing step latency")
    custom_counter = register_counter("custom_events_total", "Total custom events", labels=("kind",))
    custom_latency.observe(0.042)
    custom_counter.labels(kind="cache").inc()

Names follow the Prometheus rules (`[a-zA-Z_][a-zA-Z0-9_]*`; no colons, which
are for recording rules) and get the `lloom_executor_` prefix unless they have
it, so the two above are exported as `lloom_executor_custom_processing_latency`
(histogram: `_bucket{le}`, `_sum`, `_count`) and `lloom_executor_custom_events_total`
(a counter's family name drops a trailing `_total`; its sample carries it).
A name whose family or samples would collide with a built-in family or with
another custom one is refused (ValueError); registering the same definition
again (name, type, help, labels, buckets) returns the existing metric, so a
plugin loaded again in the same process keeps counting. Label names follow the
Prometheus rules (no `__` prefix; `le` is reserved for histograms). Each metric
keeps at most `MAX_CUSTOM_SERIES` label sets; updates to further ones are
ignored and said once in the log. Updates take one lock per metric, never do
I/O, and are safe from any thread. Values are floats: money belongs in the
ledger, not here.

Why one custom collector instead of prometheus_client's Counter/Summary: its
Summary has no quantiles, and money must stay exact. Everything is kept in
plain Python state behind one lock (the pipeline runs on the asyncio loop, the
push loop in a thread) and turned into samples only when scraped or pushed.

Money: wei are summed as Python ints, never as floats. A Prometheus sample is
a float64, so the exposition carries `wei / 10**18`, which Python rounds
correctly (the nearest float64 to the exact ETH amount, however large the
sum). Ten charges of 0.1 ETH expose exactly `1.0`, where a float counter
would show 0.9999999999999999. The exact figure is `Metrics.revenue_wei`
(and `wei_to_eth(...)` for a decimal string); the ledger is the record.

Quantiles: nearest-rank over the durations observed in the last
`window_secs` (at most `max_samples` per model, oldest dropped first): the
q-quantile of n sorted samples is the ceil(q*n)-th. With no sample in the
window the quantile is NaN, as the Go client reports it.

Cardinality: the model label takes at most `max_models` distinct values; later
ones are counted under model="other", so names sent by clients cannot grow
the series without bound.
"""
from __future__ import annotations

import bisect
import collections
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.asgi import make_asgi_app
from prometheus_client.metrics_core import Metric

from .httpserve import EmbeddedHttpServer

log = logging.getLogger(__name__)

PREFIX = "lloom_executor_"
QUANTILES = (0.5, 0.9, 0.99)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SUCCESS = "success"
OTHER_MODEL = "other"
WEI_PER_ETH = 10**18

# Every family the Metrics collector exports (name without PREFIX -> type): custom metrics may not collide with them.
BUILTIN_FAMILIES: dict[str, str] = {
    "requests": "counter",
    "request_duration_seconds": "summary",
    "request_duration_histogram_seconds": "histogram",
    "queue_size": "gauge",
    "throttled_requests": "gauge",
    "tokens_processed": "counter",
    "tokens_per_second": "gauge",
    "revenue": "counter",
    "revenue_per_request": "gauge",
    "gpu_utilization_percent": "gauge",
    "memory_usage_bytes": "gauge",
    "model_load_time_seconds": "gauge",
    "p2p_peers": "gauge",
    "rate_limited": "counter",
    "cache_requests": "counter",
    "webhook_events": "counter",
    "plugin_calls": "counter",
    "plugin_refusals": "counter",
    "plugin_errors": "counter",
}


def wei_to_eth(wei: int) -> str:
    """Exact decimal ETH string of an integer wei amount ("1.000000000000000001")."""
    sign = "-" if wei < 0 else ""
    whole, frac = divmod(abs(wei), WEI_PER_ETH)
    text = f"{whole}.{frac:018d}".rstrip("0")
    return sign + (text + "0" if text.endswith(".") else text)


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """The ceil(q*n)-th smallest value (1-based); NaN for no values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class NvmlGpus:
    """GPU utilisation via NVML (`pynvml`, from the nvidia-ml-py package), if importable and a GPU exists.

    `available` is decided once, at construction; when NVML is missing or sees
    no device it is said once in the log and the metric is not exported.
    `nvml` lets a caller pass the module (tests without a GPU pass a stand-in).
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._handles: list[Any] = []
        self._failed_once = False
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # ImportError, NVMLError (no driver / library)
            log.info("gpu metrics off: NVML unavailable (%s: %s)", type(exc).__name__, exc)
            self._handles = []
            return
        if not self._handles:
            log.info("gpu metrics off: NVML sees no GPU")

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def sample(self) -> dict[str, float]:
        """{device index: utilisation percent}; empty on an NVML error (logged once)."""
        out: dict[str, float] = {}
        for index, handle in enumerate(self._handles):
            try:
                out[str(index)] = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except Exception as exc:
                if not self._failed_once:
                    log.warning("gpu metrics: NVML read failed (%s: %s)", type(exc).__name__, exc)
                    self._failed_once = True
        return out


def _process_rss() -> int:
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except ImportError:  # pragma: no cover - psutil comes with libp2p
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Window:
    """(time, value) pairs younger than `secs`, at most `maxlen` of them."""

    def __init__(self, secs: float, maxlen: int) -> None:
        self.secs = secs
        self.items: collections.deque[tuple[float, float]] = collections.deque(maxlen=maxlen)

    def add(self, now: float, value: float) -> None:
        self.items.append((now, value))

    def values(self, now: float) -> list[float]:
        while self.items and now - self.items[0][0] >= self.secs:
            self.items.popleft()
        return [v for _, v in self.items]


class _ModelStats:
    def __init__(self, window_secs: float, max_samples: int, rate_window_secs: float) -> None:
        self.durations = _Window(window_secs, max_samples)
        self.outbound = _Window(rate_window_secs, max_samples)
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # last: +Inf only
        self.duration_sum = 0.0
        self.duration_count = 0
        self.tokens = {"inbound": 0, "outbound": 0}
        self.revenue_wei = 0
        self.successes = 0


class Metrics:
    """The executor's metrics, on a CollectorRegistry of its own (several instances may coexist).

    The request pipeline calls `request_finished` once per answered or refused
    request; the node calls the other setters as things change. All methods are
    thread-safe and cheap (no I/O; RSS and NVML are read only at scrape time).
    `clock` (monotonic seconds) is injectable so windows can be tested without sleeping.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        window_secs: float = 600.0,
        max_samples: int = 4096,
        rate_window_secs: float = 60.0,
        max_models: int = 64,
        gpus: NvmlGpus | None = None,
    ) -> None:
        if window_secs <= 0 or rate_window_secs <= 0 or max_samples < 1 or max_models < 1:
            raise ValueError("window_secs and rate_window_secs must be > 0, max_samples and max_models >= 1")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.clock = clock
        self.window_secs = window_secs
        self.max_samples = max_samples
        self.rate_window_secs = rate_window_secs
        self.max_models = max_models
        self.gpus = gpus if gpus is not None else NvmlGpus()
        self._lock = threading.Lock()
        self._models: dict[str, _ModelStats] = {}
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._queue: dict[str, int] = {"high": 0, "normal": 0}
        self._throttled: dict[str, int] = {}
        self._load_time: dict[str, float] = {}
        self._peers = 0
        self._rate_limited: collections.Counter[str] = collections.Counter()
        self._cache = {"hit": 0, "miss": 0}
        self._webhooks: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        self._plugin_calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self._plugin_refusals: collections.Counter[tuple[str, str]] = collections.Counter()
        self._plugin_errors: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.revenue_wei = 0
        self.registry.register(self)

    # -- what the pipeline and the node call ------------------------------------------

    def _model(self, model: str) -> tuple[str, _ModelStats]:
        stats = self._models.get(model)
        if stats is None:
            if len(self._models) >= self.max_models + (OTHER_MODEL in self._models):
                model = OTHER_MODEL
                stats = self._models.get(model)
            if stats is None:
                stats = self._models[model] = _ModelStats(self.window_secs, self.max_samples, self.rate_window_secs)
        return model, stats

    def request_finished(
        self, model: str, status: str, duration_s: float, inbound_tokens: int = 0, outbound_tokens: int = 0, cost_wei: int = 0
    ) -> None:
        """One request left the pipeline (answered: status "success"; else why not). Cost in wei, exact."""
        if inbound_tokens < 0 or outbound_tokens < 0 or cost_wei < 0 or duration_s < 0:
            raise ValueError("tokens, cost and duration must not be negative")
        now = self.clock()
        with self._lock:
            model, stats = self._model(model)
            self._requests[(model, status)] += 1
            stats.durations.add(now, duration_s)
            stats.buckets[bisect.bisect_left(DURATION_BUCKETS, duration_s)] += 1
            stats.duration_sum += duration_s
            stats.duration_count += 1
            stats.tokens["inbound"] += int(inbound_tokens)
            stats.tokens["outbound"] += int(outbound_tokens)
            if outbound_tokens:
                stats.outbound.add(now, int(outbound_tokens))
            stats.revenue_wei += int(cost_wei)
            self.revenue_wei += int(cost_wei)
            if status == SUCCESS:
                stats.successes += 1

    def seed_revenue(self, by_model: Mapping[str, int]) -> None:
        """Continue the revenue counters from the ledger's totals (wei) after a restart."""
        with self._lock:
            for model, wei in by_model.items():
                _, stats = self._model(model)
                stats.revenue_wei += int(wei)
                self.revenue_wei += int(wei)

    def set_queue_sizes(self, sizes: Mapping[str, int]) -> None:
        """Current queue lengths by priority ("high", "normal"); priorities not given keep their value."""
        with self._lock:
            self._queue.update({str(k): int(v) for k, v in sizes.items()})

    def set_throttled(self, by_model: Mapping[str, int]) -> None:
        """Requests waiting for their model's max_tokens_per_second, by model (all of them: models
        not given have none). A model keeps its series at 0 rather than vanishing, so a dashboard
        sees the throttling end; at most `max_models` models (they are configured ones)."""
        with self._lock:
            for model in self._throttled:
                self._throttled[model] = 0
            for model, n in by_model.items():
                if model in self._throttled or len(self._throttled) < self.max_models:
                    self._throttled[str(model)] = int(n)

    def set_peers(self, n: int) -> None:
        with self._lock:
            self._peers = int(n)

    def rate_limited(self, rule: str) -> None:
        """A request was refused by rate-limit rule `rule` (e.g. "peer_id" or the rule's index)."""
        with self._lock:
            self._rate_limited[str(rule)] += 1

    def cache_result(self, hit: bool) -> None:
        with self._lock:
            self._cache["hit" if hit else "miss"] += 1

    def webhook_event(self, endpoint: str, host: str, event: str, result: str, n: int = 1) -> None:
        """`n` webhook events to endpoint `endpoint` (its index) on `host`: result delivered, failed
        (every attempt failed) or dropped (queue overflow, or still queued when the node stopped)."""
        with self._lock:
            self._webhooks[(str(endpoint), str(host), str(event), str(result))] += int(n)

    def plugin_call(self, plugin: str, hook: str) -> None:
        """Plugin `plugin` had its hook `hook` called (whatever came of it)."""
        with self._lock:
            self._plugin_calls[(plugin, hook)] += 1

    def plugin_refusal(self, plugin: str, hook: str) -> None:
        """A check hook of `plugin` refused the request (check_request) or the answer (check_response)."""
        with self._lock:
            self._plugin_refusals[(plugin, hook)] += 1

    def plugin_error(self, plugin: str, hook: str, kind: str) -> None:
        """A hook failed: kind "exception", "timeout" (over its time bound), "bad_result" (a check
        returned neither None nor a string) or "dropped" (an event the plugin's queue had no room for)."""
        with self._lock:
            self._plugin_errors[(plugin, hook, kind)] += 1

    def model_loaded(self, model: str, seconds: float) -> None:
        """The backend (or discovery) saw `model` become loaded, taking `seconds`."""
        with self._lock:
            if model in self._load_time or len(self._load_time) < self.max_models:
                self._load_time[model] = float(seconds)

    # -- the collector: samples are built only here ------------------------------------

    def describe(self) -> list[Metric]:
        return []  # families vary (gpu); no up-front description needed

    def collect(self) -> Iterable[Metric]:
        now = self.clock()

        def family(name: str, doc: str, kind: str) -> Metric:
            assert BUILTIN_FAMILIES[name] == kind, name  # the table custom names are checked against
            return Metric(PREFIX + name, doc, kind)

        requests = family("requests", "Requests that left the pipeline, by model and status.", "counter")
        summary = family("request_duration_seconds", "Request duration end to end (quantiles over a sliding window).", "summary")
        histogram = family("request_duration_histogram_seconds", "Request duration end to end.", "histogram")
        queue = family("queue_size", "Requests waiting, by priority.", "gauge")
        throttled = family("throttled_requests", "Requests waiting for their model's max_tokens_per_second.", "gauge")
        tokens = family("tokens_processed", "Tokens processed, by model and type (inbound/outbound).", "counter")
        tps = family("tokens_per_second", f"Outbound tokens per second over the last {self.rate_window_secs:g} s.", "gauge")
        revenue = family("revenue", "Revenue charged, in ETH (exact wei kept internally).", "counter")
        per_request = family("revenue_per_request", "Average ETH charged per successful request.", "gauge")
        memory = family("memory_usage_bytes", "Resident set size of the executor process.", "gauge")
        load_time = family("model_load_time_seconds", "Time the backend took to load each model.", "gauge")
        peers = family("p2p_peers", "Connected P2P peers.", "gauge")
        limited = family("rate_limited", "Requests refused by rate limiting, by rule.", "counter")
        cache = family("cache_requests", "Response cache lookups, by result (hit/miss).", "counter")
        webhooks = family("webhook_events", "Webhook events by endpoint, event and result (delivered/failed/dropped).", "counter")
        plugin_calls = family("plugin_calls", "Plugin hook calls, by plugin and hook.", "counter")
        plugin_refusals = family("plugin_refusals", "Requests or answers refused by a plugin's check hook.", "counter")
        plugin_errors = family("plugin_errors", "Plugin hook failures, by kind (exception/timeout/bad_result/dropped).", "counter")

        with self._lock:
            for (model, status), n in sorted(self._requests.items()):
                requests.add_sample(requests.name + "_total", {"model": model, "status": status}, n)
            for model, stats in sorted(self._models.items()):
                labels = {"model": model}
                window = sorted(stats.durations.values(now))
                for q in QUANTILES:
                    summary.add_sample(summary.name, {**labels, "quantile": str(q)}, nearest_rank(window, q))
                summary.add_sample(summary.name + "_sum", labels, stats.duration_sum)
                summary.add_sample(summary.name + "_count", labels, stats.duration_count)
                _add_histogram_samples(
                    histogram, labels, DURATION_BUCKETS, stats.buckets, stats.duration_sum, stats.duration_count
                )
                for kind in ("inbound", "outbound"):
                    tokens.add_sample(tokens.name + "_total", {**labels, "type": kind}, stats.tokens[kind])
                tps.add_sample(tps.name, labels, sum(stats.outbound.values(now)) / self.rate_window_secs)
                if stats.successes:
                    per_request.add_sample(per_request.name, labels, stats.revenue_wei / (stats.successes * WEI_PER_ETH))
            for priority, size in sorted(self._queue.items()):
                queue.add_sample(queue.name, {"priority": priority}, size)
            for model, n in sorted(self._throttled.items()):
                throttled.add_sample(throttled.name, {"model": model}, n)
            revenue.add_sample(revenue.name + "_total", {"currency": "ETH"}, self.revenue_wei / WEI_PER_ETH)
            for model, seconds in sorted(self._load_time.items()):
                load_time.add_sample(load_time.name, {"model": model}, seconds)
            peers.add_sample(peers.name, {}, self._peers)
            for rule, n in sorted(self._rate_limited.items()):
                limited.add_sample(limited.name + "_total", {"rule": rule}, n)
            for result, n in self._cache.items():
                cache.add_sample(cache.name + "_total", {"result": result}, n)
            for (endpoint, host, event, result), n in sorted(self._webhooks.items()):
                labels = {"endpoint": endpoint, "host": host, "event": event, "result": result}
                webhooks.add_sample(webhooks.name + "_total", labels, n)
            for (plugin, hook), n in sorted(self._plugin_calls.items()):
                plugin_calls.add_sample(plugin_calls.name + "_total", {"plugin": plugin, "hook": hook}, n)
            for (plugin, hook), n in sorted(self._plugin_refusals.items()):
                plugin_refusals.add_sample(plugin_refusals.name + "_total", {"plugin": plugin, "hook": hook}, n)
            for (plugin, hook, kind), n in sorted(self._plugin_errors.items()):
                plugin_errors.add_sample(plugin_errors.name + "_total", {"plugin": plugin, "hook": hook, "kind": kind}, n)

        memory.add_sample(memory.name, {}, _process_rss())
        out = [requests, summary, histogram, queue] + ([throttled] if throttled.samples else [])
        out += [tokens, tps, revenue, per_request]
        if self.gpus.available:
            gpu = family("gpu_utilization_percent", "GPU utilisation by device (NVML).", "gauge")
            for device, percent in self.gpus.sample().items():
                gpu.add_sample(gpu.name, {"device": device}, percent)
            out.append(gpu)
        out += [memory, load_time, peers, limited, cache]
        if self._webhooks:
            out.append(webhooks)
        out += [f for f in (plugin_calls, plugin_refusals, plugin_errors) if f.samples]
        out += _custom.collect()
        return out


# -- custom metrics (the manual's "Custom Metrics") ------------------------------------

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
MAX_CUSTOM_SERIES = 1000  # label sets per custom metric
_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _exported_names(family: str, kind: str) -> set[str]:
    """The family name and every sample name a family of this type exports."""
    suffixes = {
        "counter": ("", "_total"),
        "gauge": ("",),
        "histogram": ("", "_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }[kind]
    return {family + suffix for suffix in suffixes}


_BUILTIN_NAMES = {name for family, kind in BUILTIN_FAMILIES.items() for name in _exported_names(PREFIX + family, kind)}


class _Child:
    """One label set of a custom metric; every update takes the metric's lock."""

    __slots__ = ("_metric", "_values")

    def __init__(self, metric: _CustomMetric, values: tuple[str, ...]) -> None:
        self._metric = metric
        self._values = values


class CounterChild(_Child):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (>= 0)."""
        amount = float(amount)
        if not amount >= 0 or math.isinf(amount):
            raise ValueError(f"a counter only goes up by a finite amount >= 0, got {amount}")
        self._metric._update(self._values, lambda v: v + amount)


class GaugeChild(_Child):
    __slots__ = ()

    def set(self, value: float) -> None:
        value = float(value)
        self._metric._update(self._values, lambda v: value)

    def inc(self, amount: float = 1.0) -> None:
        amount = float(amount)
        self._metric._update(self._values, lambda v: v + amount)

    def dec(self, amount: float = 1.0) -> None:
        amount = float(amount)
        self._metric._update(self._values, lambda v: v - amount)


class HistogramChild(_Child):
    __slots__ = ()

    def observe(self, value: float) -> None:
        value = float(value)
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        self._metric._observe(self._values, value)


class _CustomMetric:
    """A custom family: `labels(...)` picks a label set; without labels the metric updates itself."""

    kind = ""
    _child_type: type[_Child] = _Child

    def __init__(self, name: str, help: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.help = help
        self.label_names = labels
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], Any] = {}
        self._children: dict[tuple[str, ...], _Child] = {}
        self._overflow_logged = False

    def definition(self) -> tuple:
        return (self.kind, self.help, self.label_names)

    def labels(self, *values: Any, **by_name: Any) -> Any:
        """The child for one label set, by position or by name (values are turned into strings)."""
        if values and by_name:
            raise ValueError("give label values by position or by name, not both")
        if by_name:
            if set(by_name) != set(self.label_names):
                raise ValueError(f"{self.name} has labels {list(self.label_names)}, got {sorted(by_name)}")
            values = tuple(by_name[n] for n in self.label_names)
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} has labels {list(self.label_names)}, got {len(values)} value(s)")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, self._child_type(self, key))
        return child

    def _unlabelled(self) -> Any:
        if self.label_names:
            raise ValueError(f"{self.name} has labels {list(self.label_names)}: use .labels(...) first")
        return self.labels()

    def _admit(self, key: tuple[str, ...]) -> bool:
        """Under the lock: may series `key` be stored (new ones only up to MAX_CUSTOM_SERIES)?"""
        if key in self._series or len(self._series) < MAX_CUSTOM_SERIES:
            return True
        if not self._overflow_logged:
            self._overflow_logged = True
            log.warning("metric %s: more than %d label sets; updates to new ones are ignored", self.name, MAX_CUSTOM_SERIES)
        return False

    def _update(self, key: tuple[str, ...], change: Callable[[float], float]) -> None:
        with self._lock:
            if self._admit(key):
                self._series[key] = change(self._series.get(key, 0.0))

    def _family(self) -> Metric:
        family = Metric(self.name, self.help, self.kind)
        sample = self.name + ("_total" if self.kind == "counter" else "")
        with self._lock:
            for key, value in self._series.items():
                family.add_sample(sample, dict(zip(self.label_names, key)), value)
        return family


class CustomCounter(_CustomMetric):
    kind = "counter"
    _child_type = CounterChild

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)


class CustomGauge(_CustomMetric):
    kind = "gauge"
    _child_type = GaugeChild

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)


def _add_histogram_samples(
    family: Metric,
    labels: dict[str, str],
    bounds: Iterable[float],
    counts: Iterable[int],
    total: float,
    count: int,
) -> None:
    """One histogram series' samples on `family`: cumulative `_bucket`s (`counts` per bucket
    of `bounds`, then +Inf; `le` as `repr(float(bound))`), `_sum` and `_count`."""
    cumulative = 0
    for bound, n in zip((*bounds, math.inf), counts):
        cumulative += n
        le = "+Inf" if bound == math.inf else repr(float(bound))
        family.add_sample(family.name + "_bucket", {**labels, "le": le}, cumulative)
    family.add_sample(family.name + "_sum", labels, total)
    family.add_sample(family.name + "_count", labels, count)


class CustomHistogram(_CustomMetric):
    kind = "histogram"
    _child_type = HistogramChild

    def __init__(self, name: str, help: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        super().__init__(name, help, labels)
        self.buckets = buckets

    def definition(self) -> tuple:
        return (*super().definition(), self.buckets)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def _observe(self, key: tuple[str, ...], value: float) -> None:
        with self._lock:
            if not self._admit(key):
                return
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [[0] * (len(self.buckets) + 1), 0.0, 0]  # buckets (+Inf last), sum, count
            series[0][bisect.bisect_left(self.buckets, value)] += 1
            series[1] += value
            series[2] += 1

    def _family(self) -> Metric:
        family = Metric(self.name, self.help, self.kind)
        with self._lock:
            for key, (buckets, total, count) in self._series.items():
                _add_histogram_samples(family, dict(zip(self.label_names, key)), self.buckets, buckets, total, count)
        return family


class _CustomRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _CustomMetric] = {}

    def register(self, metric: _CustomMetric) -> Any:
        names = _exported_names(metric.name, metric.kind)
        with self._lock:
            existing = self._metrics.get(metric.name)
            if existing is not None:
                if existing.definition() == metric.definition():
                    return existing
                raise ValueError(
                    f"metric {metric.name} is already registered as a {existing.kind} "
                    f"with help {existing.help!r}, labels {list(existing.label_names)}"
                    + (f", buckets {list(existing.buckets)}" if isinstance(existing, CustomHistogram) else "")
                )
            if names & _BUILTIN_NAMES:
                raise ValueError(f"metric {metric.name} collides with the executor's built-in metric {min(names & _BUILTIN_NAMES)}")
            for other in self._metrics.values():
                if clash := names & _exported_names(other.name, other.kind):
                    raise ValueError(f"metric {metric.name} collides with the custom {other.kind} {other.name} ({min(clash)})")
            self._metrics[metric.name] = metric
            return metric

    def collect(self) -> list[Metric]:
        with self._lock:
            metrics = list(self._metrics.values())
        return [m._family() for m in metrics]


_custom = _CustomRegistry()


def _family_name(name: str, kind: str) -> str:
    if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"metric name {name!r} must match [a-zA-Z_][a-zA-Z0-9_]* (Prometheus names; no colons)")
    full = name if name.startswith(PREFIX) else PREFIX + name
    if kind == "counter" and full.endswith("_total"):
        full = full[: -len("_total")]
    if full == PREFIX.rstrip("_") or full == PREFIX:
        raise ValueError(f"metric name {name!r} is empty after the {PREFIX} prefix")
    return full


def _label_names(labels: Iterable[str], kind: str) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise TypeError("labels is a sequence of label names, e.g. (\"kind\",), not one string")
    names = tuple(labels)
    for label in names:
        if not isinstance(label, str) or not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
            raise ValueError(f"label name {label!r} must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __")
        if kind == "histogram" and label == "le":
            raise ValueError("label name 'le' is reserved for histogram buckets")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate label names in {list(names)}")
    return names


def register_counter(name: str, help: str, labels: Iterable[str] = ()) -> CustomCounter:
    """A counter exported as `lloom_executor_<name>_total`: `.inc(amount=1)`, or
    `.labels(...).inc()` when it has labels. See the module docstring for the naming rules."""
    return _custom.register(CustomCounter(_family_name(name, "counter"), str(help), _label_names(labels, "counter")))


def register_gauge(name: str, help: str, labels: Iterable[str] = ()) -> CustomGauge:
    """A gauge exported as `lloom_executor_<name>`: `.set(v)`, `.inc(a=1)`, `.dec(a=1)` (or on `.labels(...)`)."""
    return _custom.register(CustomGauge(_family_name(name, "gauge"), str(help), _label_names(labels, "gauge")))


def register_histogram(
    name: str, help: str, labels: Iterable[str] = (), buckets: Iterable[float] = DEFAULT_BUCKETS
) -> CustomHistogram:
    """A histogram exported as `lloom_executor_<name>_bucket{le}`, `_sum`, `_count`: `.observe(v)`
    (or on `.labels(...)`). `buckets`: increasing finite upper bounds; +Inf is added."""
    bounds = tuple(float(b) for b in buckets)
    if not bounds or any(math.isinf(b) or math.isnan(b) for b in bounds) or list(bounds) != sorted(set(bounds)):
        raise ValueError(f"buckets must be a non-empty increasing sequence of finite numbers, got {list(bounds)}")
    return _custom.register(
        CustomHistogram(_family_name(name, "histogram"), str(help), _label_names(labels, "histogram"), bounds)
    )


def unregister_metric(metric: _CustomMetric) -> None:
    """Remove a custom metric from the exposition (it keeps working, unexported); mostly for tests."""
    with _custom._lock:
        if _custom._metrics.get(metric.name) is metric:
            del _custom._metrics[metric.name]


# -- serving /metrics -----------------------------------------------------------------


def metrics_app(metrics: Metrics) -> Callable:
    """ASGI app: GET /metrics in the Prometheus text format (OpenMetrics on request); 404 elsewhere."""
    prometheus = make_asgi_app(metrics.registry)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            await prometheus(scope, receive, send)
            return
        status = 404 if scope["path"] != "/metrics" else 405
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"not found: GET /metrics\n" if status == 404 else b"GET only\n"})

    return app


class MetricsServer:
    """Serves /metrics at `endpoint` ("host:port", `[metrics] endpoint`) as a task on the running asyncio loop."""

    def __init__(self, metrics: Metrics, endpoint: str) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.url: str | None = None
        self._http: EmbeddedHttpServer | None = None

    async def start(self) -> str:
        """Bind (an OSError surfaces here, e.g. the port is taken), then serve; returns the /metrics URL."""
        self._http = EmbeddedHttpServer(metrics_app(self.metrics), self.endpoint, name="metrics")
        self.url = await self._http.start() + "/metrics"
        log.info("metrics on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()


# -- pushing to a Pushgateway ---------------------------------------------------------


class PushLoop:
    """Pushes the registry to `gateway_url` every `interval_secs` (PUT /metrics/job/<job>/<grouping...>).

    Runs in a thread of its own: push_to_gateway is blocking HTTP, and a slow
    gateway must not stall the asyncio loop. The first push happens at
    `start()`, a last one at `stop()`. A failing gateway is logged once when
    it starts failing and once when it recovers, not on every push.
    """

    def __init__(
        self,
        metrics: Metrics,
        gateway_url: str,
        interval_secs: float,
        job: str = "lloom_executor",
        grouping: Mapping[str, str] | None = None,
        *,
        timeout_secs: float = 5.0,
    ) -> None:
        if interval_secs <= 0:
            raise ValueError("interval_secs must be > 0")
        self.metrics = metrics
        self.gateway_url = gateway_url
        self.interval_secs = interval_secs
        self.job = job
        self.grouping = dict(grouping or {})
        self.timeout_secs = timeout_secs
        self.pushes = 0  # successful pushes
        self.failures = 0
        self.failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def push_once(self) -> bool:
        """One push; True when the gateway accepted it."""
        try:
            push_to_gateway(self.gateway_url, self.job, self.metrics.registry, grouping_key=self.grouping, timeout=self.timeout_secs)
        except Exception as exc:
            self.failures += 1
            if not self.failing:
                log.warning("metrics push to %s failing (%s: %s); retrying every %g s", self.gateway_url, type(exc).__name__, exc, self.interval_secs)
            self.failing = True
            return False
        if self.failing:
            log.info("metrics push to %s works again", self.gateway_url)
        self.failing = False
        self.pushes += 1
        return True

    def _run(self) -> None:
        while True:
            self.push_once()
            if self._stop.wait(self.interval_secs):
                return

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lloom-metrics-push", daemon=True)
        self._thread.start()

    def stop(self, *, final_push: bool = True) -> None:
        """Stop the thread (waits for a push in flight, at most `timeout_secs`), then push the last values."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(self.timeout_secs + 1)
        self._thread = None
        if final_push:
            self.push_once()
