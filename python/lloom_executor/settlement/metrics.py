"""Settlement on the executor's Prometheus registry: rows per state, gas spent, the RPC node's state.

A custom collector that reads `Settler.snapshot()` at scrape time (cached counts, no
I/O), so the metrics cannot disagree with /health/detailed.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..ledger.settlements import STATES
from .settler import Settler


class SettlementCollector(Collector):
    def __init__(self, settler: Settler) -> None:
        self.settler = settler

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snap = self.settler.snapshot()
        rows = GaugeMetricFamily("lloom_executor_settlement_requests", "Served requests by settlement state", labels=["state"])
        states = snap.get("states") or {}
        for state in STATES:
            rows.add_metric([state], float(states.get(state, 0)))
        yield rows
        yield CounterMetricFamily(
            "lloom_executor_settlement_gas_spent_wei",
            "Wei paid for settlement transactions (mined)",
            value=float(snap.get("gas_spent_wei") or 0),
        )
        yield CounterMetricFamily(
            "lloom_executor_settlement_transactions_sent",
            "Settlement transactions sent by this process",
            value=float(snap["transactions_sent"]),
        )
        yield GaugeMetricFamily(
            "lloom_executor_settlement_rpc_up", "1 while the chain's RPC node answers", value=1.0 if snap["rpc_up"] else 0.0
        )
        oldest = snap.get("oldest_pending_secs")
        yield GaugeMetricFamily(
            "lloom_executor_settlement_oldest_pending_seconds",
            "Age of the oldest request not settled yet",
            value=float(oldest or 0.0),
        )
