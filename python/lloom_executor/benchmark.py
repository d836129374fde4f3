"""`lloom-executor benchmark`: a model's performance through the whole executor path.

What is measured, as an operator would see it:

* **executor** -- an `ExecutorService` built from the operator's config runs in
  this process, and a `LloomClient` in the same process sends N signed requests
  to it over real libp2p (TCP on loopback), C in flight at once, each offering
  the model's current price (read from the node's pricing engine just before
  sending). Every stage the config switches on runs (price check, replay guard,
  rate limits, content filter, dispatch/priority queue, receipts, ledger),
  except the response cache: a cache hit would measure the cache, not the
  model, and a disk or Redis cache is shared with the running node.
* **backend alone** -- the same N requests, C in flight, straight to
  `backend.complete` on a fresh backend built from the same `[llm_client]`
  (without `[openai_limits]`). The difference is the executor's overhead:
  signing and verifying, framing, libp2p, admission, receipts and the ledger
  write, plus the client's own work (it runs in this process too).

So that it cannot collide with a running node, the benchmark node listens on
127.0.0.1 (ephemeral port) only, dials no bootstrap peers or relays, runs no
mDNS/AutoNAT, announces nothing outside this process, keeps its ledger in a
temporary data dir, serves neither the admin API nor metrics, runs no model
discovery, writes no log file, and signs with a throwaway key (the operator's
keys are not read).

Figures per path: successes and errors (with the first distinct error texts),
wall time, throughput (req/s), latency mean/min/p50/p90/p99/max over the
successful timed requests (nearest rank), time to answer a cold request (one
untimed warm-up request goes first on each path: on the executor path it opens
the first request stream; its latency is `first_answer_s` and a failure of it
counts as an error), tokens in/out, output
tokens/s (output tokens of successful answers / wall time) and, on the executor
path, the total cost in wei and how many EIP-712 receipts verified. Token counts
on the backend path follow the executor's rule: the backend's `usage` when it
reports one, else cl100k_base counts of the prompt and the answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _native
from .backends.base import CompletionRequest, LlmBackend
from .config import Config, ModelConfig
from .identity import Identity

DEFAULT_PROMPT = "Explain in a few sentences how a peer-to-peer network routes a request to a node that can answer it."
DEFAULT_REQUESTS = 50
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_TOKENS = 64
MAX_ERRORS_SHOWN = 5
CLIENT_GRACE_SECS = 30.0  # the client waits this much longer than the node's request_timeout_secs

log = logging.getLogger(__name__)


class UnknownModel(ValueError):
    """The benchmarked model is not an enabled model (or alias) of the config."""


def resolve_model(config: Config, name: str) -> ModelConfig:
    """The enabled `[[models]]` entry `name` means (itself or a `[model_aliases]` target)."""
    target = config.model_aliases.get(name, name)
    for model in config.models:
        if model.name == target and model.enabled:
            return model
    enabled = {m.name for m in config.models if m.enabled}
    served = sorted(enabled | {alias for alias, target in config.model_aliases.items() if target in enabled})
    raise UnknownModel(f"model {name!r} is not served by this config (enabled models and aliases: {', '.join(served) or 'none'})")


def benchmark_config(config: Config, data_dir: Path) -> Config:
    """The operator's config made safe to run next to a live node (see the module doc)."""
    network = dataclasses.replace(
        config.network,
        listen_address=("/ip4/127.0.0.1/tcp/0",),
        external_address=(),
        bootstrap_peers=(),
        relay_addresses=(),
        protocols=dataclasses.replace(config.network.protocols, enable_mdns=False, enable_autonat=False, enable_relay=False),
    )
    return dataclasses.replace(
        config,
        network=network,
        identity=dataclasses.replace(
            config.identity, private_key_path=str(data_dir / "identity_key"), ethereum_private_key_path=str(data_dir / "eth_key")
        ),
        storage=dataclasses.replace(config.storage, data_dir=str(data_dir / "data")),
        api=dataclasses.replace(config.api, enabled=False),
        metrics=dataclasses.replace(config.metrics, enabled=False, push_gateway=None),
        cache=dataclasses.replace(config.cache, enabled=False),
        model_discovery=dataclasses.replace(config.model_discovery, enabled=False),
        logging=dataclasses.replace(config.logging, file=None),
    )


# --- measurements --------------------------------------------------------------------


@dataclass
class Sample:
    ok: bool
    latency_s: float
    finished_s: float  # since the start of the run
    tokens_in: int = 0
    tokens_out: int = 0
    cost_wei: int = 0
    receipt_valid: bool = False
    error: str | None = None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class PathStats:
    """What one path (executor or backend alone) did with the N requests."""

    requests: int
    concurrency: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)
    with_cost: bool = False
    warmup: Sample | None = None  # the one request sent before the timed ones (cold: dial, first stream)

    @property
    def successes(self) -> int:
        return sum(s.ok for s in self.samples)

    @property
    def errors(self) -> int:
        """Failed timed requests, plus the warm-up request when it failed."""
        return len(self.samples) - self.successes + (self.warmup is not None and not self.warmup.ok)

    def first_errors(self) -> list[str]:
        seen: list[str] = []
        failed_warmup = [self.warmup] if self.warmup is not None and not self.warmup.ok else []
        for s in failed_warmup + sorted(self.samples, key=lambda s: s.finished_s):
            if not s.ok and s.error not in seen:
                seen.append(s.error or "unknown error")
                if len(seen) == MAX_ERRORS_SHOWN:
                    break
        return seen

    def first_answer_s(self) -> float | None:
        """The time to answer of a cold request: the warm-up's latency; without a warm-up,
        from the start of the run to the first successful answer."""
        if self.warmup is not None:
            return self.warmup.latency_s if self.warmup.ok else None
        return min((s.finished_s for s in self.samples if s.ok), default=None)

    def to_dict(self) -> dict[str, Any]:
        ok = [s for s in self.samples if s.ok]
        latencies = sorted(s.latency_s for s in ok)
        tokens_out = sum(s.tokens_out for s in ok)
        out: dict[str, Any] = {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "successes": len(ok),
            "errors": self.errors,
            "first_errors": self.first_errors(),
            "wall_s": self.wall_s,
            "throughput_rps": len(ok) / self.wall_s if self.wall_s > 0 else None,
            "latency_s": {
                "mean": sum(latencies) / len(latencies) if latencies else None,
                "min": latencies[0] if latencies else None,
                "p50": percentile(latencies, 50),
                "p90": percentile(latencies, 90),
                "p99": percentile(latencies, 99),
                "max": latencies[-1] if latencies else None,
            },
            "first_answer_s": self.first_answer_s(),
            "tokens_in": sum(s.tokens_in for s in ok),
            "tokens_out": tokens_out,
            "output_tokens_per_s": tokens_out / self.wall_s if self.wall_s > 0 else None,
        }
        if self.warmup is not None:
            out["warmup_ok"] = self.warmup.ok
        if self.with_cost:
            out["total_cost_wei"] = str(sum(s.cost_wei for s in ok))  # a string: wei sums outgrow 2**53
            out["receipts_valid"] = sum(s.receipt_valid for s in ok)
        return out


Report = Callable[[int], None]
"""Called with the number of timed requests finished so far, after each one (progress display)."""


async def timed_round(
    n: int,
    concurrency: int,
    one: Callable[[], Awaitable[Sample]],
    *,
    warmup: bool = False,
    with_cost: bool = False,
    report: Report | None = None,
) -> PathStats:
    """`one()` n times with at most `concurrency` in flight, after one untimed warm-up call if asked.

    `one` returns its Sample with `finished_s` as a `time.perf_counter()` reading; it is made
    relative to the start of the timed run here.
    """
    warm = await one() if warmup else None
    remaining = iter(range(n))
    samples: list[Sample] = []

    async def worker() -> None:
        for _ in remaining:  # one shared iterator: each request is taken by exactly one worker
            samples.append(await one())
            if report is not None:
                report(len(samples))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, n)))))
    wall = time.perf_counter() - started
    for sample in samples:
        sample.finished_s -= started
    return PathStats(n, concurrency, wall, samples, with_cost=with_cost, warmup=warm)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def backend_round(
    backend: LlmBackend,
    model: str,
    prompt: str,
    max_tokens: int | None,
    n: int,
    concurrency: int,
    *,
    warmup: bool = False,
    report: Report | None = None,
) -> PathStats:
    """N direct `backend.complete` calls, `concurrency` in flight (the baseline)."""
    from .serving.admission import TOKEN_ENCODING

    prompt_tokens = _native.count_tokens(prompt, TOKEN_ENCODING)
    request = CompletionRequest(model, prompt, max_tokens=max_tokens)

    async def one() -> Sample:
        started = time.perf_counter()
        try:
            completion = await backend.complete(request)
        except Exception as exc:  # every failure is a counted error, never an abort
            now = time.perf_counter()
            return Sample(False, now - started, now, error=_describe(exc))
        now = time.perf_counter()
        tokens_in = completion.inbound_tokens if completion.inbound_tokens is not None else prompt_tokens
        tokens_out = completion.outbound_tokens
        if tokens_out is None:
            tokens_out = _native.count_tokens(completion.content, TOKEN_ENCODING)
        return Sample(True, now - started, now, tokens_in, tokens_out)

    return await timed_round(n, concurrency, one, warmup=warmup, report=report)


@dataclass
class Rig:
    """A running benchmark node and a client connected to it."""

    service: Any  # ExecutorService
    client: Any  # LloomClient
    listen: list[str]

    @property
    def peer_id(self) -> str:
        return self.service.identity.peer_id

    def price(self, model: str) -> tuple[int, int]:
        """The node's current (inbound, outbound) wei per token for `model`."""
        price: tuple[int, int] = self.service.prices()[model]
        return price


class running_rig:
    """`async with running_rig(config) as rig:` -- the node (from `config` as given) and a client."""

    def __init__(self, config: Config, identity: Identity | None = None) -> None:
        self.config = config
        self.identity = identity or _throwaway_identity()
        self.rig: Rig | None = None

    async def __aenter__(self) -> Rig:
        from .client import LloomClient
        from .service import ExecutorService

        service = ExecutorService(self.config, self.identity)
        listen = await service.start()
        try:
            chain = self.config.blockchain
            client = LloomClient(
                bootstrap=[listen[0]],
                enable_kad=False,
                enable_gossip=False,
                request_timeout=self.config.request_handling.request_timeout_secs + CLIENT_GRACE_SECS,
                eip712_domain=_native.Eip712Domain(chain.chain_id, chain.contract_address),
            )
            await client.start()
        except BaseException:
            await service.stop()
            raise
        self.rig = Rig(service, client, listen)
        return self.rig

    async def __aexit__(self, *exc: object) -> None:
        assert self.rig is not None
        try:
            await self.rig.client.stop()
        finally:
            await self.rig.service.stop()


def _throwaway_identity() -> Identity:
    key = _native.PrivateKey.generate()
    return Identity(key, key, "throwaway benchmark key")


async def executor_round(
    rig: Rig,
    model: str,
    prompt: str,
    max_tokens: int | None,
    n: int,
    concurrency: int,
    *,
    served_name: str | None = None,
    warmup: bool = False,
    report: Report | None = None,
) -> PathStats:
    """N signed requests from the rig's client over libp2p, `concurrency` in flight, each
    offering the model's current price. `served_name`: the `[[models]]` entry `model`
    resolves to (for its price), when `model` is an alias."""
    served_name = served_name or model

    async def one() -> Sample:
        started = time.perf_counter()
        try:
            price_in, price_out = rig.price(served_name)
            answer = await rig.client.request(
                rig.peer_id,
                model,
                prompt,
                max_tokens=max_tokens,
                inbound_price=str(price_in),
                outbound_price=str(price_out),
            )
        except Exception as exc:  # unreachable, timeout, invalid answer: a counted error
            now = time.perf_counter()
            return Sample(False, now - started, now, error=_describe(exc))
        now = time.perf_counter()
        if answer.error is not None:
            return Sample(False, now - started, now, error=answer.error)
        return Sample(
            True,
            now - started,
            now,
            answer.inbound_tokens,
            answer.outbound_tokens,
            int(answer.total_cost),
            answer.receipt is not None and answer.receipt.valid,
        )

    return await timed_round(n, concurrency, one, warmup=warmup, with_cost=True, report=report)


# --- the command -----------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    model: str  # as asked
    served_as: str  # the [[models]] entry it resolves to
    backend: str
    base_url: str | None
    prompt: str
    max_tokens: int | None
    price_wei: tuple[int, int]  # the model's price when the run began (inbound, outbound per token)
    executor: PathStats
    backend_only: PathStats
    listen: list[str]

    @property
    def ok(self) -> bool:
        return self.executor.errors == 0 and self.backend_only.errors == 0

    def to_dict(self) -> dict[str, Any]:
        ex, be = self.executor.to_dict(), self.backend_only.to_dict()

        def diff(a: float | None, b: float | None) -> float | None:
            return a - b if a is not None and b is not None else None

        return {
            "model": self.model,
            "served_as": self.served_as,
            "backend": {"type": self.backend, "base_url": self.base_url},
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "requests": self.executor.requests,
            "concurrency": self.executor.concurrency,
            "price_wei": {"inbound": str(self.price_wei[0]), "outbound": str(self.price_wei[1])},
            "executor": ex,
            "backend_only": be,
            "overhead": {
                "latency_p50_s": diff(ex["latency_s"]["p50"], be["latency_s"]["p50"]),
                "latency_mean_s": diff(ex["latency_s"]["mean"], be["latency_s"]["mean"]),
                "throughput_ratio": (
                    ex["throughput_rps"] / be["throughput_rps"] if ex["throughput_rps"] and be["throughput_rps"] else None
                ),
            },
            "ok": self.ok,
        }


async def run_benchmark(
    config: Config,
    model: str,
    *,
    requests: int = DEFAULT_REQUESTS,
    concurrency: int = DEFAULT_CONCURRENCY,
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    warmup: bool = True,
    workdir: Path | None = None,
    progress: Callable[[str], Report] | None = None,
) -> BenchmarkResult:
    """Both paths, executor first, each after one untimed warm-up request (its latency is the
    path's `first_answer_s`). Raises `UnknownModel` before starting anything. `progress(path)`
    ("executor", "backend alone") gives the reporter of each path's timed requests."""
    from .backends.from_config import running_backends

    served = resolve_model(config, model)
    with tempfile.TemporaryDirectory(prefix="lloom-benchmark-") as tmp:
        bench_config = benchmark_config(config, Path(workdir or tmp))
        async with running_rig(bench_config) as rig:
            price = rig.price(served.name)
            executor = await executor_round(
                rig,
                model,
                prompt,
                max_tokens,
                requests,
                concurrency,
                served_name=served.name,
                warmup=warmup,
                report=progress("executor") if progress else None,
            )
            listen = rig.listen
        async with running_backends(bench_config) as backend:
            backend_only = await backend_round(
                backend,
                served.name,
                prompt,
                max_tokens,
                requests,
                concurrency,
                warmup=warmup,
                report=progress("backend alone") if progress else None,
            )
    llm = config.llm_client
    return BenchmarkResult(
        model,
        served.name,
        llm.backend,
        None if llm.backend == "echo" else llm.base_url,
        prompt,
        max_tokens,
        price,
        executor,
        backend_only,
        listen,
    )
