"""Custom metrics (the manual's "Custom Metrics"): plugins' own series, as prometheus_client types.

`register_counter`, `register_gauge` and `register_histogram` define
process-wide families that every `Metrics` collector exports after its own, on
/metrics and in pushes. Plugins (`PluginContext.register_*`), custom backends or
any other code of the process may call them, at import time or later:

    from lloom_executor.metrics import register_counter, register_histogram

    custom_latency = register_histogram("custom_processing_latency", "Custom processing step latency")
    custom_counter = register_counter("custom_events_total", "Total custom events", labels=("kind",))
    custom_latency.observe(0.042)
    custom_counter.labels(kind="cache").inc()

What they return are prometheus_client's own `Counter`, `Gauge` and `Histogram`
(subclassed only to add the checks below), registered in `CUSTOM_REGISTRY`
rather than prometheus_client's global one: the executor's collectors export
that registry, and several executors in one process (tests) share it. So
everything prometheus_client offers works (`.labels(...)` by position or name,
`.inc()`, `.set()`, `.observe()`, `.time()`, `.count_exceptions()`, ...), and
updates are prometheus_client's, thread-safe, with no I/O.

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
keeps at most `MAX_CUSTOM_SERIES` label sets: a further one gets a stand-in that
takes updates and is exported nowhere, said once in the log, so label values
taken from requests cannot grow /metrics without bound. A counter only goes up
by a finite amount and a histogram refuses NaN (either would poison the series
for good). Values are floats: money belongs in the ledger, not here.

The exposition is what it was before these became prometheus_client types: the
`_created` samples prometheus_client adds to counters and histograms are left
out, and a histogram series ends `_sum`, `_count` like the executor's own.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable
from typing import Self, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from .names import BUILTIN_NAMES, PREFIX, exported_names

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
MAX_CUSTOM_SERIES = 1000  # label sets per custom metric
_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

CUSTOM_REGISTRY = CollectorRegistry(auto_describe=True)
_registered: dict[str, CustomMetric] = {}  # family name -> metric, for definitions and clash messages
_registration_lock = threading.Lock()
_new_series_lock = threading.Lock()  # taken only when a label set is seen for the first time


class CustomMetric(MetricWrapperBase):
    """What the three custom types add to prometheus_client's: a bound on label sets, the
    executor's error messages, and the definition re-registration compares."""

    _overflow_child: Self | None = None  # the stand-in for label sets past MAX_CUSTOM_SERIES

    @property
    def name(self) -> str:
        """The exported family name (prefixed; a counter's without `_total`)."""
        return self._name

    @property
    def help(self) -> str:
        return self._documentation

    @property
    def kind(self) -> str:
        return str(self._type)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self._labelnames)

    def definition(self) -> tuple[object, ...]:
        """What must match for a second registration of this name to return this metric."""
        return (self.kind, self.help, self.label_names)

    def labels(self, *values: object, **by_name: object) -> Self:
        """The child for one label set, by position or by name (values are turned into strings)."""
        if not self._labelnames or self._labelvalues:
            return super().labels(*values, **by_name)  # no labels, or a child: prometheus_client says so
        if values and by_name:
            raise ValueError("give label values by position or by name, not both")
        if by_name:
            if set(by_name) != set(self._labelnames):
                raise ValueError(f"{self._name} has labels {list(self._labelnames)}, got {sorted(by_name)}")
            values = tuple(by_name[n] for n in self._labelnames)
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} has labels {list(self._labelnames)}, got {len(values)} value(s)")
        key = tuple(str(v) for v in values)
        child = self._metrics.get(key)  # no lock: a dict lookup, the path of every update
        if child is not None:
            return cast(Self, child)
        with _new_series_lock:
            if key not in self._metrics and len(self._metrics) >= MAX_CUSTOM_SERIES:
                return self._overflow()
            return super().labels(*key)

    def _overflow(self) -> Self:
        """Under `_new_series_lock`: the unexported stand-in child, made (and said) once."""
        if self._overflow_child is None:
            log.warning("metric %s: more than %d label sets; updates to new ones are ignored", self._name, MAX_CUSTOM_SERIES)
            self._overflow_child = type(self)(self._name, self._documentation, registry=None, **self._kwargs)
        return self._overflow_child

    def _raise_if_not_observable(self) -> None:
        """prometheus_client's check before every update, with a message that says what to do."""
        if self._labelnames and not self._labelvalues:
            raise ValueError(f"{self._name} has labels {list(self._labelnames)}: use .labels(...) first")


class CustomCounter(CustomMetric, Counter):
    """A prometheus_client Counter that refuses negative, infinite and NaN increments."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        """Add `amount` (finite, >= 0)."""
        amount = float(amount)
        if not amount >= 0 or math.isinf(amount):
            raise ValueError(f"a counter only goes up by a finite amount >= 0, got {amount}")
        super().inc(amount, exemplar)


class CustomGauge(CustomMetric, Gauge):
    """A prometheus_client Gauge: `.set(v)`, `.inc(a=1)`, `.dec(a=1)` and the rest."""


class CustomHistogram(CustomMetric, Histogram):
    """A prometheus_client Histogram that refuses NaN observations."""

    @property
    def buckets(self) -> tuple[float, ...]:
        """The finite upper bounds (prometheus_client adds +Inf)."""
        return tuple(self._upper_bounds[:-1])

    def definition(self) -> tuple[object, ...]:
        return (*super().definition(), self.buckets)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        amount = float(amount)
        if math.isnan(amount):
            raise ValueError("cannot observe NaN")
        super().observe(amount, exemplar)


_M = TypeVar("_M", bound=CustomMetric)


def _register(metric: _M) -> _M:
    """Add `metric` to CUSTOM_REGISTRY, or return the one already there with the same definition."""
    names = exported_names(metric.name, metric.kind)
    with _registration_lock:
        existing = _registered.get(metric.name)
        if existing is not None:
            if isinstance(existing, type(metric)) and existing.definition() == metric.definition():
                return existing
            raise ValueError(
                f"metric {metric.name} is already registered as a {existing.kind} "
                f"with help {existing.help!r}, labels {list(existing.label_names)}"
                + (f", buckets {list(existing.buckets)}" if isinstance(existing, CustomHistogram) else "")
            )
        if names & BUILTIN_NAMES:
            raise ValueError(f"metric {metric.name} collides with the executor's built-in metric {min(names & BUILTIN_NAMES)}")
        for other in _registered.values():
            if clash := names & exported_names(other.name, other.kind):
                raise ValueError(f"metric {metric.name} collides with the custom {other.kind} {other.name} ({min(clash)})")
        CUSTOM_REGISTRY.register(metric)
        _registered[metric.name] = metric
        return metric


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
        raise TypeError('labels is a sequence of label names, e.g. ("kind",), not one string')
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
    family, label_names = _family_name(name, "counter"), _label_names(labels, "counter")
    return _register(CustomCounter(family, str(help), label_names, registry=None))


def register_gauge(name: str, help: str, labels: Iterable[str] = ()) -> CustomGauge:
    """A gauge exported as `lloom_executor_<name>`: `.set(v)`, `.inc(a=1)`, `.dec(a=1)` (or on `.labels(...)`)."""
    family, label_names = _family_name(name, "gauge"), _label_names(labels, "gauge")
    return _register(CustomGauge(family, str(help), label_names, registry=None))


def register_histogram(
    name: str, help: str, labels: Iterable[str] = (), buckets: Iterable[float] = DEFAULT_BUCKETS
) -> CustomHistogram:
    """A histogram exported as `lloom_executor_<name>_bucket{le}`, `_sum`, `_count`: `.observe(v)`
    (or on `.labels(...)`). `buckets`: increasing finite upper bounds; +Inf is added."""
    bounds = tuple(float(b) for b in buckets)
    if not bounds or any(math.isinf(b) or math.isnan(b) for b in bounds) or list(bounds) != sorted(set(bounds)):
        raise ValueError(f"buckets must be a non-empty increasing sequence of finite numbers, got {list(bounds)}")
    family, label_names = _family_name(name, "histogram"), _label_names(labels, "histogram")
    return _register(CustomHistogram(family, str(help), label_names, registry=None, buckets=bounds))


def unregister_metric(metric: CustomMetric) -> None:
    """Remove a custom metric from the exposition (it keeps working, unexported); mostly for tests."""
    with _registration_lock:
        if _registered.get(metric.name) is metric:
            del _registered[metric.name]
            CUSTOM_REGISTRY.unregister(metric)


def custom_families() -> list[Metric]:
    """The custom families as the executor exports them: without prometheus_client's `_created`
    samples (the exposition had none before, and scrapers gain nothing from them here), and each
    histogram series ending `_sum`, `_count` as the built-in histogram's do."""
    families = list(CUSTOM_REGISTRY.collect())
    for family in families:
        created, total, count = family.name + "_created", family.name + "_sum", family.name + "_count"
        samples = [s for s in family.samples if s.name != created]
        if family.type == "histogram":
            for i in range(len(samples) - 1):
                if samples[i].name == count and samples[i + 1].name == total:
                    samples[i], samples[i + 1] = samples[i + 1], samples[i]
        family.samples = samples
    return families
