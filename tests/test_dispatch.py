"""Scheduling and execution: priority queues, batches, expiry, [gpu_allocation] and [resources],
with real signed frames through RequestHandler (and real OpenAI-wire servers for devices).

Time is injected (a settable clock, then `Dispatcher.pump()`) wherever a test needs it to pass;
the only real waits are a 0.2 s request timeout and one slow backend answer.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lloom_executor import _native
from lloom_executor._fast.scheduler import HIGH, LOW, NORMAL, Scheduler
from lloom_executor.backends.echo import EchoBackend
from lloom_executor.config import Config, ModelConfig
from lloom_executor.config.features import inactive_features
from lloom_executor.config.schema import ModelResources, ResourcesConfig
from lloom_executor.pipeline.dispatch import Dispatcher, dispatcher_from_config
from lloom_executor.pipeline.gpu import DevicePool, device_pool_from_config, device_url
from lloom_executor.pipeline.model_registry import ModelRegistry
from lloom_executor.pipeline.resources import GIB, CpuSampler, GpuProbe, ResourceGovernor
from lloom_executor.serving import RequestHandler

sys.path.insert(0, str(Path(__file__).parent))
from dispatch_rig import CTX, PRICE, Clock, Recording, answer, build, frame, models, until  # noqa: E402
from openai_server import DEFAULT_MODELS, OpenAIServer  # noqa: E402
from service_rig import echo_service_config  # noqa: E402


def queued(h: RequestHandler, priority: str = "normal") -> int:
    return h.execution.dispatcher.sizes()[priority]


# ---------------------------------------------------------------- priority


def test_priority_order_when_the_backend_is_saturated() -> None:
    async def scenario() -> tuple[list[str], list[_native.DecodedResponse], str]:
        backend = Recording(gated=True)
        h = build(backend, max_concurrent=1, allow_unsigned=True)
        first = asyncio.create_task(h(frame(prompt="first"), CTX))
        await until(lambda: backend.running == 1, "the first call")
        tasks = [
            asyncio.create_task(h(frame(prompt="low", signed=False), CTX)),
            asyncio.create_task(h(frame(prompt="normal", price=PRICE * 3 // 2 - 1), CTX)),  # 2 < 1.5 x 2: normal
            asyncio.create_task(h(frame(prompt="high", price=3), CTX)),  # 3 = 1.5 x 2: high (at the edge)
        ]
        await until(lambda: sum(h.execution.dispatcher.sizes().values()) == 3, "three queued")
        exposition = "".join(
            str(s) for m in h.answers.observers.metrics.collect() if m.name.endswith("queue_size") for s in m.samples
        )
        backend.gate.set()
        answers = [answer(raw) for raw in await asyncio.gather(first, *tasks)]
        return [prompt for _, prompt, _ in backend.calls], answers, exposition

    order, answers, exposition = asyncio.run(scenario())
    assert order == ["first", "high", "normal", "low"]
    assert all(a.error is None for a in answers)
    for priority in ("high", "normal", "low"):  # the queue-size gauge saw one of each waiting
        assert f"'priority': '{priority}'}}, value=1" in exposition, exposition


@pytest.mark.parametrize("offered, expected", [(2, NORMAL), (3, HIGH), (4, HIGH)])
def test_high_priority_price_multiplier_edge(offered: int, expected: int) -> None:
    served = models()
    d = Dispatcher(Scheduler(), 1, priority_multiplier=1.5)
    free = ModelConfig("free")
    registry = ModelRegistry([*served, free])  # current prices: the configured ones (fixed, base 1.0)
    assert d.priority_of(served[0], offered, offered, signed=True, registry=registry) == expected
    assert d.priority_of(served[0], offered, offered, signed=False, registry=registry) == LOW
    off = Dispatcher(Scheduler(), 1)  # [priority] off
    assert off.priority_of(served[0], offered, offered, signed=False, registry=registry) == NORMAL
    assert d.priority_of(free, 10**30, 10**30, signed=True, registry=registry) == NORMAL  # a free model has no high priority


# ---------------------------------------------------------------- batching


def test_batches_form_by_size_then_by_timeout() -> None:
    async def scenario() -> dict[str, Any]:
        clock = Clock()
        backend = Recording(clock)
        h = build(backend, batch=(3, 100.0), clock=clock)
        d = h.execution.dispatcher
        tasks = [asyncio.create_task(h(frame(prompt=f"p{i}"), CTX)) for i in range(7)]
        await until(lambda: len(backend.calls) == 6 and queued(h) == 1, "two full batches")
        by_size = list(d.recent_batches)
        clock.now += 0.099  # just under batch_timeout_ms: the short batch still waits
        d.pump()
        await asyncio.sleep(0)
        under = len(backend.calls)
        clock.now += 0.001  # at it: released
        d.pump()
        answers = [answer(raw) for raw in await asyncio.gather(*tasks)]
        return {"by_size": by_size, "under": under, "batches": list(d.recent_batches), "calls": backend.calls, "answers": answers}

    r = asyncio.run(scenario())
    assert r["by_size"] == [("m", 3), ("m", 3)]
    assert r["under"] == 6
    assert r["batches"] == [("m", 3), ("m", 3), ("m", 1)]
    times = [t for _, _, t in r["calls"]]
    assert times == [1000.0] * 6 + [1000.1]  # two groups of backend calls: at once (size), after the timeout
    assert all(a.error is None for a in r["answers"])


def test_batches_group_by_model_and_start_together() -> None:
    async def scenario() -> tuple[list, list]:
        clock = Clock()
        backend = Recording(clock)
        h = build(backend, served=models("a", "b"), batch=(2, 50.0), clock=clock)
        tasks = [asyncio.create_task(h(frame(model=m, prompt=f"{m}{i}"), CTX)) for i, m in enumerate("abab")]
        await until(lambda: len(backend.calls) == 4, "both batches")
        await asyncio.gather(*tasks)
        return list(h.execution.dispatcher.recent_batches), [c[:2] for c in backend.calls]

    batches, calls = asyncio.run(scenario())
    assert batches == [("a", 2), ("b", 2)]
    assert sorted(calls) == [("a", "a0"), ("a", "a2"), ("b", "b1"), ("b", "b3")]  # concurrent: no order promised


def test_per_model_limit_holds_popped_requests_and_the_global_limit_keeps_the_rest_queued() -> None:
    async def scenario() -> dict[str, Any]:
        backend = Recording(gated=True)
        h = build(backend, served=models("m", max_concurrent_requests=2), max_concurrent=4)
        d = h.execution.dispatcher
        tasks = [asyncio.create_task(h(frame(prompt=f"p{i}"), CTX)) for i in range(7)]
        await until(lambda: backend.running == 2 and d.held == 2 and queued(h) == 3, "2 running, 2 held, 3 queued")
        backend.gate.set()
        answers = [answer(raw) for raw in await asyncio.gather(*tasks)]
        return {"answers": answers, "peak": backend.peak, "left": (d.running, d.held, queued(h))}

    r = asyncio.run(scenario())
    assert all(a.error is None for a in r["answers"]) and r["peak"] == 2 and r["left"] == (0, 0, 0)


# ---------------------------------------------------------------- queue full, expiry


def test_queue_full_at_the_edge_and_the_refused_frame_can_be_resent() -> None:
    async def scenario() -> dict[str, Any]:
        backend = Recording(gated=True)
        h = build(backend, max_concurrent=1, queue_sizes={"normal": 2})
        running = asyncio.create_task(h(frame(prompt="running"), CTX))
        await until(lambda: backend.running == 1, "the running call")
        under = asyncio.create_task(h(frame(prompt="one"), CTX))  # 1/2 queued
        await until(lambda: queued(h) == 1)
        at = asyncio.create_task(h(frame(prompt="two"), CTX))  # 2/2 queued: still accepted
        await until(lambda: queued(h) == 2)
        over_frame = frame(prompt="three")
        over = answer(await h(over_frame, CTX))  # the third would make 3/2
        backend.gate.set()
        served = [answer(raw) for raw in await asyncio.gather(running, under, at)]
        resent = answer(await h(over_frame, CTX))  # its digest was forgotten: a retry is served
        replayed = answer(await h(over_frame, CTX))  # ... once
        return locals()

    r = asyncio.run(scenario())
    assert r["over"].error == "normal queue full (2/2); try again later" and r["over"].total_cost == "0"
    assert all(a.error is None for a in r["served"])
    assert r["resent"].error is None and r["resent"].content == "done three"
    assert r["replayed"].error == "replay: this signed request was already received"


def test_deadline_passing_while_queued_gets_a_signed_error() -> None:
    async def scenario() -> dict[str, Any]:
        clock = Clock()
        backend = Recording(clock, gated=True)
        h = build(backend, max_concurrent=1, clock=clock)
        running = asyncio.create_task(h(frame(prompt="running"), CTX))
        await until(lambda: backend.running == 1)
        waiting = asyncio.create_task(h(frame(prompt="late", deadline_in=5), CTX))
        await until(lambda: queued(h) == 1)
        clock.now += 3  # before its deadline: still queued
        h.execution.dispatcher.pump()
        still = queued(h)
        clock.now += 4  # past it
        h.execution.dispatcher.pump()
        expired = answer(await waiting)
        backend.gate.set()
        served = answer(await running)
        return {"still": still, "expired": expired, "served": served, "calls": [c[1] for c in backend.calls], "left": queued(h)}

    r = asyncio.run(scenario())
    assert r["still"] == 1
    assert r["expired"].error.startswith("expired while queued: the request's deadline passed after 7.0 s in the queue")
    assert r["expired"].total_cost == "0" and r["served"].error is None
    assert r["calls"] == ["running"] and r["left"] == 0


@pytest.mark.parametrize("queued_path", [True, False])
def test_request_timeout_while_queued_gets_a_signed_error(queued_path: bool) -> None:
    async def scenario() -> tuple[_native.DecodedResponse, list[str], int | None]:
        backend = Recording()
        h = build(backend, max_concurrent=1, timeout=0.2, queued=queued_path)
        # the test itself holds the only backend slot, so the request can only wait
        async with h.execution.dispatcher.slot("m"):  # the direct path is the dispatcher too
            waiting = answer(await h(frame(prompt="waits"), CTX))
        return waiting, [c[1] for c in backend.calls], queued(h)

    waiting, calls, left = asyncio.run(scenario())
    assert waiting.error == "expired while queued: no backend slot within request_timeout_secs (0.2 s)"
    assert waiting.total_cost == "0" and calls == [] and left == 0


# ---------------------------------------------------------------- [gpu_allocation]


def pool_config(servers: list[OpenAIServer], strategy: str, affinity: list[dict] | None = None) -> Config:
    return Config.from_dict(
        {
            "llm_client": {"backend": "openai", "base_url": "http://127.0.0.1:{device}/v1", "max_retries": 0},
            "models": [{"name": n} for n in ("a", "b")],
            # the device ids here are the test servers' ports, so `{device}` lands on each
            "gpu_allocation": {"strategy": strategy, "devices": [s.port for s in servers], "model_affinity": affinity or []},
        }
    )


def served_by(servers: list[OpenAIServer]) -> list[list[str]]:
    return [[r.json["messages"][-1]["content"] for r in s.chat_requests] for s in servers]


@pytest.fixture
def servers():
    started = [OpenAIServer(strict_models=False).start() for _ in range(3)]
    try:
        yield started
    finally:
        for s in started:
            s.stop()


async def ask_all(h: RequestHandler, *requests: tuple[str, str]) -> list[_native.DecodedResponse]:
    out = []
    for model, prompt in requests:
        out.append(answer(await h(frame(model, prompt), CTX)))
    return out


def test_round_robin_over_device_servers(servers: list[OpenAIServer]) -> None:
    pool = device_pool_from_config(pool_config(servers, "round_robin"))
    assert [b.base_url for b in pool.backends.values()] == [s.base_url for s in servers]

    async def scenario() -> list[_native.DecodedResponse]:
        try:
            return await ask_all(build(pool, served=models("a", "b"), queued=False), *[("a", f"r{i}") for i in range(6)])
        finally:
            await pool.close()

    answers = asyncio.run(scenario())
    assert all(a.error is None and a.content == f"echo: r{i}" for i, a in enumerate(answers))
    assert served_by(servers) == [["r0", "r3"], ["r1", "r4"], ["r2", "r5"]]


def test_least_loaded_avoids_the_busy_device(servers: list[OpenAIServer]) -> None:
    pool = device_pool_from_config(pool_config(servers, "least_loaded"))
    servers[0].slow(0.5)  # the first request (on device 0) stays in flight a while

    async def scenario() -> list[_native.DecodedResponse]:
        h = build(pool, served=models("a", "b"), queued=False)
        try:
            slow = asyncio.create_task(h(frame("a", "slow"), CTX))
            await until(lambda: pool.in_flight[servers[0].port] == 1, "the slow call")
            meanwhile = await ask_all(h, ("a", "x"), ("b", "y"))
            slow_answer = answer(await slow)
            after = await ask_all(h, ("a", "z"))
            return [slow_answer, *meanwhile, *after]
        finally:
            await pool.close()

    answers = asyncio.run(scenario())
    assert all(a.error is None for a in answers)
    # while device 0 was busy both went to the next least loaded (device 1, the first on a tie); then device 0 again
    assert served_by(servers) == [["slow", "z"], ["x", "y"], []]


def test_affinity_pins_models_and_unpinned_use_all(servers: list[OpenAIServer]) -> None:
    pinned = [{"model": "a", "devices": [servers[2].port]}]
    pool = device_pool_from_config(pool_config(servers, "affinity", pinned))

    async def scenario() -> list[_native.DecodedResponse]:
        h = build(pool, served=models("a", "b"), queued=False)
        try:
            slow = asyncio.create_task(h(frame("b", "b-slow"), CTX))  # b anywhere: device 0 (least loaded)
            await until(lambda: pool.in_flight[servers[0].port] == 1)
            rest = await ask_all(h, ("a", "a1"), ("a", "a2"), ("b", "b2"))
            return [answer(await slow), *rest]
        finally:
            await pool.close()

    servers[0].slow(0.3)
    answers = asyncio.run(scenario())
    assert all(a.error is None for a in answers)
    assert served_by(servers) == [["b-slow"], ["b2"], ["a1", "a2"]]


def test_pins_hold_under_round_robin_and_must_name_configured_devices() -> None:
    pool = DevicePool({0: EchoBackend(["a"]), 1: EchoBackend(["a"]), 2: EchoBackend(["a"])}, "round_robin", {"a": (1, 2)})
    assert [pool.choose("a") for _ in range(4)] == [1, 2, 1, 2]
    assert [pool.choose("b") for _ in range(4)] == [0, 1, 2, 0]
    with pytest.raises(ValueError, match=r"model_affinity for 'a' names devices \[3\]; configured devices are \[0, 1\]"):
        DevicePool({0: EchoBackend([]), 1: EchoBackend([])}, "affinity", {"a": (3,)})
    assert device_url("http://localhost:800{device}/v1", 3) == "http://localhost:8003/v1"


def test_device_pool_lists_the_union_of_models(servers: list[OpenAIServer]) -> None:
    servers[1].models = [{"id": "only-on-1", "object": "model", "state": "loaded"}]
    servers[2].stop()  # one device down: the others still answer
    pool = device_pool_from_config(pool_config(servers, "round_robin"))

    async def listed() -> list[str]:
        try:
            return sorted(await pool.list_models())
        finally:
            await pool.close()

    assert asyncio.run(listed()) == sorted({"only-on-1"} | {m["id"] for m in DEFAULT_MODELS})


# ---------------------------------------------------------------- [resources]


class NvmlStandIn:
    """The few pynvml calls GpuProbe makes, for one GPU with `free` bytes free."""

    def __init__(self, free: int) -> None:
        self.free = free

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(free=self.free)


NO_GPU = GpuProbe(nvml=SimpleNamespace())  # an NVML that fails to initialise: no GPU seen


def governor(
    cpu: Callable[[], float] | None = None, gpu: GpuProbe = NO_GPU, devices: tuple[int, ...] = (), **config: Any
) -> ResourceGovernor:
    per_model = {name: ModelResources(**v) for name, v in config.pop("per_model", {}).items()}
    return ResourceGovernor(ResourcesConfig(per_model=per_model, **config), gpu_devices=devices, gpu=gpu, cpu=cpu)


MEMORY = {
    "a": {"memory_gb": 4},
    "under": {"memory_gb": 5.5},
    "at": {"memory_gb": 6},
    "over": {"memory_gb": 6.5},
    "huge": {"memory_gb": 10.5},
}


def test_memory_budget_with_a_queue_waits_then_runs() -> None:
    async def scenario() -> dict[str, Any]:
        backend = Recording(gated=True)
        h = build(backend, served=models(*MEMORY), resources=governor(max_memory_gb=10, per_model=MEMORY))
        busy = asyncio.create_task(h(frame("a", "holds 4 GB"), CTX))
        await until(lambda: backend.running == 1)
        same = asyncio.create_task(h(frame("a", "a again"), CTX))  # a already counts: no more memory
        over = asyncio.create_task(h(frame("over", "must wait"), CTX))
        await until(lambda: backend.running == 2 and h.execution.dispatcher.held == 1, "a second a-call and a held over")
        calls_while_busy = [c[1] for c in backend.calls]
        huge = answer(await h(frame("huge"), CTX))  # can never fit: refused, not queued
        backend.gate.set()
        answers = [answer(raw) for raw in await asyncio.gather(busy, same, over)]
        return locals()

    r = asyncio.run(scenario())
    assert r["calls_while_busy"] == ["holds 4 GB", "a again"]
    assert r["huge"].error == "model 'huge' needs 10.5 GB, more than this executor's max_memory_gb (10 GB)"
    assert all(a.error is None for a in r["answers"]) and r["answers"][2].content == "done must wait"


def test_gpu_required_needs_a_device_or_an_nvml_gpu() -> None:
    per_model = {"g": {"gpu_required": True}, "c": {"gpu_required": False}}

    async def ask(gov: ResourceGovernor) -> list[_native.DecodedResponse]:
        h = build(EchoBackend(["g", "c"]), served=models("g", "c"), queued=False, resources=gov)
        return [answer(await h(frame(m), CTX)) for m in ("g", "c")]

    refused, cpu_only = asyncio.run(ask(governor(per_model=per_model)))
    assert refused.error == (
        "model 'g' requires a GPU and this executor has none (no [gpu_allocation] devices configured and NVML sees no GPU)"
    )
    assert cpu_only.error is None
    assert all(a.error is None for a in asyncio.run(ask(governor(per_model=per_model, devices=(0,)))))
    assert all(a.error is None for a in asyncio.run(ask(governor(per_model=per_model, gpu=GpuProbe(NvmlStandIn(GIB))))))


@pytest.mark.parametrize("reserved, refused", [(1.9, False), (2.0, False), (2.1, True)])
def test_gpu_memory_reserved_edge_with_nvml(reserved: float, refused: bool) -> None:
    gov = governor(gpu=GpuProbe(NvmlStandIn(2 * GIB)), gpu_memory_reserved_gb=reserved)
    decoded = answer(asyncio.run(build(EchoBackend(["m"]), queued=False, resources=gov)(frame(), CTX)))
    assert decoded.error == (f"GPU memory low: 2.0 GB free, gpu_memory_reserved_gb is {reserved:g} GB" if refused else None)
    assert governor(gpu_memory_reserved_gb=reserved).refusal("m") is None  # without NVML: informational


@pytest.mark.parametrize("cpu, waits", [(79.9, False), (80.0, False), (80.1, True)])
def test_cpu_limit_edge_on_the_direct_path(cpu: float, waits: bool) -> None:
    """Above max_cpu_percent no new work starts: it waits in line (here until its timeout)."""
    gov = governor(cpu=lambda: cpu, max_cpu_percent=80)
    decoded = answer(asyncio.run(build(EchoBackend(["m"]), queued=False, timeout=0.3, resources=gov)(frame(), CTX)))
    assert decoded.error == ("expired while queued: no backend slot within request_timeout_secs (0.3 s)" if waits else None)


def test_cpu_above_the_limit_keeps_work_queued() -> None:
    async def scenario() -> dict[str, Any]:
        load = [95.0]
        backend = Recording()
        h = build(backend, resources=governor(cpu=lambda: load[0], max_cpu_percent=80))
        task = asyncio.create_task(h(frame(prompt="patient"), CTX))
        await until(lambda: queued(h) == 1)
        await asyncio.sleep(0)
        calls_while_busy = len(backend.calls)
        load[0] = 80.0
        h.execution.dispatcher.pump()
        return {"calls_while_busy": calls_while_busy, "answer": answer(await task)}

    r = asyncio.run(scenario())
    assert r["calls_while_busy"] == 0 and r["answer"].error is None


def test_cpu_sampler_reads_this_process() -> None:
    sampler = CpuSampler(sample_secs=0.0)
    sum(i * i for i in range(200_000))
    assert 0.0 <= sampler() <= 100.0


# ---------------------------------------------------------------- config wiring


def test_dispatcher_and_features_follow_the_config() -> None:
    plain = dispatcher_from_config(Config.from_dict({}))  # the direct path: batches of one, one priority
    assert plain.priority_multiplier is None and plain.max_concurrent_requests == 10
    assert plain.scheduler.max_batch_size == 1 and plain.scheduler.capacity("normal") == 200
    config = Config.from_dict(
        {
            "priority": {"enabled": True, "queue_sizes": {"low": 1, "normal": 2, "high": 3}},
            "batching": {"enabled": True, "max_batch_size": 4, "batch_timeout_ms": 50},
            "resources": {"max_memory_gb": 8, "per_model": {"m": {"memory_gb": 4}}},
            "gpu_allocation": {"devices": [0, 1]},
        }
    )
    d = dispatcher_from_config(config)
    assert d.priority_multiplier == 1.5 and d.max_concurrent_requests == 10
    assert d.scheduler.max_batch_size == 4 and d.scheduler.batch_timeout_ms == 50
    assert [d.scheduler.capacity(p) for p in ("low", "normal", "high")] == [1, 2, 3]
    assert not [
        f for f in inactive_features(config) if f.startswith(("[batching]", "[priority]", "[resources]", "[gpu_allocation]"))
    ]


# ---------------------------------------------------------------- throughput


@pytest.mark.parametrize("queued_path", [True, False], ids=["priority-queue", "direct"])
def test_200_requests_on_32_backend_slots_are_all_answered_within_the_bound(queued_path: bool) -> None:
    """Correctness under load (its speed is benches/bench_throughput.py's): every one of 200
    concurrent requests is answered, each with its own content, and the backend never sees
    more than max_concurrent_requests (32) calls at once."""
    from lloom_executor.backends.openai_compat import OpenAICompatibleBackend

    with OpenAIServer(strict_models=False, latency=0.05) as srv:

        async def scenario() -> list[_native.DecodedResponse]:
            backend = OpenAICompatibleBackend(srv.base_url, max_retries=0)
            h = build(backend, max_concurrent=32, queued=queued_path, queue_sizes={"normal": 200})
            try:
                return [answer(raw) for raw in await asyncio.gather(*(h(frame(prompt=f"p{i}"), CTX) for i in range(200)))]
            finally:
                await backend.close()

        answers = asyncio.run(scenario())
        peaks = [sum(running.values()) for _, running in srv.in_flight_at_starts()]
    assert all(a.error is None for a in answers) and len({a.content for a in answers}) == 200
    assert len(peaks) == 200 and max(peaks) <= 32


# ---------------------------------------------------------------- the configured service, over libp2p


def test_configured_service_queues_and_spreads_over_devices(tmp_path: Path, servers: list[OpenAIServer]) -> None:
    import httpx

    from lloom_executor.client import LloomClient
    from lloom_executor.identity import load_identity
    from lloom_executor.service import ExecutorService

    config = echo_service_config(
        tmp_path,
        llm_client={"backend": "openai", "base_url": "http://127.0.0.1:{device}/v1", "max_retries": 0},
        models=[{"name": "m", "inbound_price": "0.000001", "outbound_price": "0.000001"}, {"name": "g"}],
        priority={"enabled": True},
        batching={"enabled": True, "max_batch_size": 4, "batch_timeout_ms": 20},
        resources={"per_model": {"g": {"gpu_required": True}}},
        gpu_allocation={"strategy": "round_robin", "devices": [s.port for s in servers[:2]]},
    )
    assert not inactive_features(config)
    price = str(10**12)

    async def scenario() -> dict[str, Any]:
        service = ExecutorService(config, load_identity(config.identity, environ={}))
        addrs = await service.start()
        peer = service.identity.peer_id
        try:
            async with LloomClient(bootstrap=[addrs[0]], enable_kad=False, enable_gossip=False) as client:
                answers = await asyncio.gather(
                    *(client.request(peer, "m", f"q{i}", inbound_price=price, outbound_price=price) for i in range(4))
                )
                gpu = await client.request(peer, "g", "needs a gpu", inbound_price="0", outbound_price="0")
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(service.metrics_server.url)).text
            batches = service.dispatcher.batches
        finally:
            await service.stop()
        return locals()

    r = asyncio.run(scenario())
    assert all(a.error is None and a.content == f"echo: q{i}" for i, a in enumerate(r["answers"]))
    assert r["gpu"].error is None  # the two configured devices count as GPUs: gpu_required is satisfied
    assert [len(s.chat_requests) for s in servers] == [3, 2, 0]  # five calls, round robin over the two devices
    assert r["batches"] >= 1
    assert 'lloom_executor_queue_size{priority="normal"} 0.0' in r["metrics"]
