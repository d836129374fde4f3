"""The command line as an operator uses it: real processes, a real OpenAI-wire server, real libp2p."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import interop
from openai_server import OpenAIServer, refused_url

from lloom_executor.client import LloomClient

COMMANDS = [[], ["init"], ["config"], ["config", "validate"], ["start"], ["test-backend"], ["models"], ["models", "list"], ["peers"], ["peers", "list"], ["maintenance"], ["maintenance", "clean-cache"], ["maintenance", "optimize-db"], ["maintenance", "backup"], ["demo"]]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "lloom_executor", *args], capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_help_of_every_command(command: list[str]) -> None:
    out = cli(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: python -m lloom_executor")
    assert len(out.stdout.splitlines()) > 3


def test_demo_end_to_end() -> None:
    out = cli("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo ok: every answer signed by the executor's key, priced exactly in wei, with a valid EIP-712 receipt" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith(("echo-demo", "no-such-model"))]
    assert [line.split()[0] for line in rows] == ["echo-demo", "echo-demo", "no-such-model"]
    assert all(" valid " in line for line in rows)  # every signature
    assert sum(line.count(" valid ") for line in rows[:2]) == 4  # served: signature and receipt
    assert "error: model 'no-such-model' is not served here" in out.stdout
    found = re.search(r"^found via (.*)$", out.stdout, re.M)
    assert found and "kad_providers" in found.group(1) and "gossip" in found.group(1)


def write_config(tmp_path: Path, base_url: str, *, models: list[str], extra: str = "", backend: str = "lmstudio") -> Path:
    llm = f'backend = "{backend}"\nbase_url = "{base_url}"\ntimeout_secs = 5\nmax_retries = 1'
    return interop.write_operator_config(tmp_path, llm=llm, models=models, extra=extra)


def test_test_backend_success(tmp_path: Path) -> None:
    with OpenAIServer() as server:
        config = write_config(tmp_path, server.base_url, models=["test-model"])
        out = cli("test-backend", "--config", str(config))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "models offered by the backend: test-model, unloaded-model" in out.stdout
        row = next(line for line in out.stdout.splitlines() if line.startswith("test-model"))
        assert " ok " in row and "tokens/s" not in row
        assert server.chat_requests[-1].json["model"] == "test-model"


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("refused", "backend unreachable: BackendUnavailable"),
        ("unauthorized", "backend unreachable: BackendAuthError"),
        ("not_loaded", "1 of 1 model(s) failed"),
        ("hang", "BackendTimeout"),
    ],
)
def test_test_backend_failures(tmp_path: Path, setup: str, expected: str) -> None:
    with OpenAIServer(api_key="sk-right" if setup == "unauthorized" else None) as server:
        url = refused_url() if setup == "refused" else server.base_url
        model = "unloaded-model" if setup == "not_loaded" else "test-model"
        if setup == "hang":
            server.hang()
        config = write_config(tmp_path, url, models=[model])
        out = cli("test-backend", "--config", str(config))
    assert out.returncode != 0
    assert expected in out.stdout + out.stderr


def test_models_list_json_and_offline(tmp_path: Path) -> None:
    with OpenAIServer() as server:
        config = write_config(tmp_path, server.base_url, models=["test-model", "unloaded-model", "absent-model"], extra='[model_aliases]\nfast = "test-model"\n')
        out = cli("models", "list", "--json", "--config", str(config))
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["backend_status"] == "connected"
        states = {m["name"]: m["backend_state"] for m in data["models"]}
        assert states == {"test-model": "loaded", "unloaded-model": "not-loaded", "absent-model": "missing"}
        first = data["models"][0]
        assert first["aliases"] == ["fast"] and first["inbound_price_wei"] == 10**12
        table = cli("models", "list", "--offline", "--config", str(config))
        assert table.returncode == 0 and "unknown" in table.stdout and "fast" in table.stdout


def test_start_then_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    """In-flight requests finish after SIGTERM; the process exits 0 after announcing its stop."""
    with OpenAIServer(latency=1.5) as server:
        config = write_config(tmp_path, server.base_url, models=["test-model"], extra="[request_handling]\ndrain_timeout_secs = 20\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLOOM_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "lloom_executor", "start", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        try:
            address = None
            lines: list[str] = []
            deadline = time.monotonic() + 30
            while address is None and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
                match = re.search(r"listening on (/ip4/\S+/p2p/\S+)", line)
                if match:
                    address = match.group(1)
            assert address, "".join(lines)

            async def scenario() -> tuple[list, object]:
                async with LloomClient(bootstrap=[address], request_timeout=30) as client:
                    peer = address.rsplit("/p2p/", 1)[1]
                    in_flight = [
                        asyncio.ensure_future(client.request(peer, "test-model", f"drain me {i}", inbound_price="1000000000000", outbound_price="2000000000000"))
                        for i in range(5)
                    ]
                    while len(server.chat_requests) < 5:  # all five reached the backend
                        await asyncio.sleep(0.05)
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.sleep(0.3)
                    try:
                        late = await client.request(peer, "test-model", "too late", inbound_price="1000000000000", outbound_price="2000000000000", timeout=10)
                    except Exception as exc:  # the node may already be gone
                        late = exc
                    return [await f for f in in_flight], late

            answers, late = asyncio.run(scenario())
            assert [a.error for a in answers] == [None] * 5
            assert [a.content for a in answers] == [f"echo: drain me {i}" for i in range(5)]
            if not isinstance(late, Exception):
                assert late.error and "shutting down" in late.error and late.signature_valid
            rest, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0, "".join(lines) + rest
            assert "signal received: draining" in rest and "executor stopped" in rest
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
