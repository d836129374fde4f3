"""The backends a config describes: `[llm_client]`, each `[[llm_backends]]` entry, and the routes.

What each backend becomes, inside out:

  instances   one `create_backend(kind, base_url=...)` per server: per `[gpu_allocation]`
              device (`{device}` in `[llm_client] base_url` replaced by the device id),
              or per entry of `base_urls`; a single `base_url` is one instance
  pool        an `InstancePool` over them when there are several, or any devices at all
              (health, circuit breaker, failover; `pool.py`)
  bound       `Bounded` when `max_concurrent_requests` is set (`[[llm_backends]]`)
  limits      `LimitedBackend` over the whole backend: `[openai_limits]` for `[llm_client]`,
              the entry's `limits` table for a named one, so a request is admitted and
              charged once whichever instance ends up serving it

With several workers, `service.py` passes the node's `NodeLimits`: the bound's
slots and the limits' counts are then kept once for the node, by backend name.

`service.py` (the assembler) calls `build_backends` and hands the `BackendSet` to
the request path; `test-backend` and `models list` build the same set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Hashable, Sequence

import httpx

from ..config.schema import DEFAULT_BACKEND, Config, LlmBackendConfig, ModelConfig, OpenAiLimitsConfig
from .base import LlmBackend
from .limits import with_limits
from .pool import HealthPolicy, InstancePool
from .registry import DEFAULT_BASE_URLS, create_backend
from .routing import BackendEntry, BackendSet, Bounded
from .usage_book import NodeLimits

log = logging.getLogger(__name__)

DEVICE_PLACEHOLDER = "{device}"


def device_url(base_url: str, device: int) -> str:
    """`base_url` with `{device}` replaced by the device id."""
    return base_url.replace(DEVICE_PLACEHOLDER, str(device))


def instance_label(url: str) -> str:
    """`url` without credentials or query (user:password@, ?key=...): a URL fit for logs,
    metric labels and /health/detailed."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return "<invalid url>"
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None)).rstrip("/")


def _instance(
    kind: str, url: str | None, api_key: str | None, timeout_secs: float, max_retries: int, models: list[str]
) -> LlmBackend:
    if kind == "echo":
        return create_backend("echo", models=models)
    options: dict[str, object] = {"api_key": api_key, "timeout_secs": timeout_secs, "max_retries": max_retries}
    if url is not None:
        options["base_url"] = url
    return create_backend(kind, **options)


def _policy(failure_threshold: int, interval: float, timeout_secs: float) -> HealthPolicy:
    return HealthPolicy(
        failure_threshold=failure_threshold,
        probe_interval_secs=interval,
        probe_timeout_secs=min(timeout_secs, max(interval, 1.0)),
    )


def device_pool(config: Config) -> InstancePool:
    """One `[llm_client]` instance per `[gpu_allocation]` device."""
    llm, gpu = config.llm_client, config.gpu_allocation
    if len(gpu.devices) > 1 and DEVICE_PLACEHOLDER not in llm.base_url and llm.backend != "echo":
        log.warning(
            "[gpu_allocation] %d devices but [llm_client] base_url has no {device}: every device talks to %s",
            len(gpu.devices),
            instance_label(llm.base_url),
        )
    models = _models_of(config.models, DEFAULT_BACKEND)
    instances: dict[Hashable, LlmBackend] = {
        d: _instance(llm.backend, device_url(llm.base_url, d), llm.api_key, llm.timeout_secs, llm.max_retries, models)
        for d in gpu.devices
    }
    pool = InstancePool(
        instances,
        gpu.strategy,
        {a.model: a.devices for a in gpu.model_affinity},
        name=DEFAULT_BACKEND,
        labels={d: f"device {d}" for d in gpu.devices},
        policy=_policy(llm.failure_threshold, llm.health_check_interval_secs, llm.timeout_secs),
    )
    log.info(
        "gpu_allocation: %s over devices %s%s",
        pool.strategy,
        list(pool.keys),
        "".join(f"; {m} on {list(d)}" for m, d in pool.affinity.items()),
    )
    return pool


def _models_of(models: Sequence[ModelConfig], backend: str) -> list[str]:
    return [m.name for m in models if (m.backend or DEFAULT_BACKEND) == backend]


def _url_pool(
    name: str,
    kind: str,
    urls: Sequence[str],
    api_key: str | None,
    timeout_secs: float,
    max_retries: int,
    models: list[str],
    *,
    strategy: str,
    policy: HealthPolicy,
) -> InstancePool:
    instances: dict[Hashable, LlmBackend] = {
        i: _instance(kind, url, api_key, timeout_secs, max_retries, models) for i, url in enumerate(urls)
    }
    labels: dict[Hashable, str] = {i: instance_label(url) for i, url in enumerate(urls)}
    return InstancePool(instances, strategy, name=name, labels=labels, policy=policy)


def _entry(
    name: str,
    kind: str,
    url: str | None,
    urls: Sequence[str],
    config: Config,
    *,
    api_key: str | None,
    timeout_secs: float,
    max_retries: int,
    strategy: str,
    policy: HealthPolicy,
    limits: OpenAiLimitsConfig,
    max_concurrent_requests: int | None = None,
    node: NodeLimits | None = None,
) -> BackendEntry:
    models = _models_of(config.models, name)
    pool: InstancePool | None = None
    if name == DEFAULT_BACKEND and config.gpu_allocation.devices:
        pool = device_pool(config)
        served: LlmBackend = pool
        labels = tuple(i.label for i in pool.instances.values())
    elif len(urls) > 1:
        pool = _url_pool(name, kind, urls, api_key, timeout_secs, max_retries, models, strategy=strategy, policy=policy)
        served = pool
        labels = tuple(i.label for i in pool.instances.values())
    else:
        url = (urls[0] if urls else url) or DEFAULT_BASE_URLS.get(kind)
        served = _instance(kind, url, api_key, timeout_secs, max_retries, models)
        labels = (instance_label(url),) if url is not None and kind != "echo" else (kind,)
    if max_concurrent_requests is not None:
        slots = node.slots(name, max_concurrent_requests) if node is not None else None
        served = Bounded(served, max_concurrent_requests, slots)
    return BackendEntry(name, kind, with_limits(served, limits, scope=name, node=node), pool, labels, max_concurrent_requests)


def _named(entry: LlmBackendConfig, config: Config, node: NodeLimits | None) -> BackendEntry:
    return _entry(
        entry.name,
        entry.backend,
        entry.base_url,
        entry.base_urls,
        config,
        api_key=entry.api_key,
        timeout_secs=entry.timeout_secs,
        max_retries=entry.max_retries,
        strategy=entry.strategy,
        policy=_policy(entry.failure_threshold, entry.health_check_interval_secs, entry.timeout_secs),
        limits=entry.limits,
        max_concurrent_requests=entry.max_concurrent_requests,
        node=node,
    )


def build_backends(config: Config, node: NodeLimits | None = None) -> BackendSet:
    """Every configured backend, each model routed to the one its `[[models]]` entry names.
    `node`: where per-backend limits are kept so they hold for every worker of the node together."""
    llm = config.llm_client
    entries = {
        DEFAULT_BACKEND: _entry(
            DEFAULT_BACKEND,
            llm.backend,
            llm.base_url,
            llm.base_urls,
            config,
            api_key=llm.api_key,
            timeout_secs=llm.timeout_secs,
            max_retries=llm.max_retries,
            strategy=llm.strategy,
            policy=_policy(llm.failure_threshold, llm.health_check_interval_secs, llm.timeout_secs),
            limits=config.openai_limits,
            node=node,
        )
    }
    for entry in config.llm_backends:
        entries[entry.name] = _named(entry, config, node)
    routes = {m.name: m.backend for m in config.models if m.backend and m.backend != DEFAULT_BACKEND}
    backends = BackendSet(entries, routes)
    if config.llm_backends:
        log.info(
            "backends: %s",
            "; ".join(f"{n} ({e.kind}, {len(e.instances)} instance(s))" for n, e in backends.entries.items()),
        )
    return backends


@contextlib.asynccontextmanager
async def running_backends(config: Config) -> AsyncIterator[BackendSet]:
    """`[llm_client]` and every `[[llm_backends]]` entry (pools, bounds and limits applied), each
    model routed to its backend, as `test-backend`, `models list` and `benchmark` use them: started
    (pool probes run, so an instance taken out during the command is probed back in, as in
    `start`) and closed on exit."""
    backends = build_backends(config)
    try:
        await backends.start()
        yield backends
    finally:
        await backends.close()


__all__ = ["DEVICE_PLACEHOLDER", "build_backends", "device_pool", "device_url", "instance_label", "running_backends"]
