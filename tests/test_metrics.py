"""Prometheus metrics (`[metrics]`): the manual's names and labels over real HTTP, exact money, pushing.

Values are checked through an independent parser (prometheus_client's text
parser) on what a real HTTP scrape returns. Windows use an injected clock, so
nothing sleeps. The Pushgateway is a small real HTTP server here that speaks
its push API (PUT/POST /metrics/job/<job>/<label>/<value>...). NVML is an
external library: without a GPU it is either missing (the default here) or a
stand-in module that answers like it.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from lloom_executor.metrics import (
    DURATION_BUCKETS,
    Metrics,
    MetricsServer,
    NvmlGpus,
    PushLoop,
    nearest_rank,
    register_counter,
    register_gauge,
    register_histogram,
    unregister_metric,
    wei_to_eth,
)
from lloom_executor.outcome import RefusalCode
from service_rig import samples

MODEL = "llama-2-13b"

# The manual's "Monitoring > Prometheus Metrics" block: every name with its labels.
MANUAL = {
    "lloom_executor_requests_total": {"model", "status"},
    "lloom_executor_request_duration_seconds": {"model", "quantile"},
    "lloom_executor_queue_size": {"priority"},
    "lloom_executor_tokens_processed_total": {"model", "type"},
    "lloom_executor_tokens_per_second": {"model"},
    "lloom_executor_revenue_total": {"currency"},
    "lloom_executor_revenue_per_request": {"model"},
    "lloom_executor_memory_usage_bytes": set(),
    "lloom_executor_model_load_time_seconds": {"model"},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NoGpus(NvmlGpus):
    """NVML that finds no library (what a machine without a GPU driver reports)."""

    def __init__(self) -> None:
        super().__init__(nvml=_FakeNvml(fail_init=True))


class _FakeNvml:
    """Stand-in for the `pynvml` module (external library), answering like NVML on a host with `devices`."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[float] | None = None, fail_init: bool = False) -> None:
        self.devices = devices or []
        self.fail_init = fail_init

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return type("Rates", (), {"gpu": self.devices[handle], "memory": 0})()


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


@pytest.fixture
def served(loop_thread) -> Iterator[tuple[Metrics, str]]:
    metrics = Metrics(gpus=NoGpus())
    server = MetricsServer(metrics, "127.0.0.1:0")
    url = loop_thread.run(server.start())
    try:
        yield metrics, url
    finally:
        loop_thread.run(server.stop())


def test_manual_names_and_labels_over_http(served) -> None:
    metrics, url = served
    durations = list(range(1, 101))  # 1..100 s: nearest-rank quantiles are 50, 90, 99
    random.Random(5).shuffle(durations)
    for d in durations:
        metrics.request_finished(MODEL, "success", float(d), inbound_tokens=10, outbound_tokens=20, cost_wei=10**15)
    metrics.request_finished(MODEL, "rate_limited", 0.0)
    metrics.set_queue_sizes({"normal": 5, "high": 2})
    metrics.set_peers(45)
    metrics.rate_limited("peer_id")
    metrics.rate_limited("peer_id")
    metrics.cache_result(True)
    metrics.cache_result(False)
    metrics.cache_result(False)
    metrics.model_loaded(MODEL, 45.2)

    response = httpx.get(url, trust_env=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    got = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            got.setdefault(s.name, set(s.labels))
    for name, labels in MANUAL.items():
        assert got.get(name) == labels, name
    assert "lloom_executor_gpu_utilization_percent" not in text  # no NVML here

    assert value(text, "lloom_executor_requests_total", model=MODEL, status="success") == 100
    assert value(text, "lloom_executor_requests_total", model=MODEL, status="rate_limited") == 1
    for q, expected in (("0.5", 50.0), ("0.9", 90.0), ("0.99", 99.0)):
        assert value(text, "lloom_executor_request_duration_seconds", model=MODEL, quantile=q) == expected
    assert value(text, "lloom_executor_request_duration_seconds_sum", model=MODEL) == 5050
    assert value(text, "lloom_executor_request_duration_seconds_count", model=MODEL) == 101
    for bound in DURATION_BUCKETS:  # the zero-second refusal is in every bucket
        expected = 1 + sum(1 for d in durations if d <= bound)
        assert value(text, "lloom_executor_request_duration_histogram_seconds_bucket", model=MODEL, le=str(bound)) == expected
    assert value(text, "lloom_executor_request_duration_histogram_seconds_bucket", model=MODEL, le="+Inf") == 101
    assert value(text, "lloom_executor_queue_size", priority="normal") == 5
    assert value(text, "lloom_executor_queue_size", priority="high") == 2
    assert value(text, "lloom_executor_tokens_processed_total", model=MODEL, type="inbound") == 1000
    assert value(text, "lloom_executor_tokens_processed_total", model=MODEL, type="outbound") == 2000
    assert value(text, "lloom_executor_tokens_per_second", model=MODEL) == 2000 / 60
    assert value(text, "lloom_executor_revenue_total", currency="ETH") == 0.1
    assert value(text, "lloom_executor_revenue_per_request", model=MODEL) == 0.001
    assert value(text, "lloom_executor_model_load_time_seconds", model=MODEL) == 45.2
    assert value(text, "lloom_executor_p2p_peers") == 45
    assert value(text, "lloom_executor_rate_limited_total", rule="peer_id") == 2
    assert value(text, "lloom_executor_cache_requests_total", result="hit") == 1
    assert value(text, "lloom_executor_cache_requests_total", result="miss") == 2
    # the exact lines as the manual prints them
    assert re.search(r'^lloom_executor_requests_total\{model="llama-2-13b",status="success"\} 100\.0$', text, re.MULTILINE)
    assert re.search(r'^lloom_executor_revenue_total\{currency="ETH"\} 0\.1$', text, re.MULTILINE)

    assert httpx.get(url.replace("/metrics", "/other"), trust_env=False).status_code == 404
    assert httpx.post(url, trust_env=False).status_code == 405
    openmetrics = httpx.get(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}, trust_env=False)
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


def test_throttled_requests_gauge() -> None:
    """Absent until a model was throttled; then one series per model, staying at 0 when its
    requests are gone; at most max_models models."""
    metrics = Metrics(gpus=NoGpus(), max_models=2)
    assert "lloom_executor_throttled_requests" not in scrape(metrics)
    metrics.set_throttled({"a": 3, "b": 1})
    text = scrape(metrics)
    assert "# TYPE lloom_executor_throttled_requests gauge" in text
    assert (
        value(text, "lloom_executor_throttled_requests", model="a"),
        value(text, "lloom_executor_throttled_requests", model="b"),
    ) == (3, 1)
    metrics.set_throttled({"b": 2, "c": 5})  # a has none now; c is over max_models
    text = scrape(metrics)
    assert (
        value(text, "lloom_executor_throttled_requests", model="a"),
        value(text, "lloom_executor_throttled_requests", model="b"),
    ) == (0, 2)
    assert 'model="c"' not in text


def test_memory_is_this_process_rss(served) -> None:
    _, url = served
    exposed = value(httpx.get(url, trust_env=False).text, "lloom_executor_memory_usage_bytes")
    with open("/proc/self/status") as f:
        rss = int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) * 1024
    assert abs(exposed - rss) < 32 * 2**20  # the same process, read moments apart


def test_metrics_port_taken_fails_at_start(loop_thread) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MetricsServer(Metrics(gpus=NoGpus()), f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(OSError):
            loop_thread.run(server.start())


def test_registries_are_separate() -> None:
    a, b = Metrics(gpus=NoGpus()), Metrics(gpus=NoGpus())
    a.request_finished(MODEL, "success", 1.0)
    assert value(scrape(a), "lloom_executor_requests_total", model=MODEL, status="success") == 1
    assert "lloom_executor_requests_total{" not in scrape(b)


# -- quantiles and windows at their edges ---------------------------------------------


def test_nearest_rank() -> None:
    assert math.isnan(nearest_rank([], 0.5))
    assert nearest_rank([7.0], 0.99) == 7.0
    values = [float(v) for v in range(1, 11)]
    assert [nearest_rank(values, q) for q in (0.5, 0.9, 0.99)] == [5.0, 9.0, 10.0]


def test_quantile_window_by_age() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock, window_secs=600, gpus=NoGpus())
    metrics.request_finished(MODEL, "success", 100.0)
    clock.now += 300
    metrics.request_finished(MODEL, "success", 1.0)

    def p99() -> float:
        return value(scrape(metrics), "lloom_executor_request_duration_seconds", model=MODEL, quantile="0.99")

    clock.now += 299.999  # the first sample is 599.999 s old: still in
    assert p99() == 100.0
    clock.now += 0.001  # exactly 600 s old: out
    assert p99() == 1.0
    clock.now += 300  # the second one too: NaN, while _count keeps the lifetime total
    assert math.isnan(p99())
    assert value(scrape(metrics), "lloom_executor_request_duration_seconds_count", model=MODEL) == 2


def test_quantile_window_by_count() -> None:
    metrics = Metrics(max_samples=3, gpus=NoGpus())
    for d in (100.0, 1.0, 2.0):  # exactly max_samples: the 100 s one counts
        metrics.request_finished(MODEL, "success", d)

    def p99() -> float:
        return value(scrape(metrics), "lloom_executor_request_duration_seconds", model=MODEL, quantile="0.99")

    assert p99() == 100.0
    metrics.request_finished(MODEL, "success", 3.0)  # one over: the oldest goes
    assert p99() == 3.0


def test_tokens_per_second_window() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock, rate_window_secs=60, gpus=NoGpus())
    metrics.request_finished(MODEL, "success", 1.0, inbound_tokens=500, outbound_tokens=120)

    def tps() -> float:
        return value(scrape(metrics), "lloom_executor_tokens_per_second", model=MODEL)

    assert tps() == 2.0  # outbound only: 120 tokens / 60 s
    clock.now += 59.999
    assert tps() == 2.0
    clock.now += 0.001
    assert tps() == 0.0
    assert value(scrape(metrics), "lloom_executor_tokens_processed_total", model=MODEL, type="outbound") == 120


def test_model_label_is_bounded() -> None:
    metrics = Metrics(max_models=2, gpus=NoGpus())
    for model in ("a", "b", "a"):  # at the limit: both have their own series
        metrics.request_finished(model, "success", 1.0)
    metrics.request_finished("c", "unknown_model", 1.0)  # over: folded into "other"
    metrics.request_finished("d", "unknown_model", 1.0)
    text = scrape(metrics)
    assert value(text, "lloom_executor_requests_total", model="a", status="success") == 2
    assert value(text, "lloom_executor_requests_total", model="b", status="success") == 1
    assert value(text, "lloom_executor_requests_total", model="other", status="unknown_model") == 2
    assert 'model="c"' not in text and 'model="d"' not in text


def test_invalid_input_refused() -> None:
    metrics = Metrics(gpus=NoGpus())
    for bad in ({"duration_s": -0.001}, {"inbound_tokens": -1}, {"outbound_tokens": -1}, {"cost_wei": -1}):
        args = {"model": MODEL, "status": "success", "duration_s": 0.0, **bad}
        with pytest.raises(ValueError):
            metrics.request_finished(**args)
    metrics.request_finished(MODEL, "success", 0.0, 0, 0, 0)  # zero is fine
    for bad in ({"window_secs": 0}, {"rate_window_secs": 0}, {"max_samples": 0}, {"max_models": 0}):
        with pytest.raises(ValueError):
            Metrics(gpus=NoGpus(), **bad)
    Metrics(gpus=NoGpus(), max_samples=1, max_models=1)


# -- money ------------------------------------------------------------------------------


def test_status_label_is_the_refusal_codes_plain_string() -> None:
    """The pipeline passes RefusalCode members (a StrEnum); the label must be the bare value, and
    the same series as the string's."""
    metrics = Metrics(gpus=NoGpus())
    metrics.request_finished(MODEL, RefusalCode.RATE_LIMITED, 0.0)
    metrics.request_finished(MODEL, "rate_limited", 0.0)
    metrics.request_finished(MODEL, RefusalCode.SUCCESS, 1.0, cost_wei=10**18)
    for family in metrics.collect():
        for sample in family.samples:
            assert all(type(v) is str for v in sample.labels.values()), sample
    text = scrape(metrics)
    assert re.search(r'^lloom_executor_requests_total\{model="llama-2-13b",status="rate_limited"\} 2\.0$', text, re.MULTILINE)
    assert re.search(r'^lloom_executor_requests_total\{model="llama-2-13b",status="success"\} 1\.0$', text, re.MULTILINE)
    assert value(text, "lloom_executor_revenue_per_request", model=MODEL) == 1.0  # SUCCESS counts as a success


def test_revenue_is_exact_wei_rounded_once() -> None:
    metrics = Metrics(gpus=NoGpus())
    tenth = 10**17
    float_counter = 0.0
    for _ in range(10):
        metrics.request_finished(MODEL, "success", 1.0, 1, 1, tenth)
        float_counter += tenth / 10**18
    assert float_counter != 1.0  # what a float counter would expose: 0.9999999999999999
    assert metrics.revenue_wei == 10**18
    text = scrape(metrics)
    assert re.search(r'^lloom_executor_revenue_total\{currency="ETH"\} 1\.0$', text, re.MULTILINE)
    assert value(text, "lloom_executor_revenue_per_request", model=MODEL) == 0.1


def test_revenue_huge_wei() -> None:
    metrics = Metrics(gpus=NoGpus())
    huge = 2**200 + 1  # far past 2**64 and float64's 53 bits
    for _ in range(3):
        metrics.request_finished(MODEL, "success", 1.0, cost_wei=huge)
    metrics.request_finished(MODEL, "error", 1.0)  # not counted in revenue per request
    assert metrics.revenue_wei == 3 * huge  # exact, internally
    text = scrape(metrics)
    exact_eth = 3 * huge / 10**18  # int / int: the correctly rounded float64
    assert value(text, "lloom_executor_revenue_total", currency="ETH") == exact_eth
    assert value(text, "lloom_executor_revenue_per_request", model=MODEL) == huge / 10**18
    assert wei_to_eth(3 * huge) == f"{3 * huge // 10**18}.{3 * huge % 10**18:018d}".rstrip("0")


def test_wei_to_eth_strings() -> None:
    assert wei_to_eth(0) == "0.0"
    assert wei_to_eth(1) == "0.000000000000000001"
    assert wei_to_eth(10**18) == "1.0"
    assert wei_to_eth(10**18 + 1) == "1.000000000000000001"
    assert wei_to_eth(534 * 10**15) == "0.534"
    assert wei_to_eth(-(10**17)) == "-0.1"


# -- GPU --------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is not None, reason="pynvml is installed here")
def test_no_gpu_metric_without_nvml(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="lloom_executor.metrics"):
        metrics = Metrics()  # the real NvmlGpus: pynvml cannot be imported
        text = scrape(metrics) + scrape(metrics)
    assert "gpu_utilization_percent" not in text
    assert [r.message for r in caplog.records].count(
        "gpu metrics off: NVML unavailable (ModuleNotFoundError: No module named 'pynvml')"
    ) == 1


def test_no_gpu_metric_when_nvml_fails_or_sees_no_device(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="lloom_executor.metrics"):
        for gpus in (NoGpus(), NvmlGpus(nvml=_FakeNvml(devices=[]))):
            metrics = Metrics(gpus=gpus)
            assert "gpu_utilization_percent" not in scrape(metrics) + scrape(metrics)
    messages = [r.message for r in caplog.records]
    assert messages == [
        "gpu metrics off: NVML unavailable (NVMLError: NVML Shared Library Not Found)",
        "gpu metrics off: NVML sees no GPU",
    ]


def test_gpu_metric_per_device() -> None:
    metrics = Metrics(gpus=NvmlGpus(nvml=_FakeNvml(devices=[87.5, 3.0])))
    text = scrape(metrics)
    assert value(text, "lloom_executor_gpu_utilization_percent", device="0") == 87.5
    assert value(text, "lloom_executor_gpu_utilization_percent", device="1") == 3.0


# -- pushing --------------------------------------------------------------------------


class Gateway:
    """A minimal Pushgateway: records PUT/POST /metrics/job/...; `fail` makes it answer 503."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, str]] = []
        self.fail = False
        self.cond = threading.Condition()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _push(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if not self.path.startswith("/metrics/job/") or gateway.fail:
                    self.send_response(404 if not gateway.fail else 503)
                    self.end_headers()
                    return
                with gateway.cond:
                    gateway.pushes.append((self.command, self.path, body))
                    gateway.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            do_PUT = do_POST = _push

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, n: int, timeout: float = 20.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.pushes) >= n, timeout), f"{len(self.pushes)} pushes, wanted {n}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    g = Gateway()
    try:
        yield g
    finally:
        g.close()


def test_push_loop_pushes_every_interval(gateway: Gateway) -> None:
    peer_id = "12D3KooWRBhwfeP2Y9CDkFRBAZ1pmxUadH36TFuECbP6LCiNNgTG"
    metrics = Metrics(gpus=NoGpus())
    metrics.request_finished(MODEL, "success", 2.0, 10, 20, 5 * 10**17)
    loop = PushLoop(metrics, gateway.url, 0.05, grouping={"instance": peer_id})
    loop.start()
    try:
        gateway.wait_for(2)  # one at start, one an interval later
    finally:
        loop.stop()
    count = len(gateway.pushes)
    assert count >= 3 and loop.pushes == count and loop.failures == 0  # the last at stop
    for method, path, body in gateway.pushes:
        assert method == "PUT"
        assert path == f"/metrics/job/lloom_executor/instance/{peer_id}"
        assert value(body, "lloom_executor_requests_total", model=MODEL, status="success") == 1
        assert value(body, "lloom_executor_revenue_total", currency="ETH") == 0.5
    loop.stop()  # twice is harmless
    assert len(gateway.pushes) == count


def test_push_failures_logged_once_per_outage(gateway: Gateway, caplog) -> None:
    loop = PushLoop(Metrics(gpus=NoGpus()), gateway.url, 30, job="lloom_executor", grouping={"instance": "p"})
    with caplog.at_level(logging.INFO, logger="lloom_executor.metrics"):
        gateway.fail = True
        assert [loop.push_once() for _ in range(3)] == [False, False, False]
        gateway.fail = False
        assert loop.push_once() and loop.push_once()
        gateway.fail = True
        assert not loop.push_once() and not loop.push_once()
    messages = [r.message for r in caplog.records]
    assert len(messages) == 3, messages
    assert messages[0].startswith(f"metrics push to {gateway.url} failing (") and "503" in messages[0]
    assert messages[1] == f"metrics push to {gateway.url} works again"
    assert messages[2].startswith(f"metrics push to {gateway.url} failing (")
    assert (loop.pushes, loop.failures) == (2, 5)


def test_push_to_nothing_listening(caplog) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    loop = PushLoop(Metrics(gpus=NoGpus()), f"http://127.0.0.1:{port}", 30, grouping={"instance": "p"}, timeout_secs=2)
    with caplog.at_level(logging.WARNING, logger="lloom_executor.metrics"):
        assert not loop.push_once() and not loop.push_once()
    assert len(caplog.records) == 1 and loop.failing


def test_push_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PushLoop(Metrics(gpus=NoGpus()), "http://127.0.0.1:1", 0)


# -- custom metrics are prometheus_client's types ----------------------------------------------


def test_custom_metrics_are_prometheus_client_types_exposed_as_before() -> None:
    counter = register_counter("test_types_total", "Typed", labels=("kind",))
    gauge = register_gauge("test_types_level", "Level")
    histogram = register_histogram("test_types_seconds", "Timed", labels=("op",), buckets=(0.5, 1.0))
    try:
        assert isinstance(counter, Counter) and isinstance(gauge, Gauge) and isinstance(histogram, Histogram)
        assert isinstance(counter.labels(kind="a"), Counter)
        counter.labels(kind="a").inc()
        with pytest.raises(ZeroDivisionError), counter.labels("exc").count_exceptions():
            1 / 0  # noqa: B018 - the exception is what is counted
        with histogram.labels(op="timed").time():
            pass
        histogram.labels(op="x").observe(0.75)
        gauge.set(7)
        gauge.dec(2)
        for bad in (-1.0, math.inf, math.nan):
            with pytest.raises(ValueError, match="counter only goes up"):
                counter.labels(kind="a").inc(bad)
        with pytest.raises(ValueError, match="NaN"):
            histogram.labels(op="x").observe(math.nan)
        with pytest.raises(ValueError, match="use .labels"):
            histogram.observe(1.0)

        metrics = Metrics(gpus=NoGpus())
        text = generate_latest(metrics.registry).decode()
        assert "_created" not in text and "_created" not in generate_openmetrics(metrics.registry).decode()
        assert value(text, "lloom_executor_test_types_total", kind="a") == 1
        assert value(text, "lloom_executor_test_types_total", kind="exc") == 1
        assert value(text, "lloom_executor_test_types_level") == 5
        assert value(text, "lloom_executor_test_types_seconds_count", op="timed") == 1
        series = [line for line in text.splitlines() if line.startswith("lloom_executor_test_types_seconds") and 'op="x"' in line]
        assert series == [  # the lines and their order as the executor wrote them before, and its own histogram does
            'lloom_executor_test_types_seconds_bucket{le="0.5",op="x"} 0.0',
            'lloom_executor_test_types_seconds_bucket{le="1.0",op="x"} 1.0',
            'lloom_executor_test_types_seconds_bucket{le="+Inf",op="x"} 1.0',
            'lloom_executor_test_types_seconds_sum{op="x"} 0.75',
            'lloom_executor_test_types_seconds_count{op="x"} 1.0',
        ]
        assert text.index("# TYPE lloom_executor_p2p_peers gauge") < text.index("# TYPE lloom_executor_test_types_total counter")
    finally:
        for metric in (counter, gauge, histogram):
            unregister_metric(metric)
    assert "test_types" not in generate_latest(Metrics(gpus=NoGpus()).registry).decode()


def test_a_running_executor_exports_every_family_it_wires(tmp_path: Path) -> None:
    """What `service.py` wires beyond the request counters: the replay guard, the ledger writer,
    connection admission, threads and the loop's tasks, read from a real node's /metrics."""
    import asyncio

    from lloom_executor.identity import load_identity
    from lloom_executor.service import ExecutorService
    from service_rig import echo_service_config

    config = echo_service_config(tmp_path)

    async def scrape_running() -> str:
        service = ExecutorService(config, load_identity(config.identity, environ={}))
        await service.start()
        try:
            assert service.metrics_server is not None and service.metrics_server.url is not None
            url = service.metrics_server.url
            async with httpx.AsyncClient(trust_env=False) as http:
                return (await http.get(url)).text
        finally:
            await service.stop()

    text = asyncio.run(scrape_running())
    assert value(text, "lloom_executor_replay_capacity") == 600_000  # replay_rate_per_sec 1000 x 600 s
    assert value(text, "lloom_executor_replay_entries") == 0
    assert value(text, "lloom_executor_replay_forced_evictions_total") == 0
    assert value(text, "lloom_executor_ledger_writable") == 1
    assert value(text, "lloom_executor_threads") >= 1 and value(text, "lloom_executor_asyncio_tasks") >= 1
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert {"lloom_executor_ledger_commits_total", "lloom_executor_ledger_write_errors_total"} <= names
    assert {"lloom_executor_handshake_timeouts_total", "lloom_executor_inbound_connections"} <= names
