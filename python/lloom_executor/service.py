"""Wiring and lifecycle of a running executor: config -> identity, backend, request path, P2P node.

`start` follows the manual: log who we are and what we serve, say which
configured features are not active, serve until SIGINT/SIGTERM, then drain:
refuse new work (signed), let in-flight requests finish up to
`drain_timeout_secs`, announce `Removal`, stop the host, close the backend.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time

from .backends.base import LlmBackend
from .backends.limits import with_limits
from .backends.registry import create_backend
from .config import Config, inactive_features
from .identity import Identity
from .model_discovery import attach_discovery
from .p2p.announcements import ModelCatalog
from .p2p.node import P2PNode
from .p2p.services import default_services
from .serving import BasicRequestHandler

log = logging.getLogger(__name__)


def backend_from_config(config: Config) -> LlmBackend:
    llm = config.llm_client
    if llm.backend == "echo":
        return create_backend("echo", models=[m.name for m in config.models])
    return create_backend(
        llm.backend, base_url=llm.base_url, api_key=llm.api_key, timeout_secs=llm.timeout_secs, max_retries=llm.max_retries
    )


class ExecutorService:
    def __init__(
        self,
        config: Config,
        identity: Identity,
        backend: LlmBackend | None = None,
        *,
        discovery_options: dict | None = None,
        **service_options,
    ) -> None:
        """`service_options` tune P2P timings and `discovery_options` the model discovery (tests shorten them)."""
        self.config = config
        self.identity = identity
        self.backend = with_limits(backend or backend_from_config(config), config.openai_limits)
        self.discovery = None  # model_discovery.ModelDiscovery while [model_discovery] runs
        self._discovery_options = discovery_options or {}
        self.catalog = ModelCatalog([m for m in config.models if m.enabled], backend_type=config.llm_client.backend)
        self.handler = BasicRequestHandler(
            identity.eth_key,
            list(config.models),
            self.backend,
            allow_unsigned=config.request_handling.allow_unsigned,
            handling=config.request_handling,
            peer_id=identity.peer_id,
            aliases=config.model_aliases,
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

    async def start(self) -> list[str]:
        for feature in inactive_features(self.config):
            log.warning("configured but not active in this version: %s", feature)
        if self.config.request_handling.allow_unsigned:
            log.warning("allow_unsigned = true: unsigned requests are served (no client accountability)")
        addrs = await self.node.start()
        self.started_at = time.monotonic()
        log.info("peer id %s, EVM address %s (%s)", self.identity.peer_id, self.identity.address, self.identity.source)
        for addr in addrs:
            log.info("listening on %s", addr)
        served = [m.name for m in self.config.models if m.enabled]
        if self.config.model_discovery.enabled:
            self.discovery = attach_discovery(self, **self._discovery_options)
            log.info("configured models: %s (served once the backend offers them)", ", ".join(served) or "none")
        else:
            log.info("serving models: %s", ", ".join(served) if served else "none (add [[models]] entries)")
        if self.config.api.enabled:
            from .api import ApiServer

            api = ApiServer(self)
            try:
                await api.start()
                self.api = api
            except Exception as exc:  # the P2P service goes on without its admin API
                log.error("[api] not serving on %s: %s: %s", self.config.api.listen_address, type(exc).__name__, exc)
        return addrs

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
        if self.api is not None:
            await self.api.stop()
            self.api = None
        await self.node.stop()
        await self.backend.close()
        log.info("executor stopped")

    async def run_until_signal(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            log.info("signal received: draining")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()
