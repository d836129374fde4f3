"""Prometheus metrics of the executor (`[metrics]`): what the manual lists, served and pushed,
plus the custom metrics plugins and custom backends define.

One module per job:

  names.py      the built-in family names (what custom names may not collide with)
  collector.py  `Metrics`: the manual's families, kept exact and built at scrape time
  probes.py     host readings at scrape time: NVML GPU utilisation, process RSS
  custom.py     `register_counter` / `register_gauge` / `register_histogram`: prometheus_client
                types in a process-wide registry every `Metrics` exports after its own
  server.py     `MetricsServer`: GET /metrics on the node's asyncio loop
  push.py       `PushLoop`: pushes to a Pushgateway from a thread
  combine.py    the rules that merge N workers' expositions into the node's one (`start --workers N`)

The public API is re-exported here; plugins use it as

    from lloom_executor.metrics import register_counter, register_histogram

    custom_latency = register_histogram("custom_processing_latency", "Custom processing step latency")
    custom_counter = register_counter("custom_events_total", "Total custom events", labels=("kind",))
    custom_latency.observe(0.042)
    custom_counter.labels(kind="cache").inc()

(naming rules and limits in `custom.py`, the exported families in `collector.py`).
"""

from __future__ import annotations

from .collector import DURATION_BUCKETS, OTHER_MODEL, QUANTILES, SUCCESS, WEI_PER_ETH, Metrics, nearest_rank, wei_to_eth
from .custom import (
    CUSTOM_REGISTRY,
    DEFAULT_BUCKETS,
    MAX_CUSTOM_SERIES,
    CustomCounter,
    CustomGauge,
    CustomHistogram,
    CustomMetric,
    register_counter,
    register_gauge,
    register_histogram,
    unregister_metric,
)
from .names import BUILTIN_FAMILIES, PREFIX
from .probes import NvmlGpus
from .push import PushLoop
from .server import MetricsServer, metrics_app

__all__ = [
    "BUILTIN_FAMILIES",
    "CUSTOM_REGISTRY",
    "DEFAULT_BUCKETS",
    "DURATION_BUCKETS",
    "MAX_CUSTOM_SERIES",
    "OTHER_MODEL",
    "PREFIX",
    "QUANTILES",
    "SUCCESS",
    "WEI_PER_ETH",
    "CustomCounter",
    "CustomGauge",
    "CustomHistogram",
    "CustomMetric",
    "Metrics",
    "MetricsServer",
    "NvmlGpus",
    "PushLoop",
    "metrics_app",
    "nearest_rank",
    "register_counter",
    "register_gauge",
    "register_histogram",
    "unregister_metric",
    "wei_to_eth",
]
