"""An instance pool: several servers of one backend, one chosen per call, with health.

One mechanism for both kinds of pool an operator configures: `[gpu_allocation]`
devices (`{device}` in `base_url`, one instance per device) and a list of URLs
(`base_urls`). Why a pool needs more than a chooser: an instance that dies
must not take every Nth request down with it, and one that comes back must
get work again without a restart.

* Choice: `round_robin` (the candidates in turn), `least_loaded` (fewest calls
  in flight through this pool, streams included; the first listed on a tie) or
  `affinity` (a model's pinned instances, the least loaded of them). Pins
  (`affinity`) say where a model may run under every strategy.
* Health, from request outcomes: a call that fails with the instance's fault
  (`BackendUnavailable`, `BackendServerError`, `BackendTimeout`,
  `BackendProtocolError`) counts against it; `failure_threshold` of them in a
  row take it out (circuit open: it gets no calls). Refusals that say nothing
  about the instance (401, 404, 429, a bad request) do not count: taking every
  instance out for a wrong API key would hide the real error behind "no
  instance up".
* Health, from probes: every `probe_interval_secs` (once `start`ed) each
  instance lists its models within `probe_timeout_secs`; a failure counts like
  a failed call, a success brings a taken-out instance back in. Each state
  change is one log line.
* Failover: a call whose instance failed before any of its answer arrived --
  `BackendUnavailable`, which the built-in backends raise only when no response
  head came back (connection refused, reset before the answer) -- is tried once
  more on another instance that is up, inside the same call, so the caller's
  deadline and its one charge (`[openai_limits]` wraps the pool, not the
  instances) hold. A stream is retried only while it has produced nothing;
  after its first delta an error ends it, as an answer cannot be spliced.
* Nothing up among the candidates: `BackendUnavailable` at once, naming the
  pool, without waiting for a connect timeout per dead instance.

The pool is itself an `LlmBackend`, so the request path does not know it is there;
an instance's own `BackendError` (already redacted) reaches the caller unchanged.
asyncio only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import (
    BackendError,
    BackendProtocolError,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    Completion,
    CompletionRequest,
    CompletionStream,
    LlmBackend,
    ModelInfo,
    PromptCount,
    Usage,
)

log = logging.getLogger(__name__)

STRATEGIES = ("round_robin", "least_loaded", "affinity")
INSTANCE_FAULTS = (BackendUnavailable, BackendServerError, BackendTimeout, BackendProtocolError)
"""Failures that say the instance is unwell (they count toward taking it out)."""


@dataclass(frozen=True)
class HealthPolicy:
    """When an instance is taken out and how it is probed back in."""

    failure_threshold: int = 3
    probe_interval_secs: float = 10.0
    probe_timeout_secs: float = 5.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.probe_interval_secs <= 0 or self.probe_timeout_secs <= 0:
            raise ValueError("failure_threshold must be >= 1, probe interval and timeout > 0")


@dataclass
class Instance:
    """One server of the pool and what the pool knows of it."""

    key: Hashable
    label: str  # for logs, metrics and /health/detailed: "device 0" or the (credential-free) URL
    backend: LlmBackend
    up: bool = True
    in_flight: int = 0
    calls: int = 0
    failures: int = 0  # failures counted against it, ever
    failures_in_a_row: int = 0
    retried_elsewhere: int = 0  # calls that failed here before any answer and went to another instance
    last_error: str | None = None
    down_since: float | None = field(default=None, repr=False)

    def snapshot(self) -> dict[str, Any]:
        return {
            "instance": self.label,
            "up": self.up,
            "in_flight": self.in_flight,
            "calls": self.calls,
            "failures": self.failures,
            "retried_elsewhere": self.retried_elsewhere,
            "last_error": self.last_error,
            "down_for_secs": None if self.down_since is None else round(time.monotonic() - self.down_since, 3),
        }


class InstancePool(LlmBackend):
    """Instances by key (a device id, a URL's position), chosen per call; see the module doc.

    `name` is the backend's name in logs and metrics; `labels` name each instance
    (default: str(key)). `affinity` maps a model to the keys it may run on.
    """

    def __init__(
        self,
        backends: Mapping[Hashable, LlmBackend],
        strategy: str = "round_robin",
        affinity: Mapping[str, Sequence[Hashable]] | None = None,
        *,
        name: str = "llm_client",
        labels: Mapping[Hashable, str] | None = None,
        policy: HealthPolicy | None = None,
        affinity_setting: str = "gpu_allocation.model_affinity",
    ) -> None:
        if not backends:
            raise ValueError(f"backend {name!r}: a pool needs at least one instance")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.name = name
        self.strategy = strategy
        self.policy = policy or HealthPolicy()
        self.backends = dict(backends)
        self.keys = tuple(self.backends)
        self.instances = {k: Instance(k, (labels or {}).get(k, str(k)), b) for k, b in self.backends.items()}
        self.affinity: dict[str, tuple[Hashable, ...]] = {}
        for model, keys in (affinity or {}).items():
            unknown = [k for k in keys if k not in self.backends]
            if unknown or not keys:
                raise ValueError(
                    f"{affinity_setting} for {model!r} names devices {list(keys)}; configured devices are {list(self.keys)}"
                )
            self.affinity[model] = tuple(keys)
        self._turns: dict[tuple[Hashable, ...], itertools.count[int]] = {}
        self._probe_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"InstancePool({self.name!r}, {[i.label for i in self.instances.values()]}, {self.strategy!r})"

    # ------------------------------------------------------------------ views kept for callers of the device pool
    @property
    def devices(self) -> tuple[Hashable, ...]:
        return self.keys

    @property
    def in_flight(self) -> dict[Hashable, int]:
        return {k: i.in_flight for k, i in self.instances.items()}

    @property
    def calls(self) -> dict[Hashable, int]:
        return {k: i.calls for k, i in self.instances.items()}

    def health(self) -> list[dict[str, Any]]:
        """Each instance's state, in configured order (for /health/detailed and metrics)."""
        return [i.snapshot() for i in self.instances.values()]

    # ------------------------------------------------------------------ choosing
    def candidates(self, model: str) -> tuple[Hashable, ...]:
        """The instances `model` may run on: its pins, else every instance (up or not)."""
        return self.affinity.get(model, self.keys)

    def choose(self, model: str, exclude: Sequence[Hashable] = ()) -> Hashable:
        """The instance the next call for `model` goes to; BackendUnavailable when none is up."""
        candidates = self.candidates(model)
        usable = [k for k in candidates if self.instances[k].up and k not in exclude]
        if not usable:
            down = ", ".join(
                f"{self.instances[k].label} ({self.instances[k].last_error})" for k in candidates if k not in exclude
            )
            raise BackendUnavailable(f"backend {self.name!r}: no instance up for model {model!r}" + (f": {down}" if down else ""))
        if self.strategy == "round_robin":
            turn = self._turns.setdefault(candidates, itertools.count())
            while True:  # the candidates in turn, skipping those that cannot take it
                key = candidates[next(turn) % len(candidates)]
                if key in usable:
                    return key
        return min(usable, key=lambda k: self.instances[k].in_flight)  # min keeps the first on a tie

    # ------------------------------------------------------------------ health bookkeeping
    def _succeeded(self, instance: Instance) -> None:
        instance.failures_in_a_row = 0
        if not instance.up:
            instance.up = True
            instance.down_since = None
            log.info("backend %s: instance %s is back in", self.name, instance.label)

    def _failed(self, instance: Instance, exc: BaseException, how: str) -> None:
        instance.failures += 1
        instance.failures_in_a_row += 1
        instance.last_error = f"{type(exc).__name__}: {exc}"
        if instance.up and instance.failures_in_a_row >= self.policy.failure_threshold:
            instance.up = False
            instance.down_since = time.monotonic()
            log.warning(
                "backend %s: instance %s taken out after %d failure(s) in a row (last, %s: %s)",
                self.name,
                instance.label,
                instance.failures_in_a_row,
                how,
                instance.last_error,
            )

    def _outcome(self, instance: Instance, exc: BaseException | None) -> None:
        if exc is None:
            self._succeeded(instance)
        elif isinstance(exc, INSTANCE_FAULTS):
            self._failed(instance, exc, "a call")
        # other failures (auth, model missing, rate limited, cancelled) say nothing about its health

    # ------------------------------------------------------------------ LlmBackend
    async def complete(self, request: CompletionRequest) -> Completion:
        tried: list[Hashable] = []
        while True:
            key = self.choose(request.model, tried)
            instance = self.instances[key]
            instance.in_flight += 1
            instance.calls += 1
            try:
                done = await instance.backend.complete(request)
            except BackendUnavailable as exc:  # nothing of its answer arrived: another instance may serve it
                self._outcome(instance, exc)
                tried.append(key)
                if len(tried) > 1 or not self._other_up(request.model, tried):
                    raise
                instance.retried_elsewhere += 1
                log.info("backend %s: %s failed before answering (%s); trying another instance", self.name, instance.label, exc)
                continue
            except BaseException as exc:
                self._outcome(instance, exc)
                raise
            finally:
                instance.in_flight -= 1
            self._succeeded(instance)
            return done

    def _other_up(self, model: str, tried: Sequence[Hashable]) -> bool:
        return any(self.instances[k].up and k not in tried for k in self.candidates(model))

    def stream(self, request: CompletionRequest) -> CompletionStream:
        """The chosen instance's stream, failed over once while it has produced nothing."""

        async def source(cs: CompletionStream) -> AsyncIterator[str | Usage]:
            tried: list[Hashable] = []
            while True:
                key = self.choose(request.model, tried)
                instance = self.instances[key]
                instance.in_flight += 1
                instance.calls += 1
                produced = False
                try:
                    async with instance.backend.stream(request) as inner:
                        async for delta in inner:
                            produced = True
                            yield delta
                        cs.model = inner.model
                        done = inner.completion
                except BackendUnavailable as exc:
                    self._outcome(instance, exc)
                    tried.append(key)
                    if produced or len(tried) > 1 or not self._other_up(request.model, tried):
                        raise
                    instance.retried_elsewhere += 1
                    log.info(
                        "backend %s: %s failed before streaming (%s); trying another instance", self.name, instance.label, exc
                    )
                    continue
                except BaseException as exc:
                    self._outcome(instance, exc)
                    raise
                finally:
                    instance.in_flight -= 1
                self._succeeded(instance)
                if done is not None:
                    yield Usage(done.inbound_tokens, done.outbound_tokens, done.token_source)
                return

        return CompletionStream(request.model, source)

    async def count_prompt(self, request: CompletionRequest, deadline: float) -> PromptCount | None:
        """Counted by one instance that is up for the model (they serve the same model, so the same
        tokenizer); no call is counted against it: a count is not a completion. None when none is up."""
        up = [k for k in self.candidates(request.model) if self.instances[k].up]  # not `choose`: no turn taken
        return await self.instances[up[0]].backend.count_prompt(request, deadline) if up else None

    async def list_models(self) -> list[str]:
        return [info.id for info in await self.model_details()]

    async def model_details(self) -> list[ModelInfo]:
        """The union over instances (a model is loaded if loaded on any); fails only if every instance fails."""
        results = await asyncio.gather(*(b.model_details() for b in self.backends.values()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            raise errors[0]
        merged: dict[str, ModelInfo] = {}
        for instance, result in zip(self.instances.values(), results, strict=True):
            if isinstance(result, BaseException):
                log.warning("backend %s: instance %s did not list its models: %s", self.name, instance.label, result)
                continue
            for info in result:
                seen = merged.get(info.id)
                if seen is None or (info.loaded and not seen.loaded):
                    merged[info.id] = info
        return list(merged.values())

    # ------------------------------------------------------------------ probes
    async def probe_once(self) -> None:
        """Ask every instance for its model listing (concurrently); update each one's health."""

        async def probe(instance: Instance) -> None:
            try:
                async with asyncio.timeout(self.policy.probe_timeout_secs):
                    await instance.backend.list_models()
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                self._failed(instance, BackendTimeout(f"no model listing within {self.policy.probe_timeout_secs:g} s"), "a probe")
            except BackendError as exc:
                if isinstance(exc, INSTANCE_FAULTS):
                    self._failed(instance, exc, "a probe")
                else:  # it answers (even if it refuses us): it is up
                    self._succeeded(instance)
            except Exception as exc:  # a backend bug: the instance cannot be used
                self._failed(instance, BackendError(f"{type(exc).__name__}: {exc}"), "a probe")
            else:
                self._succeeded(instance)

        await asyncio.gather(*(probe(i) for i in self.instances.values()))

    async def start(self) -> None:
        """Probe every `probe_interval_secs` from now on (idempotent)."""
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._probe_loop(), name=f"lloom-pool-probe-{self.name}")

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.probe_interval_secs)
            try:
                await self.probe_once()
            except Exception:  # a bug must not end probing silently
                log.exception("backend %s: probing failed", self.name)

    async def stop(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        await self.stop()
        await asyncio.gather(*(b.close() for b in self.backends.values()), return_exceptions=True)
