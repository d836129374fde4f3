"""One /metrics, one peers list for a node of several workers (docs/workers.md, "One /metrics for the node").

The merge rules are checked on hand-written expositions through prometheus_client's
own parser and encoder; the node is the real `start --workers 2` command driven by
the Rust reference-style peer (several processes, so several connections, which the
kernel spreads over the workers), each worker read on its private socket, the lead's
/metrics over HTTP and the ledger's SQLite file as the record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import re
import signal
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import httpx
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

import interop
from lloom_executor.metrics.combine import Continuity, FixedFamilies, ledger_families, merge, parse_exposition
from workers_rig import client_on_each_worker, workers_node

T = TypeVar("T")
PRICE_IN, PRICE_OUT = "1000000000000", "2000000000000"

WORKER_0 = """
# TYPE lloom_executor_requests_total counter
lloom_executor_requests_total{model="m",status="success"} 3.0
lloom_executor_requests_total{model="m",status="busy"} 1.0
# TYPE lloom_executor_request_duration_seconds summary
lloom_executor_request_duration_seconds{model="m",quantile="0.5"} 0.1
lloom_executor_request_duration_seconds_sum{model="m"} 0.3
lloom_executor_request_duration_seconds_count{model="m"} 3.0
# TYPE lloom_executor_request_duration_histogram_seconds histogram
lloom_executor_request_duration_histogram_seconds_bucket{model="m",le="0.05"} 1.0
lloom_executor_request_duration_histogram_seconds_bucket{model="m",le="+Inf"} 3.0
lloom_executor_request_duration_histogram_seconds_sum{model="m"} 0.3
lloom_executor_request_duration_histogram_seconds_count{model="m"} 3.0
# TYPE lloom_executor_ledger_writable gauge
lloom_executor_ledger_writable 1.0
# TYPE lloom_executor_backend_instance_up gauge
lloom_executor_backend_instance_up{backend="b",pool_instance="0"} 1.0
# TYPE lloom_executor_gpu_utilization_percent gauge
lloom_executor_gpu_utilization_percent{device="0"} 40.0
# TYPE lloom_executor_memory_usage_bytes gauge
lloom_executor_memory_usage_bytes 100.0
# TYPE lloom_executor_queue_size gauge
lloom_executor_queue_size{priority="high"} 1.0
# TYPE lloom_executor_revenue_total counter
lloom_executor_revenue_total{currency="ETH"} 7.0
# TYPE plugin_jobs_total counter
plugin_jobs_total{kind="a"} 2.0
# TYPE plugin_jobs_created gauge
plugin_jobs_created{kind="a"} 1700000100.0
# TYPE plugin_depth gauge
plugin_depth 4.0
"""

WORKER_1 = """
# TYPE lloom_executor_requests_total counter
lloom_executor_requests_total{model="m",status="success"} 5.0
# TYPE lloom_executor_request_duration_seconds summary
lloom_executor_request_duration_seconds{model="m",quantile="0.5"} 0.2
lloom_executor_request_duration_seconds_sum{model="m"} 1.0
lloom_executor_request_duration_seconds_count{model="m"} 5.0
# TYPE lloom_executor_request_duration_histogram_seconds histogram
lloom_executor_request_duration_histogram_seconds_bucket{model="m",le="0.05"} 0.0
lloom_executor_request_duration_histogram_seconds_bucket{model="m",le="+Inf"} 5.0
lloom_executor_request_duration_histogram_seconds_sum{model="m"} 1.0
lloom_executor_request_duration_histogram_seconds_count{model="m"} 5.0
# TYPE lloom_executor_ledger_writable gauge
lloom_executor_ledger_writable 0.0
# TYPE lloom_executor_backend_instance_up gauge
lloom_executor_backend_instance_up{backend="b",pool_instance="0"} 0.0
# TYPE lloom_executor_gpu_utilization_percent gauge
lloom_executor_gpu_utilization_percent{device="0"} 40.0
# TYPE lloom_executor_memory_usage_bytes gauge
lloom_executor_memory_usage_bytes 200.0
# TYPE lloom_executor_queue_size gauge
lloom_executor_queue_size{priority="high"} 2.0
# TYPE plugin_jobs_total counter
plugin_jobs_total{kind="a"} 3.0
# TYPE plugin_jobs_created gauge
plugin_jobs_created{kind="a"} 1700000000.0
# TYPE plugin_depth gauge
plugin_depth 6.0
"""


def values(families: Iterable[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def one(families: Iterable[Metric], name: str, **labels: str) -> float:
    return values(families)[(name, tuple(sorted(labels.items())))]


def test_merge_rules_on_hand_written_expositions() -> None:
    merged = merge({0: parse_exposition(WORKER_0), 1: parse_exposition(WORKER_1)})
    # what only grows is summed per label set; a series only one worker has is kept as it is
    assert one(merged, "lloom_executor_requests_total", model="m", status="success") == 8
    assert one(merged, "lloom_executor_requests_total", model="m", status="busy") == 1
    assert one(merged, "lloom_executor_request_duration_histogram_seconds_bucket", model="m", le="0.05") == 1
    assert one(merged, "lloom_executor_request_duration_histogram_seconds_bucket", model="m", le="+Inf") == 8
    assert one(merged, "lloom_executor_request_duration_histogram_seconds_sum", model="m") == 1.3
    assert one(merged, "lloom_executor_request_duration_seconds_count", model="m") == 8
    # quantiles do not merge: one series per worker
    assert one(merged, "lloom_executor_request_duration_seconds", model="m", quantile="0.5", worker="0") == 0.1
    assert one(merged, "lloom_executor_request_duration_seconds", model="m", quantile="0.5", worker="1") == 0.2
    assert not any("quantile" in labels and "worker" not in dict(labels) for _, labels in values(merged))
    # gauges by the table: min for what must hold in every worker, max for what all see the same of, else sum
    assert one(merged, "lloom_executor_ledger_writable") == 0
    assert one(merged, "lloom_executor_backend_instance_up", backend="b", pool_instance="0") == 0
    assert one(merged, "lloom_executor_gpu_utilization_percent", device="0") == 40
    assert one(merged, "lloom_executor_memory_usage_bytes") == 300
    assert one(merged, "lloom_executor_queue_size", priority="high") == 3
    # custom families: counters summed, gauges summed, creation times the earliest
    assert one(merged, "plugin_jobs_total", kind="a") == 5
    assert one(merged, "plugin_depth") == 10
    assert one(merged, "plugin_jobs_created", kind="a") == 1700000000
    # the merged families encode and parse back as a valid exposition (the types survive)
    text = generate_latest(FixedFamilies(merged)).decode()
    again = list(text_string_to_metric_families(text))
    assert values(again) == values(merged)
    assert {f.name: f.type for f in again}["lloom_executor_requests"] == "counter"


def test_revenue_comes_from_the_ledger_exactly() -> None:
    """Ten charges of 0.1 ETH are 1.0 exactly (integer wei, one division), and the average per
    served request is per model."""
    revenue, per_request = ledger_families({"m": 10 * 10**17, "n": 3}, {"m": 10, "n": 0})
    assert one([revenue], "lloom_executor_revenue_total", currency="ETH") == 1.0
    assert values([per_request]) == {("lloom_executor_revenue_per_request", (("model", "m"),)): 0.1}


def test_counters_survive_a_silent_worker_and_a_restart() -> None:
    continuity = Continuity()

    def node(answered: dict[int, tuple[str, str]]) -> list[Metric]:
        parsed = {i: (incarnation, parse_exposition(text)) for i, (incarnation, text) in answered.items()}
        kept = continuity.kept(parsed)
        return merge({i: families for i, (_, families) in parsed.items()}, kept)

    first = node({0: ("lead", WORKER_0), 1: ("pid-a", WORKER_1)})
    assert one(first, "lloom_executor_requests_total", model="m", status="success") == 8
    silent = node({0: ("lead", WORKER_0)})  # worker 1 does not answer: its counters stay, its gauges do not
    assert one(silent, "lloom_executor_requests_total", model="m", status="success") == 8
    assert one(silent, "lloom_executor_memory_usage_bytes") == 100
    assert "lloom_executor_request_duration_seconds" not in {n for n, labels in values(silent) if ("worker", "1") in labels}
    restarted = WORKER_1.replace('status="success"} 5.0', 'status="success"} 2.0')
    after = node({0: ("lead", WORKER_0), 1: ("pid-b", restarted)})  # a new incarnation: the old one's 5 stay
    assert one(after, "lloom_executor_requests_total", model="m", status="success") == 3 + 5 + 2
    again = node({0: ("lead", WORKER_0), 1: ("pid-b", restarted)})
    assert one(again, "lloom_executor_requests_total", model="m", status="success") == 10


# -- the real node -------------------------------------------------------------------------


def private_metrics(data_dir: Path, index: int) -> list[Metric]:
    """Worker `index`'s own exposition, read on its private socket."""
    transport = httpx.HTTPTransport(uds=str(data_dir / "workers" / f"w{index}.sock"))
    with httpx.Client(transport=transport, base_url="http://worker", timeout=5) as http:
        response = http.get("/metrics")
    response.raise_for_status()
    return parse_exposition(response.text)


def requests_total(families: Iterable[Metric]) -> float:
    return sum(v for (name, _), v in values(families).items() if name == "lloom_executor_requests_total")


def scrape(url: str) -> list[Metric]:
    response = httpx.get(url, timeout=10, trust_env=False)
    assert response.status_code == 200, response.text
    return parse_exposition(response.text)


def ledger_revenue_eth(data_dir: Path) -> float:
    with sqlite3.connect(data_dir / "ledger.sqlite3") as conn:
        rows = conn.execute("SELECT total_cost FROM requests WHERE status = 'served'").fetchall()
    return sum(int(r[0]) for r in rows) / 10**18


def until_value(read: Callable[[], T], predicate: Callable[[T], bool], what: str, timeout: float = 20.0) -> T:
    """Poll `read()` until `predicate(value)`; the last value in the failure message."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout} s")
        time.sleep(0.05)


def test_two_workers_one_metrics_endpoint_and_one_peers_list(interop_peer: Path, tmp_path: Path) -> None:
    config = interop.write_operator_config(
        tmp_path,
        models=[interop.MODEL],
        metrics='enabled = true\nendpoint = "127.0.0.1:0"',
        api='enabled = true\nlisten_address = "127.0.0.1:0"',
    )
    data_dir = tmp_path / "data"
    with workers_node(config) as node:
        address = node.ready()
        metrics_url = node.wait_for(r"metrics on (http://\S+/metrics)").group(1)
        api_url = node.wait_for(r"api listening on (http://\S+)").group(1)
        assert oct((data_dir / "workers").stat().st_mode & 0o777) == "0o700"
        assert oct((data_dir / "workers" / "w1.sock").stat().st_mode & 0o777) == "0o600"

        # several rust clients at once (one connection each) until both workers have served
        answers = 0
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for batch in range(5):
                args = [
                    interop.client_args(
                        address,
                        *("--inbound-price", PRICE_IN, "--outbound-price", PRICE_OUT),
                        *("--count", "20", "--concurrency", "4", "--prompt", f"batch {batch} client {i}"),
                    )
                    for i in range(4)
                ]
                for run in pool.map(lambda a: interop.run_peer(interop_peer, a, timeout=60), args):
                    assert run.returncode == 0, run.describe() + node.output
                    assert all(r["error"] is None for r in run.responses), run.describe()
                    answers += len(run.responses)
                if all(requests_total(private_metrics(data_dir, i)) > 0 for i in (0, 1)):
                    break
        shares = [requests_total(private_metrics(data_dir, i)) for i in (0, 1)]
        assert all(share > 0 for share in shares), shares

        combined = until_value(lambda: scrape(metrics_url), lambda f: requests_total(f) >= answers, "requests_total on the lead")
        assert requests_total(combined) == answers == sum(shares)
        revenue = one(combined, "lloom_executor_revenue_total", currency="ETH")
        assert revenue > 0 and revenue == ledger_revenue_eth(data_dir)
        assert one(combined, "lloom_executor_workers") == 2
        assert one(combined, "lloom_executor_workers_reporting") == 2
        quantile_workers = {
            dict(labels).get("worker") for name, labels in values(combined) if name == "lloom_executor_request_duration_seconds"
        }
        assert quantile_workers == {"0", "1"}
        detailed = httpx.get(api_url + "/health/detailed", timeout=10, trust_env=False).json()
        assert detailed["total_requests"] == answers and detailed["active_requests"] == 0, detailed

        # the lead's peers list holds the peers of both workers, each with its worker
        async def peers_of_clients() -> tuple[dict[int, str], list[dict[str, object]]]:
            clients = await client_on_each_worker(address, node.worker_pids())
            try:
                async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
                    listed = (await http.get(api_url + "/admin/peers")).json()
                return {i: c.peer_id for i, c in clients.items()}, listed
            finally:
                for c in clients.values():
                    await c.stop()

        placed, listed = asyncio.run(peers_of_clients())
        by_peer = {p["peer_id"]: p for p in listed}
        for index, peer in placed.items():
            assert by_peer[peer]["workers"] == [index], listed

        # kill -9 worker 1: /metrics keeps answering, shows one worker reporting, and loses no count
        total = requests_total(scrape(metrics_url))
        mark = len(node.lines)
        os.kill(node.worker_pids()[1], signal.SIGKILL)
        seen_reporting: set[float] = set()

        def poll() -> float:
            families = scrape(metrics_url)
            assert requests_total(families) >= total  # never backwards
            reporting = one(families, "lloom_executor_workers_reporting")
            seen_reporting.add(reporting)
            return reporting

        until_value(poll, lambda r: r == 1, "workers_reporting while worker 1 is down", 30)
        node.wait_for(r"worker 1 is back", 90, mark)
        until_value(poll, lambda r: r == 2, "workers_reporting once worker 1 is back", 30)
        assert seen_reporting == {1, 2}
        assert requests_total(scrape(metrics_url)) == total
        assert node.stop() == 0, node.output
    assert not (data_dir / "workers" / "w0.sock").exists()


def test_one_worker_has_no_private_socket_and_its_own_metrics(tmp_path: Path) -> None:
    """N = 1 is the single process of before: no socket, no workers gauges."""
    config = interop.write_operator_config(tmp_path, models=[interop.MODEL], metrics='enabled = true\nendpoint = "127.0.0.1:0"')
    with workers_node(config, 1) as node:
        metrics_url = node.wait_for(r"metrics on (http://\S+/metrics)").group(1)
        families = scrape(metrics_url)
        assert not (tmp_path / "data" / "workers").exists()
        names = {f.name for f in families}
        assert "lloom_executor_requests" in names and "lloom_executor_workers_reporting" not in names
        assert not any(re.search(r"worker=", str(s.labels)) for f in families for s in f.samples)
        assert math.isfinite(one(families, "lloom_executor_memory_usage_bytes"))
        assert node.stop() == 0, node.output


def test_only_the_lead_pushes_the_combined_exposition(interop_peer: Path, tmp_path: Path) -> None:
    """With a Pushgateway, the node's one push (grouping: its PeerId) carries every worker's counts."""
    from test_pushgateway_real import Pushgateway

    gateway = Pushgateway(tmp_path / "pushgateway.log")
    try:
        metrics = f'enabled = true\nendpoint = "127.0.0.1:0"\npush_gateway = "{gateway.url}"\npush_interval_secs = 1'
        config = interop.write_operator_config(tmp_path, models=[interop.MODEL], metrics=metrics)
        with workers_node(config) as node:
            address = node.ready()
            peer = address.rsplit("/p2p/", 1)[1]
            args = [
                interop.client_args(address, "--inbound-price", PRICE_IN, "--outbound-price", PRICE_OUT, "--prompt", f"push {i}")
                for i in range(4)
            ]
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                runs = list(pool.map(lambda a: interop.run_peer(interop_peer, a, timeout=60), args))
            assert all(run.returncode == 0 for run in runs), [run.describe() for run in runs]

            def pushed() -> list[Metric]:
                return [f for f in parse_exposition(gateway.metrics()) if f.name.startswith("lloom_executor_") and f.samples]

            families = until_value(
                pushed,
                lambda f: (
                    requests_total(f) == 4
                    and one(f, "lloom_executor_workers_reporting", job="lloom_executor", instance=peer) == 2
                ),
                "the node's push",
                30,
            )
            assert {s.labels["instance"] for f in families for s in f.samples} == {peer}  # one grouping key: the node's
            assert node.stop() == 0, node.output
    finally:
        gateway.close()
