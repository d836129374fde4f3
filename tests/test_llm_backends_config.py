"""`[[llm_backends]]`, `[[models]] backend` and the pool keys of `[llm_client]`: every key at
its edges, the reference's keys refused with a pointer to ours, and the cross-field rules
`config validate` reports (unknown backend, unused backend, duplicate and reserved names)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lloom_executor.backends.from_config import build_backends, instance_label
from lloom_executor.config import Config, parse_config

OPENAI = {"name": "paid", "backend": "openai", "api_key": "sk-x"}


def problems(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    _, report = parse_config(data)
    return [str(p) for p in report.errors], [str(p) for p in report.warnings]


def with_backend(**entry: Any) -> dict[str, Any]:
    return {"llm_backends": [{**OPENAI, **entry}], "models": [{"name": "m"}, {"name": "g", "backend": "paid"}]}


def test_a_mixed_configuration_parses_and_routes_each_model() -> None:
    config = Config.from_dict(
        {
            "llm_client": {"backend": "lmstudio", "base_url": "http://localhost:1234/v1"},
            "llm_backends": [
                {
                    "name": "vllm",
                    "backend": "openai",
                    "base_urls": ["http://gpu1:8000/v1", "http://gpu2:8000/v1"],
                    "strategy": "least_loaded",
                    "max_concurrent_requests": 32,
                    "timeout_secs": 120,
                },
                {"name": "openai", "backend": "openai", "api_key": "sk-x", "limits": {"max_requests_per_minute": 500}},
            ],
            "models": [
                {"name": "local"},
                {"name": "llama-70b", "backend": "vllm"},
                {"name": "gpt-4o-mini", "backend": "openai"},
            ],
        }
    )
    assert [b.name for b in config.llm_backends] == ["vllm", "openai"]
    vllm = config.llm_backends[0]
    assert vllm.base_urls == ("http://gpu1:8000/v1", "http://gpu2:8000/v1") and vllm.strategy == "least_loaded"
    assert config.llm_backends[1].limits.max_requests_per_minute == 500
    backends = build_backends(config)
    try:
        assert backends.backend_of("local") == "llm_client"
        assert backends.backend_of("llama-70b") == "vllm" and backends.backend_of("gpt-4o-mini") == "openai"
        assert backends.entries["vllm"].instances == ("http://gpu1:8000/v1", "http://gpu2:8000/v1")
        assert backends.entries["vllm"].pool is not None and backends.entries["openai"].pool is None
        health = backends.health()
        assert health["vllm"]["strategy"] == "least_loaded" and health["vllm"]["instances_up"] == 2
        assert health["openai"]["instances"] == [{"instance": "https://api.openai.com/v1", "up": None}]
    finally:
        asyncio.run(backends.close())


def test_the_reference_keys_are_refused_with_a_pointer_to_ours() -> None:
    errors, _ = problems(with_backend(endpoint="http://x/v1", supported_models=["g"]))
    assert (
        "llm_backends[0].endpoint: 'endpoint' is the reference's name; use base_url (or base_urls for a pool of instances)"
        in errors
    )
    assert any(
        e.startswith("llm_backends[0].supported_models: 'supported_models' is not accepted")
        and 'its [[models]] entry, backend = "<this name>"' in e
        for e in errors
    )


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": ""}, "llm_backends[0].name: required"),
        ({"name": "llm_client"}, "llm_backends[0].name: 'llm_client' is [llm_client]'s name; choose another"),
        ({"name": "9lives"}, "llm_backends[0].name: must start with a letter"),
        ({"name": "a" * 65}, "llm_backends[0].name: must start with a letter"),
        ({"backend": "nope"}, "llm_backends[0].backend: must be one of lmstudio, openai, echo or module:Class"),
        ({"base_url": "http://a/v1", "base_urls": ["http://b/v1"]}, "llm_backends[0].base_urls: give base_url"),
        ({"base_urls": ["http://a/v1", "http://a/v1/"]}, "llm_backends[0].base_urls[1]: duplicate instance"),
        ({"base_urls": ["http://a{device}/v1"]}, "llm_backends[0].base_url: {device} belongs to [llm_client]"),
        ({"base_urls": ["not a url"]}, "llm_backends[0].base_urls[0]: expected a URL"),
        ({"backend": "lmstudio"}, "llm_backends[0].base_url: required for the lmstudio backend"),
        ({"strategy": "affinity"}, "llm_backends[0].strategy: must be one of round_robin, least_loaded"),
        ({"failure_threshold": 0}, "llm_backends[0].failure_threshold: must be >= 1"),
        ({"failure_threshold": 1001}, "llm_backends[0].failure_threshold: must be <= 1000"),
        ({"health_check_interval_secs": 0.09}, "llm_backends[0].health_check_interval_secs: must be >= 0.1"),
        ({"health_check_interval_secs": 3601}, "llm_backends[0].health_check_interval_secs: must be <= 3600"),
        ({"max_concurrent_requests": 0}, "llm_backends[0].max_concurrent_requests: must be >= 1"),
        ({"timeout_secs": 0}, "llm_backends[0].timeout_secs: must be >= 0.001"),
        ({"max_retries": -1}, "llm_backends[0].max_retries: must be >= 0"),
        ({"limits": {"max_requests_per_minute": 0}}, "llm_backends[0].limits.max_requests_per_minute: must be >= 1"),
        ({"limits": {"max_cost_per_day_usd": 1.0}}, "needs a USD price for model 'g' in limits.model_prices_usd"),
        ({"limits": {"model_prices_usd": {"g": {"input": 1}}}}, "limits.model_prices_usd.g.input: expected input_per_1k"),
    ],
)
def test_each_key_is_checked_at_its_edge(entry: dict[str, Any], message: str) -> None:
    errors, _ = problems(with_backend(**entry))
    assert any(message in e for e in errors), errors


@pytest.mark.parametrize(
    "entry",
    [
        {"failure_threshold": 1},
        {"failure_threshold": 1000},
        {"health_check_interval_secs": 0.1},
        {"health_check_interval_secs": 3600},
        {"max_concurrent_requests": 1},
        {"max_retries": 0},
        {"name": "a" * 64},
        {"base_urls": ["http://a/v1"]},
        {"limits": {"max_cost_per_day_usd": 1.0, "model_prices_usd": {"g": {"input_per_1k": 0.1, "output_per_1k": 0.2}}}},
    ],
)
def test_values_at_the_edge_are_accepted(entry: dict[str, Any]) -> None:
    data = with_backend(**entry)
    if "name" in entry:
        data["models"][1]["backend"] = entry["name"]
    errors, _ = problems(data)
    assert errors == []


def test_cross_backend_rules() -> None:
    errors, warnings = problems(
        {
            "llm_backends": [dict(OPENAI), dict(OPENAI), {"name": "idle", "backend": "echo"}],
            "models": [{"name": "g", "backend": "paid"}, {"name": "h", "backend": "nowhere"}],
        }
    )
    assert "llm_backends[1].name: duplicate backend name 'paid', also llm_backends[0]" in errors
    assert "models[1].backend: names backend 'nowhere', which is not configured (known: llm_client, paid, idle)" in errors
    assert "llm_backends[2]: backend 'idle' serves no model (no [[models]] entry says backend = 'idle')" in warnings
    alone, _ = problems({"models": [{"name": "h", "backend": "nowhere"}]})
    assert alone == [
        "models[0].backend: names backend 'nowhere', which is not configured (known: llm_client only: there are no [[llm_backends]])"
    ]
    explicit_default, _ = problems({"models": [{"name": "h", "backend": "llm_client"}]})
    assert explicit_default == []


def test_llm_client_pool_keys_and_their_rules() -> None:
    errors, _ = problems(
        {
            "llm_client": {"base_urls": ["http://a:1/v1", "http://a:1/v1"]},
            "gpu_allocation": {"devices": [0]},
            "models": [{"name": "m"}],
        }
    )
    assert "llm_client.base_urls[1]: duplicate instance 'http://a:1/v1'" in errors
    assert "llm_client.base_urls: give either base_urls or [gpu_allocation] devices ({device} in base_url), not both" in errors
    errors, _ = problems({"llm_client": {"failure_threshold": 0, "health_check_interval_secs": 0, "strategy": "x"}})
    assert {e.split(":")[0] for e in errors} == {
        "llm_client.failure_threshold",
        "llm_client.health_check_interval_secs",
        "llm_client.strategy",
    }
    pinned, _ = problems(
        {
            **with_backend(),
            "gpu_allocation": {"devices": [0], "model_affinity": [{"model": "g", "devices": [0]}]},
        }
    )
    assert "gpu_allocation.model_affinity[0].model: 'g' is served by backend 'paid', not the device pool" in pinned
    budget, _ = problems({**with_backend(), "openai_limits": {"max_cost_per_day_usd": 1.0, "model_prices_usd": {"m": {}}}})
    assert budget == []  # [openai_limits] prices only the models of [llm_client]


def test_instance_labels_carry_no_credentials() -> None:
    assert instance_label("http://user:pw@host:8000/v1?api_key=s3cret") == "http://host:8000/v1"
    assert instance_label("https://api.openai.com/v1/") == "https://api.openai.com/v1"


def test_config_validate_reports_the_backend_problems(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[[llm_backends]]\nname = "paid"\nbackend = "openai"\napi_key = "k"\nendpoint = "http://x/v1"\n\n'
        '[[models]]\nname = "m"\nbackend = "elsewhere"\n',
        encoding="utf-8",
    )
    out = subprocess.run(
        [sys.executable, "-m", "lloom_executor", "config", "validate", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "error: llm_backends[0].endpoint (line 5): 'endpoint' is the reference's name" in out.stderr
    assert "error: models[0].backend (line 9): names backend 'elsewhere', which is not configured" in out.stderr
    assert "warning: llm_backends[0] (line 1): backend 'paid' serves no model" in out.stderr
