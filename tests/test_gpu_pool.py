"""The `[gpu_allocation]` device pool's failures, against real OpenAI-wire servers (one per
device): a device's `BackendError` reaches the caller unchanged (same class, status and
redacted message naming that device's URL), the pool's in-flight count recovers, a call
refused before any answer goes to the other device, and the listing survives a device
that is down. Health, circuit breaking and probes are tested in test_backend_pool.py. Strategies are tested through the request path in
test_dispatch.py."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from lloom_executor.backends.base import (
    REDACTED,
    BackendServerError,
    BackendUnavailable,
    CompletionRequest,
    LlmBackend,
)
from lloom_executor.backends.openai_compat import OpenAICompatibleBackend
from lloom_executor.pipeline.gpu import DevicePool
from openai_server import OpenAIServer, echo_content, refused_url

T = TypeVar("T")
KEY = "sk-gpu-pool-0123456789SECRET"
REQUEST = CompletionRequest("test-model", "one two three")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def servers() -> Iterator[list[OpenAIServer]]:
    started = [OpenAIServer().start() for _ in range(2)]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def device(url: str) -> LlmBackend:
    return OpenAICompatibleBackend(url, api_key=KEY, max_retries=0, timeout_secs=10)


def test_a_device_error_passes_through_unchanged(servers: list[OpenAIServer]) -> None:
    servers[0].fail(500, echo_credentials=True)
    pool = DevicePool({0: device(servers[0].base_url), 1: device(servers[1].base_url)}, "round_robin")

    async def scenario() -> tuple[BaseException, str, str]:
        try:
            with pytest.raises(BackendServerError) as failed:
                await pool.complete(REQUEST)
            assert pool.in_flight == {0: 0, 1: 0}  # the failed call left the count
            second = await pool.complete(REQUEST)  # device 1
            third = await pool.complete(REQUEST)  # device 0 again, recovered
            return failed.value, second.content, third.content
        finally:
            await pool.close()

    exc, second, third = run(scenario())
    assert type(exc) is BackendServerError and exc.status == 500 and exc.attempts == 1
    assert str(exc).startswith(f"{servers[0].base_url}/chat/completions answered 500: ")
    assert KEY not in str(exc) and f"authorization={REDACTED}" in str(exc)
    assert second == third == echo_content(REQUEST.prompt)
    assert pool.calls == {0: 2, 1: 1}


def test_a_stream_fails_over_before_its_first_chunk_and_else_ends_with_the_device_error(
    servers: list[OpenAIServer],
) -> None:
    dead, also_dead = refused_url(), refused_url()
    pool = DevicePool({0: device(dead), 1: device(servers[1].base_url)}, "round_robin")
    all_dead = DevicePool({0: device(dead), 1: device(also_dead)}, "round_robin")

    async def scenario() -> tuple[str, BaseException]:
        try:
            streamed = await pool.complete_streaming(REQUEST)  # device 0 refuses: device 1 answers
            with pytest.raises(BackendUnavailable) as failed:
                await all_dead.complete_streaming(REQUEST)
            return streamed.content, failed.value
        finally:
            await pool.close()
            await all_dead.close()

    content, exc = run(scenario())
    assert content == echo_content(REQUEST.prompt)
    assert pool.calls == {0: 1, 1: 1} and pool.instances[0].retried_elsewhere == 1
    assert str(exc).startswith(f"cannot connect to {also_dead}/chat/completions")  # the second device's own error


def test_listing_survives_a_device_that_is_down(servers: list[OpenAIServer]) -> None:
    dead = refused_url()
    some_down = DevicePool({0: device(dead), 1: device(servers[1].base_url)}, "least_loaded")
    all_down = DevicePool({0: device(dead), 1: device(refused_url())}, "least_loaded")

    async def scenario() -> tuple[list[str], BaseException]:
        try:
            listed = await some_down.list_models()
            with pytest.raises(BackendUnavailable) as failed:
                await all_down.list_models()
            return listed, failed.value
        finally:
            await some_down.close()
            await all_down.close()

    listed, exc = run(scenario())
    assert listed == ["test-model", "unloaded-model", "text-embedding-test"]
    assert str(exc).startswith(f"cannot connect to {dead}/models")  # the first device's own error
