"""Which subsystems a node runs: each `[network.protocols]` switch adds or leaves out a real service.

Keyword arguments only tune timings (tests shorten them) and the mDNS
service name; the switches alone decide what runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..config import ModelConfig, NetworkConfig
from .announcements import ModelCatalog
from .autonat import AutoNatService
from .bootstrap import BootstrapService
from .gossip import GossipService
from .kad import KadService
from .mdns import MdnsService
from .node import NodeRuntime, NodeService, P2PNode
from .ping import PingService
from .relay import RelayClientService


def default_services(
    network: NetworkConfig,
    catalog: ModelCatalog,
    *,
    heartbeat_secs: float = 30.0,
    ping_interval_secs: float = 30.0,
    autonat_interval_secs: float = 300.0,
    autonat_confirmations: int = 4,
    mdns_fingerprint: str | None = None,
    duties: bool = True,
    worker: tuple[int, int] = (0, 1),
) -> list[NodeService]:
    """Bootstrap and ping always; kad, gossip, mDNS, AutoNAT, relay when switched on.

    One worker of several (docs/workers.md) answers what a peer asks on a connection the kernel
    gave it (kad queries, gossip subscriptions, ping, requests), but only the lead (`duties`)
    dials bootstrap peers, runs mDNS, AutoNAT and relay reservations and publishes the periodic
    and final announcements; `worker` (index, count) keeps their gossip sequence numbers apart.
    """
    switches = network.protocols
    services: list[NodeService] = [BootstrapService()] if duties else []
    if switches.enable_relay and duties:  # before the others: a reservation makes us reachable early
        services.append(RelayClientService())
    if switches.enable_kad:
        services.append(KadService())
    if switches.enable_gossipsub:
        services.append(GossipService(catalog, heartbeat_secs=heartbeat_secs, duties=duties, worker=worker))
    if switches.enable_mdns and duties:
        services.append(MdnsService(fingerprint=mdns_fingerprint))
    if switches.enable_autonat and duties:
        services.append(AutoNatService(interval_secs=autonat_interval_secs, confirmations=autonat_confirmations))
    services.append(PingService(interval_secs=ping_interval_secs))
    return services


async def update_models(node: P2PNode, catalog: ModelCatalog, models: Iterable[ModelConfig | Mapping[str, Any]]) -> bool:
    """From asyncio: replace the announced models; gossip an Update if anything changed.

    The catalog is only touched in the trio thread (through the bridge), so it needs no lock.
    """

    async def apply(rt: NodeRuntime, items: list[ModelConfig | Mapping[str, Any]]) -> bool:
        gossip = rt.services.get("gossip")
        if isinstance(gossip, GossipService) and gossip.catalog is catalog:
            return await gossip.update_models(items)
        return catalog.set_models(items)

    return await node.call(apply, list(models))


async def network_view(node: P2PNode) -> dict[str, dict[str, Any]]:
    """From asyncio: a copy of the verified view of other executors (empty without gossip)."""

    async def read(rt: NodeRuntime) -> dict[str, dict[str, Any]]:
        gossip = rt.services.get("gossip")
        return gossip.network_view() if isinstance(gossip, GossipService) else {}

    return await node.call(read)


async def peer_snapshot(node: P2PNode) -> list[dict[str, Any]]:
    """From asyncio: the connected peers as the admin API lists them (read in the trio thread,
    which owns the PeerBook)."""

    async def read(rt: NodeRuntime) -> list[dict[str, Any]]:
        return rt.peers.snapshot()

    return await node.call(read)


async def peer_count(node: P2PNode) -> int:
    """From asyncio: how many peers are connected."""

    async def read(rt: NodeRuntime) -> int:
        return len(rt.peers.peers)

    return await node.call(read)
