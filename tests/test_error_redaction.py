"""Signed error answers carry no internal detail; webhook events and ledger rows carry no secret.

A real executor (`ExecutorService`, OpenAI-compatible backend, SQLite ledger,
webhooks to a real receiver) whose backend fails every way a backend can:
nothing listening, a hang past its timeout, 401 quoting the key it refused,
500 with text, an error body echoing the request's headers, malformed JSON,
and a body cut off mid-way. The client must learn the class of failure and
nothing else: no URL, host, port, body or key in any field it can see.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from lloom_executor import _native
from lloom_executor.identity import load_identity
from lloom_executor.outcome import RefusalCode
from lloom_executor.p2p.llm_protocol import RequestContext
from lloom_executor.service import ExecutorService
from openai_server import OpenAIServer
from service_rig import echo_service_config, until
from test_webhooks import HookReceiver

API_KEY = "sk-canary-7f3a9c1e55d2"  # what the backend must never see repeated to a client
BODY_SECRET = "internal-stack-trace-at-/srv/model/worker.py"
CLIENT = _native.PrivateKey.generate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def frame(executor_peer_id: str, prompt: str) -> bytes:
    now = int(time.time())
    return _native.encode_signed_request(
        CLIENT, "m", prompt, None, None, 8, executor_peer_id, "1000000000000", "2000000000000", 1, now + 300, now
    )


def scenarios(server: OpenAIServer) -> dict[str, Any]:
    """Failure name -> how to provoke it on `server` (None: the backend is somewhere nothing listens)."""
    return {
        "refused": None,
        "timeout": lambda: server.hang(times=1),
        "401": lambda: server.fail(401, message=f"invalid api key {API_KEY}"),
        "500": lambda: server.fail(500, message=BODY_SECRET),
        "echoed headers": lambda: server.fail(400, echo_credentials=True),
        "malformed json": lambda: server.malformed(),
        "cut mid-body": lambda: server.truncate(after_bytes=15),
    }


EXPECTED = {
    "refused": RefusalCode.BACKEND_UNAVAILABLE,
    "timeout": RefusalCode.BACKEND_TIMEOUT,
    "401": RefusalCode.BACKEND_FAILED,
    "500": RefusalCode.BACKEND_FAILED,
    "echoed headers": RefusalCode.BACKEND_FAILED,
    "malformed json": RefusalCode.BACKEND_FAILED,
    "cut mid-body": RefusalCode.BACKEND_FAILED,
}


@pytest.mark.parametrize("failure", list(EXPECTED))
def test_backend_failures_reach_the_client_without_internal_detail(tmp_path: Path, failure: str) -> None:
    with OpenAIServer(strict_models=False) as server, HookReceiver() as hooks:
        port = free_port() if failure == "refused" else server.port
        base_url = f"http://127.0.0.1:{port}/v1"
        provoke = scenarios(server)[failure]
        if provoke is not None:
            provoke()
        config = echo_service_config(
            tmp_path,
            llm_client={"backend": "openai", "base_url": base_url, "api_key": API_KEY, "max_retries": 0, "timeout_secs": 1},
            metrics={"enabled": False},
            webhooks={"enabled": True, "endpoints": [{"url": hooks.url(), "events": ["error", "request_completed"]}]},
        )

        async def scenario() -> tuple[_native.DecodedResponse, str]:
            service = ExecutorService(config, load_identity(config.identity, environ={}))
            await service.start()
            try:
                raw = await service.handler(
                    frame(service.identity.peer_id, failure), RequestContext("16Uiu2HAmClient", "127.0.0.1", 0, 0.0)
                )
                await until(lambda: hooks.events("/hook"), "the error event")
            finally:
                await service.stop()
            return _native.decode_response(raw), str(service.ledger.path)

        answer, ledger_path = asyncio.run(scenario())
        events = hooks.events("/hook")

    forbidden = [API_KEY, BODY_SECRET, "127.0.0.1", str(port), "http", "/v1", "Bearer"]
    visible = [answer.error or "", answer.content, answer.model_used, answer.total_cost]
    assert answer.signature_valid and answer.error
    assert not [f for f in forbidden for field in visible if f in field], (failure, visible)

    (event,) = [e for e in events if e["event"] == "error"]
    assert event["data"]["code"] == EXPECTED[failure] and event["data"]["reason"] == answer.error
    with sqlite3.connect(ledger_path) as db:
        rows = db.execute("SELECT * FROM requests").fetchall()
    assert len(rows) == 1
    stored = repr(rows) + repr(events)
    assert API_KEY not in stored and BODY_SECRET not in stored and "Bearer" not in stored
