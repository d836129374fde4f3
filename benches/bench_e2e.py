"""End to end: signed requests through ExecutorService + LloomClient on loopback (echo backend).

Two groups, each with our path and a baseline:

* one request round trip -- the client signs a request, sends it over real
  libp2p (TCP on 127.0.0.1, Noise, Yamux) to an `ExecutorService` (admission,
  price check, replay guard, dispatch, the echo backend, token count, signed
  answer, EIP-712 receipt, ledger row), and verifies the signed answer and
  the receipt;
* 50 requests with 8 in flight (`lloom_executor.benchmark.executor_round`,
  the code behind `lloom-executor benchmark`).

The "independent" entry of each group is **not** another library: nothing else
does an executor's job. It is the same work done directly against the backend
(`EchoBackend.complete`, same prompt, max_tokens and concurrency), i.e. the
floor that a zero-overhead executor would reach. The ratio that
`benches/report.py` prints for a group is therefore backend time / executor
time: the fraction of a request's time spent in the model rather than in the
executor's path (for the echo backend, which answers at once, almost none).
Both entries run on the same asyncio loop thread and pay the same hop from the
benchmark thread into it.

    PYTHONPATH=python pytest benches/bench_e2e.py --benchmark-only -q
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lloom_executor import service as _service  # noqa: F401  (imports libp2p, which resets its loggers)
from lloom_executor.backends.base import CompletionRequest
from lloom_executor.backends.echo import EchoBackend
from lloom_executor.benchmark import Rig, backend_round, benchmark_config, executor_round, running_rig
from lloom_executor.config import Config

MODEL = "echo-bench"
PROMPT = "Explain in a few sentences how a peer-to-peer network routes a request to a node that can answer it."
MAX_TOKENS = 64
N, CONCURRENCY = 50, 8

logging.getLogger("libp2p").setLevel(logging.CRITICAL)


class LoopThread:
    """An asyncio loop running in its own thread; `run(coro)` waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-e2e-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[LoopThread, Rig, EchoBackend]]:
    loop = LoopThread()
    tmp = tempfile.TemporaryDirectory(prefix="lloom-bench-e2e-")
    config = benchmark_config(
        Config.from_dict(
            {
                "llm_client": {"backend": "echo"},
                "models": [{"name": MODEL, "inbound_price": "0.000001", "outbound_price": "0.000002"}],
            }
        ),
        Path(tmp.name),
    )
    ctx = running_rig(config)
    rig = loop.run(ctx.__aenter__())
    backend = EchoBackend([MODEL])
    try:
        yield loop, rig, backend
    finally:
        with contextlib.suppress(Exception):
            loop.run(ctx.__aexit__(None, None, None))
        loop.close()
        tmp.cleanup()


def _price(rig: Rig) -> dict[str, str]:
    price_in, price_out = rig.price(MODEL)
    return {"inbound_price": str(price_in), "outbound_price": str(price_out)}


@pytest.mark.benchmark(group="e2e: one signed request round trip (echo backend)")
def test_round_trip_ours(benchmark, setup) -> None:
    loop, rig, _ = setup

    def one():
        return loop.run(rig.client.request(rig.peer_id, MODEL, PROMPT, max_tokens=MAX_TOKENS, **_price(rig)))

    answer = benchmark.pedantic(one, rounds=20, iterations=1, warmup_rounds=2)
    assert answer.error is None and answer.signature_valid and answer.receipt is not None and answer.receipt.valid


@pytest.mark.benchmark(group="e2e: one signed request round trip (echo backend)")
def test_round_trip_backend_alone(benchmark, setup) -> None:
    loop, _, backend = setup
    completion = benchmark.pedantic(
        lambda: loop.run(backend.complete(CompletionRequest(MODEL, PROMPT, max_tokens=MAX_TOKENS))),
        rounds=20,
        iterations=1,
        warmup_rounds=2,
    )
    assert completion.content.startswith("echo: ")


@pytest.mark.benchmark(group=f"e2e: {N} requests, {CONCURRENCY} in flight (echo backend)")
def test_50_requests_ours(benchmark, setup) -> None:
    loop, rig, _ = setup
    stats = benchmark.pedantic(
        lambda: loop.run(executor_round(rig, MODEL, PROMPT, MAX_TOKENS, N, CONCURRENCY)), rounds=3, iterations=1, warmup_rounds=1
    )
    assert stats.successes == N and stats.errors == 0
    assert stats.to_dict()["receipts_valid"] == N


@pytest.mark.benchmark(group=f"e2e: {N} requests, {CONCURRENCY} in flight (echo backend)")
def test_50_requests_backend_alone(benchmark, setup) -> None:
    loop, _, backend = setup
    stats = benchmark.pedantic(
        lambda: loop.run(backend_round(backend, MODEL, PROMPT, MAX_TOKENS, N, CONCURRENCY)),
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )
    assert stats.successes == N and stats.errors == 0
