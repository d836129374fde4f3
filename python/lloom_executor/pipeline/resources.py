"""`[resources]` and the per-model needs of `[[models]]`: whether a request may
start now, must wait, or can never run here.

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

Per model (`[[models]]`), with the same declared-budget accounting as
`memory_gb`: a model holds its need while it has at least one backend call in
flight (once, however many of its calls run) and nothing when idle; an idle
model starts when `in use + need <= total` (at the total: starts); a model
whose need alone is above the total is refused.

* `gpu_memory_gb` against GPU memory: the total memory NVML reports for the
  considered GPUs (the `[gpu_allocation] devices`, else every GPU NVML sees),
  each less `gpu_memory_reserved_gb` (the reserve is per GPU, as in the
  free-memory check above), read once at start. Without NVML, or with none of
  the considered GPUs visible to it, nothing is known to account against:
  `gpu_memory_gb` is not enforced and the governor logs one warning per such
  model when it is built (at `start`).
* `cpu_cores` against the cores this process may run on
  (`os.sched_getaffinity`, else `os.cpu_count()`).
* `max_tokens_per_second`: a ceiling on the model's output-token rate, all its
  requests together (`TokenRate`). A request of that model starts only while
  the model's bucket is not in debt; when its backend call returns, its actual
  outbound tokens are debited (see `TokenRate` for why after, not before).
  While in debt the model's requests wait in the dispatcher (bounded by their
  deadline and `request_timeout_secs`), or are refused without a queue;
  `ready_in(model)` says for how long.

Refusal and wait reasons are sentences that go to the client in a signed error.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..config.schema import Config, ModelConfig, ResourcesConfig

log = logging.getLogger(__name__)

GIB = 1024**3
DEFAULT_SAMPLE_SECS = 1.0
DEBT_EPSILON = 1e-9  # tokens; float refill arithmetic lands a hair below zero at the computed time


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask, else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class TokenRate:
    """`max_tokens_per_second` of one model: a token bucket that may go into debt.

    Refilled continuously at `rate` tokens per second up to `capacity` (one
    second's worth, at least 1 token), starting full. A request may start while
    the level is not negative; when its backend call returns, the tokens it
    actually produced are debited, so the level may drop below zero, and the
    model's next request waits until the refill has paid the debt back.

    Why debit after the call rather than reserve before it: how many tokens a
    call produces is only known when it returns; reserving `max_tokens` up
    front would hold back up to 4096 tokens per request (the default limit)
    that most answers never use, and would serialise the model far below the
    rate. Charging the real count afterwards keeps the long-run rate at or
    below `rate` (every token is paid for before the next start) while calls
    that start together can still run together on the model server. The price
    is a burst: calls started while the bucket was not in debt all run, and
    their debt is paid off afterwards.
    """

    __slots__ = ("rate", "capacity", "_level", "_at")

    def __init__(self, rate: float, now: float) -> None:
        if not rate > 0:
            raise ValueError(f"max_tokens_per_second must be > 0, got {rate!r}")
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate)
        self._level = self.capacity
        self._at = now

    def level(self, now: float) -> float:
        """Tokens in the bucket now (negative: debt)."""
        if now > self._at:
            self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
            self._at = now
        return self._level

    def ready_in(self, now: float) -> float:
        """Seconds until a request may start (0.0: now)."""
        level = self.level(now)
        return 0.0 if level >= -DEBT_EPSILON else -level / self.rate

    def spend(self, tokens: int, now: float) -> None:
        """Debit what one call produced (the level may go negative)."""
        self._level = self.level(now) - max(0, tokens)


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

    def __init__(
        self, nvml: Any = None, sample_secs: float = DEFAULT_SAMPLE_SECS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._nvml = nvml
        self._handles: list[Any] = []
        self.sample_secs = sample_secs
        self._clock = clock
        self._free: dict[int, int] = {}
        self._total: dict[int, int] | None = None
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

    def total_bytes(self) -> dict[int, int]:
        """{NVML device index: total memory in bytes}, read once (it does not change)."""
        if self._total is None:
            total: dict[int, int] = {}
            for index, handle in enumerate(self._handles):
                try:
                    total[index] = int(self._nvml.nvmlDeviceGetMemoryInfo(handle).total)
                except Exception as exc:
                    log.warning("resources: NVML memory read of GPU %d failed: %s", index, exc)
            self._total = total
        return self._total


class ResourceGovernor:
    """The `[resources]` and `[[models]]` start decisions; one per executor, used from the event loop.

    `refusal(model)`: a reason this request cannot run here now or ever (refuse).
    `wait_reason(model)`: a reason it cannot *start* yet (memory, GPU memory,
    cores, token rate); it may later. `ready_in(model)`: seconds until the
    model's token rate lets it start (0.0: now), the one wait that ends by
    time alone. `cpu_busy()`: a reason new work should not start (CPU above
    the limit). `started(model)` / `finished(model)` bracket every backend
    call; `produced(model, tokens)` charges a finished call's output tokens.

    Injectable for tests: `gpu` (a `GpuProbe` over a stand-in NVML), `cpu`
    (percent), `cpu_total` (usable cores) and `clock` (monotonic seconds).
    """

    def __init__(
        self,
        config: ResourcesConfig,
        *,
        models: Iterable[ModelConfig] = (),
        gpu_devices: Sequence[int] = (),
        gpu: GpuProbe | None = None,
        cpu: Callable[[], float] | None = None,
        cpu_total: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.gpu_devices = tuple(gpu_devices)
        self.gpu = gpu if gpu is not None else GpuProbe()
        if cpu is None and config.max_cpu_percent < 100.0:
            cpu = CpuSampler()
        self._cpu = cpu
        self._clock = clock
        self._running: dict[str, int] = {}  # model -> backend calls in flight
        if config.gpu_memory_reserved_gb and not self.gpu.available:
            log.info("resources: gpu_memory_reserved_gb = %g is informational (no NVML)", config.gpu_memory_reserved_gb)
        models = list(models)
        self.cpu_total = cpu_total if cpu_total is not None else usable_cores()
        self._cores = {m.name: m.cpu_cores for m in models if m.cpu_cores}
        self._gpu_gb: dict[str, float] = {}
        self.gpu_budget_gb: float | None = None  # None: gpu_memory_gb is not enforced
        wanted = {m.name: m.gpu_memory_gb for m in models if m.gpu_memory_gb is not None}
        if wanted:
            self.gpu_budget_gb = self._gpu_budget(wanted)
            if self.gpu_budget_gb is not None:
                self._gpu_gb = wanted
        now = clock()
        self._rates = {m.name: TokenRate(m.max_tokens_per_second, now) for m in models if m.max_tokens_per_second}

    def _gpu_budget(self, wanted: dict[str, float]) -> float | None:
        """GB of GPU memory to account `gpu_memory_gb` against; None (and a warning per model) when unknown."""
        totals = self.gpu.total_bytes() if self.gpu.available else {}
        considered = [d for d in (self.gpu_devices or sorted(totals)) if d in totals]
        if not considered:
            why = "no GPU visible"
            if totals and self.gpu_devices:
                why = f"none of [gpu_allocation] devices {list(self.gpu_devices)} is visible to NVML"
            for name, gb in wanted.items():
                log.warning("gpu_memory_gb = %g for %s: %s, not enforced", gb, name, why)
            return None
        reserved = self.config.gpu_memory_reserved_gb
        budget = sum(max(0.0, totals[d] / GIB - reserved) for d in considered)
        log.info(
            "resources: gpu_memory_gb accounted against %.1f GB (GPUs %s, %g GB reserved on each)",
            budget,
            considered,
            reserved,
        )
        return budget

    @property
    def has_gpu(self) -> bool:
        """A GPU is configured ([gpu_allocation] devices) or NVML sees one."""
        return bool(self.gpu_devices) or self.gpu.available

    def memory_gb(self, model: str) -> float:
        entry = self.config.per_model.get(model)
        return entry.memory_gb if entry is not None else 0.0

    def gpu_memory_gb(self, model: str) -> float:
        """The model's `gpu_memory_gb` where it is enforced, else 0."""
        return self._gpu_gb.get(model, 0.0)

    def cpu_cores(self, model: str) -> int:
        return self._cores.get(model, 0)

    def _busy(self) -> list[str]:
        return [m for m, n in self._running.items() if n > 0]

    def in_use(self, need: Callable[[str], float]) -> float:
        """Sum of `need(model)` (`memory_gb`, `gpu_memory_gb`, `cpu_cores`) over models
        with at least one backend call in flight."""
        return sum(need(m) for m in self._busy())

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
        gpu_need, gpu_budget = self.gpu_memory_gb(model), self.gpu_budget_gb
        if gpu_budget is not None and gpu_need > gpu_budget:
            return (
                f"model {model!r} needs {gpu_need:g} GB of GPU memory (gpu_memory_gb), more than this "
                f"executor's GPUs offer ({gpu_budget:.1f} GB after gpu_memory_reserved_gb)"
            )
        cores = self.cpu_cores(model)
        if cores > self.cpu_total:
            return f"model {model!r} needs {cores} CPU cores (cpu_cores), more than the {self.cpu_total} this executor may use"
        reserved = self.config.gpu_memory_reserved_gb
        if reserved and self.gpu.available:
            free = self.gpu.free_bytes()
            considered = [free[d] for d in (self.gpu_devices or free) if d in free]
            best = max(considered, default=0) / GIB
            if best < reserved:
                return f"GPU memory low: {best:.1f} GB free, gpu_memory_reserved_gb is {reserved:g} GB"
        return None

    def wait_reason(self, model: str) -> str | None:
        """Why a request of `model` cannot start now (None: it can); the token rate first."""
        rate = self._rates.get(model)
        if rate is not None and (wait := rate.ready_in(self._clock())) > 0:
            return (
                f"model {model!r} is over its max_tokens_per_second ({rate.rate:g} tokens/s): it may start again in {wait:.1f} s"
            )
        if self._running.get(model, 0) > 0:
            return None  # the model already holds what it needs
        # (the model's need, the budget it is accounted against (None: not enforced), why it waits)
        limits: tuple[tuple[Callable[[str], float], float | None, str], ...] = (
            (
                self.memory_gb,
                self.config.max_memory_gb,
                (
                    "not enough memory for model {model!r}: it needs {need:g} GB and {used:g} of "
                    "max_memory_gb {budget:g} GB are in use by {holders}"
                ),
            ),
            (
                self.gpu_memory_gb,
                self.gpu_budget_gb,
                (
                    "not enough GPU memory for model {model!r}: it needs {need:g} GB (gpu_memory_gb) and "
                    "{used:g} of {budget:.1f} GB are in use by {holders}"
                ),
            ),
            (
                self.cpu_cores,
                self.cpu_total,
                (
                    "not enough CPU cores for model {model!r}: it needs {need} (cpu_cores) and {used} "
                    "of the {budget} this executor may use are in use by {holders}"
                ),
            ),
        )
        for need_of, budget, sentence in limits:
            need = need_of(model)
            if budget is None or not need:
                continue
            used = self.in_use(need_of)
            if used + need > budget:
                return sentence.format(model=model, need=need, used=used, budget=budget, holders=self._holders(need_of))
        return None

    def _holders(self, need: Callable[[str], float]) -> str:
        return ", ".join(sorted(m for m in self._busy() if need(m)))

    def ready_in(self, model: str) -> float:
        """Seconds until `model`'s token rate lets a request start (0.0: now, or no rate set)."""
        rate = self._rates.get(model)
        return 0.0 if rate is None else rate.ready_in(self._clock())

    def produced(self, model: str, tokens: int) -> None:
        """A backend call of `model` returned `tokens` output tokens: charge its token rate."""
        rate = self._rates.get(model)
        if rate is not None:
            rate.spend(tokens, self._clock())

    def metered(self, model: str) -> bool:
        """Whether `model` has a `max_tokens_per_second` (its output tokens are charged)."""
        return model in self._rates

    def throttled(self) -> dict[str, float]:
        """{model: seconds until it may start again} for models over their token rate now."""
        now = self._clock()
        return {m: wait for m, rate in self._rates.items() if (wait := rate.ready_in(now)) > 0}

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


def resources_configured(config: ResourcesConfig, models: Iterable[ModelConfig] = ()) -> bool:
    """Whether any `[resources]` limit or per-model need (`[[models]]` max_tokens_per_second,
    gpu_memory_gb, cpu_cores) is set (else no governor is needed)."""
    return (
        config.max_memory_gb is not None
        or config.max_cpu_percent < 100.0
        or bool(config.gpu_memory_reserved_gb)
        or bool(config.per_model)
        or any(m.max_tokens_per_second or m.gpu_memory_gb is not None or m.cpu_cores for m in models)
    )


def governor_from_config(config: Config) -> ResourceGovernor | None:
    """The executor's governor when anything it decides is configured, else None."""
    if not resources_configured(config.resources, config.models):
        return None
    return ResourceGovernor(config.resources, models=config.models, gpu_devices=config.gpu_allocation.devices)
