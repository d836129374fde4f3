"""The one assembler: config -> identity, backend, request path, P2P node; and their lifecycle.

Every part gets its collaborators through its constructor, here, and nothing
else reaches into the parts afterwards: the admin API reads the node through
the narrow `api.NodeView` this service implements, and model discovery
changes the served set through the `ModelRegistry`.

`start` follows the manual: say which configured features are not active,
load and start the `[[plugins]]` (one that fails stops `start` with a
PluginError naming it), log who we are and what we serve, serve until
SIGINT/SIGTERM, then drain: refuse new work (signed), let in-flight requests
finish up to `drain_timeout_secs`, announce `Removal`, stop the host, stop the
plugins (their queued events first), close the backend, the cache and the
ledger, send the `stopped` webhook event and flush the webhook queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import __version__, _native
from .api import ApiServer
from .backends.base import LlmBackend
from .backends.from_config import build_backends
from .backends.limits import with_limits
from .backends.routing import BackendSet
from .cache import build_cache
from .cluster.member import ClusterCollector, build_coordinator, seqno_space
from .cluster.shared import build_shared_parts, uses_redis
from .config import Config, ModelConfig, RequestHandlingConfig, inactive_features
from .config.schema import DEFAULT_BACKEND
from .events import model_data
from .identity import Identity
from .ledger import Ledger, LedgerStatus
from .metrics import Metrics, MetricsServer, PushLoop
from .model_discovery import DISCONNECTED, DiscoverySet, ModelDiscovery
from .outcome import RefusalCode
from .p2p.announcements import ModelCatalog
from .p2p.node import P2PNode
from .p2p.services import default_services, network_view, peer_count, peer_snapshot, update_models
from .pipeline.content_filter import ContentFilter
from .pipeline.dispatch import Dispatcher, dispatcher_from_config
from .pipeline.model_registry import ModelRegistry
from .pipeline.pricing import PricingEngine, backend_load
from .pipeline.resources import ResourceGovernor, governor_from_config
from .plugins import PluginHost
from .serving import build_request_handler
from .settlement import SettlementCollector, Settler, load_settlement_key
from .webhooks import Webhooks
from .workers.node_view import NodeAggregator
from .workers.peer_endpoint import WorkerEndpoint, socket_path
from .workers.role import WorkerRole, per_worker_config

log = logging.getLogger(__name__)

HOUSEKEEPING_SECS = 5.0


class ExecutorService:
    """A running executor: the parts built from one config, started and stopped together."""

    def __init__(
        self,
        config: Config,
        identity: Identity,
        backend: LlmBackend | None = None,
        *,
        discovery_options: dict[str, Any] | None = None,
        webhook_options: dict[str, Any] | None = None,
        plugin_options: dict[str, Any] | None = None,
        role: WorkerRole | None = None,
        **service_options: Any,
    ) -> None:
        """`service_options` tune P2P timings, `discovery_options` the model discovery,
        `webhook_options` the webhook delivery timings and `plugin_options` the plugin
        host's (tests shorten them). `role`: this process's place among the node's workers
        (docs/workers.md); without one, the process is the whole node."""
        self.role = role or WorkerRole()
        config = per_worker_config(config, self.role)
        self.config = config
        self.identity = identity
        handling = config.request_handling
        data_dir = Path(config.storage.data_dir).expanduser()  # defaults are written with ~
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # replay guard, rate-limit buckets and per-backend limits shared exactly by the workers (SQLite)
        # or by the members of a cluster (Redis): cluster/shared.py
        self.shared = build_shared_parts(config, self.role, data_dir, identity.peer_id)
        node_limits = self.shared.node_limits
        # A backend given by the caller (tests) is the one default backend; else the configured set.
        self.backends: BackendSet | None = None
        if backend is None:
            self.backends = build_backends(config, node_limits)
            self.backend: LlmBackend = self.backends
        else:
            self.backend = with_limits(backend, config.openai_limits, scope=DEFAULT_BACKEND, node=node_limits)
        self.metrics = Metrics()
        self.shared.watch(self.metrics)
        if self.backends is not None:
            self.metrics.watch_backends(self.backends.health)
        resources = governor_from_config(config)  # [resources] and [[models]] needs; warns what it cannot enforce
        self.resources = resources
        self.dispatcher = dispatcher_from_config(
            config, resources=resources, on_sizes=self.metrics.set_queue_sizes, on_throttled=self.metrics.set_throttled
        )
        dispatcher = self.dispatcher
        pricing = PricingEngine(
            config.pricing,
            {m.name: m for m in config.models},
            load=lambda: backend_load(dispatcher.running, handling.max_concurrent_requests),
            self_peer_id=identity.peer_id,
        )
        self.registry = ModelRegistry(config.models, config.model_aliases, pricing)
        self.webhooks = Webhooks.from_config(
            config.webhooks, identity.eth_key, peer_id=identity.peer_id, metrics=self.metrics, **(webhook_options or {})
        )
        self.plugins = (
            PluginHost(
                config.plugins,
                metrics=self.metrics,
                peer_id=identity.peer_id,
                evm_address=identity.address,
                node_lifecycle=self.role.lead,
                worker=(self.role.index, self.role.count),
                **(plugin_options or {}),
            )
            if config.plugins
            else None
        )
        self.started_at: float | None = None
        self.api: ApiServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.push_loop: PushLoop | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._price_version: int | None = None
        self._catalog_lock = asyncio.Lock()
        self.cache = build_cache(config.cache) if config.cache.enabled else None
        self.ledger = Ledger.in_directory(data_dir)  # one SQLite file, written by every worker (WAL)
        self.settler: Settler | None = None
        self.coordinator = build_coordinator(config, self.role)  # [clustering] with etcd: the lead worker's
        if self.coordinator is not None:
            self.metrics.registry.register(ClusterCollector(self.coordinator))
        # N > 1: each worker's metrics and view on a private socket; the lead merges them (docs/workers.md)
        self.endpoint: WorkerEndpoint | None = None
        self.aggregator: NodeAggregator | None = None
        if self.role.several:
            sockets = [socket_path(data_dir, i) for i in range(self.role.count)]
            self.endpoint = WorkerEndpoint(sockets[self.role.index], self.role.index, self.metrics.registry, self._own_view)
            if self.role.lead:
                self.aggregator = NodeAggregator(self.endpoint, sockets, lambda: asyncio.to_thread(self.ledger.totals))
        try:
            self._assemble(config, identity, handling, dispatcher, resources, discovery_options, service_options)
            self.settler = self._settler(config, identity)
        except BaseException:
            self.ledger.close()  # its writer thread and connections: nothing else here holds a resource yet
            self.shared.close()
            raise

    def _assemble(
        self,
        config: Config,
        identity: Identity,
        handling: RequestHandlingConfig,
        dispatcher: Dispatcher,
        resources: ResourceGovernor | None,
        discovery_options: dict[str, Any] | None,
        service_options: dict[str, Any],
    ) -> None:
        """The request path and the node, from the parts the constructor made."""
        chain = config.blockchain  # the receipt domain, also with blockchain.enabled = false (docs/PROTOCOL.md §7)
        rate_limits = self.shared.rate_limits(config.rate_limiting) if config.rate_limiting.enabled else None
        self.handler = build_request_handler(
            identity.eth_key,
            self.registry,
            self.backend,
            handling=handling,
            allow_unsigned=handling.allow_unsigned,
            peer_id=identity.peer_id,
            receipt_domain=_native.Eip712Domain(chain.chain_id, chain.contract_address),
            ledger=self.ledger,
            dispatcher=dispatcher,
            replay=self.shared.replay,
            rate_limits=rate_limits,
            content_filter=ContentFilter(config.content_filter) if config.content_filter.enabled else None,
            cache=self.cache,
            resources=resources,
            metrics=self.metrics,
            webhooks=self.webhooks,
            plugins=self.plugins,
        )
        self.catalog = ModelCatalog([m for m in config.models if m.enabled], backend_type=config.llm_client.backend)
        self.node = P2PNode(
            identity.p2p_key,
            config.network,
            handling,
            self.handler,
            default_services(
                config.network, self.catalog, duties=self.role.lead, worker=seqno_space(config, self.role), **service_options
            ),
        )
        self.metrics.watch_connections(self.node.connection_counts)
        self.discovery = self._discovery(discovery_options or {}) if config.model_discovery.enabled else None

    def _settler(self, config: Config, identity: Identity) -> Settler | None:
        """[blockchain] enabled: the settlement loop, with its own funded key (a missing key or the
        zero contract address raises SettlementError here, before anything starts). One settler per
        node: the lead worker's, reading the ledger every worker writes."""
        if not config.blockchain.enabled or not self.role.lead:
            return None
        coordinator = self.coordinator
        if uses_redis(config) and coordinator is None:  # no leader election: no member may settle (two would race)
            log.warning("[blockchain] settlement does not run on a clustered member without [clustering] etcd_endpoints")
            return None
        key = load_settlement_key(config.blockchain, identity.address)
        fence = coordinator.fence if coordinator is not None else None  # only the leader, in its epoch, sends
        settler = Settler(config.blockchain, self.ledger.path, bytes(identity.eth_key.address_bytes), key, fence=fence)
        self.metrics.registry.register(SettlementCollector(settler))
        return settler

    def _discovery(self, options: dict[str, Any]) -> ModelDiscovery | DiscoverySet:
        """[model_discovery]: the backends' listings decide the served set (started once the node is up);
        with several backends, one discovery each (`DiscoverySet`)."""
        config = self.config.model_discovery

        async def on_change(models: list[ModelConfig]) -> None:
            if self.handler.draining:
                return
            before = self.registry.replace(models)
            if self.webhooks is not None:
                self.webhooks.models_changed(before, models, "discovery")
            if config.advertise_models:
                await self.announce_models()

        def on_status(status: str, error: str | None) -> None:
            if self.webhooks is not None and status == DISCONNECTED and not self.handler.draining:
                # the error text may name the backend's host: it stays in the log (model_discovery logs it)
                self.webhooks.operational_error(RefusalCode.BACKEND_UNREACHABLE, "model discovery: the backend is unreachable")

        backends = self.backends
        if backends is not None and len(backends.entries) > 1:
            members = {
                name: (entry.serving, [m for m in self.config.models if backends.backend_of(m.name) == name])
                for name, entry in backends.entries.items()
            }
            return DiscoverySet(
                members,
                config,
                on_change,
                initial=self.registry.served(),
                should_stop=lambda: self.handler.draining,
                on_status=on_status,
                **options,
            )
        return ModelDiscovery(
            self.backend,
            config,
            on_change,
            models=self.config.models,
            initial=self.registry.served(),
            should_stop=lambda: self.handler.draining,
            on_status=on_status,
            **options,
        )

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> list[str]:
        """Start serving; returns the listen addresses. A plugin that cannot be loaded or
        started raises PluginError before anything listens."""
        for feature in inactive_features(self.config):
            log.warning("configured but not active in this version: %s", feature)
        try:
            if self.plugins is not None:
                await self.plugins.start()
            return await self._start()
        except BaseException:
            await self._close_parts(cut_off=0)  # nothing that start opened stays open
            raise

    async def _start(self) -> list[str]:
        if self.config.request_handling.allow_unsigned:
            log.warning("allow_unsigned = true: unsigned requests are served (no client accountability)")
        if self.role.lead and not self.role.several:  # revenue continues across restarts; N > 1: the ledger's, combined
            totals = await asyncio.to_thread(self.ledger.totals)
            self.metrics.seed_revenue(totals.revenue_by_model())
        check = getattr(self.cache, "check", None)
        if check is not None:  # Redis: say at start whether it is reachable (the node serves either way)
            await check()
        addrs = await self.node.start()
        self.started_at = time.monotonic()
        if self.coordinator is not None:  # register with the addresses we listen on; etcd down: retried
            await self.coordinator.start({"addresses": [str(a) for a in addrs], "workers": self.role.count})
        if self.backends is not None:
            await self.backends.start()  # instance pools' health probes
        if self.webhooks is not None:
            self.webhooks.start()
        log.info("peer id %s, EVM address %s (%s)", self.identity.peer_id, self.identity.address, self.identity.source)
        for addr in addrs:
            log.info("listening on %s", addr)
        served = [m.name for m in self.registry.served()]
        if self.discovery is not None:
            self.discovery.start()
            log.info("configured models: %s (served once the backend offers them)", ", ".join(served) or "none")
        else:
            log.info("serving models: %s", ", ".join(served) if served else "none (add [[models]] entries)")
        log.info("ledger: %s", self.ledger.path)
        if self.settler is not None:  # a wrong chain or no contract code refuses to start (SettlementError)
            await self.settler.start()
            log.info(
                "settlement: %s on chain %d from %s",
                self.config.blockchain.contract_address,
                self.config.blockchain.chain_id,
                self.settler.sender,
            )
        self.metrics.watch_process(Metrics.tasks_of(asyncio.get_running_loop()))  # the loop the node serves on
        if self.endpoint is not None:
            await self.endpoint.start()
        if self.role.lead:  # one admin API and one /metrics per node (other workers would collide on the port)
            await self._start_http()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="lloom-housekeeping")
        if self.webhooks is not None and self.role.lead:  # node-level events: once per node
            self.webhooks.emit("started", {"version": __version__, "listen_addresses": [str(a) for a in addrs], "models": served})
            for model in self.registry.served():
                self.webhooks.emit("model_loaded", model_data(model, "config"))
        return addrs

    async def _start_http(self) -> None:
        """The admin API and the metrics endpoint: a failure is logged, the P2P service goes on."""
        if self.config.api.enabled:
            api = ApiServer(self, self.config, self.backend)
            try:
                await api.start()
                self.api = api
            except Exception as exc:
                log.error("[api] not serving on %s: %s: %s", self.config.api.listen_address, type(exc).__name__, exc)
        metrics = self.config.metrics
        if metrics.enabled:
            combined = self.aggregator.families if self.aggregator is not None else None
            server = MetricsServer(self.metrics, metrics.endpoint, source=combined)
            try:
                await server.start()
                self.metrics_server = server
            except OSError as exc:
                log.error("[metrics] not serving on %s: %s", metrics.endpoint, exc)
            if metrics.push_gateway:
                node = self.aggregator.thread_registry(asyncio.get_running_loop()) if self.aggregator is not None else None
                self.push_loop = PushLoop(
                    self.metrics,
                    metrics.push_gateway,
                    metrics.push_interval_secs,
                    grouping={"instance": self.identity.peer_id},
                    registry=node,
                )
                self.push_loop.start()

    async def _housekeep(self) -> None:
        """Periodic upkeep off the request path: peer count for metrics, the market view for
        pricing, and a gossip `Update` when our current prices change."""
        interval = min(HOUSEKEEPING_SECS, self.config.pricing.update_interval_secs)
        while True:
            try:
                self.metrics.set_peers(await peer_count(self.node))
                if self.config.pricing.strategy == "market":
                    self.registry.set_market_view(await network_view(self.node))
                await self._announce_price_changes()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let upkeep die; say what failed
                log.warning("housekeeping: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(interval)

    async def _announce_price_changes(self) -> None:
        self.registry.prices()  # refreshes dynamic/market prices; `price_version` counts the changes
        if self.registry.price_version == self._price_version:
            return
        self._price_version = self.registry.price_version
        await self.announce_models()

    async def announce_models(self) -> None:
        """Make the gossip catalog the models served now, at our current prices (an `Update`
        when that changes anything). Price changes and model discovery both call this. The list
        is read under a lock, so the last announcement is always of the latest state: two
        snapshots crossing the bridge to trio could otherwise land in either order and leave a
        stale catalog behind (a withdrawn model announced until the next change)."""
        discovery = self.config.model_discovery
        async with self._catalog_lock:
            prices = self.registry.prices()
            # With discovery but advertise_models = false the announced catalog stays the configured one.
            served = self.config.models if discovery.enabled and not discovery.advertise_models else self.registry.served()
            current = [
                dataclasses.replace(m, inbound_price_wei=prices[m.name][0], outbound_price_wei=prices[m.name][1])
                for m in served
                if m.enabled and m.name in prices
            ]
            await update_models(self.node, self.catalog, current)

    # -- api.NodeView: the read-only view the admin API has of this node ------------------
    @property
    def running(self) -> bool:
        return self.started_at is not None and self.node.running

    @property
    def draining(self) -> bool:
        return self.handler.draining

    def uptime_seconds(self) -> int:
        return int(time.monotonic() - self.started_at) if self.started_at is not None else 0

    def _own_counts(self) -> tuple[int, int]:
        stats = self.node.stream_stats()
        return (stats.inflight, stats.served) if stats is not None else (0, 0)

    async def request_counts(self) -> tuple[int, int]:
        """(in flight, served) of this process; with several workers, of the node (the lead asks)."""
        if self.aggregator is not None:
            return await self.aggregator.request_counts()
        return self._own_counts()

    async def peers(self) -> list[dict[str, Any]]:
        """Connected peers; with several workers, all the node's (the lead asks the others)."""
        if self.aggregator is not None:
            return await self.aggregator.peers()
        return await peer_snapshot(self.node) if self.running else []

    async def network(self) -> dict[str, Any]:
        """Other executors' verified announcements (gossip), ours left out; with several workers,
        what any of them heard."""
        if self.aggregator is not None:
            view = await self.aggregator.network()
        else:
            view = await network_view(self.node) if self.running else {}
        view.pop(self.identity.peer_id, None)
        return view

    async def _own_view(self) -> dict[str, Any]:
        """This worker's peers and network view, for the lead (workers/peer_endpoint.py)."""
        if not self.running:
            return {"peers": [], "network": {}, "requests": [0, 0]}
        return {
            "peers": await peer_snapshot(self.node),
            "network": await network_view(self.node),
            "requests": list(self._own_counts()),
        }

    def served_models(self) -> list[str]:
        return [m.name for m in self.registry.served()]

    def prices(self) -> dict[str, tuple[int, int]]:
        return self.registry.prices()

    def ledger_status(self) -> LedgerStatus:
        """Whether the ledger can write now (while it cannot, /health says unhealthy)."""
        return self.ledger.status()

    def throttled_models(self) -> dict[str, dict[str, Any]]:
        """Models over their max_tokens_per_second now: when they resume and who waits."""
        over = self.resources.throttled() if self.resources is not None else {}
        waiting = self.dispatcher.throttled_by_model() if over else {}
        return {
            model: {"resume_in_seconds": round(secs, 3), "waiting_requests": waiting.get(model, 0)}
            for model, secs in sorted(over.items())
        }

    def backend_health(self) -> dict[str, dict[str, Any]]:
        """Each backend's instances: up, in flight, failures (empty for a backend given by the caller)."""
        return self.backends.health() if self.backends is not None else {}

    def settlement_status(self) -> dict[str, Any] | None:
        """[blockchain] settlement's state for /health/detailed (None: not enabled)."""
        return self.settler.snapshot() if self.settler is not None else None

    def cluster_status(self) -> dict[str, Any] | None:
        """The etcd coordination's state for /health/detailed (None: this process does not coordinate)."""
        return self.coordinator.snapshot() if self.coordinator is not None else None

    def shared_state_status(self) -> dict[str, Any] | None:
        """The shared store's state for /health/detailed (None: nothing shared across machines)."""
        return self.shared.health()

    def inflight(self) -> int:
        stats = self.node.stream_stats()
        return stats.inflight if stats else 0

    async def stop(self) -> None:
        """Drain, then stop; safe to call once the node has started."""
        self.handler.draining = True
        if self.discovery is not None:
            await self.discovery.stop()
        deadline = time.monotonic() + self.config.request_handling.drain_timeout_secs
        while self.inflight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.inflight()
        if left:
            log.warning("drain timeout: %d request(s) still in flight are cut off", left)
        await self._close_parts(cut_off=left)
        log.info("executor stopped")

    async def _close_parts(self, cut_off: int) -> None:
        """Everything `start` may have opened, in order; one part failing to close does not
        keep the others open (each failure is logged). Safe on parts never started."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.discovery is not None:
            steps.append(("model discovery", self.discovery.stop))
        steps += [
            ("housekeeping", self._stop_housekeeping),
            ("the admin API and metrics", self._stop_http),
            ("the worker's private endpoint", self._stop_endpoint),
            ("the P2P node", self.node.stop),
        ]
        if self.plugins is not None:  # no request is left to check; their queued events are delivered first
            steps.append(("the plugins", self.plugins.stop))
        if self.settler is not None:
            steps.append(("settlement", self.settler.stop))
        if self.coordinator is not None:  # after settlement: the lease goes, another member may lead at once
            steps.append(("cluster coordination", self.coordinator.stop))
        steps.append(("the backend", self.backend.close))
        if self.cache is not None:
            steps.append(("the response cache", self.cache.close))
        steps.append(("the ledger", lambda: asyncio.to_thread(self.ledger.close)))
        steps.append(("the shared state", lambda: asyncio.to_thread(self.shared.close)))
        if self.webhooks is not None:
            steps.append(("the webhooks", lambda: self._stop_webhooks(cut_off)))
        for what, step in steps:
            try:
                await step()
            except Exception:
                log.exception("stopping %s failed", what)

    async def _stop_housekeeping(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None

    async def _stop_http(self) -> None:
        if self.api is not None:
            await self.api.stop()
            self.api = None
        if self.push_loop is not None:
            await asyncio.to_thread(self.push_loop.stop)
            self.push_loop = None
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None

    async def _stop_endpoint(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.stop()

    async def _stop_webhooks(self, cut_off: int) -> None:
        assert self.webhooks is not None
        if self.started_at is not None and self.role.lead:  # a node that never served says nothing; one per node
            uptime = time.monotonic() - self.started_at
            self.webhooks.emit("stopped", {"uptime_secs": round(uptime, 3), "cut_off": cut_off})
        await self.webhooks.stop()

    async def run_until_signal(self) -> None:
        """Serve until SIGINT/SIGTERM; a signal during start-up stops the node once it is up."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            addrs = await self.start()
            self.role.report_ready(addrs)  # to the supervisor, when there is one
            await stop.wait()
            log.info("signal received: draining")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if self.started_at is not None:
                await self.stop()
