"""The lead's view of the whole node (`start --workers N`, N > 1): metrics, peers, other executors.

The lead reads every other worker's private endpoint (workers/peer_endpoint.py)
concurrently, each with a short timeout, and itself in-process. A worker that
does not answer (restarting, stuck) is skipped: a debug log line says which,
`lloom_executor_workers_reporting` says how many answered for the metrics, and
the peers and network lists hold what the answering workers hold.

- metrics: merged by the rules of metrics/combine.py; the revenue families come
  from the ledger's totals (one file every worker writes, so exactly the node's
  revenue, whichever worker served and however often one restarted).
- peers (`GET /admin/peers`, `peers list`): the union over the workers, each
  peer with `workers`: the indexes of the workers holding a connection with it.
- network (`GET /admin/models`' "network", `models list`): the union of the
  executors each worker heard announce themselves, the latest announcement of
  each (gossip reaches a worker over its own connections).

The Pushgateway loop pushes from a thread: `thread_registry` hands it a registry
whose collection runs the merge on the node's asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from ..ledger import LedgerError, LedgerTotals
from ..metrics.combine import (
    REVENUE,
    REVENUE_PER_REQUEST,
    Continuity,
    FixedFamilies,
    ledger_families,
    merge,
    parse_exposition,
    replace_families,
    workers_families,
)
from .peer_endpoint import WorkerEndpoint, fetch_metrics, fetch_view

log = logging.getLogger(__name__)

T = TypeVar("T")
FETCH_TIMEOUT_SECS = 1.0


def merge_peers(views: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per peer over the workers' `/node` views (in worker order), with `workers`:
    the workers connected to it; addresses, protocols and roles joined, the earliest
    `connected_since`, the lowest known latency, direction "both" when the workers differ."""
    peers: dict[str, dict[str, Any]] = {}
    for view in sorted(views, key=lambda v: int(v["worker"])):
        for record in view.get("peers", []):
            seen = peers.get(record["peer_id"])
            if seen is None:
                peers[record["peer_id"]] = {**record, "workers": [int(view["worker"])]}
                continue
            seen["workers"].append(int(view["worker"]))
            seen["addresses"] += [a for a in record.get("addresses", []) if a not in seen["addresses"]]
            seen["protocols"] = sorted(set(seen.get("protocols", [])) | set(record.get("protocols", [])))
            seen["roles"] = sorted(set(seen.get("roles", [])) | set(record.get("roles", [])))
            seen["connected_since"] = min(seen["connected_since"], record["connected_since"])
            latencies = [x for x in (seen.get("latency_ms"), record.get("latency_ms")) if x is not None]
            seen["latency_ms"] = min(latencies) if latencies else None
            if seen.get("direction") != record.get("direction"):
                seen["direction"] = "both"
    return list(peers.values())


def merge_network(views: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every executor any worker heard of, with the latest announcement heard of it."""
    network: dict[str, Any] = {}
    for view in views:
        for peer, info in (view.get("network") or {}).items():
            if peer not in network or info.get("timestamp", 0) > network[peer].get("timestamp", 0):
                network[peer] = info
    return network


class NodeAggregator:
    """Reads the workers and merges what they say; runs in the lead, on its asyncio loop."""

    def __init__(
        self,
        own: WorkerEndpoint,
        sockets: Sequence[Path],
        ledger_totals: Callable[[], Awaitable[LedgerTotals]],
        *,
        timeout_secs: float = FETCH_TIMEOUT_SECS,
    ) -> None:
        self.own = own
        self.sockets = list(sockets)  # index -> socket path, the lead's own included
        self.ledger_totals = ledger_totals
        self.timeout_secs = timeout_secs
        self.continuity = Continuity()
        self._lock = asyncio.Lock()  # one merge at a time: Continuity sees the workers' reads in order

    async def _ask_others(self, fetch: Callable[[Path, float], Awaitable[T]], what: str) -> dict[int, T]:
        """`fetch` of every worker but the lead, at once; those that fail or are late are left out."""

        async def one(index: int) -> tuple[int, T | None]:
            try:
                return index, await asyncio.wait_for(fetch(self.sockets[index], self.timeout_secs), self.timeout_secs)
            except Exception as exc:  # noqa: BLE001 - restarting, not started yet, stuck: skipped either way
                log.debug("worker %d skipped for %s: %s: %s", index, what, type(exc).__name__, exc)
                return index, None

        others = [i for i in range(len(self.sockets)) if i != self.own.index]
        answers = await asyncio.gather(*(one(i) for i in others))
        return {i: value for i, value in answers if value is not None}

    async def families(self) -> list[Metric]:
        """The node's metric families (what `/metrics` serves and the push loop pushes)."""
        async with self._lock:
            texts = await self._ask_others(fetch_metrics, "metrics")
            answered = {self.own.index: (self.own.incarnation, parse_exposition(self.own.exposition().decode()))}
            for index, (incarnation, text) in texts.items():
                try:
                    answered[index] = (incarnation, parse_exposition(text))
                except ValueError as exc:
                    log.debug("worker %d skipped for metrics: unparsable exposition: %s", index, exc)
            kept = self.continuity.kept(answered)
        merged = merge({i: families for i, (_, families) in answered.items()}, kept)
        try:
            totals = await self.ledger_totals()
        except LedgerError as exc:  # no revenue this time rather than the workers' live shares as the node's
            log.warning("metrics: revenue left out: %s", exc)
            merged = [f for f in merged if f.name not in (REVENUE, REVENUE_PER_REQUEST)]
        else:
            served = {model: t.served for model, t in totals.by_model.items()}
            merged = replace_families(merged, ledger_families(totals.revenue_by_model(), served))
        return merged + workers_families(len(self.sockets), len(answered))

    async def _views(self) -> list[dict[str, Any]]:
        others = await self._ask_others(fetch_view, "the node view")
        return [await self.own.node_view(), *others.values()]

    async def peers(self) -> list[dict[str, Any]]:
        return merge_peers(await self._views())

    async def network(self) -> dict[str, Any]:
        return merge_network(await self._views())

    async def request_counts(self) -> tuple[int, int]:
        """(in flight, served) summed over the workers that answered (/health/detailed)."""
        counts = [view.get("requests") or (0, 0) for view in await self._views()]
        return sum(int(c[0]) for c in counts), sum(int(c[1]) for c in counts)

    def thread_registry(self, loop: asyncio.AbstractEventLoop, timeout_secs: float = 10.0) -> CollectorRegistry:
        """A registry for a thread (the push loop) whose collection is `families()` run on `loop`."""
        aggregator = self

        class _OnLoop(FixedFamilies):
            def collect(self) -> list[Metric]:
                return asyncio.run_coroutine_threadsafe(aggregator.families(), loop).result(timeout_secs)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_OnLoop(()))
        return registry
