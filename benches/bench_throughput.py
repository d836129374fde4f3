"""Throughput under load, driven by the Rust reference-style client (`tests/interop_peer`).

The tests (tests/test_interop_rust.py, tests/test_load.py) check that every answer of
these scenarios is right; how fast they go is measured here, so the tests assert only
what must hold and the numbers land in the benchmark report. Two groups:

* rust client, 100 requests in flight over one connection -- the Rust client against
  our executor node (P2PNode + the request handler + the echo backend) and, as the
  independent entry, against the Rust reference-style executor (`interop-peer
  executor`: rust-libp2p 0.56 answering the same signed echo). `report.py` prints
  theirs / ours. A round is one client process: its start and its connection are in
  the time for both entries alike; `extra_info` holds the client's own count, from
  its first request to its last answer.
* e2e: 200 requests from 4 Rust clients (64 in flight) against a configured
  `ExecutorService` with `max_concurrent_requests = 32` in front of an OpenAI-wire
  server answering after 200 ms -- and, as the floor a zero-overhead executor would
  reach, the same 200 chat calls sent straight to that server, 32 at a time (httpx).
  The bound is 200 x 0.2 s / 32 = 1.25 s.

Needs cargo (the Rust peer is built on first use, like the test suite does;
LLOOM_INTEROP_TARGET_DIR reuses a cache).

    PYTHONPATH=python pytest benches/bench_throughput.py --benchmark-only -q
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import interop  # (the suite's harness: builds and runs the Rust peer)
from lloom_executor import _native
from lloom_executor import service as _service  # noqa: F401  (imports libp2p, which resets its loggers)
from lloom_executor.backends import EchoBackend
from lloom_executor.config import Config, ModelConfig, NetworkConfig, RequestHandlingConfig
from lloom_executor.identity import load_identity
from lloom_executor.p2p.node import P2PNode
from lloom_executor.service import ExecutorService
from lloom_executor.serving import build_request_handler
from openai_server import CHAT_PATH, OpenAIServer

logging.getLogger("libp2p").setLevel(logging.CRITICAL)

MODEL = interop.MODEL
PROMPT = "Hello from interop-peer"
IN_PRICE, OUT_PRICE = "500000000000000", "1000000000000000"  # what the client offers, wei per token
IN_FLIGHT = 100

LOAD_CLIENTS, LOAD_PER_CLIENT, LOAD_CLIENT_CONCURRENCY = 4, 50, 16
LOAD_TOTAL = LOAD_CLIENTS * LOAD_PER_CLIENT
BACKEND_LATENCY, MAX_CONCURRENT = 0.2, 32
LOAD_PRICE_IN, LOAD_PRICE_OUT = 10**12, 2 * 10**12  # the configured 0.000001 / 0.000002 ETH per token


@pytest.fixture(scope="module")
def peer_binary() -> Path:
    return interop.interop_peer_binary()


@pytest.fixture(scope="module")
def loop() -> Iterator[interop.LoopThread]:
    thread = interop.LoopThread()
    try:
        yield thread
    finally:
        thread.close()


def client_round(binary: Path, addr: str, *args: str, timeout_secs: int = 90) -> interop.PeerRun:
    """One Rust client process to completion; it must have had every answer."""
    run = interop.run_peer(binary, interop.client_args(addr, *args, timeout_secs=timeout_secs), timeout=timeout_secs + 20)
    assert run.returncode == 0, run.describe()
    summary = run.summary
    assert summary["failed"] == 0 and summary["ok"] == summary["requested"], run.describe()
    assert all(r["signature_valid"] and r["error"] is None for r in run.responses), run.describe()
    return run


def in_flight_round(binary: Path, addr: str) -> interop.PeerRun:
    return client_round(
        binary,
        addr,
        "--count",
        str(IN_FLIGHT),
        "--concurrency",
        str(IN_FLIGHT),
        "--prompt",
        PROMPT,
        "--inbound-price",
        IN_PRICE,
        "--outbound-price",
        OUT_PRICE,
        timeout_secs=60,
    )


def record(benchmark: Any, run: interop.PeerRun) -> None:
    """The client's own timing of the last round, beside pytest-benchmark's wall time."""
    benchmark.extra_info["client_elapsed_ms"] = run.summary["elapsed_ms"]
    benchmark.extra_info["client_requests_per_sec"] = run.summary["requests_per_sec"]


# -- 100 requests in flight over one connection ------------------------------------------------------
@pytest.fixture(scope="module")
def our_node(loop: interop.LoopThread) -> Iterator[str]:
    """Our executor node with the echo backend, as the interop tests run it; yields its address."""
    key = _native.PrivateKey.generate()
    models = [ModelConfig(MODEL, inbound_price_wei=interop.INBOUND_PRICE_WEI, outbound_price_wei=interop.OUTBOUND_PRICE_WEI)]
    handler = build_request_handler(key, models, EchoBackend([MODEL]))
    node = P2PNode(key, NetworkConfig(listen_address=("/ip4/127.0.0.1/tcp/0",)), RequestHandlingConfig(), handler)
    addrs = loop.run(node.start(), timeout=40)
    try:
        yield next(a for a in addrs if a.startswith("/ip4/127.0.0.1/"))
    finally:
        loop.run(node.stop(), timeout=40)


GROUP_IN_FLIGHT = f"rust client: {IN_FLIGHT} requests in flight over one connection (echo)"


@pytest.mark.benchmark(group=GROUP_IN_FLIGHT)
def test_in_flight_ours(benchmark: Any, peer_binary: Path, our_node: str) -> None:
    run = benchmark.pedantic(in_flight_round, args=(peer_binary, our_node), rounds=3, iterations=1, warmup_rounds=1)
    record(benchmark, run)


@pytest.mark.benchmark(group=GROUP_IN_FLIGHT)
def test_in_flight_rust_reference(benchmark: Any, peer_binary: Path) -> None:
    with interop.rust_executor(peer_binary) as executor:
        run = benchmark.pedantic(in_flight_round, args=(peer_binary, executor.addr), rounds=3, iterations=1, warmup_rounds=1)
    record(benchmark, run)


# -- 200 requests from 4 clients, 32 backend slots, 200 ms backend ---------------------------------------
@pytest.fixture(scope="module")
def slow_backend() -> Iterator[OpenAIServer]:
    with OpenAIServer(latency=BACKEND_LATENCY) as server:
        yield server


@pytest.fixture(scope="module")
def load_executor(loop: interop.LoopThread, slow_backend: OpenAIServer) -> Iterator[str]:
    """An `ExecutorService` configured as an operator would, in front of the slow backend."""
    with tempfile.TemporaryDirectory(prefix="lloom-bench-load-") as tmp:
        key = _native.PrivateKey.generate()
        for name in ("identity_key", "eth_key"):
            path = Path(tmp) / name
            path.write_text(key.to_hex())
            path.chmod(0o600)
        config = Config.from_dict(
            {
                "network": {
                    "listen_address": "/ip4/127.0.0.1/tcp/0",
                    "protocols": {"enable_mdns": False, "enable_autonat": False, "enable_relay": False},
                },
                "identity": {"private_key_path": f"{tmp}/identity_key", "ethereum_private_key_path": f"{tmp}/eth_key"},
                "llm_client": {"backend": "lmstudio", "base_url": slow_backend.base_url, "timeout_secs": 30, "max_retries": 0},
                "models": [{"name": "test-model", "inbound_price": "0.000001", "outbound_price": "0.000002"}],
                "request_handling": {"max_concurrent_requests": MAX_CONCURRENT},
                "metrics": {"enabled": False},
                "api": {"enabled": False},
                "storage": {"data_dir": f"{tmp}/data"},
            }
        )
        service = ExecutorService(config, load_identity(config.identity, environ={}))
        addr = loop.run(service.start(), timeout=60)[0]
        try:
            yield addr
        finally:
            with contextlib.suppress(Exception):
                loop.run(service.stop(), timeout=60)


def load_round(binary: Path, addr: str) -> list[interop.PeerRun]:
    def one(n: int) -> interop.PeerRun:
        return client_round(
            binary,
            addr,
            "--model",
            "test-model",
            "--count",
            str(LOAD_PER_CLIENT),
            "--concurrency",
            str(LOAD_CLIENT_CONCURRENCY),
            "--prompt",
            f"load {n}",
            "--inbound-price",
            str(LOAD_PRICE_IN),
            "--outbound-price",
            str(LOAD_PRICE_OUT),
        )

    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        return list(pool.map(one, range(LOAD_CLIENTS)))


async def backend_alone_round(base_url: str) -> int:
    """The same number of chat calls straight to the backend, `MAX_CONCURRENT` at a time."""
    slots = asyncio.Semaphore(MAX_CONCURRENT)
    limits = httpx.Limits(max_connections=MAX_CONCURRENT, max_keepalive_connections=MAX_CONCURRENT)
    async with httpx.AsyncClient(base_url=base_url.removesuffix("/v1"), limits=limits, timeout=30) as http:

        async def one(i: int) -> None:
            async with slots:
                body = {"model": "test-model", "messages": [{"role": "user", "content": f"load {i}"}]}
                reply = await http.post(CHAT_PATH, json=body)
                reply.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(LOAD_TOTAL)))
    return LOAD_TOTAL


GROUP_LOAD = (
    f"e2e: {LOAD_TOTAL} requests from {LOAD_CLIENTS} rust clients, {LOAD_CLIENTS * LOAD_CLIENT_CONCURRENCY} in flight, "
    f"{MAX_CONCURRENT} backend slots ({BACKEND_LATENCY * 1000:.0f} ms backend)"
)


@pytest.mark.benchmark(group=GROUP_LOAD)
def test_load_executor(benchmark: Any, peer_binary: Path, load_executor: str) -> None:
    runs = benchmark.pedantic(load_round, args=(peer_binary, load_executor), rounds=2, iterations=1)
    assert sum(run.summary["ok"] for run in runs) == LOAD_TOTAL


@pytest.mark.benchmark(group=GROUP_LOAD)
def test_load_backend_alone(benchmark: Any, loop: interop.LoopThread, slow_backend: OpenAIServer) -> None:
    done = benchmark.pedantic(lambda: loop.run(backend_alone_round(slow_backend.base_url), timeout=60), rounds=2, iterations=1)
    assert done == LOAD_TOTAL
