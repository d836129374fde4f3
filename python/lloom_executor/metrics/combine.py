"""One exposition for a node of N workers: the rules that merge the workers' own expositions.

With `start --workers N` every worker process counts what it serves in its own
`Metrics`; the lead serves `/metrics` (and pushes) for the whole node, so it
reads every worker's exposition (workers/node_view.py) and merges them here.
This module is pure (text in, `Metric` families out, no I/O), so the rules are
written once and tested on hand-written expositions (docs/workers.md, "One
/metrics for the node", has the same table):

  samples that only grow in a process       summed per identical label set: counters (`_total`),
                                            histogram `_bucket`/`_sum`/`_count`, summary
                                            `_sum`/`_count`
  summary quantiles                         cannot be merged (a median of medians is no median):
                                            each worker's series is kept, labelled `worker="i"`
  gauges, by name (`GAUGE_RULES`)           `min`: ledger_writable (the node can write only when
                                            every worker can), backend_instance_up (an instance is
                                            up for the node only when every worker sees it up);
                                            `max`: things every worker sees the same of, which a
                                            sum would multiply: gpu_utilization_percent,
                                            model_load_time_seconds, replay_entries and
                                            replay_capacity (the shared replay table)
  every other gauge                         summed: per-process readings (memory_usage_bytes,
                                            threads, asyncio_tasks), queue sizes, throttled
                                            requests, tokens_per_second, inbound_connections,
                                            p2p_peers (a peer connected to two workers counts
                                            twice: it holds two connections), in-flight calls,
                                            and unknown (custom) gauges
  `*_created` gauges                        the earliest (`min`): the text format turns a
                                            prometheus_client counter's creation time into a gauge
  revenue_total, revenue_per_request        not merged: the caller replaces them with the ledger's
                                            figures (`ledger_families`), which every worker writes
                                            and which is the record; summing seeded counters would
                                            count the ledger's history once per seeding worker

A worker that does not answer is skipped (`workers_reporting` says how many
did). So that node counters never go backwards when a worker is skipped or
restarts, `Continuity` keeps each worker's last monotonic samples: a silent
worker contributes its last ones, and the samples of a worker's previous
incarnation (pid) stay added after it restarts. What a worker counted after
the lead last read it and before it died is lost from the counters (the ledger
has every served request). A lead that restarts starts from zero, as any
scraped process does: Prometheus sees a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .collector import WEI_PER_ETH
from .names import PREFIX

SUM, MIN, MAX = "sum", "min", "max"

GAUGE_RULES: dict[str, str] = {
    PREFIX + "ledger_writable": MIN,
    PREFIX + "shared_state_up": MIN,
    PREFIX + "backend_instance_up": MIN,
    PREFIX + "gpu_utilization_percent": MAX,
    PREFIX + "model_load_time_seconds": MAX,
    PREFIX + "replay_entries": MAX,
    PREFIX + "replay_capacity": MAX,
}
"""Gauges that are not summed (every other gauge, custom ones too, is)."""

REVENUE = PREFIX + "revenue"
REVENUE_PER_REQUEST = PREFIX + "revenue_per_request"
WORKERS = PREFIX + "workers"
WORKERS_REPORTING = PREFIX + "workers_reporting"

_MONOTONIC_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def parse_exposition(text: str) -> list[Metric]:
    """A worker's exposition (Prometheus text format 0.0.4) as families."""
    return list(text_string_to_metric_families(text))


def is_monotonic(family: Metric, sample_name: str) -> bool:
    """A sample that only grows within one process (what may be summed over time and kept)."""
    return any(sample_name == family.name + suffix for suffix in _MONOTONIC_SUFFIXES.get(family.type, ()))


def monotonic_part(families: Iterable[Metric]) -> list[Metric]:
    """Only the samples that only grow: what stands in for a worker that is silent or gone."""
    out = []
    for family in families:
        kept = Metric(family.name, family.documentation, family.type)
        kept.samples = [s for s in family.samples if is_monotonic(family, s.name)]
        if kept.samples:
            out.append(kept)
    return out


def _rule(family: Metric, sample_name: str) -> str:
    if is_monotonic(family, sample_name):
        return SUM
    if family.name in GAUGE_RULES:
        return GAUGE_RULES[family.name]
    if family.type == "gauge" and family.name.endswith("_created"):
        return MIN
    if family.type in ("info", "stateset"):
        return MAX
    return SUM


class _Merged:
    """Families being merged: first-seen order of families and of series within each."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}
        self.values: dict[str, dict[SeriesKey, float]] = {}

    def add(self, family: Metric, labels: Mapping[str, str], sample_name: str, value: float, rule: str) -> None:
        out = self.families.get(family.name)
        if out is None:
            out = self.families[family.name] = Metric(family.name, family.documentation, family.type)
            self.values[family.name] = {}
        elif out.type != family.type:  # two versions disagree on a custom family's type: the first one wins
            return
        series = self.values[family.name]
        key = (sample_name, tuple(sorted(labels.items())))
        if key not in series:
            series[key] = value
        elif rule == SUM:
            series[key] += value
        elif rule == MIN:
            series[key] = min(series[key], value)
        else:
            series[key] = max(series[key], value)

    def result(self) -> list[Metric]:
        out = []
        for name, family in self.families.items():
            for (sample_name, labels), value in self.values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            out.append(family)
        return out


def merge(live: Mapping[int, Sequence[Metric]], kept: Iterable[Sequence[Metric]] = ()) -> list[Metric]:
    """The node's families from the workers that answered now (`live`, by worker index) and the
    monotonic samples kept for workers that did not or for their previous incarnations (`kept`)."""
    merged = _Merged()
    for index, families in sorted(live.items()):
        for family in families:
            for sample in family.samples:
                if family.type == "summary" and sample.name == family.name:  # a quantile: per worker
                    merged.add(family, {**sample.labels, "worker": str(index)}, sample.name, sample.value, SUM)
                else:
                    merged.add(family, sample.labels, sample.name, sample.value, _rule(family, sample.name))
    for families in kept:
        for family in families:
            for sample in family.samples:
                if is_monotonic(family, sample.name):
                    merged.add(family, sample.labels, sample.name, sample.value, SUM)
    return merged.result()


def replace_families(families: Sequence[Metric], replacements: Sequence[Metric]) -> list[Metric]:
    """`families` with each family of `replacements` in place of the one of its name (appended
    when there is none)."""
    by_name = {f.name: f for f in replacements}
    out = [by_name.pop(f.name, f) for f in families]
    return out + [f for f in replacements if f.name in by_name]


def ledger_families(revenue_by_model: Mapping[str, int], served_by_model: Mapping[str, int]) -> list[Metric]:
    """revenue_total and revenue_per_request from the ledger's totals (wei, exact until the one
    division into ETH): the node's revenue is what the ledger holds, whichever worker served it."""
    revenue = Metric(REVENUE, "Revenue charged, in ETH (exact wei kept internally).", "counter")
    revenue.add_sample(REVENUE + "_total", {"currency": "ETH"}, sum(revenue_by_model.values()) / WEI_PER_ETH)
    per_request = Metric(REVENUE_PER_REQUEST, "Average ETH charged per successful request.", "gauge")
    for model, wei in sorted(revenue_by_model.items()):
        served = served_by_model.get(model, 0)
        if served:
            per_request.add_sample(REVENUE_PER_REQUEST, {"model": model}, wei / (served * WEI_PER_ETH))
    return [revenue, per_request]


def workers_families(workers: int, reporting: int) -> list[Metric]:
    """How many workers the node has and how many answered for this exposition."""
    total = Metric(WORKERS, "Worker processes of this node (start --workers N).", "gauge")
    total.add_sample(WORKERS, {}, workers)
    answered = Metric(WORKERS_REPORTING, "Workers whose metrics are in this exposition (the others did not answer).", "gauge")
    answered.add_sample(WORKERS_REPORTING, {}, reporting)
    return [total, answered]


class Continuity:
    """Keeps the node's monotonic samples from going backwards when a worker is skipped or restarts.

    `kept(answered)` takes the workers that answered now (index -> (incarnation, families)) and
    returns what `merge` must add for the others: the last monotonic samples of each worker that
    did not answer, and the summed last samples of every worker's previous incarnations.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[str, list[Metric]]] = {}
        self._retired: dict[int, list[Metric]] = {}

    def kept(self, answered: Mapping[int, tuple[str, Sequence[Metric]]]) -> list[list[Metric]]:
        for index, (incarnation, families) in answered.items():
            previous = self._last.get(index)
            if previous is not None and previous[0] != incarnation:  # the worker restarted: its past stays counted
                self._retired[index] = merge({}, [self._retired.get(index, []), previous[1]])
            self._last[index] = (incarnation, monotonic_part(families))
        out = [families for _, families in sorted(self._retired.items())]
        out += [families for index, (_, families) in sorted(self._last.items()) if index not in answered]
        return out


class FixedFamilies(Collector):
    """Families computed beforehand, for prometheus_client's encoders (text or OpenMetrics)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families

    def describe(self) -> Iterable[Metric]:
        return []
