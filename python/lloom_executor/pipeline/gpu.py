"""`[gpu_allocation]`: one backend instance per device, as an instance pool.

An executor does not drive GPUs itself; its backend (LM Studio, vLLM, llama.cpp
server ...) does. "Several GPUs" therefore means several model servers, one per
GPU: `devices = [0, 1, ...]` makes one `[llm_client]` instance per device, its
`base_url` the configured one with `{device}` replaced by the device id (e.g.
`http://localhost:800{device}/v1` over ports 8000 and 8001). Without `{device}`
every instance talks to the same server (a warning says so at start).

The devices are an `InstancePool` (`backends/pool.py`), the same pool a list of
`base_urls` makes: strategies (`round_robin`, `least_loaded`, `affinity` with
`[[gpu_allocation.model_affinity]]` pins holding under every strategy), health
from calls and probes, a device taken out after failures and probed back in,
and a call that failed before any answer tried once on another device. This
module keeps the device-flavoured names callers use.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from ..backends.base import LlmBackend
from ..backends.from_config import DEVICE_PLACEHOLDER, device_pool, device_url
from ..backends.pool import STRATEGIES, HealthPolicy, InstancePool
from ..config.schema import DEFAULT_BACKEND, Config


class DevicePool(InstancePool):
    """An instance pool keyed by device id, labelled "device N"."""

    def __init__(
        self,
        backends: Mapping[int, LlmBackend],
        strategy: str = "round_robin",
        affinity: Mapping[str, Sequence[int]] | None = None,
        *,
        policy: HealthPolicy | None = None,
    ) -> None:
        instances: dict[Hashable, LlmBackend] = dict(backends.items())
        labels: dict[Hashable, str] = {d: f"device {d}" for d in backends}
        super().__init__(instances, strategy, affinity, name=DEFAULT_BACKEND, labels=labels, policy=policy)


def device_pool_from_config(config: Config) -> InstancePool:
    """One `[llm_client]` backend per `[gpu_allocation]` device, `{device}` in base_url replaced."""
    return device_pool(config)


__all__ = ["DEVICE_PLACEHOLDER", "STRATEGIES", "DevicePool", "device_pool_from_config", "device_url"]
