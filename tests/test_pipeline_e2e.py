"""The whole request path of a configured executor (ExecutorService) over real libp2p:
rate limits, replay, price, content filter, cache, receipts, ledger and metrics together."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from lloom_executor import _native
from lloom_executor.client import LloomClient
from lloom_executor.config import Config
from lloom_executor.identity import load_identity
from lloom_executor.ledger import Ledger
from lloom_executor.service import ExecutorService
from service_rig import CHAIN_ID, CONTRACT, echo_service_config

PRICE_IN = 10**12  # 0.000001 ETH
PRICE_OUT = 2 * 10**12


def config_for(tmp_path: Path, **sections: Any) -> Config:
    return echo_service_config(tmp_path, **sections)


async def running(config: Config):
    service = ExecutorService(config, load_identity(config.identity, environ={}))
    addrs = await service.start()
    return service, addrs[0]


def ask(client: LloomClient, peer: str, prompt: str, **kw: Any):
    kw.setdefault("inbound_price", str(PRICE_IN))
    kw.setdefault("outbound_price", str(PRICE_OUT))
    return client.request(peer, "m", prompt, **kw)


def test_configured_pipeline_end_to_end(tmp_path: Path) -> None:
    config = config_for(
        tmp_path,
        rate_limiting={"enabled": True, "rules": [{"identifier": "peer_id", "max_requests_per_minute": 6}]},
        content_filter={"enabled": True, "block_patterns": ["forbidden\\s+words"], "scan_responses": True},
        cache={"enabled": True, "backend": "memory"},
    )

    async def scenario() -> dict[str, Any]:
        service, addr = await running(config)
        peer = service.identity.peer_id
        domain = _native.Eip712Domain(CHAIN_ID, CONTRACT)
        try:
            async with LloomClient(bootstrap=[addr], enable_kad=False, enable_gossip=False, eip712_domain=domain) as client:
                served = await ask(client, peer, "hello there", temperature=0.0)
                cached = await ask(client, peer, "hello there", temperature=0.0)
                cheap = await ask(client, peer, "hello cheap", inbound_price=str(PRICE_IN - 1))
                filtered = await ask(client, peer, "say the forbidden   words")
                # a resent identical signed frame is a replay
                now = int(time.time())
                frame = _native.encode_signed_request(
                    client.key, "m", "once only", None, None, None, peer, str(PRICE_IN), str(PRICE_OUT), 1, now + 300, now
                )
                first = _native.decode_response(await client.send_frame(peer, frame))
                again = _native.decode_response(await client.send_frame(peer, frame))
                limited = await ask(client, peer, "one too many")  # the 7th request within the minute
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(service.metrics_server.url)).text
        finally:
            await service.stop()
        return locals()

    r = asyncio.run(scenario())
    served, cached = r["served"], r["cached"]
    assert served.error is None and served.signature_valid and served.content == "echo: hello there"
    assert int(served.total_cost) == served.inbound_tokens * PRICE_IN + served.outbound_tokens * PRICE_OUT
    assert served.receipt is not None and served.receipt.valid, served.receipt
    assert cached.error is None and cached.content == served.content and cached.receipt.valid
    assert r["cheap"].error.startswith("price too low: this executor charges 1000000000000 wei/input token")
    assert r["filtered"].error and "forbidden" not in r["filtered"].error
    assert r["first"].error is None and r["again"].error == "replay: this signed request was already received"
    assert r["limited"].error.startswith("rate limit: 6 requests/minute per peer_id exceeded")

    metrics = r["metrics"]
    assert 'lloom_executor_requests_total{model="m",status="success"} 3.0' in metrics
    assert 'lloom_executor_requests_total{model="m",status="price_too_low"} 1.0' in metrics
    assert 'lloom_executor_requests_total{model="m",status="replay"} 1.0' in metrics
    assert 'lloom_executor_cache_requests_total{result="hit"} 1.0' in metrics
    assert "lloom_executor_rate_limited_total" in metrics

    ledger = Ledger.in_directory(tmp_path / "data")
    try:
        rows = ledger.entries()
        served_rows = [row for row in rows if row["status"] == "served"]
        assert len(rows) == 7 and len(served_rows) == 3
        assert served.total_cost in {row["total_cost"] for row in served_rows}
        assert all(row["receipt_signature"] for row in served_rows)
        refusals = sorted(row["reason"].split(":")[0] for row in rows if row["status"] == "refused")
        assert refusals == ["price too low", "prompt refused by this executor's content filter", "rate limit", "replay"]
    finally:
        ledger.close()


# B asks 3e12 wei on each side. A's own prices are 1e12 in, 2e12 out with peak 2.0: the market
# median is capped at 2e12 for input and passes (3e12 <= 4e12) for output.
EXPECTED = (2 * PRICE_IN, 3 * PRICE_IN)


def test_market_pricing_follows_the_network_and_is_reannounced(tmp_path: Path) -> None:
    """A prices from B's verified announcement (bounded by its peak multiplier), re-announces
    the new price, and refuses offers below it; B sees A's new price in its network view."""
    from lloom_executor.p2p.services import network_view

    gossip_only = {"enable_mdns": False, "enable_autonat": False, "enable_relay": False, "enable_kad": False}
    b_dir, a_dir = tmp_path / "b", tmp_path / "a"
    b_dir.mkdir()
    a_dir.mkdir()
    b_config = config_for(
        b_dir,
        models=[{"name": "m", "inbound_price": "0.000003", "outbound_price": "0.000003"}],  # 3e12 wei
        metrics={"enabled": False},
    )

    async def scenario() -> dict[str, Any]:
        b = ExecutorService(b_config, load_identity(b_config.identity, environ={}), heartbeat_secs=1.0)
        b_addr = (await b.start())[0]
        a_config = config_for(
            a_dir,
            network={"listen_address": "/ip4/127.0.0.1/tcp/0", "bootstrap_peers": [b_addr], "protocols": gossip_only},
            pricing={"strategy": "market", "update_interval_secs": 1, "peak_multiplier": 2.0, "off_peak_multiplier": 0.5},
            metrics={"enabled": False},
        )
        a = ExecutorService(a_config, load_identity(a_config.identity, environ={}), heartbeat_secs=1.0)
        a_addr = (await a.start())[0]
        try:
            deadline = time.monotonic() + 30
            a_peer = a.identity.peer_id
            while time.monotonic() < deadline:
                seen_by_b = (await network_view(b.node)).get(a_peer, {}).get("prices", {}).get("m")
                if seen_by_b is not None and tuple(seen_by_b) == EXPECTED:
                    break
                await asyncio.sleep(0.2)
            current = a.registry.prices()["m"]
            async with LloomClient(bootstrap=[a_addr], enable_kad=False, enable_gossip=False) as client:
                cheap = await client.request(a_peer, "m", "hi", inbound_price=str(PRICE_IN), outbound_price=str(PRICE_OUT))
        finally:
            await a.stop()
            await b.stop()
        return {"seen_by_b": seen_by_b, "current": current, "cheap": cheap, "a_view": a.registry.pricing.market_view}

    r = asyncio.run(scenario())
    assert r["current"] == EXPECTED, r
    assert r["seen_by_b"] is not None and tuple(r["seen_by_b"]) == EXPECTED
    assert r["cheap"].error.startswith("price too low: this executor charges 2000000000000 wei/input token")
