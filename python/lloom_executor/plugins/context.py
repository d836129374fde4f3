"""`PluginContext`: what a plugin's `create_plugin(config, context)` gets besides its config.

It carries the executor's public identity and nothing secret: a plugin runs with
the executor's privileges, but it is never handed key material (docs/plugins.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from .. import metrics as _metrics


@dataclass(frozen=True)
class PluginContext:
    """The plugin's name, its logger (`lloom_executor.plugins.<name>`, configured with the
    node's [logging]), the executor's public identity, its time bound, and the
    custom-metrics registration functions (exported on /metrics and in pushes); with
    `start --workers N`, the worker process this instance lives in (`worker` of `workers`,
    0 of 1 in a single-process node): each worker has its own instance."""

    name: str
    logger: logging.Logger
    peer_id: str  # the executor's libp2p peer id
    evm_address: str  # the executor's EIP-55 address (answers, receipts and webhooks are signed by it)
    timeout_secs: float
    worker: int = 0
    workers: int = 1

    def register_counter(self, name: str, help: str, labels: Iterable[str] = ()) -> _metrics.CustomCounter:
        return _metrics.register_counter(name, help, labels)

    def register_gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> _metrics.CustomGauge:
        return _metrics.register_gauge(name, help, labels)

    def register_histogram(
        self, name: str, help: str, labels: Iterable[str] = (), buckets: Iterable[float] = _metrics.DEFAULT_BUCKETS
    ) -> _metrics.CustomHistogram:
        return _metrics.register_histogram(name, help, labels, buckets)
