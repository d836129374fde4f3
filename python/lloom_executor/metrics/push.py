"""Pushing the metrics to a Prometheus Pushgateway (`[metrics] push_gateway`), for executors a
Prometheus server cannot reach to scrape (behind NAT, short-lived)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, push_to_gateway

if TYPE_CHECKING:
    from .collector import Metrics

log = logging.getLogger(__name__)


class PushLoop:
    """Pushes the registry to `gateway_url` every `interval_secs` (PUT /metrics/job/<job>/<grouping...>).

    Runs in a thread of its own: push_to_gateway is blocking HTTP, and a slow
    gateway must not stall the asyncio loop. The first push happens at
    `start()`, a last one at `stop()`. A failing gateway is logged once when
    it starts failing and once when it recovers, not on every push.

    `registry` replaces `metrics.registry` as what is pushed: the lead of a node
    of several workers pushes the node's combined families, so the workers never
    push (their pushes under one grouping key would overwrite each other).
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
        registry: CollectorRegistry | None = None,
    ) -> None:
        if interval_secs <= 0:
            raise ValueError("interval_secs must be > 0")
        self.metrics = metrics
        self.registry = registry if registry is not None else metrics.registry
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
            push_to_gateway(self.gateway_url, self.job, self.registry, grouping_key=self.grouping, timeout=self.timeout_secs)
        except Exception as exc:  # noqa: BLE001 - whatever a push hits, the loop must go on pushing
            self.failures += 1
            if not self.failing:
                log.warning(
                    "metrics push to %s failing (%s: %s); retrying every %g s",
                    self.gateway_url,
                    type(exc).__name__,
                    exc,
                    self.interval_secs,
                )
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
