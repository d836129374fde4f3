"""Which configured features this build does not run yet, so `start` can say so.

Nothing configured may be silently ignored: each entry here is a feature the
operator switched on (or set away from its default) that has no running
implementation in this version. Remove an entry when its feature lands.
"""

from __future__ import annotations

from .schema import Config


def inactive_features(config: Config) -> list[str]:
    out: list[str] = []

    def note(active: bool, what: str) -> None:
        if active:
            out.append(what)

    note(config.resources.swap_enabled, "[resources] swap_enabled: the executor does not manage swap")
    note(
        bool(config.gpu_allocation.model_affinity and not config.gpu_allocation.devices),
        "[gpu_allocation] model_affinity without devices: one backend serves all models",
    )
    clustering = config.clustering
    note(
        clustering.enabled and not clustering.etcd_endpoints,
        "[clustering] without etcd_endpoints: no membership or leader election, so leader-only duties (settlement) "
        "do not run on a member; running a local etcd member from `peers` is not built: run etcd yourself and "
        "list its client URLs in etcd_endpoints (docs/clustering.md)",
    )
    note(
        clustering.enabled and bool(clustering.etcd_endpoints) and bool(clustering.peers),
        "[clustering] peers: ignored (etcd_endpoints is used; a local etcd member supervised by start is not built)",
    )
    note(config.failover.enabled, "[failover]: not implemented; this node runs alone")
    return out
