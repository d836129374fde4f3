"""The names the executor's own metric families take (a leaf module of the metrics package).

Kept apart from the collector that fills them because custom metrics
(`custom.py`) must be checked against them: a plugin's series may not share a
family or sample name with a built-in one, or scrapers would see two
families under one name.
"""

from __future__ import annotations

PREFIX = "lloom_executor_"

# Every family the Metrics collector exports (name without PREFIX -> type): custom metrics may not collide with them.
BUILTIN_FAMILIES: dict[str, str] = {
    "requests": "counter",
    "request_duration_seconds": "summary",
    "request_duration_histogram_seconds": "histogram",
    "queue_size": "gauge",
    "throttled_requests": "gauge",
    "tokens_processed": "counter",
    "token_counts": "counter",
    "tokens_per_second": "gauge",
    "revenue": "counter",
    "revenue_per_request": "gauge",
    "gpu_utilization_percent": "gauge",
    "memory_usage_bytes": "gauge",
    "threads": "gauge",
    "asyncio_tasks": "gauge",
    "model_load_time_seconds": "gauge",
    "p2p_peers": "gauge",
    "rate_limited": "counter",
    "cache_requests": "counter",
    "webhook_events": "counter",
    "plugin_calls": "counter",
    "plugin_refusals": "counter",
    "plugin_errors": "counter",
    "replay_entries": "gauge",
    "replay_capacity": "gauge",
    "replay_forced_evictions": "counter",
    "shared_state_up": "gauge",
    "shared_state_failures": "counter",
    "ledger_writable": "gauge",
    "ledger_write_errors": "counter",
    "ledger_commits": "counter",
    "connections_refused": "counter",
    "handshake_timeouts": "counter",
    "inbound_connections": "gauge",
    "backend_instance_up": "gauge",
    "backend_instance_in_flight": "gauge",
    "backend_instance_failures": "counter",
    "cluster_members": "gauge",
    "cluster_is_leader": "gauge",
    "cluster_epoch": "gauge",
    "workers": "gauge",  # only in the combined exposition of a node of several workers (combine.py)
    "workers_reporting": "gauge",
}

_SAMPLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("", "_total"),
    "gauge": ("",),
    "histogram": ("", "_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def exported_names(family: str, kind: str) -> set[str]:
    """The family name and every sample name a family of this type exports."""
    return {family + suffix for suffix in _SAMPLE_SUFFIXES[kind]}


BUILTIN_NAMES: frozenset[str] = frozenset(
    name for family, kind in BUILTIN_FAMILIES.items() for name in exported_names(PREFIX + family, kind)
)
