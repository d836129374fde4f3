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

    for model in config.models:
        per_model = [
            key
            for key in ("max_tokens_per_second", "gpu_memory_gb", "cpu_cores")
            if getattr(model, key) is not None
        ]
        note(bool(per_model), f"[[models]] {model.name}: {', '.join(per_model)} not enforced yet")
    note(config.blockchain.enabled, "[blockchain]: on-chain submission is not implemented yet")
    note(config.batching.enabled, "[batching]: requests are not batched yet")
    note(config.priority.enabled, "[priority]: priority queues are not active yet")
    r = config.resources
    note(
        r.max_memory_gb is not None or r.max_cpu_percent != 100.0 or r.gpu_memory_reserved_gb or bool(r.per_model),
        "[resources]: resource limits are not enforced yet",
    )
    note(bool(config.gpu_allocation.devices or config.gpu_allocation.model_affinity), "[gpu_allocation]: not implemented yet; one backend serves all models")
    note(config.clustering.enabled, "[clustering]: not implemented; this node runs alone")
    note(config.failover.enabled, "[failover]: not implemented; this node runs alone")
    note(bool(config.plugins), "[[plugins]]: plugin loading is not implemented yet")
    note(config.webhooks.enabled, "[webhooks]: not implemented yet")
    return out
