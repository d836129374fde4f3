"""`[[models]]` max_batch_size, max_tokens_per_second, gpu_memory_gb and cpu_cores in the
request path: the scheduler's per-model batch cap, the governor's token rate and GPU/core
budgets, the dispatcher's throttled line, and the configured service over libp2p.

Unit scenarios run real signed frames through RequestHandler with an injected clock
(then `Dispatcher.pump()`), as tests/test_dispatch.py does. GPUs are a stand-in for the
few pynvml calls the code makes, in pynvml's units (bytes), since this machine has none;
everything else is real (the OpenAI-wire test server as backend, libp2p, the ledger).
Timed assertions are lower bounds that the throttle itself guarantees, with slack.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lloom_executor.backends.base import Completion, CompletionRequest, LlmBackend
from lloom_executor.config import Config, ConfigError, ModelConfig
from lloom_executor.config.features import inactive_features
from lloom_executor.config.schema import ResourcesConfig
from lloom_executor.pipeline.dispatch import Dispatcher, dispatcher_from_config, scheduler_from_config
from lloom_executor.pipeline.resources import (
    GIB,
    GpuProbe,
    ResourceGovernor,
    TokenRate,
    governor_from_config,
    resources_configured,
    usable_cores,
)

sys.path.insert(0, str(Path(__file__).parent))
from dispatch_rig import CTX, Clock, Recording, answer, build, frame, models, until  # noqa: E402
from openai_server import OpenAIServer  # noqa: E402
from service_rig import echo_service_config  # noqa: E402


class Tokens(LlmBackend):
    """Answers "name:N" prompts with N output tokens (as the backend's usage says); records
    each call's (model, prompt, clock reading); holds calls while `gate` is closed."""

    def __init__(self, clock=time.monotonic, gated: bool = False) -> None:
        self.clock = clock
        self.calls: list[tuple[str, str, float]] = []
        self.gate = asyncio.Event() if gated else None
        self.running = 0

    async def complete(self, request: CompletionRequest) -> Completion:
        model, prompt = request.model, request.prompt
        self.calls.append((model, prompt, self.clock()))
        self.running += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.running -= 1
        produced = int(prompt.rpartition(":")[2]) if ":" in prompt else 1
        return Completion(content=f"done {prompt}", model=model, inbound_tokens=1, outbound_tokens=produced)

    async def list_models(self) -> list[str]:
        return []

    def prompts(self) -> list[str]:
        return [p for _, p, _ in self.calls]


class FakeNvml:
    """The pynvml calls the executor makes, for GPUs of the given sizes (GiB); memory in bytes,
    as pynvml's `nvmlDeviceGetMemoryInfo` reports it (total, free, used)."""

    def __init__(self, *sizes_gib: float) -> None:
        self.total = [int(size * GIB) for size in sizes_gib]

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return len(self.total)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=self.total[handle], free=self.total[handle], used=0)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=0, memory=0)


NO_NVML = SimpleNamespace()  # an NVML that fails to initialise: no GPU seen


def gov(
    served: list[ModelConfig],
    *,
    clock=time.monotonic,
    nvml: Any = NO_NVML,
    devices: tuple[int, ...] = (),
    cpu_total: int | None = None,
    **resources: Any,
) -> ResourceGovernor:
    return ResourceGovernor(
        ResourcesConfig(**resources), models=served, gpu_devices=devices, gpu=GpuProbe(nvml), cpu_total=cpu_total, clock=clock
    )


def error_of(raw: bytes) -> str | None:
    return answer(raw).error


def throttled_gauge(h) -> dict[str, float]:
    """lloom_executor_throttled_requests by model, as the handler's metrics export it."""
    return {
        s.labels["model"]: s.value
        for m in h.answers.observers.metrics.collect()
        if m.name == "lloom_executor_throttled_requests"
        for s in m.samples
    }


# ================================================================ max_tokens_per_second


def test_token_rate_bucket() -> None:
    rate = TokenRate(8, now=0.0)
    assert rate.capacity == 8 and rate.level(0.0) == 8 and rate.ready_in(0.0) == 0.0  # starts full
    rate.spend(24, now=0.0)
    assert rate.level(0.0) == -16 and rate.ready_in(0.0) == 2.0
    assert rate.ready_in(1.875) == 0.125 and rate.ready_in(2.0) == 0.0  # out of debt exactly at 0
    assert rate.level(100.0) == 8  # refills to one second's worth, no more
    assert TokenRate(0.25, now=0.0).capacity == 1  # at least one token
    with pytest.raises(ValueError):
        TokenRate(0, now=0.0)


def test_throttled_model_starts_when_its_debt_is_paid() -> None:
    async def scenario() -> dict[str, Any]:
        clock = Clock()
        backend = Tokens(clock)
        served = models("a", max_tokens_per_second=8)
        h = build(backend, served=served, clock=clock, resources=gov(served, clock=clock))
        d = h.execution.dispatcher
        first = answer(await h(frame("a", "first:24"), CTX))  # starts on a full bucket (8), leaves it at -16
        second = asyncio.create_task(h(frame("a", "second:1"), CTX))
        await until(lambda: d.throttled == 1, "the second request throttled")
        reason = h.execution.dispatcher.resources.wait_reason("a")
        clock.now += 1.875  # 0.125 s short of paying back 16 tokens at 8/s
        d.pump()
        await asyncio.sleep(0)
        calls_before = backend.prompts()
        clock.now += 0.125  # debt paid: level 0, not in debt
        d.pump()
        second = answer(await second)
        return locals()

    r = asyncio.run(scenario())
    assert r["first"].error is None and r["first"].outbound_tokens == 24
    assert r["reason"] == "model 'a' is over its max_tokens_per_second (8 tokens/s): it may start again in 2.0 s"
    assert r["calls_before"] == ["first:24"]
    assert r["second"].error is None
    assert [t for _, _, t in r["backend"].calls] == [1000.0, 1002.0]


def test_a_throttled_model_does_not_hold_up_other_models() -> None:
    """Throttled requests wait outside the backend slots: with max_concurrent_requests = 1 and
    model a in debt for 99 s with three requests waiting, model b is served at once."""

    async def scenario() -> dict[str, Any]:
        clock = Clock()
        backend = Tokens(clock)
        served = models("a", max_tokens_per_second=1) + models("b")
        h = build(backend, served=served, max_concurrent=1, clock=clock, resources=gov(served, clock=clock))
        d = h.execution.dispatcher
        assert answer(await h(frame("a", "a1:100"), CTX)).error is None
        waiting = [asyncio.create_task(h(frame("a", f"a{i}:0"), CTX)) for i in (2, 3, 4)]
        await until(lambda: d.throttled == 3, "three throttled")
        b = answer(await h(frame("b", "b:5"), CTX))
        during = (backend.prompts(), d.throttled, d.held, d.throttled_by_model(), h.execution.dispatcher.resources.throttled())
        gauge_during = throttled_gauge(h)
        clock.now += 99  # a's debt is paid
        d.pump()
        rest = [answer(raw) for raw in await asyncio.gather(*waiting)]
        gauge_after, reserved_after = throttled_gauge(h), d.scheduler.reserved("normal")
        return locals()

    r = asyncio.run(scenario())
    assert r["b"].error is None
    prompts, throttled, held, by_model, over = r["during"]
    assert prompts == ["a1:100", "b:5"] and throttled == 3 and held == 0
    assert by_model == {"a": 3} and over == {"a": 99.0}
    assert r["gauge_during"] == {"a": 3} and r["gauge_after"] == {"a": 0} and r["reserved_after"] == 0
    assert all(a.error is None for a in r["rest"])
    assert r["backend"].prompts()[2:] == ["a2:0", "a3:0", "a4:0"]  # FIFO once released


def test_throttled_requests_leave_in_priority_order() -> None:
    async def scenario() -> list[str]:
        clock = Clock()
        backend = Tokens(clock)
        served = models("a", max_tokens_per_second=8)
        h = build(backend, served=served, max_concurrent=1, clock=clock, resources=gov(served, clock=clock))
        d = h.execution.dispatcher
        await h(frame("a", "first:24"), CTX)
        normal = asyncio.create_task(h(frame("a", "normal:0"), CTX))
        await until(lambda: d.throttled == 1)
        high = asyncio.create_task(h(frame("a", "high:0", price=3), CTX))  # 3 = 1.5 x 2: high
        await until(lambda: d.throttled == 2)
        clock.now += 2
        d.pump()
        await asyncio.gather(normal, high)
        return backend.prompts()

    assert asyncio.run(scenario()) == ["first:24", "high:0", "normal:0"]


def test_throttled_request_expires_with_the_reason() -> None:
    async def scenario() -> dict[str, Any]:
        clock = Clock()
        backend = Tokens(clock)
        served = models("a", max_tokens_per_second=1)
        h = build(backend, served=served, clock=clock, resources=gov(served, clock=clock))
        d = h.execution.dispatcher
        await h(frame("a", "a1:100"), CTX)
        late = asyncio.create_task(h(frame("a", "late:1", deadline_in=5), CTX))
        await until(lambda: d.throttled == 1)
        clock.now += 6  # past its deadline, long before a's debt is paid
        d.pump()
        late = answer(await late)
        return {"late": late, "calls": backend.prompts(), "left": (d.throttled, d.held)}

    r = asyncio.run(scenario())
    assert r["late"].error.startswith("expired while queued: the request's deadline passed after 6.0 s in the queue ")
    assert r["late"].error.endswith("(model 'a' is over its max_tokens_per_second (1 tokens/s): it may start again in 99.0 s)")
    assert r["late"].total_cost == "0" and r["calls"] == ["a1:100"] and r["left"] == (0, 0)


def test_request_timeout_while_throttled_says_why() -> None:
    async def scenario() -> str | None:
        backend = Tokens()
        served = models("a", max_tokens_per_second=1)
        h = build(backend, served=served, timeout=0.2, resources=gov(served))
        await h(frame("a", "a1:100"), CTX)
        return error_of(await h(frame("a", "waits:1"), CTX))

    error = asyncio.run(scenario())
    assert error.startswith(
        "expired while queued: no backend slot within request_timeout_secs (0.2 s) "
        "(model 'a' is over its max_tokens_per_second (1 tokens/s): it may start again in "
    )


@pytest.mark.parametrize("waiting, refused", [(1, False), (2, True)])
def test_throttled_requests_count_against_the_queue_size(waiting: int, refused: bool) -> None:
    """normal queue size 2: with one throttled, one more is accepted (at the size); with two, refused."""

    async def scenario() -> dict[str, Any]:
        clock = Clock()
        backend = Tokens(clock)
        served = models("a", max_tokens_per_second=1) + models("b")
        h = build(backend, served=served, clock=clock, queue_sizes={"normal": 2}, resources=gov(served, clock=clock))
        d = h.execution.dispatcher
        await h(frame("a", "a1:100"), CTX)
        tasks = [asyncio.create_task(h(frame("a", f"w{i}:0"), CTX)) for i in range(waiting)]
        await until(lambda: d.throttled == waiting)
        extra = asyncio.create_task(h(frame("b", "b:0"), CTX))
        await until(lambda: extra.done() or len(backend.calls) == 2, "b answered or refused")
        clock.now += 100
        d.pump()
        rest = [answer(raw) for raw in await asyncio.gather(*tasks)]
        return {"extra": answer(await extra), "rest": rest}

    r = asyncio.run(scenario())
    if refused:
        assert r["extra"].error == ("normal queue full (2/2: 2 waiting for their model's max_tokens_per_second); try again later")
    else:
        assert r["extra"].error is None
    assert all(a.error is None for a in r["rest"])


def test_a_throttled_request_past_its_deadline_makes_room() -> None:
    """normal queue size 1, taken by a throttled request whose deadline has passed (no pump since):
    the next request is accepted and the late one answered, as the scheduler does for queued ones."""

    async def scenario() -> dict[str, Any]:
        clock = Clock()
        backend = Tokens(clock)
        served = models("a", max_tokens_per_second=1) + models("b")
        h = build(backend, served=served, clock=clock, queue_sizes={"normal": 1}, resources=gov(served, clock=clock))
        d = h.execution.dispatcher
        await h(frame("a", "a1:100"), CTX)
        late = asyncio.create_task(h(frame("a", "late:1", deadline_in=5), CTX))
        await until(lambda: d.throttled == 1)
        clock.now += 6
        b = answer(await h(frame("b", "b:0"), CTX))
        return {"late": answer(await late), "b": b, "left": (d.throttled, d.scheduler.reserved("normal"))}

    r = asyncio.run(scenario())
    assert r["b"].error is None and r["left"] == (0, 0)
    assert r["late"].error.startswith("expired while queued: the request's deadline passed after 6.0 s in the queue ")


def test_cache_hits_and_failed_calls_are_not_charged() -> None:
    gov_ = gov(models("a", max_tokens_per_second=1), clock=lambda: 0.0)
    gov_.produced("other", 1000)  # a model without a rate: nothing to charge
    assert gov_.metered("a") and not gov_.metered("other") and gov_.throttled() == {}
    gov_.produced("a", 3)
    assert gov_.throttled() == {"a": 2.0} and gov_.ready_in("a") == 2.0 and gov_.ready_in("other") == 0.0


# ================================================================ gpu_memory_gb


GPU_MODELS = {"a": 30, "b": 14, "c": 14.5, "exact": 44, "huge": 44.5}  # two 24 GiB GPUs, 2 GB reserved on each: 44 GB


def gpu_models() -> list[ModelConfig]:
    return [m for name, gb in GPU_MODELS.items() for m in models(name, gpu_memory_gb=gb)]


def test_gpu_budget_from_nvml_totals() -> None:
    served = gpu_models()
    assert gov(served, nvml=FakeNvml(24, 24), gpu_memory_reserved_gb=2).gpu_budget_gb == 44.0
    assert gov(served, nvml=FakeNvml(24, 80), gpu_memory_reserved_gb=2, devices=(1,)).gpu_budget_gb == 78.0
    assert gov(served, nvml=FakeNvml(24, 80)).gpu_budget_gb == 104.0
    assert gov(served, nvml=FakeNvml(1), gpu_memory_reserved_gb=2).gpu_budget_gb == 0.0  # reserve above the GPU's size
    g = gov(served, nvml=FakeNvml(24, 24), gpu_memory_reserved_gb=2)
    assert g.refusal("exact") is None
    assert g.refusal("huge") == (
        "model 'huge' needs 44.5 GB of GPU memory (gpu_memory_gb), more than this executor's GPUs offer "
        "(44.0 GB after gpu_memory_reserved_gb)"
    )


def test_gpu_memory_waits_while_others_hold_it() -> None:
    async def scenario() -> dict[str, Any]:
        backend = Recording(gated=True)
        served = gpu_models()
        h = build(backend, served=served, resources=gov(served, nvml=FakeNvml(24, 24), gpu_memory_reserved_gb=2))
        d = h.execution.dispatcher
        a = asyncio.create_task(h(frame("a", "a holds 30"), CTX))
        await until(lambda: backend.running == 1)
        b = asyncio.create_task(h(frame("b", "b fits: 44 of 44"), CTX))  # at the budget: starts
        await until(lambda: backend.running == 2)
        c = asyncio.create_task(h(frame("c", "c waits: 44.5 of 44"), CTX))  # above: held
        await until(lambda: d.held == 1)
        reason = h.execution.dispatcher.resources.wait_reason("c")
        calls_while_busy = [p for _, p, _ in backend.calls]
        huge = answer(await h(frame("huge"), CTX))  # can never fit: refused, not queued
        backend.gate.set()
        answers = [answer(raw) for raw in await asyncio.gather(a, b, c)]
        return locals()

    r = asyncio.run(scenario())
    assert r["calls_while_busy"] == ["a holds 30", "b fits: 44 of 44"]
    assert r["reason"] == (
        "not enough GPU memory for model 'c': it needs 14.5 GB (gpu_memory_gb) and 44 of 44.0 GB are in use by a, b"
    )
    assert r["huge"].error.startswith("model 'huge' needs 44.5 GB of GPU memory (gpu_memory_gb)")
    assert all(x.error is None for x in r["answers"]) and r["answers"][2].content == "done c waits: 44.5 of 44"


def test_gpu_memory_without_a_visible_gpu_is_not_enforced_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    served = models("big", gpu_memory_gb=40) + models("bigger", gpu_memory_gb=100) + models("cpu")
    with caplog.at_level(logging.WARNING, logger="lloom_executor.pipeline.resources"):
        no_nvml = gov(served)
        no_gpu = gov(served, nvml=FakeNvml())  # NVML works but sees no device
        wrong = gov(served, nvml=FakeNvml(24), devices=(3,))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "gpu_memory_gb = 40 for big: no GPU visible, not enforced",
        "gpu_memory_gb = 100 for bigger: no GPU visible, not enforced",
    ] * 2 + [
        "gpu_memory_gb = 40 for big: none of [gpu_allocation] devices [3] is visible to NVML, not enforced",
        "gpu_memory_gb = 100 for bigger: none of [gpu_allocation] devices [3] is visible to NVML, not enforced",
    ]
    for g in (no_nvml, no_gpu, wrong):
        assert g.gpu_budget_gb is None and g.refusal("bigger") is None
        g.started("big")
        assert g.wait_reason("bigger") is None  # nothing accounted: both run


# ================================================================ cpu_cores


CORE_MODELS = {"a": 3, "b": 2, "c": 1, "d": 5}  # against 4 usable cores


def core_models() -> list[ModelConfig]:
    return [m for name, n in CORE_MODELS.items() for m in models(name, cpu_cores=n)]


def test_usable_cores_is_the_affinity_mask() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0))
    assert gov(core_models()).cpu_total == usable_cores()


def test_cpu_cores_wait_while_others_hold_them() -> None:
    async def scenario() -> dict[str, Any]:
        backend = Recording(gated=True)
        served = core_models()
        h = build(backend, served=served, resources=gov(served, cpu_total=4))
        d = h.execution.dispatcher
        a = asyncio.create_task(h(frame("a", "a holds 3"), CTX))
        await until(lambda: backend.running == 1)
        c = asyncio.create_task(h(frame("c", "c fits: 4 of 4"), CTX))
        await until(lambda: backend.running == 2)
        b = asyncio.create_task(h(frame("b", "b waits: 6 of 4"), CTX))
        await until(lambda: d.held == 1)
        a2 = asyncio.create_task(h(frame("a", "a again: a holds its cores once"), CTX))
        await until(lambda: backend.running == 3)
        reason = h.execution.dispatcher.resources.wait_reason("b")
        d_refused = answer(await h(frame("d"), CTX))
        backend.gate.set()
        answers = [answer(raw) for raw in await asyncio.gather(a, c, b, a2)]
        return locals()

    r = asyncio.run(scenario())
    assert r["reason"] == (
        "not enough CPU cores for model 'b': it needs 2 (cpu_cores) and 4 of the 4 this executor may use are in use by a, c"
    )
    assert r["d_refused"].error == "model 'd' needs 5 CPU cores (cpu_cores), more than the 4 this executor may use"
    assert all(x.error is None for x in r["answers"])
    assert [p for _, p, _ in r["backend"].calls][-1] == "b waits: 6 of 4"


# ================================================================ max_batch_size and config wiring


def batching_config(group_by_model: bool = True, **extra: Any) -> Config:
    return Config.from_dict(
        {
            "models": [{"name": "capped", "max_batch_size": 2}, {"name": "solo", "max_batch_size": 1}, {"name": "free"}],
            "batching": {"enabled": True, "max_batch_size": 4, "batch_timeout_ms": 50, "group_by_model": group_by_model},
            **extra,
        }
    )


def test_model_max_batch_size_defaults_to_the_batching_size() -> None:
    assert ModelConfig("m").max_batch_size is None
    scheduler = scheduler_from_config(batching_config())
    assert scheduler.max_batch_size == 4 and scheduler.model_batch_sizes == {"capped": 2, "solo": 1}
    assert [scheduler.batch_size_for(m) for m in ("capped", "solo", "free")] == [2, 1, 4]
    with pytest.raises(ConfigError, match="max_batch_size"):
        Config.from_dict({"models": [{"name": "m", "max_batch_size": 0}]})


def test_model_batches_are_capped_in_the_request_path() -> None:
    async def scenario() -> list:
        clock = Clock()
        backend = Recording(clock)
        config = batching_config()
        served = models("capped", "solo", "free")
        dispatcher = Dispatcher(scheduler_from_config(config, clock=clock), 10, clock=clock)
        h = build(backend, served=served, clock=clock)
        h.execution.dispatcher = dispatcher
        tasks = [asyncio.create_task(h(frame(m, f"{m}{i}"), CTX)) for m in ("capped", "solo", "free") for i in range(4)]
        await until(lambda: len(backend.calls) == 12, "every batch")
        assert all(answer(raw).error is None for raw in await asyncio.gather(*tasks))
        return sorted(dispatcher.recent_batches)

    assert asyncio.run(scenario()) == [("capped", 2), ("capped", 2), ("free", 4)] + [("solo", 1)] * 4


def test_model_batch_size_without_group_by_model_is_said_and_the_global_size_applies(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lloom_executor.pipeline.dispatch"):
        scheduler = scheduler_from_config(batching_config(group_by_model=False))
    assert scheduler.batch_size_for("solo") == 4
    assert "[[models]] max_batch_size of capped, solo: not applied, [batching] group_by_model = false" in caplog.text


def test_wiring_and_no_not_enforced_notes() -> None:
    config = Config.from_dict(
        {
            "models": [{"name": "m", "max_tokens_per_second": 50, "gpu_memory_gb": 40, "cpu_cores": 1, "max_batch_size": 2}],
        }
    )
    assert not inactive_features(config)
    assert resources_configured(config.resources, config.models) and not resources_configured(config.resources)
    governor = governor_from_config(config)
    assert governor is not None and governor.metered("m") and governor.cpu_cores("m") == 1
    assert governor_from_config(Config.from_dict({"models": [{"name": "m", "max_batch_size": 2}]})) is None
    assert dispatcher_from_config(config).scheduler.max_batch_size == 1  # no [priority]/[batching]: the direct path


# ================================================================ the configured service, over libp2p


def service_config(tmp_path: Path, backend_url: str, served: list[dict], **sections: Any) -> Config:
    """A configured service on an OpenAI-wire backend, with a queue: requests wait instead of being refused."""
    return echo_service_config(
        tmp_path,
        **{
            "llm_client": {"backend": "openai", "base_url": backend_url, "max_retries": 0},
            "models": served,
            "metrics": {"enabled": False},
            "api": {"enabled": True, "listen_address": "127.0.0.1:0"},
            "priority": {"enabled": True},
            **sections,
        },
    )


async def serve_requests(config: Config, requests: list[tuple[str, str]]) -> dict[str, Any]:
    """Start the configured service, send `requests` (model, prompt) at once over libp2p, stop."""
    import httpx

    from lloom_executor.client import LloomClient
    from lloom_executor.identity import load_identity
    from lloom_executor.service import ExecutorService

    service = ExecutorService(config, load_identity(config.identity, environ={}))
    addrs = await service.start()
    peer = service.identity.peer_id
    try:
        async with LloomClient(bootstrap=[addrs[0]], enable_kad=False, enable_gossip=False) as client:
            answers = await asyncio.gather(*(client.request(peer, m, p) for m, p in requests))
        async with httpx.AsyncClient() as http:
            health = (await http.get(service.api.url + "/health/detailed")).json()
    finally:
        await service.stop()
    return {"answers": dict(zip((p for _, p in requests), answers, strict=True)), "health": health, "service": service}


def test_service_paces_a_model_at_its_max_tokens_per_second(tmp_path: Path) -> None:
    """50 output tokens per call (49 prompt words + "echo:"), 100 tokens/s with a bucket of 100,
    one call at a time: call k (k >= 1) may start only once the tokens of calls 1..k-1 minus
    the bucket are paid back, i.e. (50 (k-1) - 100) / 100 s after the first."""
    words = " ".join(f"w{i}" for i in range(48))
    with OpenAIServer(strict_models=False) as srv:
        config = service_config(
            tmp_path,
            srv.base_url,
            [
                {"name": "m", "max_tokens_per_second": 100, "max_concurrent_requests": 1},
            ],
        )
        r = asyncio.run(serve_requests(config, [("m", f"r{i} {words}") for i in range(5)]))
        starts = sorted(req.time for req in srv.chat_requests)
        usage = [req.json for req in srv.chat_requests]
    assert all(a.error is None and a.outbound_tokens == 50 for a in r["answers"].values())
    assert len(starts) == 5 and len(usage) == 5
    for k, start in enumerate(starts):
        required = (50 * k - 100) / 100
        assert start - starts[0] >= required - 0.25, (k, [s - starts[0] for s in starts])
    assert starts[4] - starts[0] >= 0.75  # vs a few ms unthrottled
    health = r["health"]["throttled_models"]  # the fifth call's 50 tokens: in debt for up to 0.5 s after it
    assert set(health) <= {"m"} and all(v["resume_in_seconds"] <= 0.51 and v["waiting_requests"] == 0 for v in health.values())


def test_service_throttle_on_the_direct_path_waits_and_says_why(tmp_path: Path) -> None:
    """Without [priority]/[batching] the direct path is the dispatcher: a request of a model in
    token debt waits its turn; one whose request_timeout_secs ends first gets a signed error
    that names the throttle."""
    from lloom_executor.client import LloomClient
    from lloom_executor.identity import load_identity
    from lloom_executor.service import ExecutorService

    words = " ".join(f"w{i}" for i in range(9))  # "echo: first w0 .. w8": 11 tokens, 10 s of debt at 1 token/s

    async def scenario(config: Config) -> dict[str, Any]:
        service = ExecutorService(config, load_identity(config.identity, environ={}))
        addrs = await service.start()
        peer = service.identity.peer_id
        try:
            async with LloomClient(bootstrap=[addrs[0]], enable_kad=False, enable_gossip=False) as client:
                first = await client.request(peer, "m", f"first {words}")
                second = await client.request(peer, "m", "second")
        finally:
            await service.stop()
        return {"first": first, "second": second}

    with OpenAIServer(strict_models=False) as srv:
        config = service_config(
            tmp_path,
            srv.base_url,
            [{"name": "m", "max_tokens_per_second": 1}],
            priority={"enabled": False},
            request_handling={"request_timeout_secs": 1},
        )
        r = asyncio.run(scenario(config))
        calls = len(srv.chat_requests)
    assert r["first"].error is None and r["first"].signature_valid and r["first"].outbound_tokens == 11
    assert r["second"].signature_valid and r["second"].error.startswith(
        "expired while queued: no backend slot within request_timeout_secs (1 s) "
        "(model 'm' is over its max_tokens_per_second (1 tokens/s)"
    )
    assert calls == 1


def models_never_together(srv: OpenAIServer, one: str, other: str) -> list:
    """The backend's own log: calls that began while both models were in flight."""
    return [(prompt, running) for prompt, running in srv.in_flight_at_starts() if one in running and other in running]


def test_service_keeps_models_whose_cores_do_not_fit_apart(tmp_path: Path) -> None:
    total = usable_cores()
    with OpenAIServer(strict_models=False, latency=0.15) as srv:
        config = service_config(
            tmp_path,
            srv.base_url,
            [
                {"name": "a", "cpu_cores": total},
                {"name": "b", "cpu_cores": 1},
                {"name": "toolarge", "cpu_cores": total + 1},
            ],
        )
        requests = [(m, f"{m}{i}") for i in range(3) for m in ("a", "b")] + [("toolarge", "never")]
        r = asyncio.run(serve_requests(config, requests))
        overlaps = models_never_together(srv, "a", "b")
        called = sorted(p for p, _ in srv.in_flight_at_starts())
    assert overlaps == []
    assert called == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert all(r["answers"][p].error is None for p in called)
    refused = r["answers"]["never"]
    assert refused.signature_valid and refused.error == (
        f"model 'toolarge' needs {total + 1} CPU cores (cpu_cores), more than the {total} this executor may use"
    )


def test_service_keeps_models_whose_gpu_memory_does_not_fit_apart(tmp_path: Path, monkeypatch) -> None:
    """The GPU inventory is a stand-in for pynvml (one 24 GiB GPU, in bytes), found where the
    executor imports it; 2 GB reserved leaves 22 GB: 16 + 8 do not fit together."""
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(24))
    with OpenAIServer(strict_models=False, latency=0.15) as srv:
        config = service_config(
            tmp_path,
            srv.base_url,
            [
                {"name": "a", "gpu_memory_gb": 16},
                {"name": "b", "gpu_memory_gb": 8},
                {"name": "toolarge", "gpu_memory_gb": 23},
            ],
            resources={"gpu_memory_reserved_gb": 2},
        )
        requests = [(m, f"{m}{i}") for i in range(3) for m in ("a", "b")] + [("toolarge", "never")]
        r = asyncio.run(serve_requests(config, requests))
        overlaps = models_never_together(srv, "a", "b")
        called = sorted(p for p, _ in srv.in_flight_at_starts())
    assert r["service"].resources.gpu_budget_gb == 22.0
    assert overlaps == []
    assert called == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert all(r["answers"][p].error is None for p in called)
    refused = r["answers"]["never"]
    assert refused.signature_valid and refused.error == (
        "model 'toolarge' needs 23 GB of GPU memory (gpu_memory_gb), more than this executor's GPUs offer "
        "(22.0 GB after gpu_memory_reserved_gb)"
    )


def test_service_start_warns_about_gpu_memory_without_a_gpu(tmp_path: Path, monkeypatch, caplog) -> None:
    from lloom_executor.identity import load_identity
    from lloom_executor.service import ExecutorService

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())  # NVML present, no device (as on this machine without NVML)
    config = service_config(tmp_path, "http://127.0.0.1:9/v1", [{"name": "X", "gpu_memory_gb": 40}, {"name": "Y"}])
    with caplog.at_level(logging.WARNING):
        service = ExecutorService(config, load_identity(config.identity, environ={}))
    assert [r.getMessage() for r in caplog.records if "gpu_memory_gb" in r.getMessage()] == [
        "gpu_memory_gb = 40 for X: no GPU visible, not enforced"
    ]
    assert service.resources.gpu_budget_gb is None
