"""`[model_discovery]` (model_discovery.py) end to end: a real ExecutorService on loopback with the
LM Studio backend pointed at the OpenAI wire test server, discovery every 0.2 s, real signed
requests from `LloomClient`, and gossip `Update`s seen by the client's own network view."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pytest

from lloom_executor import _native
from lloom_executor.backends.base import BackendUnavailable, Completion, CompletionRequest, LlmBackend, ModelInfo
from lloom_executor.client import LloomClient
from lloom_executor.config import (
    ApiConfig,
    Config,
    LlmClientConfig,
    MetricsConfig,
    ModelConfig,
    NetworkConfig,
    ProtocolsConfig,
)
from lloom_executor.config.schema import ModelDiscoveryConfig
from lloom_executor.identity import Identity
from lloom_executor.model_discovery import CONNECTED, DISCONNECTED, ModelDiscovery
from lloom_executor.service import ExecutorService
from openai_server import DEFAULT_MODELS, OpenAIServer, refused_url
from service_rig import until

INTERVAL = 0.2
PRICE_IN, PRICE_OUT = 10**12, 2 * 10**12


def llm(model_id: str, state: str = "loaded", type_: str = "llm") -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "type": type_,
        "publisher": "lloom",
        "arch": "llama",
        "state": state,
        "max_context_length": 4096,
    }


def make_config(base_url: str, models: list[str], *, advertise: bool = True) -> Config:
    return Config(
        network=NetworkConfig(
            listen_address=("/ip4/127.0.0.1/tcp/0",),
            protocols=ProtocolsConfig(
                enable_mdns=False, enable_kad=False, enable_gossipsub=True, enable_autonat=False, enable_relay=False
            ),
        ),
        llm_client=LlmClientConfig(backend="lmstudio", base_url=base_url, max_retries=0, timeout_secs=5),
        models=tuple(ModelConfig(m, inbound_price_wei=PRICE_IN, outbound_price_wei=PRICE_OUT) for m in models),
        model_discovery=ModelDiscoveryConfig(enabled=True, refresh_interval_secs=1, advertise_models=advertise),
        metrics=MetricsConfig(enabled=False),
        api=ApiConfig(enabled=False),
    )


def identity() -> Identity:
    key = _native.PrivateKey.generate()
    return Identity(p2p_key=key, eth_key=key, source="test")


async def published(service: ExecutorService) -> dict[str, int]:
    async def read(rt) -> dict[str, int]:
        return dict(rt.services["gossip"].published)

    return await service.node.call(read)


@contextlib.asynccontextmanager
async def running(config: Config):
    service = ExecutorService(
        config,
        identity(),
        heartbeat_secs=2.0,
        ping_interval_secs=30.0,
        discovery_options={"interval": INTERVAL, "poll_timeout": 5},
    )
    addrs = await service.start()
    try:
        yield service, addrs[0]
    finally:
        discovery = getattr(service, "discovery", None)
        if discovery is not None:
            await discovery.stop()
        await service.stop()


async def ask(client: LloomClient, service: ExecutorService, model: str, prompt: str = "hello there"):
    return await client.request(
        service.identity.peer_id,
        model,
        prompt,
        max_tokens=16,
        inbound_price=str(PRICE_IN),
        outbound_price=str(PRICE_OUT),
        timeout=10,
    )


async def client_view(client: LloomClient, peer_id: str) -> tuple[str, ...] | None:
    for info in await client.executors():
        if info.peer_id == peer_id:
            return info.models
    return None


# -- the served set follows the backend -----------------------------------------------------------
def test_models_appear_and_disappear_with_the_backend_listing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lloom_executor.model_discovery")
    listing = [llm("test-model"), llm("slow-model", "not-loaded"), llm("extra-model"), llm("embed-model", type_="embeddings")]
    with OpenAIServer(models=listing) as server:

        async def scenario() -> None:
            config = make_config(server.base_url, ["test-model", "slow-model", "absent-model"])
            async with running(config) as (service, addr):
                discovery = service.discovery
                peer = service.identity.peer_id
                await until(lambda: discovery.changes >= 1, "the first discovered set")
                assert discovery.backend_status == CONNECTED and discovery.last_error is None
                assert [m.name for m in discovery.served] == ["test-model"]
                assert set(service.registry.models) == {"test-model"}
                assert [m["model_id"] for m in service.catalog.models] == ["test-model"]
                updates = (await published(service)).get("Update", 0)
                assert updates >= 1

                async with LloomClient(bootstrap=[addr], enable_kad=False, enable_gossip=True, request_timeout=10) as client:
                    ok = await ask(client, service, "test-model")
                    assert ok.error is None and ok.content == "echo: hello there" and ok.signature_valid
                    for name in ("slow-model", "absent-model", "extra-model"):
                        refused = await ask(client, service, name)
                        assert refused.signature_valid and refused.error == (
                            f"model {name!r} is not served here; available: ['test-model']"
                        )

                    # The backend loads slow-model and gains absent-model: both served and announced.
                    server.models = [llm("test-model"), llm("slow-model"), llm("absent-model"), llm("extra-model")]
                    await until(lambda: len(discovery.served) == 3, "three models served")
                    assert set(service.registry.models) == {"test-model", "slow-model", "absent-model"}
                    assert (await published(service)).get("Update", 0) == updates + 1
                    assert (await ask(client, service, "slow-model")).content == "echo: hello there"
                    want = ("absent-model", "slow-model", "test-model")
                    deadline = time.monotonic() + 10
                    while await client_view(client, peer) != want and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                    assert await client_view(client, peer) == want  # the client's gossip view got the Update

                    # test-model disappears from the backend: refused, announced without it.
                    server.models = [llm("slow-model"), llm("absent-model"), llm("extra-model")]
                    await until(lambda: "test-model" not in service.registry.models, "test-model withdrawn")
                    gone = await ask(client, service, "test-model")
                    assert gone.error == "model 'test-model' is not served here; available: ['absent-model', 'slow-model']"
                    assert (await published(service)).get("Update", 0) == updates + 2
                    deadline = time.monotonic() + 10
                    while await client_view(client, peer) != ("absent-model", "slow-model") and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                    assert await client_view(client, peer) == ("absent-model", "slow-model")

                    # An unchanged listing publishes nothing more.
                    polls = discovery.polls
                    await until(lambda: discovery.polls >= polls + 3, "three more polls")
                    assert (await published(service)).get("Update", 0) == updates + 2

                status = discovery.status()
                assert status["backend_status"] == "connected" and status["served_models"] == ["absent-model", "slow-model"]
                assert status["offered_models"]["extra-model"] == "loaded" and status["not_configured"] == ["extra-model"]

        asyncio.run(scenario())

    unconfigured = [r.getMessage() for r in caplog.records if "offered by the backend but not configured" in r.getMessage()]
    assert len(unconfigured) == 1 and "extra-model" in unconfigured[0] and "embed-model" not in unconfigured[0]


def test_backend_down_at_start_then_models_announced_when_it_comes_up() -> None:
    url = refused_url()
    port = int(url.rsplit(":", 1)[1].split("/")[0])

    async def scenario() -> None:
        config = make_config(url, ["test-model"])
        async with running(config) as (service, addr):  # the node starts although the backend is down
            discovery = service.discovery
            await until(lambda: discovery.backend_status == DISCONNECTED, "disconnected")
            assert "BackendUnavailable" in discovery.last_error
            await until(lambda: service.registry.models == {}, "nothing served while the backend is down")
            # The handler's set is replaced first, then the gossip catalog across the bridge.
            await until(lambda: service.catalog.models == [], "nothing announced while the backend is down")
            async with LloomClient(bootstrap=[addr], enable_kad=False, enable_gossip=True, request_timeout=10) as client:
                refused = await ask(client, service, "test-model")
                assert refused.error == "model 'test-model' is not served here; available: []"
                polls = discovery.polls
                await until(lambda: discovery.polls >= polls + 2, "retried every interval")
                assert discovery.backend_status == DISCONNECTED
                updates = (await published(service)).get("Update", 0)

                with OpenAIServer(models=DEFAULT_MODELS, port=port):
                    await until(lambda: discovery.backend_status == CONNECTED, "connected once the server is up")
                    await until(lambda: "test-model" in service.registry.models, "test-model served")
                    assert discovery.last_error is None
                    # the registry first, then the gossip catalog across the bridge
                    await until(lambda: [m["model_id"] for m in service.catalog.models] == ["test-model"], "announced")
                    assert (await published(service)).get("Update", 0) == updates + 1
                    answer = await ask(client, service, "test-model")
                    assert answer.error is None and answer.content == "echo: hello there"
                    deadline = time.monotonic() + 10
                    while await client_view(client, service.identity.peer_id) != ("test-model",) and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                    assert await client_view(client, service.identity.peer_id) == ("test-model",)

                # The server goes away again: disconnected, kept for withdraw_after_failures polls, then withdrawn.
                await until(lambda: discovery.backend_status == DISCONNECTED, "disconnected again")
                assert "test-model" in service.registry.models or discovery.failures >= 3
                await until(lambda: service.registry.models == {}, "withdrawn after three failed polls")
                assert discovery.failures >= 3

    asyncio.run(scenario())


def test_advertise_models_false_changes_serving_but_not_the_catalog() -> None:
    with OpenAIServer(models=[llm("test-model")]) as server:

        async def scenario() -> None:
            config = make_config(server.base_url, ["test-model", "absent-model"], advertise=False)
            async with running(config) as (service, _):
                discovery = service.discovery
                await until(lambda: discovery.changes >= 1, "first change")
                assert set(service.registry.models) == {"test-model"}
                assert [m["model_id"] for m in service.catalog.models] == ["absent-model", "test-model"]
                assert (await published(service)).get("Update", 0) == 0
                await service.announce_models()  # what a price change does: still the configured catalog
                assert [m["model_id"] for m in service.catalog.models] == ["absent-model", "test-model"]
                service.handler.draining = True  # shutdown: the task ends by itself
                await until(lambda: not discovery.running, "discovery ended on drain")

        asyncio.run(scenario())


# -- the set computation, without a network ---------------------------------------------------------
class Listing(LlmBackend):
    def __init__(self, details: list[ModelInfo]) -> None:
        self.details = details
        self.down = False

    async def complete(self, request: CompletionRequest) -> Completion:  # pragma: no cover - not used
        raise NotImplementedError

    async def list_models(self) -> list[str]:
        return [d.id for d in await self.model_details()]

    async def model_details(self) -> list[ModelInfo]:
        if self.down:
            raise BackendUnavailable("connection refused")
        return list(self.details)


def test_default_price_policy_serves_unconfigured_models_and_openai_listing_without_load_state() -> None:
    backend = Listing(
        [
            ModelInfo("gpt-4o"),
            ModelInfo("gpt-4o-mini", context_length=128000),
            ModelInfo("text-embedding-3-small", type="embeddings"),
        ]
    )
    changes: list[list[str]] = []

    async def on_change(models: list[ModelConfig]) -> None:
        changes.append([m.name for m in models])

    default = ModelConfig("", inbound_price_wei=5, outbound_price_wei=7, context_length=8192)
    configured = [ModelConfig("gpt-4o", inbound_price_wei=1, outbound_price_wei=2), ModelConfig("off", enabled=False)]
    d = ModelDiscovery(
        backend, ModelDiscoveryConfig(enabled=True), on_change, models=configured, default_model=default, interval=0.05
    )

    async def go() -> None:
        assert await d.poll_once() is True
        assert changes == [["gpt-4o", "gpt-4o-mini"]]  # loaded=None (OpenAI) counts as offered; no embeddings
        mini = d.served[1]
        assert (mini.inbound_price_wei, mini.outbound_price_wei, mini.context_length) == (5, 7, 128000)
        assert d.served[0].inbound_price_wei == 1  # configured prices win
        assert await d.poll_once() is False
        backend.down = True  # a blip keeps the set for two polls, the third withdraws it
        assert await d.poll_once() is False and await d.poll_once() is False
        assert d.backend_status == DISCONNECTED and d.last_error == "BackendUnavailable: connection refused"
        assert await d.poll_once() is True and changes[-1] == []
        backend.down = False
        assert await d.poll_once() is True and changes[-1] == ["gpt-4o", "gpt-4o-mini"] and d.failures == 0

    asyncio.run(go())


def test_a_failing_on_change_is_retried_at_the_next_poll() -> None:
    backend = Listing([ModelInfo("m", loaded=True)])
    calls = 0

    async def on_change(models: list[ModelConfig]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("node not ready")

    d = ModelDiscovery(
        backend, ModelDiscoveryConfig(enabled=True), on_change, models=[ModelConfig("m")], initial=[], interval=0.05
    )

    async def go() -> None:
        assert await d.poll_once() is False and d.served == []
        assert await d.poll_once() is True and [m.name for m in d.served] == ["m"] and calls == 2

    asyncio.run(go())
