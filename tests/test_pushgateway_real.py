"""`[metrics] push_gateway` against Debian's `prometheus-pushgateway`: what the gateway exposes is
what the executor serves.

An `ExecutorService` (echo backend) configured to push every second to a real Pushgateway is
loaded by the Rust peer (served requests and price refusals). Once the gateway holds a push
taken after the load (polled, with a deadline), the executor's /metrics and the gateway's
/metrics are read back to back and parsed with prometheus_client's parser: every
`lloom_executor_*` family has the same type and every sample the same value, under the grouping
labels the executor pushes with (job "lloom_executor", instance = its PeerId). Only the three
process readings that change by themselves between two reads (RSS, threads, asyncio tasks) are
compared by presence, not value. The gateway keeps the last push after the node stops.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import interop
from lloom_executor.identity import load_identity
from lloom_executor.service import ExecutorService
from prometheus_rig import MODEL, PRICE_IN, PRICE_OUT, free_port, require_binary, wait_for
from service_rig import echo_service_config

SERVED, TOO_CHEAP = 12, 3
VOLATILE = {"lloom_executor_memory_usage_bytes", "lloom_executor_threads", "lloom_executor_asyncio_tasks"}
GROUPING = ("job", "instance")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Pushgateway:
    """`prometheus-pushgateway` on a free loopback port, in memory only; always killed on close."""

    def __init__(self, log: Path) -> None:
        binary = require_binary("prometheus-pushgateway")
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: memory only here
            [binary, f"--web.listen-address={self.url.removeprefix('http://')}", "--persistence.file=", "--log.level=warn"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.http = httpx.Client(base_url=self.url, trust_env=False, timeout=10)
        try:
            wait_for(self._ready, "pushgateway /-/ready", 30)
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus-pushgateway exited with {self.proc.returncode}"
        return self.http.get("/-/ready").status_code == 200

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Pushgateway]:
    gw = Pushgateway(tmp_path / "pushgateway.log")
    try:
        yield gw
    finally:
        gw.close()


def ours(text: str, *, drop: tuple[str, ...] = ()) -> tuple[Samples, dict[str, str]]:
    """The lloom_executor_* samples ({(name, labels without `drop`): value}) and family types of an exposition."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("lloom_executor_"):
            continue
        if family.samples:  # a family with no sample yet is only HELP/TYPE lines, which the gateway drops
            types[family.name] = family.type
        for s in family.samples:
            labels = frozenset((k, number(k, v)) for k, v in s.labels.items() if k not in drop)
            samples[(s.name, labels)] = s.value
    return samples, types


def number(label: str, value: str) -> str:
    """Bucket bounds and quantiles as numbers: the executor writes le="10.0", the gateway (Go) le="10"."""
    return repr(float(value)) if label in ("le", "quantile") else value


def grouping(text: str) -> set[tuple[str, str]]:
    """The (job, instance) label pairs of the lloom_executor_* samples on the gateway."""
    return {
        (s.labels.get("job", ""), s.labels.get("instance", ""))
        for family in text_string_to_metric_families(text)
        if family.name.startswith("lloom_executor_")
        for s in family.samples
    }


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_the_gateway_exposes_what_the_executor_serves(tmp_path: Path, gateway: Pushgateway, interop_peer: Path) -> None:
    config = echo_service_config(
        tmp_path,
        metrics={"enabled": True, "endpoint": "127.0.0.1:0", "push_gateway": gateway.url, "push_interval_secs": 1},
    )
    loop = interop.LoopThread()
    service = ExecutorService(config, load_identity(config.identity, environ={}))
    try:
        addr = loop.run(service.start(), timeout=30)[0]
        assert service.metrics_server is not None and service.metrics_server.url is not None
        metrics_url = service.metrics_server.url
        prices = ("--inbound-price", str(PRICE_IN), "--outbound-price", str(PRICE_OUT))
        served = interop.run_peer(
            interop_peer, interop.client_args(addr, "--model", MODEL, "--count", str(SERVED), "--concurrency", "4", *prices)
        )
        assert served.returncode == 0 and len(served.responses) == SERVED, served.describe()
        cheap = interop.run_peer(
            interop_peer,
            interop.client_args(
                addr, "--model", MODEL, "--count", str(TOO_CHEAP), "--inbound-price", "1", "--outbound-price", "1"
            ),
        )
        assert len(cheap.responses) == TOO_CHEAP and all(r["error"] for r in cheap.responses), cheap.describe()

        def pushed_after_load() -> bool:
            samples, _ = ours(gateway.metrics(), drop=GROUPING)
            key = ("lloom_executor_requests_total", frozenset({("model", MODEL), ("status", "price_too_low")}))
            return samples.get(key) == TOO_CHEAP

        wait_for(pushed_after_load, "a push taken after the load", 30)
        # The refusals' ledger rows are committed up to a second after their answers (a
        # `ledger_commits` tick may fall between a push and our read): compare once a push
        # holds everything the executor serves, polling with a deadline.
        last: dict[str, Any] = {}

        def gateway_equals_executor() -> bool:
            served_text = httpx.get(metrics_url, trust_env=False).text
            pushed_text = gateway.metrics()
            executor_samples, executor_types = ours(served_text)
            gateway_samples, gateway_types = ours(pushed_text, drop=GROUPING)
            differ = {
                key: (executor_samples.get(key), gateway_samples.get(key))
                for key in set(executor_samples) | set(gateway_samples)
                if key[0] not in VOLATILE
                and (
                    key not in executor_samples
                    or key not in gateway_samples
                    or not same(executor_samples[key], gateway_samples[key])
                )
            }
            last.update(pushed_text=pushed_text, gateway_samples=gateway_samples, differ=differ)
            last.update(types_equal=gateway_types == executor_types, keys_equal=set(gateway_samples) == set(executor_samples))
            return not differ and gateway_types == executor_types and set(gateway_samples) == set(executor_samples)

        try:
            wait_for(gateway_equals_executor, "the gateway to expose what the executor serves", 30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: last difference {last.get('differ')}") from None
        assert grouping(last["pushed_text"]) == {("lloom_executor", service.identity.peer_id)}
        gateway_samples = last["gateway_samples"]
        success = ("lloom_executor_requests_total", frozenset({("model", MODEL), ("status", "success")}))
        assert gateway_samples[success] == SERVED
        revenue = ("lloom_executor_revenue_total", frozenset({("currency", "ETH")}))
        assert gateway_samples[revenue] == sum(int(r["total_cost"]) for r in served.responses) / 10**18
    finally:
        loop.run(service.stop(), timeout=30)
        loop.close()

    # the final push at stop stays on the gateway: a short-lived node's last numbers are not lost
    after_stop, _ = ours(gateway.metrics(), drop=GROUPING)
    assert after_stop[success] == SERVED
