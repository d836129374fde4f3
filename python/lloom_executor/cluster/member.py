"""What `service.py` needs of the coordination: build the Coordinator, its metrics, the gossip spacing.

Kept out of service.py (which only wires): the rules that decide whether this process
coordinates (clustering enabled, etcd endpoints configured, the lead worker: one member is
one etcd registration), and how gossip sequence numbers stay apart across members.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..config import Config
from ..workers.role import WorkerRole
from .coordination import Coordinator
from .etcd_client import EtcdClient


def build_coordinator(config: Config, role: WorkerRole) -> Coordinator | None:
    """The member's Coordinator, in its lead worker only; None when nothing coordinates."""
    clustering = config.clustering
    if not (clustering.enabled and clustering.etcd_endpoints and role.lead):
        return None
    ttl = clustering.etcd_lease_ttl_secs
    # a call may wait at most a third of the TTL, so one round stays within a keep-alive period
    client = EtcdClient(clustering.etcd_endpoints, timeout=max(0.3, ttl / 6), ca_file=clustering.etcd_ca_file)
    return Coordinator(client, clustering.etcd_prefix, clustering.node_id or "member", ttl=ttl)


def seqno_space(config: Config, role: WorkerRole) -> tuple[int, int]:
    """(residue, step) for gossip sequence numbers (p2p/gossip.py `space_seqnos`).

    The members of a cluster publish under one PeerId, so their message ids (PeerId +
    seqno) must differ too, not only their workers'.  With `[clustering] members` listed,
    member m (the position of node_id in the sorted list) worker w of W takes residue
    m * W + w modulo len(members) * W.  Every member must run the same number of workers.
    Without the list, only the workers are spaced (members start from their own clocks'
    nanoseconds, so they collide only after one has sent as many messages as nanoseconds
    passed between their starts)."""
    clustering = config.clustering
    if not (clustering.enabled and clustering.members and clustering.node_id in clustering.members):
        return role.index, role.count
    member = sorted(clustering.members).index(clustering.node_id)
    return member * role.count + role.index, len(clustering.members) * role.count


class ClusterCollector(Collector):
    """lloom_executor_cluster_{members,is_leader,epoch}, read from the Coordinator (no I/O)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[GaugeMetricFamily]:
        c = self.coordinator
        yield GaugeMetricFamily("lloom_executor_cluster_members", "Members registered in etcd", value=float(len(c.members())))
        yield GaugeMetricFamily(
            "lloom_executor_cluster_is_leader", "1 while this member leads", value=1.0 if c.is_leader else 0.0
        )
        yield GaugeMetricFamily(
            "lloom_executor_cluster_epoch",
            "The current leader's epoch (0: no leader known)",
            value=float(c.leadership.epoch or 0),
        )


__all__ = ["ClusterCollector", "build_coordinator", "seqno_space"]
