"""Several backends and instance pools against real OpenAI-wire servers on loopback ports.

Each scenario builds the backends from a config (`build_backends`, what the service
does) and kills, hangs or locks out real servers: an instance killed mid-load loses no
request that had not started answering and is probed back in once restarted; a hung
one times out at the backend's timeout and is taken out; a backend answering 401
refuses its own models with a signed error while the others are served; a stream is
never retried once it produced output; per-backend bounds and limits hold, charged
once across a failover. Waits poll for their condition (`until`), never sleep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest

from dispatch_rig import CTX, answer, build, frame, models
from lloom_executor.backends.base import (
    BackendAuthError,
    BackendProtocolError,
    BackendTimeout,
    CompletionRequest,
    UsageLimitExceeded,
)
from lloom_executor.backends.from_config import build_backends
from lloom_executor.backends.pool import InstancePool
from lloom_executor.backends.routing import BackendSet
from lloom_executor.config import Config
from lloom_executor.config.schema import ModelDiscoveryConfig
from lloom_executor.metrics import Metrics
from lloom_executor.model_discovery import DiscoverySet
from openai_server import OpenAIServer, echo_content, refused_url
from service_rig import samples, until

PAID_MODELS = [{"id": "gpt-x", "object": "model", "state": "loaded"}]


@pytest.fixture
def servers() -> Iterator[list[OpenAIServer]]:
    started = [OpenAIServer().start() for _ in range(3)]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def pool_config(urls: list[str], **llm: Any) -> dict[str, Any]:
    client = {"backend": "lmstudio", "base_urls": urls, "max_retries": 0, "timeout_secs": 5, "failure_threshold": 1}
    return {"llm_client": {**client, **llm}, "models": [{"name": "test-model"}]}


def pool_of(backends: BackendSet, name: str = "llm_client") -> InstancePool:
    pool = backends.entries[name].pool
    assert pool is not None
    return pool


def ask(prompt: str, model: str = "test-model") -> CompletionRequest:
    return CompletionRequest(model, prompt)


def test_an_instance_killed_mid_load_loses_no_request_and_is_probed_back_in(
    servers: list[OpenAIServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lloom_executor.backends.pool")
    a, b = servers[0], servers[1]
    a.latency = b.latency = 0.3  # calls stay in flight long enough to be cut
    config = Config.from_dict(pool_config([a.base_url, b.base_url], health_check_interval_secs=0.1))
    backends = build_backends(config)
    pool = pool_of(backends)
    metrics = Metrics()
    metrics.watch_backends(backends.health)
    restarted: list[OpenAIServer] = []

    async def scenario() -> tuple[list[str], list[str], dict[Any, float]]:
        await backends.start()
        try:
            load = [asyncio.create_task(backends.complete(ask(f"load {i}"))) for i in range(8)]
            await until(lambda: pool.instances[1].in_flight >= 2, "calls in flight on instance 1")
            port = b.port
            await asyncio.to_thread(b.stop)  # killed with calls in flight, before any answer byte
            answered = [c.content for c in await asyncio.gather(*load)]
            assert not pool.instances[1].up
            exposition = samples(generate_latest(metrics.registry).decode())
            calls_while_out = pool.instances[1].calls
            during = [c.content for c in await asyncio.gather(*(backends.complete(ask(f"during {i}")) for i in range(4)))]
            assert pool.instances[1].calls == calls_while_out  # taken out: not even a connect attempt
            restarted.append(OpenAIServer(port=port).start())
            await until(lambda: pool.instances[1].up, "instance 1 probed back in")
            for i in range(4):
                await backends.complete(ask(f"after {i}"))
            return answered, during, exposition
        finally:
            await backends.close()

    try:
        answered, during, exposition = asyncio.run(scenario())
        assert answered == [echo_content(f"load {i}") for i in range(8)]
        assert during == [echo_content(f"during {i}") for i in range(4)]
        assert pool.instances[1].retried_elsewhere >= 1 and pool.instances[1].failures >= 1
        assert len(restarted[0].chat_requests) == 2  # round robin with both up again: every other call
        down = {"backend": "llm_client", "pool_instance": b.base_url}
        assert exposition[("lloom_executor_backend_instance_up", frozenset(down.items()))] == 0
        assert exposition[("lloom_executor_backend_instance_up", frozenset({**down, "pool_instance": a.base_url}.items()))] == 1
        assert exposition[("lloom_executor_backend_instance_failures_total", frozenset(down.items()))] >= 1
        messages = [r.getMessage() for r in caplog.records]
        assert any(f"instance {b.base_url} taken out after 1 failure(s)" in m for m in messages)
        assert any(f"instance {b.base_url} is back in" in m for m in messages)
    finally:
        for server in restarted:
            server.stop()


def test_a_hung_instance_times_out_at_the_backend_timeout_and_stays_out_while_it_hangs(servers: list[OpenAIServer]) -> None:
    hung, healthy = servers[0], servers[1]
    hung.hang(path="*")  # chat and the model listing (the probe) alike
    timeout = 0.5
    config = Config.from_dict(
        pool_config([hung.base_url, healthy.base_url], timeout_secs=timeout, health_check_interval_secs=0.1)
    )
    backends = build_backends(config)
    pool = pool_of(backends)

    async def scenario() -> tuple[float, list[str]]:
        await backends.start()
        try:
            started = time.monotonic()
            with pytest.raises(BackendTimeout):
                await backends.complete(ask("first"))  # instance 0 first (round robin)
            waited = time.monotonic() - started
            assert not pool.instances[0].up
            rest = [(await backends.complete(ask(f"next {i}"))).content for i in range(3)]
            await until(lambda: pool.instances[0].failures >= 2, "a probe of the hung instance failed too")
            assert not pool.instances[0].up
            hung.clear()
            await until(lambda: pool.instances[0].up, "back in once it answers")
            return waited, rest
        finally:
            await backends.close()

    waited, rest = asyncio.run(scenario())
    assert timeout <= waited < timeout + 2.0
    assert rest == [echo_content(f"next {i}") for i in range(3)]
    assert [r.json["messages"][-1]["content"] for r in healthy.chat_requests] == ["next 0", "next 1", "next 2"]


def test_output_already_produced_is_never_retried(servers: list[OpenAIServer]) -> None:
    config = Config.from_dict(pool_config([servers[0].base_url, servers[1].base_url], failure_threshold=3))
    backends = build_backends(config)
    servers[0].drop_mid_stream(after_chunks=2)  # the role chunk, then "echo:", then the connection drops
    servers[1].truncate(after_bytes=20)  # a non-stream answer whose body is cut

    async def scenario() -> tuple[list[str], BaseException, BaseException]:
        got: list[str] = []
        try:
            with pytest.raises(BackendProtocolError) as streamed:
                async with backends.stream(ask("one two three")) as stream:
                    async for delta in stream:
                        got.append(delta)
            with pytest.raises(BackendProtocolError) as whole:
                await backends.complete(ask("four five"))  # instance 1 now: its head arrived, then the cut
            return got, streamed.value, whole.value
        finally:
            await backends.close()

    got, _, _ = asyncio.run(scenario())
    assert got == ["echo:"]
    assert len(servers[0].chat_requests) == 1 and len(servers[1].chat_requests) == 1  # neither went elsewhere
    pool = pool_of(backends)
    assert [i.retried_elsewhere for i in pool.instances.values()] == [0, 0]


def test_models_go_to_their_backends_and_a_401_refuses_only_its_own(servers: list[OpenAIServer]) -> None:
    local = servers[0]
    paid = [OpenAIServer(PAID_MODELS, api_key="sk-right").start() for _ in range(2)]
    try:
        config = Config.from_dict(
            {
                "llm_client": {"backend": "lmstudio", "base_url": local.base_url, "max_retries": 0},
                "llm_backends": [
                    {
                        "name": "paid",
                        "backend": "openai",
                        "base_urls": [p.base_url for p in paid],
                        "api_key": "sk-wrong",
                        "max_retries": 0,
                        "failure_threshold": 1,
                    }
                ],
                "models": [{"name": "test-model"}, {"name": "gpt-x", "backend": "paid"}],
            }
        )
        backends = build_backends(config)

        async def scenario() -> list[Any]:
            handler = build(backends, served=models("test-model", "gpt-x"), queued=False)
            try:
                out = []
                for model, prompt in [("gpt-x", "a"), ("test-model", "b"), ("gpt-x", "c"), ("test-model", "d")]:
                    out.append(answer(await handler(frame(model, prompt), CTX)))
                with pytest.raises(BackendAuthError):
                    await backends.complete(ask("e", "gpt-x"))
                return out
            finally:
                await backends.close()

        refused_a, served_b, refused_c, served_d = asyncio.run(scenario())
        assert served_b.error is None and served_b.content == echo_content("b")
        assert served_d.error is None and served_d.content == echo_content("d")
        for refused in (refused_a, refused_c):
            assert refused.content == "" and refused.error == "the backend failed on this request"
        assert [r.json["model"] for r in local.chat_requests] == ["test-model", "test-model"]
        assert sum(len(p.chat_requests) for p in paid) == 3 and all(r.bearer == "sk-wrong" for p in paid for r in p.chat_requests)
        assert all(i.up for i in pool_of(backends, "paid").instances.values())  # a wrong key is not an instance fault
    finally:
        for server in paid:
            server.stop()


def test_per_backend_bound_and_limits_charge_once_across_a_failover(servers: list[OpenAIServer]) -> None:
    bounded, local = servers[0], servers[1]
    bounded.latency = 0.1
    for server in servers:
        server.strict_models = False  # any model name is answered
    dead = refused_url()
    config = Config.from_dict(
        {
            "llm_client": {"backend": "lmstudio", "base_url": local.base_url, "max_retries": 0},
            "llm_backends": [
                {"name": "one-at-a-time", "backend": "lmstudio", "base_url": bounded.base_url, "max_concurrent_requests": 1},
                {
                    "name": "metered",
                    "backend": "lmstudio",
                    "base_urls": [dead, servers[2].base_url],
                    "max_retries": 0,
                    "limits": {"max_requests_per_minute": 2},
                },
            ],
            "models": [
                {"name": "test-model"},
                {"name": "bounded-model", "backend": "one-at-a-time"},
                {"name": "metered-model", "backend": "metered"},
            ],
        }
    )
    backends = build_backends(config)

    async def scenario() -> tuple[list[str], BaseException, str]:
        try:
            await asyncio.gather(*(backends.complete(ask(f"b{i}", "bounded-model")) for i in range(3)))
            metered = [(await backends.complete(ask(f"m{i}", "metered-model"))).content for i in range(2)]
            with pytest.raises(UsageLimitExceeded) as limited:
                await backends.complete(ask("m2", "metered-model"))
            other = (await backends.complete(ask("free"))).content  # [llm_client] has no limit
            return metered, limited.value, other
        finally:
            await backends.close()

    metered, limited, other = asyncio.run(scenario())
    assert max(n.get("bounded-model", 0) for _, n in bounded.in_flight_at_starts()) == 1
    assert len(bounded.chat_requests) == 3
    # both metered calls were refused by the dead instance (still in: 2 failures < the default threshold of 3)
    # and served by the other: one admission each, not two, so the third call is the one over the limit
    assert metered == [echo_content("m0"), echo_content("m1")] and limited.limit == "max_requests_per_minute"
    assert pool_of(backends, "metered").instances[0].retried_elsewhere == 2
    assert other == echo_content("free")


def test_discovery_per_backend_withdraws_only_the_models_of_a_backend_that_went_away(servers: list[OpenAIServer]) -> None:
    local, paid = servers[0], OpenAIServer(PAID_MODELS).start()
    config = Config.from_dict(
        {
            "llm_client": {"backend": "lmstudio", "base_url": local.base_url, "max_retries": 0},
            "llm_backends": [{"name": "paid", "backend": "lmstudio", "base_url": paid.base_url, "max_retries": 0}],
            "models": [{"name": "test-model"}, {"name": "gpt-x", "backend": "paid"}],
        }
    )
    backends = build_backends(config)
    changes: list[list[str]] = []

    async def on_change(served: list[Any]) -> None:
        changes.append([m.name for m in served])

    members = {
        name: (entry.serving, [m for m in config.models if backends.backend_of(m.name) == name])
        for name, entry in backends.entries.items()
    }
    discovery = DiscoverySet(
        members, ModelDiscoveryConfig(enabled=True), on_change, initial=[], interval=0.05, withdraw_after_failures=1
    )

    async def scenario() -> None:
        discovery.start()
        try:
            await until(lambda: changes and changes[-1] == ["test-model", "gpt-x"], "both served")
            await asyncio.to_thread(paid.stop)
            await until(lambda: changes[-1] == ["test-model"], "only the paid backend's model withdrawn")
        finally:
            await discovery.stop()
            await backends.close()

    try:
        asyncio.run(scenario())
    finally:
        paid.stop()
    assert discovery.members["llm_client"].backend_status == "connected"
    assert discovery.members["paid"].backend_status == "disconnected"


def test_the_backends_of_a_command_probe_a_taken_out_instance_back_in(servers: list[OpenAIServer]) -> None:
    """`test-backend`, `models list` and `benchmark` use `running_backends`: its pools probe as in
    `start`, so an instance that failed during a long command comes back within it."""
    from lloom_executor.backends.from_config import running_backends

    a, b = servers[0], servers[1]
    port = b.port
    b.stop()
    config = Config.from_dict(pool_config([a.base_url, b.base_url], health_check_interval_secs=0.1))
    restarted: list[OpenAIServer] = []

    async def scenario() -> list[str]:
        async with running_backends(config) as backends:
            pool = pool_of(backends)
            first = [(await backends.complete(ask(f"first {i}"))).content for i in range(2)]
            assert not pool.instances[1].up  # refused, retried on instance 0, taken out
            restarted.append(OpenAIServer(port=port).start())
            await until(lambda: pool.instances[1].up, "instance 1 probed back in by the command's pool")
            return first

    try:
        assert asyncio.run(scenario()) == [echo_content(f"first {i}") for i in range(2)]
    finally:
        for server in restarted:
            server.stop()
