"""`lloom-executor benchmark` as an operator runs it: a real process, real libp2p on loopback,
the echo backend or a real OpenAI-wire server. Counts and fields only, no timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from openai_server import OpenAIServer, echo_content

PRICE_IN = 10**12  # "0.000001" ETH per token
PRICE_OUT = 2 * 10**12


def cli(*args: str, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
    command = [sys.executable, "-m", "lloom_executor", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def write_config(
    tmp_path: Path, *, backend: str, base_url: str = "http://127.0.0.1:9/v1", models: list[str], extra: str = ""
) -> Path:
    """An operator's config as a running node would use it: fixed ports, the API and metrics on,
    a data dir and key files of its own (which the benchmark must leave alone: the keys are not even created)."""
    model_tables = "".join(f'[[models]]\nname = "{m}"\ninbound_price = "0.000001"\noutbound_price = "0.000002"\n' for m in models)
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[network]
listen_address = "/ip4/0.0.0.0/tcp/4001"
[identity]
private_key_path = "{tmp_path / "node" / "identity_key"}"
ethereum_private_key_path = "{tmp_path / "node" / "eth_key"}"
[llm_client]
backend = "{backend}"
base_url = "{base_url}"
timeout_secs = 10
max_retries = 0
[metrics]
enabled = true
endpoint = "127.0.0.1:9092"
[api]
enabled = true
listen_address = "127.0.0.1:8080"
[storage]
data_dir = "{tmp_path / "node" / "data"}"
{extra}
{model_tables}
"""
    )
    return config


def check_path(stats: dict, n: int, concurrency: int) -> None:
    assert stats["requests"] == n and stats["concurrency"] == concurrency
    assert stats["successes"] == n and stats["errors"] == 0 and stats["first_errors"] == []
    assert stats["warmup_ok"] is True
    lat = stats["latency_s"]
    assert set(lat) == {"mean", "min", "p50", "p90", "p99", "max"}
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert stats["wall_s"] > 0 and stats["throughput_rps"] > 0 and stats["first_answer_s"] > 0
    assert stats["output_tokens_per_s"] > 0


def test_help() -> None:
    out = cli("benchmark", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: python -m lloom_executor benchmark")
    for option in ("--model", "--requests", "--concurrency", "--prompt", "--max-tokens", "--config", "--json"):
        assert option in out.stdout


def test_echo_backend_json(tmp_path: Path) -> None:
    config = write_config(tmp_path, backend="echo", models=["echo-model"])
    out = cli("benchmark", "--config", str(config), "--model", "echo-model", "--requests", "12", "--concurrency", "4", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["model"] == data["served_as"] == "echo-model"
    assert data["backend"] == {"type": "echo", "base_url": None}
    assert data["requests"] == 12 and data["concurrency"] == 4 and data["max_tokens"] == 64
    assert data["price_wei"] == {"inbound": str(PRICE_IN), "outbound": str(PRICE_OUT)}
    assert data["ok"] is True
    ex, be = data["executor"], data["backend_only"]
    check_path(ex, 12, 4)
    check_path(be, 12, 4)
    assert ex["receipts_valid"] == 12
    # the executor charges exactly the offered price for the tokens it counted
    assert int(ex["total_cost_wei"]) == ex["tokens_in"] * PRICE_IN + ex["tokens_out"] * PRICE_OUT > 0
    # echo reports no usage: both paths count with the executor's rule, so they agree
    assert (ex["tokens_in"], ex["tokens_out"]) == (be["tokens_in"], be["tokens_out"])
    assert ex["tokens_in"] % 12 == 0 and ex["tokens_out"] % 12 == 0
    assert "total_cost_wei" not in be
    assert set(data["overhead"]) == {"latency_p50_s", "latency_mean_s", "throughput_ratio"}
    # nothing of the operator's node was touched: no data dir, no key files created
    assert not (tmp_path / "node").exists()


def test_echo_backend_table(tmp_path: Path) -> None:
    config = write_config(tmp_path, backend="echo", models=["echo-model"])
    out = cli("benchmark", "--config", str(config), "--model", "echo-model", "--requests", "5", "--concurrency", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "benchmarking echo-model on echo: 5 requests, 2 in flight, max_tokens 64"
    executor_row = next(line for line in lines if line.startswith("executor (libp2p)"))
    backend_row = next(line for line in lines if line.startswith("backend alone"))
    assert executor_row.split()[2:4] == ["5/5", "0"] and backend_row.split()[2:4] == ["5/5", "0"]
    assert "receipts verified: 5/5" in out.stdout and "executor overhead:" in out.stdout


def test_openai_server_with_alias(tmp_path: Path) -> None:
    prompt = "one two three four five"
    with OpenAIServer(latency=0.05) as server:
        config = write_config(
            tmp_path,
            backend="openai",
            base_url=server.base_url,
            models=["test-model"],
            extra='[model_aliases]\nfast = "test-model"\n',
        )
        out = cli(
            "benchmark",
            "--config",
            str(config),
            "--model",
            "fast",
            "--requests",
            "10",
            "--concurrency",
            "4",
            "--prompt",
            prompt,
            "--max-tokens",
            "3",
            "--json",
        )
        chats = server.chat_requests
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["model"] == "fast" and data["served_as"] == "test-model"
    assert data["backend"] == {"type": "openai", "base_url": server.base_url}
    assert data["prompt"] == prompt and data["max_tokens"] == 3 and data["ok"] is True
    ex, be = data["executor"], data["backend_only"]
    check_path(ex, 10, 4)
    check_path(be, 10, 4)
    # 10 timed requests + 1 warm-up per path, all reaching the server with the served name and max_tokens
    assert len(chats) == 22
    assert {c.json["model"] for c in chats} == {"test-model"} and {c.json["max_tokens"] for c in chats} == {3}
    # the server's usage: prompt words in, answer words ("echo: one two") out, on both paths
    answer_words = len(echo_content(prompt, 3).split())
    assert answer_words == 3
    for stats in (ex, be):
        assert stats["tokens_in"] == 10 * len(prompt.split())
        assert stats["tokens_out"] == 10 * answer_words
    assert int(ex["total_cost_wei"]) == 10 * (5 * PRICE_IN + 3 * PRICE_OUT)
    assert ex["receipts_valid"] == 10


def test_failed_requests_exit_nonzero_with_errors(tmp_path: Path) -> None:
    with OpenAIServer(latency=0.05) as server:
        server.fail(400, times=2, message="the test server refused this one")
        config = write_config(tmp_path, backend="openai", base_url=server.base_url, models=["test-model"])
        out = cli(
            "benchmark", "--config", str(config), "--model", "test-model", "--requests", "6", "--concurrency", "2", "--json"
        )
    assert out.returncode == 1, out.stdout + out.stderr
    data = json.loads(out.stdout)  # the figures still come out
    assert data["ok"] is False
    ex = data["executor"]
    # the executor path runs first: its warm-up and one timed request hit the two failures
    assert ex["errors"] == 2 and ex["warmup_ok"] is False and ex["successes"] == 5
    # the client reads the executor's fixed sentence for a backend failure, never the backend's own text
    assert ex["first_errors"] == ["the backend failed on this request"]
    assert data["backend_only"]["errors"] == 0 and data["backend_only"]["successes"] == 6
    assert "2 request(s) failed (executor)" in out.stderr
    assert "error (executor): the backend failed on this request" in out.stderr


def test_unknown_model_exits_with_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, backend="echo", models=["echo-model"], extra='[model_aliases]\nquick = "echo-model"\n')
    out = cli("benchmark", "--config", str(config), "--model", "no-such-model", "--json")
    assert out.returncode == 1
    assert out.stdout == ""
    assert "model 'no-such-model' is not served by this config (enabled models and aliases: echo-model, quick)" in out.stderr
    assert not (tmp_path / "node").exists()
