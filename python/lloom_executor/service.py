"""Wiring and lifecycle of a running executor: config -> identity, backend, request path, P2P node.

`start` follows the manual: say which configured features are not active,
load and start the `[[plugins]]` (`plugins.py`; one that fails stops `start`
with a PluginError naming it), log who we are and what we serve, serve until
SIGINT/SIGTERM, then drain: refuse new work (signed), let in-flight requests
finish up to `drain_timeout_secs`, announce `Removal`, stop the host, stop the
plugins (their queued events first), close the backend, the cache and the
ledger, send the `stopped` webhook event and flush the webhook queues
(bounded, `webhooks.py`).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from pathlib import Path

from . import _native
from .backends.base import LlmBackend
from .backends.limits import with_limits
from .backends.registry import create_backend
from .cache import build_cache
from .config import Config, inactive_features
from .identity import Identity
from .ledger import Ledger
from .metrics import Metrics, MetricsServer, PushLoop
from .model_discovery import attach_discovery
from .p2p.announcements import ModelCatalog
from .p2p.node import P2PNode
from .p2p.services import default_services, network_view, update_models
from .pipeline.content_filter import ContentFilter
from .pipeline.dispatch import dispatcher_from_config
from .pipeline.gpu import device_pool_from_config
from .pipeline.pricing import PricingEngine, backend_load
from .pipeline.ratelimits import RateLimitRules
from .pipeline.replay import ReplayGuard
from .pipeline.resources import governor_from_config
from .plugins import PluginHost
from .serving import BasicRequestHandler, PipelineStages
from .webhooks import Webhooks, model_data

log = logging.getLogger(__name__)

HOUSEKEEPING_SECS = 5.0


def backend_from_config(config: Config) -> LlmBackend:
    if config.gpu_allocation.devices:  # one backend per device, chosen per request
        return device_pool_from_config(config)
    llm = config.llm_client
    if llm.backend == "echo":
        return create_backend("echo", models=[m.name for m in config.models])
    return create_backend(
        llm.backend, base_url=llm.base_url, api_key=llm.api_key, timeout_secs=llm.timeout_secs, max_retries=llm.max_retries
    )


def stages_from_config(config: Config, handler_load, market) -> PipelineStages:
    """The request path's optional stages as the config switches them (replay protection always)."""
    metrics = Metrics()
    resources = governor_from_config(config)  # [resources] and [[models]] needs; warns what it cannot enforce
    return PipelineStages(
        rate_limits=RateLimitRules(config.rate_limiting) if config.rate_limiting.enabled else None,
        replay=ReplayGuard(),
        pricing=PricingEngine(config.pricing, {m.name: m for m in config.models}, load=handler_load, market=market),
        content_filter=ContentFilter(config.content_filter) if config.content_filter.enabled else None,
        cache=build_cache(config.cache) if config.cache.enabled else None,
        metrics=metrics,
        dispatcher=dispatcher_from_config(
            config, resources=resources, on_sizes=metrics.set_queue_sizes, on_throttled=metrics.set_throttled
        ),
        resources=resources,
    )


class ExecutorService:
    def __init__(
        self,
        config: Config,
        identity: Identity,
        backend: LlmBackend | None = None,
        *,
        discovery_options: dict | None = None,
        webhook_options: dict | None = None,
        plugin_options: dict | None = None,
        **service_options,
    ) -> None:
        """`service_options` tune P2P timings, `discovery_options` the model discovery,
        `webhook_options` the webhook delivery timings and `plugin_options` the plugin
        host's (tests shorten them)."""
        self.config = config
        self.identity = identity
        self.backend = with_limits(backend or backend_from_config(config), config.openai_limits)
        self.discovery = None  # model_discovery.ModelDiscovery while [model_discovery] runs
        self._discovery_options = discovery_options or {}
        self.catalog = ModelCatalog([m for m in config.models if m.enabled], backend_type=config.llm_client.backend)
        chain = config.blockchain  # the receipt domain, also with blockchain.enabled = false (PROTOCOL.md §7)
        self.handler = BasicRequestHandler(
            identity.eth_key,
            list(config.models),
            self.backend,
            allow_unsigned=config.request_handling.allow_unsigned,
            handling=config.request_handling,
            peer_id=identity.peer_id,
            aliases=config.model_aliases,
            receipt_domain=_native.Eip712Domain(chain.chain_id, chain.contract_address),
        )
        self.stages = self.handler.stages = stages_from_config(
            config,
            lambda: backend_load(self.handler.in_flight, config.request_handling.max_concurrent_requests),
            lambda: self.handler.stages.market,
        )
        self.metrics = self.stages.metrics
        self.webhooks = self.stages.webhooks = Webhooks.from_config(
            config.webhooks, identity.eth_key, peer_id=identity.peer_id, metrics=self.metrics, **(webhook_options or {})
        )
        self.plugins = self.stages.plugins = (
            PluginHost(
                config.plugins, metrics=self.metrics, peer_id=identity.peer_id, evm_address=identity.address,
                **(plugin_options or {}),
            )
            if config.plugins
            else None
        )
        self.node = P2PNode(
            identity.p2p_key,
            config.network,
            config.request_handling,
            self.handler,
            default_services(config.network, self.catalog, **service_options),
        )
        self.started_at: float | None = None
        self.api = None  # api.ApiServer while [api] is enabled and serving
        self.metrics_server: MetricsServer | None = None
        self.push_loop: PushLoop | None = None
        self.ledger: Ledger | None = None
        self._housekeeping: asyncio.Task | None = None
        self._price_version = None
        self._catalog_lock = asyncio.Lock()

    async def start(self) -> list[str]:
        """Start serving; returns the listen addresses. A plugin that cannot be loaded or
        started raises PluginError before anything listens."""
        for feature in inactive_features(self.config):
            log.warning("configured but not active in this version: %s", feature)
        if self.plugins is not None:
            await self.plugins.start()
        try:
            return await self._start()
        except BaseException:
            if self.plugins is not None:
                await self.plugins.stop()
            raise

    async def _start(self) -> list[str]:
        if self.config.request_handling.allow_unsigned:
            log.warning("allow_unsigned = true: unsigned requests are served (no client accountability)")
        data_dir = Path(self.config.storage.data_dir).expanduser()  # defaults are written with ~
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ledger = self.handler.ledger = await asyncio.to_thread(Ledger.in_directory, data_dir)
        totals = await asyncio.to_thread(self.ledger.totals)
        self.metrics.seed_revenue(totals.revenue_by_model())  # revenue metrics continue across restarts
        check = getattr(self.stages.cache, "check", None)
        if check is not None:  # Redis: say at start whether it is reachable (the node serves either way)
            await check()
        addrs = await self.node.start()
        self.started_at = time.monotonic()
        if self.webhooks is not None:
            self.webhooks.start()
        log.info("peer id %s, EVM address %s (%s)", self.identity.peer_id, self.identity.address, self.identity.source)
        for addr in addrs:
            log.info("listening on %s", addr)
        served = [m.name for m in self.config.models if m.enabled]
        if self.config.model_discovery.enabled:
            self.discovery = attach_discovery(self, **self._discovery_options)
            log.info("configured models: %s (served once the backend offers them)", ", ".join(served) or "none")
        else:
            log.info("serving models: %s", ", ".join(served) if served else "none (add [[models]] entries)")
        log.info("ledger: %s", self.ledger.path)
        await self._start_http()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="lloom-housekeeping")
        if self.webhooks is not None:
            from . import __version__

            self.webhooks.emit("started", {"version": __version__, "listen_addresses": [str(a) for a in addrs], "models": served})
            for model in self.handler.models.values():
                if model.enabled:
                    self.webhooks.emit("model_loaded", model_data(model, "config"))
        return addrs

    async def _start_http(self) -> None:
        """The admin API and the metrics endpoint: a failure is logged, the P2P service goes on."""
        if self.config.api.enabled:
            from .api import ApiServer

            api = ApiServer(self)
            try:
                await api.start()
                self.api = api
            except Exception as exc:
                log.error("[api] not serving on %s: %s: %s", self.config.api.listen_address, type(exc).__name__, exc)
        metrics = self.config.metrics
        if metrics.enabled:
            server = MetricsServer(self.metrics, metrics.endpoint)
            try:
                await server.start()
                self.metrics_server = server
            except OSError as exc:
                log.error("[metrics] not serving on %s: %s", metrics.endpoint, exc)
            if metrics.push_gateway:
                self.push_loop = PushLoop(
                    self.metrics, metrics.push_gateway, metrics.push_interval_secs, grouping={"instance": self.identity.peer_id}
                )
                self.push_loop.start()

    async def _housekeep(self) -> None:
        """Periodic upkeep off the request path: peer count for metrics, the market view for
        pricing, and a gossip `Update` when our current prices change."""
        interval = min(HOUSEKEEPING_SECS, self.config.pricing.update_interval_secs)
        while True:
            try:
                self.metrics.set_peers(len(await self.node.call(_peer_ids)))
                if self.config.pricing.strategy == "market":
                    self.stages.market = await network_view(self.node)
                await self._announce_price_changes()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let upkeep die; say what failed
                log.warning("housekeeping: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(interval)

    async def _announce_price_changes(self) -> None:
        pricing = self.stages.pricing
        pricing.prices()  # refreshes dynamic/market prices; `version` counts the changes
        if pricing.version == self._price_version:
            return
        self._price_version = pricing.version
        await self.announce_models()

    async def announce_models(self) -> None:
        """Make the gossip catalog the models served now, at our current prices (an `Update`
        when that changes anything). Price changes and model discovery both call this. The list
        is read under a lock, so the last announcement is always of the latest state: two
        snapshots crossing the bridge to trio could otherwise land in either order and leave a
        stale catalog behind (a withdrawn model announced until the next change)."""
        discovery = self.config.model_discovery
        async with self._catalog_lock:
            prices = self.stages.pricing.prices()
            # With discovery but advertise_models = false the announced catalog stays the configured one.
            served = self.config.models if discovery.enabled and not discovery.advertise_models else self.handler.models.values()
            current = [
                dataclasses.replace(m, inbound_price_wei=prices[m.name][0], outbound_price_wei=prices[m.name][1])
                for m in served
                if m.enabled and m.name in prices
            ]
            await update_models(self.node, self.catalog, current)

    async def inflight(self) -> int:
        stats = self.node.stream_handler.stats if self.node.stream_handler else None
        return stats.inflight if stats else 0

    async def stop(self) -> None:
        """Drain, then stop; safe to call once the node has started."""
        self.handler.draining = True
        if self.discovery is not None:
            await self.discovery.stop()
        deadline = time.monotonic() + self.config.request_handling.drain_timeout_secs
        while await self.inflight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = await self.inflight()
        if left:
            log.warning("drain timeout: %d request(s) still in flight are cut off", left)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self.api is not None:
            await self.api.stop()
            self.api = None
        if self.push_loop is not None:
            await asyncio.to_thread(self.push_loop.stop)
            self.push_loop = None
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None
        await self.node.stop()
        if self.plugins is not None:  # no request is left to check; their queued events are delivered first
            await self.plugins.stop()
        await self.backend.close()
        if self.stages.cache is not None:
            await self.stages.cache.close()
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.close)
        if self.webhooks is not None:
            uptime = time.monotonic() - self.started_at if self.started_at is not None else 0.0
            self.webhooks.emit("stopped", {"uptime_secs": round(uptime, 3), "cut_off": left})
            await self.webhooks.stop()
        log.info("executor stopped")

    async def run_until_signal(self) -> None:
        """Serve until SIGINT/SIGTERM; a signal during start-up stops the node once it is up."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info("signal received: draining")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if self.started_at is not None:
                await self.stop()


async def _peer_ids(rt) -> list[str]:
    return list(rt.peers.peers)
