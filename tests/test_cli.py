"""The command line as an operator uses it: real processes, a real OpenAI-wire server, real libp2p."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import interop
from lloom_executor.client import Answer, LloomClient
from openai_server import GatedServer, OpenAIServer, refused_url
from service_rig import until

COMMANDS = [
    [],
    ["init"],
    ["config"],
    ["config", "validate"],
    ["start"],
    ["test-backend"],
    ["models"],
    ["models", "list"],
    ["peers"],
    ["peers", "list"],
    ["maintenance"],
    ["maintenance", "clean-cache"],
    ["maintenance", "optimize-db"],
    ["maintenance", "backup"],
    ["demo"],
]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lloom_executor", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )


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
        config = write_config(
            tmp_path,
            server.base_url,
            models=["test-model", "unloaded-model", "absent-model"],
            extra='[model_aliases]\nfast = "test-model"\n',
        )
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


DRAIN_REFUSAL = "executor is shutting down; send the request to another executor"


async def read_until(proc: subprocess.Popen[str], pattern: str, lines: list[str], timeout: float) -> re.Match[str]:
    """Read the process's output into `lines` until a line matches `pattern`; fails if it ends first.

    The output is the evidence that the process reached a state (listening, draining): waiting
    for it replaces guessing how long that takes."""
    stdout = proc.stdout
    assert stdout is not None

    async def scan() -> re.Match[str]:
        while True:
            line = await asyncio.to_thread(stdout.readline)
            if not line:
                raise AssertionError(f"output ended before {pattern!r}:\n{''.join(lines)}")
            lines.append(line)
            if match := re.search(pattern, line):
                return match

    try:
        return await asyncio.wait_for(scan(), timeout)
    except TimeoutError:
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{''.join(lines)}") from None


def test_start_then_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    """After SIGTERM the node drains (service.py `stop`): a request that arrives while requests are
    still in flight gets a signed refusal (serving: "draining"), the in-flight ones are answered,
    and the process exits 0 after announcing its stop."""
    server = GatedServer()
    with server:
        llm = f'backend = "lmstudio"\nbase_url = "{server.base_url}"\ntimeout_secs = 60\nmax_retries = 0'
        config = interop.write_operator_config(
            tmp_path, llm=llm, models=["test-model"], extra="[request_handling]\ndrain_timeout_secs = 60\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLOOM_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "lloom_executor", "start", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            lines: list[str] = []
            address = asyncio.run(read_until(proc, r"listening on (/ip4/\S+/p2p/\S+)", lines, 30)).group(1)
            peer = address.rsplit("/p2p/", 1)[1]
            price_in, price_out = "1000000000000", "2000000000000"

            async def scenario() -> tuple[list[Answer], Answer]:
                async with LloomClient(bootstrap=[address], request_timeout=60) as client:
                    in_flight = [
                        asyncio.ensure_future(
                            client.request(peer, "test-model", f"drain me {i}", inbound_price=price_in, outbound_price=price_out)
                        )
                        for i in range(5)
                    ]
                    try:
                        await until(lambda: len(server.chat_requests) == 5, "all five requests at the backend", 30)
                        proc.send_signal(signal.SIGTERM)
                        # logged just before the handler is told to drain, with no await in between
                        await read_until(proc, "signal received: draining", lines, 30)
                        late = await client.request(
                            peer, "test-model", "too late", inbound_price=price_in, outbound_price=price_out, timeout=10
                        )
                    finally:
                        server.open_gate()
                    return [await f for f in in_flight], late

            answers, late = asyncio.run(scenario())
            assert [a.error for a in answers] == [None] * 5
            assert [a.content for a in answers] == [f"echo: drain me {i}" for i in range(5)]
            executor_address = answers[0].signer
            assert (late.error, late.signature_valid, late.signer) == (DRAIN_REFUSAL, True, executor_address)
            assert (late.content, late.total_cost, late.inbound_tokens, late.outbound_tokens) == ("", "0", 0, 0)
            assert len(server.chat_requests) == 5  # the refused request never reached the backend
            rest, _ = proc.communicate(timeout=30)
            output = "".join(lines) + rest
            assert proc.returncode == 0, output
            assert "executor stopped" in rest, output
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
