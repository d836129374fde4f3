"""`[gpu_allocation]`: one backend instance per device, one chosen per request.

An executor does not drive GPUs itself; its backend (LM Studio, vLLM, llama.cpp
server ...) does. "Several GPUs" therefore means several model servers, one per
GPU, and `[gpu_allocation]` spreads requests over them:

* `devices = [0, 1, ...]` creates one backend instance of the configured
  `[llm_client] backend` kind per device. Each instance's `base_url` is
  `[llm_client] base_url` with every `{device}` replaced by the device id as
  written in `devices`, e.g. `base_url = "http://localhost:800{device}/v1"`
  with devices [0, 1] talks to ports 8000 and 8001, or
  `"http://gpu{device}.lan:1234/v1"` to one host per GPU. Without `{device}`
  every instance talks to the same server (a warning says so at start: the
  pool then only splits that server's accounting).
* Candidates for a model: its `[[gpu_allocation.model_affinity]]` devices when
  it has an entry (under every strategy: a pin says where a model can run, as
  the manual's example pairs `round_robin` with pins), else all devices.
* `round_robin`: the candidates in turn (one turn counter per candidate set).
  `least_loaded`: the candidate with the fewest calls in flight through this
  pool, the first listed on a tie. `affinity`: pinned models on their pins,
  the others anywhere, choosing the least loaded (pins are the point of it).

`DevicePool` is itself an `LlmBackend`, so the request path needs no change.
It adds no failures of its own to a call: a device backend's error (a
`BackendError`, already redacted by that backend) passes through unchanged, so
the request path sees the same classes with or without a pool.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence

from ..backends.base import Completion, CompletionRequest, CompletionStream, LlmBackend, ModelInfo
from ..config.schema import Config, GpuAllocationConfig

log = logging.getLogger(__name__)

DEVICE_PLACEHOLDER = "{device}"
STRATEGIES = ("round_robin", "least_loaded", "affinity")


def device_url(base_url: str, device: int) -> str:
    """`base_url` with `{device}` replaced by the device id."""
    return base_url.replace(DEVICE_PLACEHOLDER, str(device))


class DevicePool(LlmBackend):
    """Backends by device id, chosen per call by strategy; counts calls in flight per device."""

    def __init__(
        self,
        backends: Mapping[int, LlmBackend],
        strategy: str = "round_robin",
        affinity: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        if not backends:
            raise ValueError("a device pool needs at least one device")
        if strategy not in STRATEGIES:
            raise ValueError(f"gpu_allocation.strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.backends = dict(backends)
        self.devices = tuple(self.backends)
        self.strategy = strategy
        self.affinity: dict[str, tuple[int, ...]] = {}
        for model, devices in (affinity or {}).items():
            unknown = [d for d in devices if d not in self.backends]
            if unknown or not devices:
                raise ValueError(
                    f"gpu_allocation.model_affinity for {model!r} names devices {list(devices)}; "
                    f"configured devices are {list(self.devices)}"
                )
            self.affinity[model] = tuple(devices)
        self.in_flight: dict[int, int] = {d: 0 for d in self.devices}
        self.calls: dict[int, int] = {d: 0 for d in self.devices}  # calls made, per device
        self._turns: dict[tuple[int, ...], itertools.count[int]] = {}

    def candidates(self, model: str) -> tuple[int, ...]:
        """The devices `model` may run on: its pins, else every device."""
        return self.affinity.get(model, self.devices)

    def choose(self, model: str) -> int:
        """The device the next call for `model` goes to."""
        candidates = self.candidates(model)
        if self.strategy == "round_robin":
            turn = self._turns.setdefault(candidates, itertools.count())
            return candidates[next(turn) % len(candidates)]
        return min(candidates, key=lambda d: self.in_flight[d])  # min keeps the first on a tie

    async def complete(self, request: CompletionRequest) -> Completion:
        device = self.choose(request.model)
        self.in_flight[device] += 1
        self.calls[device] += 1
        try:
            return await self.backends[device].complete(request)
        finally:
            self.in_flight[device] -= 1

    def stream(self, request: CompletionRequest) -> CompletionStream:
        """The chosen device's own stream (diagnostics); streams are not counted as in flight."""
        device = self.choose(request.model)
        self.calls[device] += 1
        return self.backends[device].stream(request)

    async def list_models(self) -> list[str]:
        return [info.id for info in await self.model_details()]

    async def model_details(self) -> list[ModelInfo]:
        """The union over devices (a model is loaded if loaded on any); fails only if every device fails."""
        results = await asyncio.gather(*(b.model_details() for b in self.backends.values()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            raise errors[0]
        merged: dict[str, ModelInfo] = {}
        for device, result in zip(self.devices, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("gpu_allocation: device %s did not list its models: %s", device, result)
                continue
            for info in result:
                seen = merged.get(info.id)
                if seen is None or (info.loaded and not seen.loaded):
                    merged[info.id] = info
        return list(merged.values())

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.backends.values()), return_exceptions=True)


def device_pool(
    allocation: GpuAllocationConfig,
    backend_for: Callable[[int], LlmBackend],
) -> DevicePool:
    """A pool over `allocation.devices`, `backend_for(device)` building each instance."""
    affinity = {a.model: a.devices for a in allocation.model_affinity}
    return DevicePool({d: backend_for(d) for d in allocation.devices}, allocation.strategy, affinity)


def device_pool_from_config(config: Config) -> DevicePool:
    """One `[llm_client]` backend per `[gpu_allocation]` device, `{device}` in base_url replaced."""
    from ..backends.registry import create_backend

    llm = config.llm_client
    if len(config.gpu_allocation.devices) > 1 and DEVICE_PLACEHOLDER not in llm.base_url and llm.backend != "echo":
        log.warning(
            "[gpu_allocation] %d devices but [llm_client] base_url has no {device}: every device talks to %s",
            len(config.gpu_allocation.devices),
            llm.base_url,
        )

    def backend_for(device: int) -> LlmBackend:
        if llm.backend == "echo":
            return create_backend("echo", models=[m.name for m in config.models])
        return create_backend(
            llm.backend,
            base_url=device_url(llm.base_url, device),
            api_key=llm.api_key,
            timeout_secs=llm.timeout_secs,
            max_retries=llm.max_retries,
        )

    pool = device_pool(config.gpu_allocation, backend_for)
    log.info(
        "gpu_allocation: %s over devices %s%s",
        pool.strategy,
        list(pool.devices),
        "".join(f"; {m} on {list(d)}" for m, d in pool.affinity.items()),
    )
    return pool
