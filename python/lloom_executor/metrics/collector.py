"""The executor's own Prometheus metrics: the families the manual lists, built at scrape time.

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
  lloom_executor_token_counts_total{source}                   counter: served answers by who counted their
                                                              tokens: usage (the server's figures),
                                                              server_tokenizer (the model's tokenizer, asked
                                                              where usage lacked them), native:<encoding>
                                                              (our count; the weakest of an answer's sides)
  lloom_executor_tokens_per_second{model}                     gauge: outbound tokens finished in
                                                              the last `rate_window_secs` / that window
  lloom_executor_revenue_total{currency="ETH"}                counter, from integer wei
  lloom_executor_revenue_per_request{model}                   gauge: ETH per successful request
  lloom_executor_gpu_utilization_percent{device}              gauge, only where NVML sees a GPU
  lloom_executor_memory_usage_bytes                           gauge: RSS of this process
  lloom_executor_threads                                      gauge: threads of this process
  lloom_executor_asyncio_tasks                                gauge: unfinished tasks on the node's asyncio
                                                              loop (once `watch_process` was called)
  lloom_executor_model_load_time_seconds{model}               gauge, set by `model_loaded`
  lloom_executor_p2p_peers                                    gauge
  lloom_executor_rate_limited_total{rule}                     counter
  lloom_executor_cache_requests_total{result}                 counter, result hit|miss
  lloom_executor_webhook_events_total{endpoint,host,event,result}
                                                              counter, result delivered|failed|dropped
                                                              (`webhooks/`; endpoint: index in
                                                              [[webhooks.endpoints]], host: its host)
  lloom_executor_plugin_calls_total{plugin,hook}              counter: hook calls of each [[plugins]] entry
  lloom_executor_plugin_refusals_total{plugin,hook}           counter: requests or answers a check hook refused
  lloom_executor_plugin_errors_total{plugin,hook,kind}        counter, kind exception|timeout|bad_result|dropped
                                                              (`plugins/`)
  lloom_executor_ledger_writable                              gauge: 1 while the ledger can write, 0 while
                                                              its last transaction failed (full disk, I/O
                                                              error): served requests are refused then
  lloom_executor_ledger_write_errors_total                    counter: ledger transactions that failed
  lloom_executor_ledger_commits_total                         counter: ledger transactions committed (each
                                                              one fsync; group commit shares it among rows)
  lloom_executor_connections_refused_total{reason}           counter: inbound connections closed at accept or
                                                              registration, reason pending_per_ip|
                                                              pending_per_prefix|pending_total|
                                                              connections_per_ip|connections_per_peer
                                                              ([network] caps; p2p/admission.py)
  lloom_executor_handshake_timeouts_total                     counter: inbound connections cut at
                                                              handshake_timeout_secs
  lloom_executor_inbound_connections{state}                   gauge, state pending|established (inbound TCP)
  lloom_executor_backend_instance_up{backend,pool_instance}   gauge: 1 while a pool instance gets calls, 0 while
                                                              it is taken out (backends/pool.py); a backend
                                                              without a pool has no series
  lloom_executor_backend_instance_in_flight{backend,pool_instance} gauge: calls in flight on the instance
  lloom_executor_backend_instance_failures_total{backend,pool_instance}
                                                              counter: failed calls and probes counted against it

Families appear once they have a sample (webhooks and plugins only when configured,
throttled_requests once a model with max_tokens_per_second has had a throttled request).
After them come the process-wide custom metrics of `custom.py`.

Why a collector of our own for these instead of prometheus_client's Counter/Summary:
its Summary has no quantiles, and money must stay exact. Everything is kept in
plain Python state behind one lock (the pipeline runs on the asyncio loop, the
push loop in a thread) and turned into samples only when scraped or pushed.
(Custom metrics have neither need and are prometheus_client's own types.)

Label values are plain `str(...)` of what callers pass: the pipeline passes
`RefusalCode` members (a StrEnum) as `status`, and the exposition must carry
their values, whatever the enum's own formatting does.

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

import asyncio
import bisect
import collections
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from ..outcome import RefusalCode
from .custom import custom_families
from .names import BUILTIN_FAMILIES, PREFIX
from .probes import NvmlGpus, process_rss

QUANTILES = (0.5, 0.9, 0.99)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SUCCESS = str(RefusalCode.SUCCESS)  # the status label of an answer with content
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


def add_histogram_samples(
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
    for bound, n in zip((*bounds, math.inf), counts, strict=False):
        cumulative += n
        le = "+Inf" if bound == math.inf else repr(float(bound))
        family.add_sample(family.name + "_bucket", {**labels, "le": le}, cumulative)
    family.add_sample(family.name + "_sum", labels, total)
    family.add_sample(family.name + "_count", labels, count)


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


class LedgerHealth(Protocol):
    """What the metrics read of the ledger (`ledger.LedgerStatus` has it)."""

    @property
    def writable(self) -> bool: ...

    @property
    def write_errors(self) -> int: ...

    @property
    def commits(self) -> int: ...


class ConnectionHealth(Protocol):
    """What the metrics read of inbound connection admission (`p2p.admission.ConnectionCounts` has it)."""

    @property
    def refused(self) -> Mapping[str, int]: ...

    @property
    def handshake_timeouts(self) -> int: ...

    @property
    def pending(self) -> int: ...

    @property
    def established(self) -> int: ...


class BackendHealth(Protocol):
    """What the metrics read of the backends: `BackendSet.health()`'s shape, backend name ->
    {"instances": [{"instance", "up", "in_flight", "failures", ...}], ...}."""

    def __call__(self) -> Mapping[str, Mapping[str, Any]]: ...


class _ModelStats:
    """Everything kept per model label value (one lock, the collector's, guards it)."""

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
        self._token_counts: collections.Counter[str] = collections.Counter()
        self._cache = {"hit": 0, "miss": 0}
        self._webhooks: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        self._plugin_calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self._plugin_refusals: collections.Counter[tuple[str, str]] = collections.Counter()
        self._plugin_errors: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.revenue_wei = 0
        self._replay: Callable[[], tuple[int, int, int]] | None = None
        self._shared_state: Callable[[], tuple[bool, int]] | None = None
        self._ledger: Callable[[], LedgerHealth] | None = None
        self._tasks: Callable[[], int] | None = None
        self._connections: Callable[[], ConnectionHealth] | None = None
        self._backends: BackendHealth | None = None
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

    def watch_replay(self, stats: Callable[[], tuple[int, int, int]]) -> None:
        """Read at scrape time: the replay guard's (entries, capacity, forced evictions). A forced
        eviction means the guard was full of live entries: a replay of the evicted request would be
        served, so it is the signal to raise [request_handling] replay_rate_per_sec."""
        self._replay = stats

    def watch_shared_state(self, stats: Callable[[], tuple[bool, int]]) -> None:
        """Read at scrape time: whether the members' shared store (Redis) answers, and how many
        calls to it failed. Down means every request is refused (`shared_state_unavailable`)."""
        self._shared_state = stats

    def watch_process(self, tasks: Callable[[], int]) -> None:
        """Read at scrape time: how many tasks the node's asyncio loop has (`tasks_of(loop)`).
        With the thread count beside it, this shows a leak that RSS hides for hours: a task or
        thread per request that never ends (benches/soak.py watches both over a long run)."""
        self._tasks = tasks

    @staticmethod
    def tasks_of(loop: asyncio.AbstractEventLoop) -> Callable[[], int]:
        """A counter of `loop`'s unfinished tasks that any thread may call: scrapes run on the loop
        itself, pushes (push.py) in a thread. `asyncio.all_tasks(loop)` copies the interpreter's
        task set, retrying when another thread changes it meanwhile, and only then filters by loop;
        so no lock is needed, and nothing is scheduled on a loop that may be busy or closing."""
        return lambda: len(asyncio.all_tasks(loop))

    def watch_connections(self, counts: Callable[[], ConnectionHealth]) -> None:
        """Read at scrape time: inbound connections refused by reason, cut at the handshake
        timeout, pending and established (`P2PNode.connection_counts`). A refusal count that
        climbs while clients report dial failures means a cap in [network] is too low for them."""
        self._connections = counts

    def watch_ledger(self, status: Callable[[], LedgerHealth]) -> None:
        """Read at scrape time: the ledger's status (`Ledger.status`). Not writable means
        every request that would be served is refused (`ledger_error`)."""
        self._ledger = status

    def watch_backends(self, health: BackendHealth) -> None:
        """Read at scrape time: each backend's pool instances (`BackendSet.health`). An instance
        at up 0 is taken out by its circuit breaker and gets no calls until a probe brings it back."""
        self._backends = health

    def request_finished(
        self, model: str, status: str, duration_s: float, inbound_tokens: int = 0, outbound_tokens: int = 0, cost_wei: int = 0
    ) -> None:
        """One request left the pipeline (answered: status "success"; else why not). Cost in wei, exact.
        `status` may be a `RefusalCode` member: its plain string value is the label."""
        if inbound_tokens < 0 or outbound_tokens < 0 or cost_wei < 0 or duration_s < 0:
            raise ValueError("tokens, cost and duration must not be negative")
        model, status = str(model), str(status)
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
                _, stats = self._model(str(model))
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

    def token_count(self, source: str) -> None:
        """A served answer's tokens were counted by `source` (a handful of values, never client text)."""
        with self._lock:
            self._token_counts[str(source)] += 1

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
            self._plugin_calls[(str(plugin), str(hook))] += 1

    def plugin_refusal(self, plugin: str, hook: str) -> None:
        """A check hook of `plugin` refused the request (check_request) or the answer (check_response)."""
        with self._lock:
            self._plugin_refusals[(str(plugin), str(hook))] += 1

    def plugin_error(self, plugin: str, hook: str, kind: str) -> None:
        """A hook failed: kind "exception", "timeout" (over its time bound), "bad_result" (a check
        returned neither None nor a string) or "dropped" (an event the plugin's queue had no room for)."""
        with self._lock:
            self._plugin_errors[(str(plugin), str(hook), str(kind))] += 1

    def model_loaded(self, model: str, seconds: float) -> None:
        """The backend (or discovery) saw `model` become loaded, taking `seconds`."""
        model = str(model)
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
        counts = family("token_counts", "Served answers by who counted their tokens (usage/server_tokenizer/native).", "counter")
        webhooks = family("webhook_events", "Webhook events by endpoint, event and result (delivered/failed/dropped).", "counter")
        plugin_calls = family("plugin_calls", "Plugin hook calls, by plugin and hook.", "counter")
        plugin_refusals = family("plugin_refusals", "Requests or answers refused by a plugin's check hook.", "counter")
        plugin_errors = family(
            "plugin_errors", "Plugin hook failures, by kind (exception/timeout/bad_result/dropped).", "counter"
        )

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
                add_histogram_samples(
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
            for source, n in sorted(self._token_counts.items()):
                counts.add_sample(counts.name + "_total", {"source": source}, n)
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

        memory.add_sample(memory.name, {}, process_rss())
        threads = family("threads", "Threads of the executor process that Python knows of.", "gauge")
        threads.add_sample(threads.name, {}, threading.active_count())
        process = [memory, threads]
        if self._tasks is not None:
            tasks = family("asyncio_tasks", "Unfinished tasks on the executor's asyncio loop.", "gauge")
            tasks.add_sample(tasks.name, {}, self._tasks())
            process.append(tasks)
        out = [requests, summary, histogram, queue] + ([throttled] if throttled.samples else [])
        out += [tokens, tps, revenue, per_request] + ([counts] if counts.samples else [])
        if self.gpus.available:
            gpu = family("gpu_utilization_percent", "GPU utilisation by device (NVML).", "gauge")
            for device, percent in self.gpus.sample().items():
                gpu.add_sample(gpu.name, {"device": device}, percent)
            out.append(gpu)
        out += [*process, load_time, peers, limited, cache]
        if self._webhooks:
            out.append(webhooks)
        out += [f for f in (plugin_calls, plugin_refusals, plugin_errors) if f.samples]
        if self._replay is not None:
            entries, capacity, evictions = self._replay()
            held = family("replay_entries", "Requests the replay guard remembers now.", "gauge")
            held.add_sample(held.name, {}, entries)
            room = family("replay_capacity", "Requests the replay guard can remember.", "gauge")
            room.add_sample(room.name, {}, capacity)
            evicted = family("replay_forced_evictions", "Live replay entries forgotten because the guard was full.", "counter")
            evicted.add_sample(evicted.name + "_total", {}, evictions)
            out += [held, room, evicted]
        if self._shared_state is not None:
            reachable, failures = self._shared_state()
            up = family("shared_state_up", "1 while the shared state (Redis) answers, 0 while it does not.", "gauge")
            up.add_sample(up.name, {}, 1 if reachable else 0)
            failed = family("shared_state_failures", "Calls to the shared state (Redis) that failed.", "counter")
            failed.add_sample(failed.name + "_total", {}, failures)
            out += [up, failed]
        if self._ledger is not None:
            ledger = self._ledger()
            writable, errors, commits = ledger.writable, ledger.write_errors, ledger.commits
            can_write = family("ledger_writable", "1 while the ledger can write, 0 while it cannot.", "gauge")
            can_write.add_sample(can_write.name, {}, 1 if writable else 0)
            failed = family("ledger_write_errors", "Ledger transactions that failed.", "counter")
            failed.add_sample(failed.name + "_total", {}, errors)
            committed = family("ledger_commits", "Ledger transactions committed (one fsync each).", "counter")
            committed.add_sample(committed.name + "_total", {}, commits)
            out += [can_write, failed, committed]
        if self._connections is not None:
            out += _connection_families(self._connections(), family)
        if self._backends is not None:
            out += _backend_families(self._backends(), family)
        out += custom_families()
        return out


def _connection_families(counts: ConnectionHealth, family: Callable[[str, str, str], Metric]) -> list[Metric]:
    refused = family("connections_refused", "Inbound connections refused, by the cap that refused them.", "counter")
    for reason, n in sorted(counts.refused.items()):
        refused.add_sample(refused.name + "_total", {"reason": reason}, n)
    timeouts = family("handshake_timeouts", "Inbound connections cut at the handshake timeout.", "counter")
    timeouts.add_sample(timeouts.name + "_total", {}, counts.handshake_timeouts)
    inbound = family("inbound_connections", "Inbound TCP connections, by state (pending: in the handshake).", "gauge")
    inbound.add_sample(inbound.name, {"state": "pending"}, counts.pending)
    inbound.add_sample(inbound.name, {"state": "established"}, counts.established)
    return [refused, timeouts, inbound]


def _backend_families(health: Mapping[str, Mapping[str, Any]], family: Callable[[str, str, str], Metric]) -> list[Metric]:
    up = family("backend_instance_up", "1 while a backend pool instance gets calls, 0 while it is taken out.", "gauge")
    in_flight = family("backend_instance_in_flight", "Calls in flight on a backend pool instance.", "gauge")
    failures = family("backend_instance_failures", "Failed calls and probes counted against a backend pool instance.", "counter")
    for backend, state in sorted(health.items()):
        for instance in state.get("instances", ()):
            if instance.get("up") is None:  # not a pool: nothing tracked
                continue
            labels = {"backend": str(backend), "pool_instance": str(instance["instance"])}
            up.add_sample(up.name, labels, 1 if instance["up"] else 0)
            in_flight.add_sample(in_flight.name, labels, instance["in_flight"])
            failures.add_sample(failures.name + "_total", labels, instance["failures"])
    return [f for f in (up, in_flight, failures) if f.samples]
