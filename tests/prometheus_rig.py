"""Real Prometheus for the tests: Debian's `prometheus` scraping a real executor loaded by the Rust peer.

Why a rig of its own: the Prometheus, rules and dashboard tests must all see what an operator
sees, which is Prometheus's view of a running node after real traffic, not our exposition text.
This module finds the Debian binaries (a test fails under CI when one is missing, and skips
locally with the reason), starts `prometheus` on a free loopback port with a short scrape and
rule interval, starts an `ExecutorService` (echo backend, metrics on loopback) on a thread's
asyncio loop, drives it with `tests/interop_peer client` (served requests and two kinds of
refusal), and waits, by polling Prometheus with a deadline, until a scrape taken after the load
is stored. `LoadedPrometheus` then carries what the clients saw, for the tests to compare with.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import interop
import real_servers
from lloom_executor.identity import load_identity
from lloom_executor.service import ExecutorService
from service_rig import echo_service_config

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "lloom-executor.rules.yml"
JOB = "lloom_executor"  # the job name the rules and the dashboard expect
SCRAPE_INTERVAL = "1s"
MODEL = "m"  # what echo_service_config serves, at 0.000001 / 0.000002 ETH per token
PRICE_IN, PRICE_OUT = 10**12, 2 * 10**12  # the same prices in wei, offered by the served clients
SERVED, TOO_CHEAP, UNKNOWN = 40, 5, 3  # requests per client kind
START_TIMEOUT_SECS = 30.0
SCRAPE_TIMEOUT_SECS = 30.0


def require_binary(name: str) -> str:
    """The path of Debian's `name`; missing: a failure under CI (CI=true installs it), a skip locally."""
    found = shutil.which(name)
    if found:
        return found
    real_servers.unavailable(f"`{name}` is not on PATH (Debian package {debian_package(name)}; .ci/run installs it)")


def debian_package(binary: str) -> str:
    return {"promtool": "prometheus"}.get(binary, binary)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], Any], what: str, timeout: float) -> Any:
    """Poll `check` (a falsy result or an httpx error means not yet) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(0.1)


class Prometheus:
    """`prometheus` as a subprocess with its TSDB and log under `workdir`; always killed on close."""

    def __init__(self, workdir: Path, scrape_targets: dict[str, str], *, honor_labels: bool = False) -> None:
        binary = require_binary("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "honor_labels": honor_labels, "static_configs": [{"targets": [target]}]}
                for job, target in scrape_targets.items()
            ],
        }
        config_file = workdir / "prometheus.yml"  # JSON is YAML: no YAML library needed
        config_file.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.http = httpx.Client(base_url=self.url, trust_env=False, timeout=10)
        try:
            wait_for(self._ready, "prometheus /-/ready", START_TIMEOUT_SECS)
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        return self.http.get("/-/ready").status_code == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector ([] when it has no data); any API error fails the test."""
        response = self.http.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {response.status_code} {body}"
        assert body["data"]["resultType"] == "vector", (expr, body["data"]["resultType"])
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float:
        """The one sample of `expr` as a float (the API's shortest round-trip decimal, so exact)."""
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def values(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def wait_value(self, expr: str, expected: float, timeout: float = SCRAPE_TIMEOUT_SECS) -> None:
        """Poll until `expr` has one sample equal to `expected` (a scrape after the load was stored)."""

        def reached() -> bool:
            result = self.query(expr)
            return len(result) == 1 and float(result[0]["value"][1]) == expected

        wait_for(reached, f"{expr} == {expected}", timeout)

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@dataclass
class LoadedPrometheus:
    """A running executor after the load, Prometheus scraping it, and what the Rust clients received."""

    prometheus: Prometheus
    metrics_url: str
    served: list[dict[str, Any]]
    refused: dict[str, int]  # refusal code -> how many signed refusals the clients provoked
    runs: list[interop.PeerRun] = field(default_factory=list)

    @property
    def instance(self) -> str:
        return self.metrics_url.removeprefix("http://").removesuffix("/metrics")

    @property
    def revenue_wei(self) -> int:
        return sum(int(r["total_cost"]) for r in self.served)

    def tokens(self, kind: str) -> int:
        return sum(int(r[f"{kind}_tokens"]) for r in self.served)


def _client(peer: Path, addr: str, *extra: str) -> interop.PeerRun:
    args = interop.client_args(addr, *extra, timeout_secs=60)
    return interop.run_peer(peer, args, timeout=90)


def drive_load(
    peer: Path, addr: str, served: int, too_cheap: int, unknown: int
) -> tuple[list[dict[str, Any]], dict[str, int], list[interop.PeerRun]]:
    """Served requests at our price, requests offering 1 wei per token, requests for a model we lack."""
    prices = ("--inbound-price", str(PRICE_IN), "--outbound-price", str(PRICE_OUT))
    runs = [
        _client(peer, addr, "--model", MODEL, "--count", str(served), "--concurrency", "8", *prices),
        _client(peer, addr, "--model", MODEL, "--count", str(too_cheap), "--inbound-price", "1", "--outbound-price", "1"),
        _client(peer, addr, "--model", "no-such-model", "--count", str(unknown), *prices),
    ]
    served_run = runs[0]
    assert served_run.returncode == 0, served_run.describe()
    answers = served_run.responses
    assert len(answers) == served and all(r["error"] is None for r in answers), served_run.describe()
    refused: dict[str, int] = {}
    for code, run, count in (("price_too_low", runs[1], too_cheap), ("unknown_model", runs[2], unknown)):
        # the wire carries the public reason, not the code: the code is what each client was built to provoke
        assert len(run.responses) == count and all(r["error"] for r in run.responses), run.describe()
        refused[code] = count
    return answers, refused, runs


@contextlib.contextmanager
def loaded_prometheus(workdir: Path, peer: Path) -> Iterator[LoadedPrometheus]:
    """The whole scene, torn down in reverse order whatever fails."""
    config = echo_service_config(workdir, gpu_allocation={"devices": [0, 1]})  # a pool of two: instance series
    loop = interop.LoopThread()
    service = ExecutorService(config, load_identity(config.identity, environ={}))
    try:
        addr = loop.run(service.start(), timeout=START_TIMEOUT_SECS)[0]
        assert service.metrics_server is not None and service.metrics_server.url is not None
        metrics_url = service.metrics_server.url
        target = metrics_url.removeprefix("http://").removesuffix("/metrics")
        prom_dir = workdir / "prometheus"
        prom_dir.mkdir()
        prometheus = Prometheus(prom_dir, {JOB: target})
        try:
            wait_for(lambda: prometheus.query(f'up{{job="{JOB}"}} == 1'), "the first scrape of the executor", SCRAPE_TIMEOUT_SECS)
            # One request of each kind first, and a scrape of it: a series that appears with its final
            # value has no earlier sample, so rate() and increase() would not see the load. Operators'
            # nodes are long-running; here the series must exist before the measured load.
            requests = f'sum(lloom_executor_requests_total{{job="{JOB}"}})'
            served, refused, runs = drive_load(peer, addr, 1, 1, 1)
            prometheus.wait_value(requests, 3)
            more_served, more_refused, more_runs = drive_load(peer, addr, SERVED - 1, TOO_CHEAP - 1, UNKNOWN - 1)
            served += more_served
            refused = {code: n + more_refused[code] for code, n in refused.items()}
            runs += more_runs
            prometheus.wait_value(requests, SERVED + TOO_CHEAP + UNKNOWN)
            yield LoadedPrometheus(prometheus, metrics_url, served, refused, runs)
        finally:
            prometheus.close()
    finally:
        with contextlib.suppress(Exception):
            loop.run(service.stop(), timeout=START_TIMEOUT_SECS)
        loop.close()


def eth(wei: int) -> float:
    """The float64 nearest to `wei` ETH: what the executor exposes (Python's int / int rounds once, correctly)."""
    value = wei / 10**18
    assert math.isfinite(value)
    return value
