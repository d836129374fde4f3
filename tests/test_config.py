"""Configuration parsing: typed sections, every problem reported with its key path."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lloom_executor.config import Config, ConfigError, eth_to_wei

PEER = "16Uiu2HAmBr2LsBdMJQtGx9zLNGjLuccN6iHo3W5bhjwed6FzcRX7"


def test_defaults_match_the_manual() -> None:
    config = Config.from_dict({})
    assert config.network.listen_address == ("/ip4/0.0.0.0/tcp/4001",)
    assert config.network.protocols.enable_kad is True
    assert config.request_handling.max_request_size_bytes == 1_048_576
    assert config.request_handling.max_concurrent_requests == 10
    assert config.request_handling.allow_unsigned is False


def test_manual_network_section_parses(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[network]
listen_address = "/ip4/0.0.0.0/tcp/4001"
external_address = "/ip4/203.0.113.7/tcp/4001"
bootstrap_peers = ["/ip4/127.0.0.1/tcp/4002/p2p/{PEER}"]

[network.protocols]
enable_mdns = false
enable_relay = false

[[models]]
name = "llama-2-13b-chat"
context_length = 4096
inbound_price = "0.00001"
outbound_price = "0.00002"
max_batch_size = 4
"""
    )
    config = Config.load(path)
    assert config.network.external_address == ("/ip4/203.0.113.7/tcp/4001",)
    assert config.network.bootstrap_peers == (f"/ip4/127.0.0.1/tcp/4002/p2p/{PEER}",)
    assert config.network.protocols.enable_mdns is False
    assert config.network.protocols.enable_gossipsub is True
    (model,) = config.models
    assert model.inbound_price_wei == 10_000_000_000_000
    assert model.outbound_price_wei == 20_000_000_000_000


def test_every_problem_is_reported_with_its_key() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(
            {
                "network": {
                    "listen_address": ["/ip4/0.0.0.0/tcp/4001", "/ip9/nonsense"],
                    "bootstrap_peers": ["/ip4/127.0.0.1/tcp/4002"],
                    "announce_interval_secs": 0,
                    "protocols": {"enable_kad": "yes"},
                },
                "request_handling": {"max_request_size_bytes": -1, "allow_unsigned": 1},
                "models": [{"name": "m", "inbound_price": "-1"}, {"inbound_price": "1"}],
            }
        )
    problems = "\n".join(info.value.problems)
    assert "network.listen_address[1]: not a valid multiaddr" in problems
    assert "network.bootstrap_peers[0]: must end in /p2p/<peer id>" in problems
    assert "network.announce_interval_secs: must be >= 1" in problems
    assert "network.protocols.enable_kad: expected bool" in problems
    assert "request_handling.max_request_size_bytes: must be >= 1" in problems
    assert "request_handling.allow_unsigned: expected bool" in problems
    assert "models[0].inbound_price: must be a non-negative decimal" in problems
    assert "models[1].name: required" in problems
    assert len(info.value.problems) == 8


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[network\nlisten_address = 1\n")
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert str(path) in info.value.problems[0]


@given(st.decimals(min_value=0, max_value=10**6, places=18, allow_nan=False, allow_infinity=False))
def test_eth_to_wei_is_exact(amount: Decimal) -> None:
    assert eth_to_wei(str(amount)) == int(amount * 10**18)


@pytest.mark.parametrize("text", ["abc", "-0.1", "1e-19", "0.0000000000000000001", "NaN", "Infinity"])
def test_eth_to_wei_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        eth_to_wei(text)
