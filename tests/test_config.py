"""Configuration parsing: typed sections, every problem reported with its key path."""

from __future__ import annotations

from decimal import Decimal
from importlib import resources
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
    assert "network.protocols.enable_kad: expected true or false, got a string" in problems
    assert "request_handling.max_request_size_bytes: must be >= 1" in problems
    assert "request_handling.allow_unsigned: expected true or false, got an integer" in problems
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


EXAMPLE = resources.files("lloom_executor") / "data" / "config.example.toml"  # as the installed package ships it


def test_full_example_config_is_valid() -> None:
    from lloom_executor.config import load_config

    loaded = load_config(EXAMPLE, environ={})
    assert loaded.warnings == []
    config = loaded.config
    assert [m.name for m in config.models] == ["llama-2-13b-chat", "mistral-7b-instruct"]
    assert config.models[1].outbound_price_wei == 15_000_000_000_000
    assert config.priority.queue_sizes == {"low": 100, "normal": 200, "high": 50}
    assert config.resources.per_model["llama-2-13b-chat"].gpu_required is True
    assert config.gpu_allocation.model_affinity[0].devices == (0,)
    assert config.rate_limiting.rules[1].burst_size == 20
    assert config.model_aliases == {"fast": "mistral-7b-instruct", "balanced": "llama-2-13b-chat"}
    assert config.identity.private_key_path == str(Path("~/.lloom/executor/identity_key").expanduser())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_env_expansion_and_unset_variable(tmp_path: Path) -> None:
    from lloom_executor.config import load_config

    path = write(
        tmp_path, '[llm_client]\nbackend = "openai"\napi_key = "${MY_KEY}"\nbase_url = "${BASE:-http://127.0.0.1:9/v1}"\n'
    )
    loaded = load_config(path, environ={"MY_KEY": "sk-test"})
    assert loaded.config.llm_client.api_key == "sk-test"
    assert loaded.config.llm_client.base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [
        "llm_client.api_key (line 3): environment variable MY_KEY is not set (referenced as ${MY_KEY})"
    ]


def test_problems_carry_line_numbers_and_unknown_keys_suggest(tmp_path: Path) -> None:
    from lloom_executor.config import load_config

    path = write(
        tmp_path,
        '[request_handling]\nmax_concurent_requests = 5\n\n[[models]]\nname = "a"\n\n[[models]]\nname = "b"\ncontext_length = 0\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == ["models[1].context_length (line 9): must be >= 1, got 0"]
    loaded = load_config(write(tmp_path, "[request_handling]\nmax_concurent_requests = 5\n"), environ={})
    assert [str(w) for w in loaded.warnings] == [
        "request_handling.max_concurent_requests (line 2): unknown key; did you mean 'max_concurrent_requests'?"
    ]


def test_environment_overrides(tmp_path: Path) -> None:
    from lloom_executor.config import load_config

    path = write(
        tmp_path,
        '[network]\nlisten_address = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"]\n'
        '[llm_client]\nbackend = "openai"\n'
        '[[models]]\nname = "a"\n[[models]]\nname = "b"\n',
    )
    env = {
        "LLOOM_EXECUTOR_PORT": "5005",
        "LLOOM_EXECUTOR_MODELS": "b,c",
        "LLOOM_METRICS_ENABLED": "false",
        "OPENAI_API_KEY": "sk-env",
        "RUST_LOG": "warn,lloom_executor=debug",
    }
    loaded = load_config(path, environ=env)
    c = loaded.config
    assert c.network.listen_address == ("/ip4/0.0.0.0/tcp/5005", "/ip6/::/tcp/5005")
    assert [(m.name, m.enabled) for m in c.models] == [("a", False), ("b", True), ("c", True)]
    assert c.metrics.enabled is False
    assert c.llm_client.api_key == "sk-env"
    assert c.logging.level == "debug"
    assert any("'c' has no [[models]] entry" in str(w) for w in loaded.warnings)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"LLOOM_EXECUTOR_PORT": "99999", "LLOOM_METRICS_ENABLED": "maybe"})
    assert len(info.value.problems) == 2


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            '[[models]]\nname = "a"\n[model_aliases]\nfast = "b"\n',
            "model_aliases.fast (line 4): points to 'b', which is not a configured model",
        ),
        (
            '[[models]]\nname = "a"\n[gpu_allocation]\ndevices = [0]\n[[gpu_allocation.model_affinity]]\nmodel = "a"\ndevices = [1]\n',
            "gpu_allocation.model_affinity[0].devices (line 7): devices [1] are not in gpu_allocation.devices [0]",
        ),
        ('[api]\ntls_cert = "/nonexistent/cert.pem"\n', "api.tls_cert (line 2): tls_cert and tls_key must be given together"),
        (
            '[rate_limiting]\nenabled = true\n[[rate_limiting.rules]]\nidentifier = "peer_id"\n',
            "rate_limiting.rules[0] (line 3): a rule needs max_requests_per_minute or max_tokens_per_minute",
        ),
        (
            '[content_filter]\nblock_patterns = ["(unclosed"]\n',
            "content_filter.block_patterns[0] (line 2): invalid regular expression '(unclosed': missing ), unterminated subpattern at position 0",
        ),
        ('[pricing]\nstrategy = "cheap"\n', "pricing.strategy (line 2): must be one of fixed, dynamic, market; got 'cheap'"),
        (
            '[blockchain]\ncontract_address = "0x..."\n',
            "blockchain.contract_address (line 2): expected a 0x-prefixed 20-byte hex address, got '0x...'",
        ),
    ],
)
def test_cross_field_and_value_rules(tmp_path: Path, text: str, expected: str) -> None:
    from lloom_executor.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert expected in info.value.problems


def test_secrets_stay_out_of_reprs() -> None:
    config = Config.from_dict(
        {
            "llm_client": {"backend": "openai", "api_key": "sk-secret-value"},
            "api": {"auth_token": "token-secret-value"},
            "webhooks": {"enabled": True, "endpoints": [{"url": "http://127.0.0.1:9/hook", "auth_header": "Bearer hook-secret"}]},
        }
    )
    text = repr(config)
    assert config.llm_client.api_key == "sk-secret-value"
    assert "sk-secret-value" not in text and "token-secret-value" not in text and "hook-secret" not in text
