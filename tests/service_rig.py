"""The configuration of an ExecutorService for end-to-end tests: fresh key files (0600),
loopback TCP without mDNS/AutoNAT/relay, the echo backend serving model "m", an
EIP-712 domain, metrics on an ephemeral port, no API, state under tmp_path.
Shared by the pipeline, webhook and plugin tests; keyword sections replace the defaults.
Also the helpers several test modules share: `until` (poll a condition on the event
loop) and `samples` (parse a Prometheus text exposition)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lloom_executor import _native
from lloom_executor.config import Config

CHAIN_ID = 8453
CONTRACT = "0x" + "42" * 20


def echo_service_config(tmp_path: Path, **sections: Any) -> Config:
    key = _native.PrivateKey.generate()
    for name in ("identity_key", "eth_key"):
        (tmp_path / name).write_text(key.to_hex())
        (tmp_path / name).chmod(0o600)
    return Config.from_dict(
        {
            "network": {
                "listen_address": "/ip4/127.0.0.1/tcp/0",
                "protocols": {"enable_mdns": False, "enable_autonat": False, "enable_relay": False},
            },
            "identity": {
                "private_key_path": str(tmp_path / "identity_key"),
                "ethereum_private_key_path": str(tmp_path / "eth_key"),
            },
            "llm_client": {"backend": "echo"},
            "models": [{"name": "m", "inbound_price": "0.000001", "outbound_price": "0.000002"}],
            "blockchain": {"chain_id": CHAIN_ID, "contract_address": CONTRACT},
            "metrics": {"enabled": True, "endpoint": "127.0.0.1:0"},
            "api": {"enabled": False},
            "storage": {"data_dir": str(tmp_path / "data")},
            **sections,
        }
    )


async def until(predicate: Callable[[], Any], what: str = "condition", timeout: float = 10.0) -> None:
    """Poll `predicate` on the running loop until it is true; AssertionError naming `what` after `timeout` s.
    The one async wait of the tests (the sync one is `interop.wait_until`)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(0.002)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} via prometheus_client's own text parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out
