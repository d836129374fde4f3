"""`[resources]`: whether a request may start now, must wait, or can never run here.

What each limit really measures (nothing here reads a model server's memory):

* `max_memory_gb` vs `[resources.per_model] memory_gb` — a *declared* budget,
  not a measurement. A model counts its configured `memory_gb` while it has at
  least one backend call in flight (one copy per model, however many of its
  requests run at once) and nothing when idle: the model is taken to be loaded
  for as long as it works and unloadable when it does not (what LM Studio's JIT
  loading and vLLM-per-model setups do). A request for an idle model may start
  when `in use + memory_gb <= max_memory_gb` (at the limit: starts; above:
  waits). A model whose `memory_gb` alone exceeds `max_memory_gb` can never run
  and is refused. Models without a `per_model` entry count 0 GB.
* `gpu_required` — refused when this executor has no GPU: no
  `[gpu_allocation] devices` configured *and* NVML (the `pynvml` module of
  nvidia-ml-py) sees no GPU.
* `max_cpu_percent` — this process's CPU time (psutil, user + system, all its
  threads) as a percent of the whole machine (psutil's per-process value divided
  by the number of logical CPUs), sampled at most once per `sample_secs`. Above
  the limit, queued work stays in its queue until it drops (or it expires);
  without a queue (neither `[priority]` nor `[batching]`) the request is
  refused. At 100 (the default) it is never sampled.
* `gpu_memory_reserved_gb` — informational unless NVML is present; with NVML a
  request is refused when no considered GPU (the configured devices, else every
  GPU NVML sees) has at least that much memory free (sampled like the CPU).
* `swap_enabled` is not acted on (the executor does not manage the OS's swap).

Refusal and wait reasons are sentences that go to the client in a signed error.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..config.schema import ResourcesConfig

log = logging.getLogger(__name__)

GIB = 1024**3
DEFAULT_SAMPLE_SECS = 1.0


class CpuSampler:
    """This process's CPU use in percent of the machine, cached for `sample_secs`."""

    def __init__(self, sample_secs: float = DEFAULT_SAMPLE_SECS, clock: Callable[[], float] = time.monotonic) -> None:
        import psutil

        self._process = psutil.Process()
        self._cpus = psutil.cpu_count() or 1
        self._process.cpu_percent(None)  # the first reading only starts the interval
        self.sample_secs = sample_secs
        self._clock = clock
        self._at = clock()
        self._value = 0.0

    def __call__(self) -> float:
        now = self._clock()
        if now - self._at >= self.sample_secs:
            self._at = now
            self._value = self._process.cpu_percent(None) / self._cpus
        return self._value


class GpuProbe:
    """GPU count and free memory via NVML, when importable and a GPU exists.

    `nvml`: the `pynvml` module or a stand-in with the same calls; None imports
    pynvml. Without NVML (`available` false) nothing here is measured.
    """

    def __init__(self, nvml: Any = None, sample_secs: float = DEFAULT_SAMPLE_SECS, clock: Callable[[], float] = time.monotonic) -> None:
        self._nvml = nvml
        self._handles: list[Any] = []
        self.sample_secs = sample_secs
        self._clock = clock
        self._free: dict[int, int] = {}
        self._at: float | None = None
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self._nvml.nvmlDeviceGetCount())]
        except Exception as exc:  # ImportError, NVMLError (no driver or library)
            log.info("resources: NVML unavailable (%s: %s); GPU memory is not measured", type(exc).__name__, exc)
            self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    @property
    def count(self) -> int:
        return len(self._handles)

    def free_bytes(self) -> dict[int, int]:
        """{NVML device index: free bytes}, cached for `sample_secs`; devices that fail to read are left out."""
        now = self._clock()
        if self._at is not None and now - self._at < self.sample_secs:
            return self._free
        free: dict[int, int] = {}
        for index, handle in enumerate(self._handles):
            try:
                free[index] = int(self._nvml.nvmlDeviceGetMemoryInfo(handle).free)
            except Exception as exc:
                log.warning("resources: NVML memory read of GPU %d failed: %s", index, exc)
        self._free, self._at = free, now
        return free


class ResourceGovernor:
    """The `[resources]` decisions; one instance per executor, used from the event loop.

    `refusal(model)`: a reason this request cannot run here now or ever (refuse).
    `wait_reason(model)`: a reason it cannot *start* yet (memory budget); it may later.
    `cpu_busy()`: a reason new work should not start (CPU above the limit).
    `started(model)` / `finished(model)` bracket every backend call.
    """

    def __init__(
        self,
        config: ResourcesConfig,
        *,
        gpu_devices: Sequence[int] = (),
        gpu: GpuProbe | None = None,
        cpu: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.gpu_devices = tuple(gpu_devices)
        self.gpu = gpu if gpu is not None else GpuProbe()
        if cpu is None and config.max_cpu_percent < 100.0:
            cpu = CpuSampler()
        self._cpu = cpu
        self._running: dict[str, int] = {}  # model -> backend calls in flight
        if config.gpu_memory_reserved_gb and not self.gpu.available:
            log.info("resources: gpu_memory_reserved_gb = %g is informational (no NVML)", config.gpu_memory_reserved_gb)

    @property
    def has_gpu(self) -> bool:
        """A GPU is configured ([gpu_allocation] devices) or NVML sees one."""
        return bool(self.gpu_devices) or self.gpu.available

    def memory_gb(self, model: str) -> float:
        entry = self.config.per_model.get(model)
        return entry.memory_gb if entry is not None else 0.0

    def memory_in_use_gb(self) -> float:
        """Sum of `memory_gb` over models with at least one backend call in flight."""
        return sum(self.memory_gb(m) for m, n in self._running.items() if n > 0)

    def refusal(self, model: str) -> str | None:
        entry = self.config.per_model.get(model)
        if entry is not None and entry.gpu_required and not self.has_gpu:
            return (
                f"model {model!r} requires a GPU and this executor has none "
                "(no [gpu_allocation] devices configured and NVML sees no GPU)"
            )
        limit = self.config.max_memory_gb
        need = self.memory_gb(model)
        if limit is not None and need > limit:
            return f"model {model!r} needs {need:g} GB, more than this executor's max_memory_gb ({limit:g} GB)"
        reserved = self.config.gpu_memory_reserved_gb
        if reserved and self.gpu.available:
            free = self.gpu.free_bytes()
            considered = [free[d] for d in (self.gpu_devices or free) if d in free]
            best = max(considered, default=0) / GIB
            if best < reserved:
                return f"GPU memory low: {best:.1f} GB free, gpu_memory_reserved_gb is {reserved:g} GB"
        return None

    def wait_reason(self, model: str) -> str | None:
        limit = self.config.max_memory_gb
        if limit is None or self._running.get(model, 0) > 0:
            return None  # no budget, or the model already counts
        need = self.memory_gb(model)
        used = self.memory_in_use_gb()
        if used + need <= limit:
            return None
        busy = sorted(m for m, n in self._running.items() if n > 0 and self.memory_gb(m))
        return (
            f"not enough memory for model {model!r}: it needs {need:g} GB and {used:g} of "
            f"max_memory_gb {limit:g} GB are in use by {', '.join(busy)}"
        )

    def cpu_busy(self) -> str | None:
        if self._cpu is None:
            return None
        used = self._cpu()
        limit = self.config.max_cpu_percent
        if used > limit:
            return f"executor busy: CPU at {used:.1f}% (max_cpu_percent {limit:g}%)"
        return None

    def started(self, model: str) -> None:
        self._running[model] = self._running.get(model, 0) + 1

    def finished(self, model: str) -> None:
        n = self._running.get(model, 0) - 1
        if n > 0:
            self._running[model] = n
        else:
            self._running.pop(model, None)


def resources_configured(config: ResourcesConfig) -> bool:
    """Whether any `[resources]` limit is set (else no governor is needed)."""
    return (
        config.max_memory_gb is not None
        or config.max_cpu_percent < 100.0
        or bool(config.gpu_memory_reserved_gb)
        or bool(config.per_model)
    )
