"""Prometheus metrics of the executor (`[metrics]`): what the manual lists, served and pushed.

Exposed families (names and labels as in the manual's "Monitoring > Prometheus Metrics"):

  lloom_executor_requests_total{model,status}                 counter
  lloom_executor_request_duration_seconds{model,quantile}     summary: quantile 0.5/0.9/0.99 over
                                                              a sliding window, plus _sum/_count
  lloom_executor_request_duration_histogram_seconds{model}    histogram of the same durations
                                                              (aggregatable across executors,
                                                              which quantiles are not)
  lloom_executor_queue_size{priority}                         gauge ("high", "normal")
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
        self._load_time: dict[str, float] = {}
        self._peers = 0
        self._rate_limited: collections.Counter[str] = collections.Counter()
        self._cache = {"hit": 0, "miss": 0}
        self._webhooks: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
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
            return Metric(PREFIX + name, doc, kind)

        requests = family("requests", "Requests that left the pipeline, by model and status.", "counter")
        summary = family("request_duration_seconds", "Request duration end to end (quantiles over a sliding window).", "summary")
        histogram = family("request_duration_histogram_seconds", "Request duration end to end.", "histogram")
        queue = family("queue_size", "Requests waiting, by priority.", "gauge")
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
                cumulative = 0
                for bound, n in zip((*DURATION_BUCKETS, math.inf), stats.buckets):
                    cumulative += n
                    le = "+Inf" if bound == math.inf else str(bound)
                    histogram.add_sample(histogram.name + "_bucket", {**labels, "le": le}, cumulative)
                histogram.add_sample(histogram.name + "_sum", labels, stats.duration_sum)
                histogram.add_sample(histogram.name + "_count", labels, stats.duration_count)
                for kind in ("inbound", "outbound"):
                    tokens.add_sample(tokens.name + "_total", {**labels, "type": kind}, stats.tokens[kind])
                tps.add_sample(tps.name, labels, sum(stats.outbound.values(now)) / self.rate_window_secs)
                if stats.successes:
                    per_request.add_sample(per_request.name, labels, stats.revenue_wei / (stats.successes * WEI_PER_ETH))
            for priority, size in sorted(self._queue.items()):
                queue.add_sample(queue.name, {"priority": priority}, size)
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

        memory.add_sample(memory.name, {}, _process_rss())
        out = [requests, summary, histogram, queue, tokens, tps, revenue, per_request]
        if self.gpus.available:
            gpu = family("gpu_utilization_percent", "GPU utilisation by device (NVML).", "gauge")
            for device, percent in self.gpus.sample().items():
                gpu.add_sample(gpu.name, {"device": device}, percent)
            out.append(gpu)
        out += [memory, load_time, peers, limited, cache]
        if self._webhooks:
            out.append(webhooks)
        return out


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
