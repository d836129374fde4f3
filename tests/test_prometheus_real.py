"""Debian's Prometheus scraping a real executor loaded by the Rust peer; the shipped rules, by promtool.

1. The manual's metrics, read with PromQL over Prometheus's HTTP API after 40 served requests
   and 8 signed refusals from `tests/interop_peer`: requests and tokens served equal what the
   clients received, revenue equals the sum of the receipts' `total_cost` (exposed in ETH as the
   float64 nearest to the exact wei sum, and Prometheus's API returns the shortest decimal that
   round-trips, so the comparison is exact: tolerance 0), the latency histogram's buckets are
   cumulative and end at the request count, the queues are empty, and errors are counted by code.
2. The shipped recording rules evaluate on that data and no alert fires on the healthy node.
3. `promtool check rules`, `promtool test rules` (the alert unit tests) and `promtool check config`
   pass on `deploy/prometheus/`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from prometheus_rig import (
    JOB,
    MODEL,
    SERVED,
    TOO_CHEAP,
    UNKNOWN,
    LoadedPrometheus,
    eth,
    loaded_prometheus,
    require_binary,
    wait_for,
)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, interop_peer: Path) -> Iterator[LoadedPrometheus]:
    with loaded_prometheus(tmp_path_factory.mktemp("prometheus-real"), interop_peer) as scene:
        yield scene


def test_requests_by_status_and_model(loaded: LoadedPrometheus) -> None:
    prom = loaded.prometheus
    assert prom.value(f'lloom_executor_requests_total{{job="{JOB}", model="{MODEL}", status="success"}}') == SERVED
    by_status = prom.values(f'sum by (status) (lloom_executor_requests_total{{job="{JOB}"}})', "status")
    assert by_status == {"success": SERVED, **{code: float(n) for code, n in loaded.refused.items()}}
    assert loaded.refused == {"price_too_low": TOO_CHEAP, "unknown_model": UNKNOWN}
    # the scraped target is the executor's own /metrics endpoint
    assert prom.value(f'up{{job="{JOB}", instance="{loaded.instance}"}}') == 1


def test_tokens_served_equal_what_the_clients_received(loaded: LoadedPrometheus) -> None:
    prom = loaded.prometheus
    by_type = prom.values(f'lloom_executor_tokens_processed_total{{job="{JOB}", model="{MODEL}"}}', "type")
    assert by_type == {"inbound": loaded.tokens("inbound"), "outbound": loaded.tokens("outbound")}
    assert loaded.tokens("outbound") > 0
    # the per-model rate gauge: outbound tokens of the last 60 s / 60 (at most the whole load, once
    # it was scraped; less if this module ran past a minute after the warm-up request)
    rate = prom.value(f'lloom_executor_tokens_per_second{{job="{JOB}", model="{MODEL}"}}')
    assert 0 < rate <= loaded.tokens("outbound") / 60


def test_revenue_equals_the_receipts_sum_exactly(loaded: LoadedPrometheus) -> None:
    """Stated tolerance: none. The exposition carries the float64 nearest to the exact wei sum
    (`Metrics` sums integer wei and divides once) and Prometheus's API prints the shortest
    decimal that parses back to the same float64."""
    wei = loaded.revenue_wei
    assert wei == sum((r["inbound_tokens"] * 10**12 + r["outbound_tokens"] * 2 * 10**12) for r in loaded.served)
    revenue = loaded.prometheus.value(f'lloom_executor_revenue_total{{job="{JOB}", currency="ETH"}}')
    assert revenue == eth(wei)
    per_request = loaded.prometheus.value(f'lloom_executor_revenue_per_request{{job="{JOB}", model="{MODEL}"}}')
    assert per_request == wei / (SERVED * 10**18)


def test_latency_histogram_buckets(loaded: LoadedPrometheus) -> None:
    prom = loaded.prometheus
    name = "lloom_executor_request_duration_histogram_seconds"
    buckets = prom.values(f'{name}_bucket{{job="{JOB}", model="{MODEL}"}}', "le")
    finite = sorted((float(le), n) for le, n in buckets.items() if le != "+Inf")
    counts = [n for _, n in finite]
    assert counts == sorted(counts), f"buckets are cumulative: {finite}"
    requests_for_model = SERVED + TOO_CHEAP  # unknown_model refusals carry the requested name
    assert buckets["+Inf"] == requests_for_model
    assert prom.value(f'{name}_count{{job="{JOB}", model="{MODEL}"}}') == requests_for_model
    assert prom.value(f'{name}_sum{{job="{JOB}", model="{MODEL}"}}') > 0
    # PromQL's own quantile over the buckets lands inside the bucket range
    p99 = prom.value(f'histogram_quantile(0.99, sum by (le) (increase({name}_bucket{{job="{JOB}", model="{MODEL}"}}[5m])))')
    assert 0 < p99 <= 300
    summary = prom.values(f'lloom_executor_request_duration_seconds{{job="{JOB}", model="{MODEL}"}}', "quantile")
    assert set(summary) == {"0.5", "0.9", "0.99"} and 0 < summary["0.5"] <= summary["0.99"]


def test_queue_depth_is_exposed_and_drained(loaded: LoadedPrometheus) -> None:
    queues = loaded.prometheus.values(f'lloom_executor_queue_size{{job="{JOB}"}}', "priority")
    assert {"high", "normal"} <= set(queues) and set(queues.values()) == {0}, queues


def test_ledger_and_node_health_series(loaded: LoadedPrometheus) -> None:
    prom = loaded.prometheus
    assert prom.value(f'lloom_executor_ledger_writable{{job="{JOB}"}}') == 1
    assert prom.value(f'lloom_executor_ledger_write_errors_total{{job="{JOB}"}}') == 0
    assert prom.value(f'lloom_executor_ledger_commits_total{{job="{JOB}"}}') >= 1


def test_recording_rules_evaluate_and_no_alert_fires(loaded: LoadedPrometheus) -> None:
    prom = loaded.prometheus
    groups = prom.http.get("/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {group["name"] for group in groups} == {"lloom_executor.recording", "lloom_executor.alerts"}
    assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]
    # after an evaluation that saw the load: served rate per model, and our failure ratio 0 (refusals are clients')
    wait_for(
        lambda: prom.query(f'lloom_executor:requests:rate1m{{job="{JOB}", model="{MODEL}", status="success"}} > 0'),
        "the recording rule over the load",
        30,
    )
    wait_for(lambda: prom.query(f'lloom_executor:failure_ratio:rate5m{{job="{JOB}"}} == 0'), "failure ratio 0", 30)
    wait_for(lambda: prom.query(f'lloom_executor:refusal_ratio:rate5m{{job="{JOB}"}} > 0'), "refusal ratio", 30)
    assert prom.query('ALERTS{alertstate="firing"}') == []


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    run = _promtool("check", "rules", "lloom-executor.rules.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 16 rules found" in run.stdout + run.stderr


def test_promtool_rule_unit_tests() -> None:
    run = _promtool("test", "rules", "lloom-executor.rules.test.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_promtool_check_shipped_scrape_config() -> None:
    run = _promtool("check", "config", "prometheus.yml")
    assert run.returncode == 0, run.stdout + run.stderr
