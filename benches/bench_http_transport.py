"""The OpenAI-compatible backend's HTTP client: CPU per call at 32 calls in flight.

Why this exists: at 32 in flight httpx's own transport (httpcore) spent 3-4 ms of CPU per call
on the serving loop -- its pool polls every pooled socket on every request -- which capped the
200 ms-backend scenario of bench_e2e.py. backends/http_transport.py keeps httpx's API over
aiohttp's pool. Side by side, against the same local OpenAI-wire server (tests/openai_server.py,
its own thread, no added latency), each entry sends CALLS chat completions, IN_FLIGHT at once,
on one uvloop loop, and reports the CPU time of the calling thread per call (`extra_info`):

* `ours: httpx over AiohttpTransport` -- what the backend uses;
* `httpx (httpcore pool)` -- httpx's default transport, the backend before;
* `aiohttp alone` -- the floor: aiohttp without httpx's request/response layer.

    PYTHONPATH=python pytest benches/bench_http_transport.py --benchmark-only -q
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import uvloop

from lloom_executor.backends.http_transport import AiohttpTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from openai_server import OpenAIServer  # noqa: E402  (the suite's OpenAI-wire server)

CALLS, IN_FLIGHT = 2000, 32
BODY = {"model": "test-model", "messages": [{"role": "user", "content": "How do peers find each other?"}], "max_tokens": 16}
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)
Call = Callable[[], Awaitable[None]]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with OpenAIServer() as server:
        yield server.base_url + "/chat/completions"


def thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


async def drive(call: Call, calls: int) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) for `calls` calls, IN_FLIGHT at once, after a warm-up."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> None:
        async with slots:
            await call()

    await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
    wall, cpu = time.perf_counter(), thread_cpu()
    await asyncio.gather(*(one() for _ in range(calls)))
    return time.perf_counter() - wall, thread_cpu() - cpu


async def with_httpx(url: str, calls: int, transport: httpx.AsyncBaseTransport | None) -> tuple[float, float]:
    async with httpx.AsyncClient(limits=LIMITS, transport=transport, trust_env=False) as client:

        async def call() -> None:
            response = await client.post(url, json=BODY)
            response.raise_for_status()
            response.json()

        return await drive(call, calls)


async def with_aiohttp(url: str, calls: int) -> tuple[float, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def call() -> None:
            async with session.post(url, json=BODY) as response:
                response.raise_for_status()
                await response.json()

        return await drive(call, calls)


def run(benchmark: Any, measure: Callable[[int], Awaitable[tuple[float, float]]]) -> None:
    calls = 40 if benchmark.disabled else CALLS
    result: tuple[float, float] = benchmark.pedantic(lambda: uvloop.run(measure(calls)), rounds=1, iterations=1)
    wall, cpu = result
    benchmark.extra_info.update(
        calls=calls, in_flight=IN_FLIGHT, calls_per_s=round(calls / wall, 1), cpu_ms_per_call=round(cpu * 1000 / calls, 3)
    )


@pytest.mark.benchmark(group="http client: chat completions, 32 in flight")
def test_ours_httpx_over_aiohttp(benchmark: Any, url: str) -> None:
    run(benchmark, lambda calls: with_httpx(url, calls, AiohttpTransport(limits=LIMITS)))


@pytest.mark.benchmark(group="http client: chat completions, 32 in flight")
def test_httpx_httpcore(benchmark: Any, url: str) -> None:
    run(benchmark, lambda calls: with_httpx(url, calls, None))


@pytest.mark.benchmark(group="http client: chat completions, 32 in flight")
def test_aiohttp_alone(benchmark: Any, url: str) -> None:
    run(benchmark, lambda calls: with_aiohttp(url, calls))
