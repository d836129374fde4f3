"""`[webhooks]` (webhooks/): signed JSON events POSTed to a real HTTP receiver on 127.0.0.1.

The receiver is the OpenAI test server's HTTP machinery (`openai_server.py`), answering
200 to every POST unless told to fail N times, answer 429 with Retry-After, hang or drop
the connection. Signatures are checked with eth-account, independently of our code.
Waits are bounded polls; timing assertions are a lower bound (Retry-After honoured) and one
generous upper bound (stop gives up at its flush timeout, not at a 60 s attempt timeout).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lloom_executor import _native
from lloom_executor.client import LloomClient
from lloom_executor.config import Config, ConfigError, load_config
from lloom_executor.config.features import inactive_features
from lloom_executor.config.schema import WebhookEndpoint
from lloom_executor.identity import load_identity
from lloom_executor.metrics import Metrics
from lloom_executor.service import ExecutorService
from lloom_executor.webhooks import EVENTS, Webhooks, verify_signature
from openai_server import OpenAIServer, RecordedRequest, refused_url
from service_rig import echo_service_config, until

PRICE_IN, PRICE_OUT = 10**12, 2 * 10**12
SECRET = "Bearer hook-secret-4711"
FAST = {"backoff_base_secs": 0.01, "backoff_max_secs": 0.05, "timeout_secs": 5.0}


class HookReceiver(OpenAIServer):
    """Records every request; answers 200 to any path unless a behaviour (`fail`, `hang`,
    `drop_connection`, with `path=`) matches it, as the OpenAI test server does."""

    def __init__(self) -> None:
        super().__init__(models=[], strict_models=False)

    def url(self, path: str = "/hook") -> str:
        return self.root_url + path

    def hooks(self, path: str | None = None) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if r.method == "POST" and (path is None or r.path == path)]

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        return [orjson.loads(r.body) for r in self.hooks(path)]

    async def _dispatch(self, req: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        with self._lock:
            injected = any(b.path in ("*", req.path) and (b.times is None or b.times > 0) for b in self._behaviours)
        if injected:
            return await super()._dispatch(req, writer)
        return await self._send(writer, 200, b'{"ok": true}')


def endpoint(url: str, events: tuple[str, ...] = EVENTS, **kw: Any) -> WebhookEndpoint:
    return WebhookEndpoint(url=url, events=events, **kw)


def signer_of(request: RecordedRequest) -> str:
    """The address that signed the body, recovered with eth-account (personal_sign of keccak256(body))."""
    message = encode_defunct(primitive=keccak(request.body))
    return Account.recover_message(message, signature=request.headers["x-lloom-signature"])


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def counted(metrics: Metrics, endpoint: str, event: str, result: str) -> float:
    """lloom_executor_webhook_events_total for these labels, read from the exposition text."""
    want = {"endpoint": endpoint, "host": "127.0.0.1", "event": event, "result": result}
    for family in text_string_to_metric_families(exposition(metrics)):
        for sample in family.samples:
            if sample.name == "lloom_executor_webhook_events_total" and sample.labels == want:
                return sample.value
    return 0.0


# -- events, payload, signature -------------------------------------------------------------------
def test_each_endpoint_gets_only_its_events_signed_by_the_executor() -> None:
    key = _native.PrivateKey.generate()
    with HookReceiver() as receiver:

        async def scenario() -> None:
            hooks = Webhooks(
                [
                    endpoint(receiver.url("/models"), ("model_loaded", "model_unloaded")),
                    endpoint(receiver.url("/errors"), ("error",), auth_header=SECRET),
                ],
                key,
                peer_id="16Uiu2-test-peer",
                metrics=Metrics(),
                **FAST,
            )
            hooks.start()
            hooks.emit("model_loaded", {"model": "m"})
            hooks.emit("error", {"code": "x", "reason": "r"})
            hooks.emit("request_completed", {"model": "m"})  # nobody wants it
            hooks.emit("started", {})
            hooks.emit("model_unloaded", {"model": "m"})
            with pytest.raises(ValueError):
                hooks.emit("no_such_event", {})
            await until(lambda: len(receiver.hooks()) == 3, "three deliveries")
            assert await hooks.stop() == 0
            assert [(s.delivered, s.failed, s.dropped) for s in hooks.stats] == [(2, 0, 0), (1, 0, 0)]

        asyncio.run(scenario())
        assert [e["event"] for e in receiver.events("/models")] == ["model_loaded", "model_unloaded"]
        assert [e["event"] for e in receiver.events("/errors")] == ["error"]
        ids = set()
        for request in receiver.hooks():
            event = orjson.loads(request.body)
            assert set(event) == {"event", "id", "timestamp", "executor", "data"}
            assert event["executor"] == {"peer_id": "16Uiu2-test-peer", "evm_address": key.address}
            assert abs(event["timestamp"] - time.time()) < 600
            ids.add(event["id"])
            assert request.headers["content-type"] == "application/json"
            assert request.headers["x-lloom-event"] == event["event"] and request.headers["x-lloom-event-id"] == event["id"]
            assert request.headers["x-lloom-signer"] == key.address
            assert signer_of(request) == key.address  # eth-account, independently
            assert verify_signature(request.body, request.headers["x-lloom-signature"]) == key.address
            assert verify_signature(request.body + b" ", request.headers["x-lloom-signature"]) != key.address
            assert request.headers.get("authorization") == (SECRET if request.path == "/errors" else None)
        assert len(ids) == 3


# -- a running executor: started, model_loaded, request_completed, error, stopped ---------------------
def executor_config(tmp_path: Path, hook_url: str, **sections: Any) -> Config:
    webhooks = {
        "enabled": True,
        "endpoints": [{"url": hook_url, "events": list(EVENTS), "auth_header": SECRET, "retry_attempts": 2}],
    }
    return echo_service_config(tmp_path, **{"metrics": {"enabled": False}, "webhooks": webhooks, **sections})


def test_running_executor_reports_requests_models_and_lifecycle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("lloom_executor", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    with HookReceiver() as receiver:
        config = executor_config(tmp_path, receiver.url("/hook/path-secret"))
        assert not [f for f in inactive_features(config) if "webhooks" in f]

        async def scenario() -> dict[str, Any]:
            service = ExecutorService(config, load_identity(config.identity, environ={}), webhook_options=FAST)
            addrs = await service.start()
            try:
                peer = service.identity.peer_id
                domain = _native.Eip712Domain(8453, "0x" + "42" * 20)
                async with LloomClient(
                    bootstrap=[addrs[0]], enable_kad=False, enable_gossip=False, eip712_domain=domain
                ) as client:
                    served = await client.request(
                        peer, "m", "the secret prompt", inbound_price=str(PRICE_IN), outbound_price=str(PRICE_OUT)
                    )
                    cheap = await client.request(
                        peer, "m", "a cheap prompt", inbound_price=str(PRICE_IN - 1), outbound_price=str(PRICE_OUT)
                    )
                    client_address = client.key.address
                await until(lambda: len(receiver.hooks()) >= 4, "started, model_loaded, request_completed, error")
                metrics = counted(service.metrics, "0", "request_completed", "delivered")
            finally:
                await service.stop()
            return {
                "served": served,
                "cheap": cheap,
                "client": client_address,
                "metrics": metrics,
                "executor": service.identity.address,
                "peer": peer,
            }

        r = asyncio.run(scenario())

    served, cheap = r["served"], r["cheap"]
    assert served.error is None and cheap.error and cheap.error.startswith("price too low")
    events = receiver.events()
    assert [e["event"] for e in events] == ["started", "model_loaded", "request_completed", "error", "stopped"]
    started, loaded, completed, error, stopped = events
    assert started["data"]["models"] == ["m"] and started["data"]["listen_addresses"]
    assert loaded["data"] == {
        "model": "m",
        "source": "config",
        "context_length": 4096,
        "inbound_price_wei": str(PRICE_IN),
        "outbound_price_wei": str(PRICE_OUT),
    }
    data = completed["data"]
    assert data["model"] == "m" and data["requested_model"] == "m"
    assert data["client"] == r["client"] and data["peer_id"]
    assert (data["inbound_tokens"], data["outbound_tokens"]) == (served.inbound_tokens, served.outbound_tokens)
    assert data["total_cost_wei"] == served.total_cost and int(data["total_cost_wei"]) > 0
    assert data["latency_ms"] >= 0 and data["cached"] is False
    assert data["request_digest"].startswith("0x") and len(data["request_digest"]) == 66
    assert data["receipt_digest"] == "0x" + bytes(served.receipt.digest).hex()
    assert error["data"]["code"] == "price_too_low" and error["data"]["reason"] == cheap.error
    assert error["data"]["client"] == r["client"] and error["data"]["model"] == "m"
    assert stopped["data"]["cut_off"] == 0 and stopped["data"]["uptime_secs"] > 0
    for request in receiver.hooks():
        assert request.path == "/hook/path-secret"
        assert signer_of(request) == r["executor"] == request.headers["x-lloom-signer"]
        assert request.headers["authorization"] == SECRET
        assert b"secret prompt" not in request.body and b"cheap prompt" not in request.body
        assert b"echo:" not in request.body  # never the answer either
    assert r["metrics"] == 1.0
    assert "hook-secret-4711" not in caplog.text  # with httpx and httpcore at debug too
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("lloom_executor")]
    assert any("webhooks.endpoints[0] (http://127.0.0.1:" in m for m in ours)
    assert not [m for m in ours if "path-secret" in m]  # our lines name an endpoint without its path


# -- model discovery: model_unloaded and backend_unreachable --------------------------------------------
def test_discovery_changes_and_backend_outage_are_reported(tmp_path: Path) -> None:
    backend = OpenAIServer(models=[{"id": "test-model", "object": "model", "type": "llm", "state": "loaded"}]).start()
    try:
        with HookReceiver() as receiver:
            config = executor_config(
                tmp_path,
                receiver.url(),
                llm_client={"backend": "lmstudio", "base_url": backend.base_url, "max_retries": 0, "timeout_secs": 5},
                models=[
                    {"name": "test-model", "inbound_price": "0.000001", "outbound_price": "0.000002"},
                    {"name": "absent-model", "inbound_price": "0.000001", "outbound_price": "0.000002"},
                ],
                model_discovery={"enabled": True, "refresh_interval_secs": 1},
            )

            def named(event: str) -> list[dict[str, Any]]:
                return [e for e in receiver.events() if e["event"] == event]

            async def scenario() -> None:
                service = ExecutorService(
                    config,
                    load_identity(config.identity, environ={}),
                    discovery_options={"interval": 0.2, "poll_timeout": 5},
                    webhook_options=FAST,
                )
                await service.start()
                try:
                    await until(lambda: named("model_unloaded"), "absent-model withdrawn")
                    backend.stop()  # the backend goes away: connection refused from now on
                    await until(lambda: named("error"), "backend_unreachable")
                finally:
                    await service.stop()

            asyncio.run(scenario())
            loaded = sorted((e["data"]["model"], e["data"]["source"]) for e in named("model_loaded"))
            assert loaded == [("absent-model", "config"), ("test-model", "config")]
            unloaded = [(e["data"]["model"], e["data"]["source"]) for e in named("model_unloaded")]
            # test-model may follow once the outage lasted withdraw_after_failures polls
            assert unloaded[0] == ("absent-model", "discovery") and set(unloaded) <= {unloaded[0], ("test-model", "discovery")}
            error = named("error")[0]["data"]
            assert error["code"] == "backend_unreachable" and "unreachable" in error["reason"] and error["model"] is None
    finally:
        backend.stop()


# -- retries ------------------------------------------------------------------------------------------
def run_hooks(receiver: HookReceiver, scenario_body: Callable[[Webhooks], Any], *endpoints: WebhookEndpoint, **options: Any):
    metrics = Metrics()

    async def scenario() -> Any:
        hooks = Webhooks(list(endpoints), _native.PrivateKey.generate(), metrics=metrics, **{**FAST, **options})
        hooks.start()
        try:
            return await scenario_body(hooks)
        finally:
            await hooks.stop(flush_timeout_secs=0)

    return asyncio.run(scenario()), metrics


def test_5xx_and_dropped_connections_are_retried_then_delivered(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="lloom_executor.webhooks")
    with HookReceiver() as receiver:
        receiver.fail(503, times=1, path="/hook")
        receiver.drop_connection(times=1, path="/hook")
        receiver.fail(500, times=1, path="/hook")

        async def body(hooks: Webhooks) -> Any:
            hooks.emit("error", {"code": "c", "reason": "r"})
            await until(lambda: hooks.stats[0].delivered == 1, "delivered after retries")
            return hooks.stats[0]

        stats, metrics = run_hooks(receiver, body, endpoint(receiver.url(), retry_attempts=3))
        attempts = receiver.hooks()
        assert len(attempts) == 4 and (stats.failed, stats.dropped) == (0, 0)
        assert len({r.body for r in attempts}) == 1  # the same event, the same bytes, the same id
        assert [r.headers["x-lloom-attempt"] for r in attempts] == ["1", "2", "3", "4"]
        assert counted(metrics, "0", "error", "delivered") == 1.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 503" in warnings[0].getMessage() and "retrying up to 3 more" in warnings[0].getMessage()
    assert any("delivering again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_429_retry_after_is_waited() -> None:
    with HookReceiver() as receiver:
        receiver.fail(429, times=1, retry_after="1", path="/hook")

        async def body(hooks: Webhooks) -> None:
            hooks.emit("started", {})
            await until(lambda: hooks.stats[0].delivered == 1, "delivered after Retry-After")

        run_hooks(receiver, body, endpoint(receiver.url(), retry_attempts=1), backoff_base_secs=0, backoff_max_secs=0)
        first, second = receiver.hooks()
        assert second.time - first.time >= 0.9  # waited as asked, not the (zero) backoff


def test_exhausted_retries_count_as_failed_and_log_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="lloom_executor.webhooks")
    with HookReceiver() as receiver:
        receiver.fail(502, times=None, path="/hook")

        async def body(hooks: Webhooks) -> Any:
            for i in range(3):
                hooks.emit("error", {"i": i})
            await until(lambda: hooks.stats[0].failed == 3, "three events given up")
            receiver.clear()  # the receiver recovers
            hooks.emit("error", {"i": 3})
            await until(lambda: hooks.stats[0].delivered == 1, "delivered once it recovered")
            return hooks.stats[0]

        stats, metrics = run_hooks(receiver, body, endpoint(receiver.url(), retry_attempts=2))
        assert len(receiver.hooks()) == 3 * 3 + 1  # 1 + retry_attempts POSTs per failed event
        assert counted(metrics, "0", "error", "failed") == 3.0 and counted(metrics, "0", "error", "delivered") == 1.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 502" in warnings[0]
    recovered = [r.getMessage() for r in caplog.records if "delivering again" in r.getMessage()]
    assert len(recovered) == 1 and "3 event(s) failed" in recovered[0]


def test_other_4xx_is_not_retried_and_the_auth_header_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    for name in ("lloom_executor", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    with HookReceiver() as receiver:
        receiver.fail(401, times=None, path="/hook")

        async def body(hooks: Webhooks) -> Any:
            hooks.emit("error", {})
            await until(lambda: hooks.stats[0].failed == 1, "given up")
            return hooks.stats[0]

        stats, metrics = run_hooks(receiver, body, endpoint(receiver.url(), retry_attempts=5, auth_header=SECRET))
        assert len(receiver.hooks()) == 1 and stats.delivered == 0
        assert receiver.hooks()[0].headers["authorization"] == SECRET
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 401" in warnings[0] and "not retried" in warnings[0]
    assert "hook-secret-4711" not in caplog.text


def test_an_invalid_header_is_not_retried_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A header httpx refuses (here "Bearer " + token + a trailing space, which the config check
    rejects but a WebhookEndpoint built in code can carry) fails the event once, with a fixed
    text: httpx's LocalProtocolError quotes the value."""
    for name in ("lloom_executor", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    with HookReceiver() as receiver:

        async def body(hooks: Webhooks) -> Any:
            hooks.emit("error", {})
            await until(lambda: hooks.stats[0].failed == 1, "given up")
            return hooks.stats[0]

        stats, metrics = run_hooks(receiver, body, endpoint(receiver.url(), retry_attempts=5, auth_header="Bearer s3cr3t-token "))
        assert receiver.hooks() == [] and (stats.delivered, stats.failed, stats.dropped) == (0, 1, 0)
        assert counted(metrics, "0", "error", "failed") == 1.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "invalid request header" in warnings[0] and "not retried" in warnings[0]
    assert "auth_header has leading or trailing whitespace" in warnings[0]
    assert "s3cr3t" not in caplog.text


def test_a_header_httpx_refuses_is_a_fixed_text_not_a_transport_error(caplog: pytest.LogCaptureFixture) -> None:
    """The backstop in `Delivery.post`: httpx's LocalProtocolError (a TransportError whose text quotes
    the header) is "invalid request header", not retried, and its text is not passed on."""
    caplog.set_level(logging.DEBUG, logger="lloom_executor")
    with HookReceiver() as receiver:

        async def body(hooks: Webhooks) -> Any:
            return await hooks.delivery.post(receiver.url(), b"{}", {"Authorization": "Bearer s3cr3t-token "})

        result, _ = run_hooks(receiver, body, endpoint(receiver.url()))
        assert result == ("invalid request header", False, None)
        assert receiver.hooks() == []
    assert "s3cr3t" not in caplog.text


def test_timeouts_and_refused_connections_are_retried() -> None:
    with HookReceiver() as receiver:
        receiver.hang(times=1, path="/hook")
        dead = refused_url()

        async def body(hooks: Webhooks) -> Any:
            hooks.emit("started", {})
            await until(lambda: hooks.stats[0].delivered == 1 and hooks.stats[1].failed == 1, "one delivered, one failed")
            return hooks.stats

        stats, _ = run_hooks(
            receiver, body, endpoint(receiver.url(), retry_attempts=3), endpoint(dead, retry_attempts=2), timeout_secs=1.0
        )
        assert len(receiver.hooks()) >= 2  # the hung attempt, then the delivered one
        assert len({r.headers["x-lloom-event-id"] for r in receiver.hooks()}) == 1


# -- the queue -----------------------------------------------------------------------------------------
def test_a_full_queue_drops_the_oldest_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lloom_executor.webhooks")
    metrics = Metrics()
    with HookReceiver() as receiver:

        async def scenario() -> Any:
            hooks = Webhooks([endpoint(receiver.url())], _native.PrivateKey.generate(), metrics=metrics, queue_size=3, **FAST)
            for i in range(5):  # queued before the worker runs: nothing can be sent yet
                hooks.emit("error", {"i": i})
            assert hooks.stats[0].dropped == 2
            hooks.start()
            await until(lambda: hooks.stats[0].delivered == 3, "the three newest delivered")
            await hooks.stop()
            return hooks.stats[0]

        stats = asyncio.run(scenario())
        assert [e["data"]["i"] for e in receiver.events()] == [2, 3, 4]
        assert (stats.delivered, stats.failed, stats.dropped) == (3, 0, 2)
        assert counted(metrics, "0", "error", "dropped") == 2.0
    full = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    assert len(full) == 1  # once per overflow episode, not per dropped event


def test_stop_flushes_what_is_queued() -> None:
    with HookReceiver() as receiver:
        receiver.fail(503, times=2, path="/hook")

        async def scenario() -> int:
            hooks = Webhooks([endpoint(receiver.url(), retry_attempts=3)], _native.PrivateKey.generate(), **FAST)
            hooks.start()
            for i in range(20):
                hooks.emit("request_completed", {"i": i})
            lost = await hooks.stop(flush_timeout_secs=30)  # bounded; returns as soon as the queue is empty
            hooks.emit("request_completed", {"i": "after stop"})  # ignored
            return lost

        assert asyncio.run(scenario()) == 0
        assert sorted({e["data"]["i"] for e in receiver.events()}) == list(range(20))


def test_stop_gives_up_after_the_flush_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lloom_executor.webhooks")
    metrics = Metrics()
    with HookReceiver() as receiver:
        receiver.hang(times=None, path="/hook")

        async def scenario() -> tuple[int, float]:
            hooks = Webhooks(
                [endpoint(receiver.url())], _native.PrivateKey.generate(), metrics=metrics, **{**FAST, "timeout_secs": 60.0}
            )
            hooks.start()
            for i in range(4):
                hooks.emit("error", {"i": i})
            await until(lambda: receiver.hooks(), "the first POST hangs")
            started = time.monotonic()
            lost = await hooks.stop(flush_timeout_secs=0.2)
            return lost, time.monotonic() - started

        lost, took = asyncio.run(scenario())
        assert lost == 4 and took < 30.0  # cut off, not waiting for the 60 s attempt timeout
        assert counted(metrics, "0", "error", "dropped") == 4.0
    assert any("4 event(s) not delivered within 0.2 s of stopping" in r.getMessage() for r in caplog.records)


# -- config -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "endpoints, problem",
    [
        (
            'url = "ftp://example.com/hook"',
            "webhooks.endpoints[0].url (line 4): expected an http:// or https:// URL, got 'ftp://example.com/hook'",
        ),
        ('events = ["error"]', "webhooks.endpoints[0].url (line 3): required"),
        (
            'url = "https://example.com:70000/hook"',
            "webhooks.endpoints[0].url (line 4): not a valid URL (Port out of range 0-65535): 'https://example.com:70000/hook'",
        ),
    ],
)
def test_endpoint_urls_must_be_http(tmp_path: Path, endpoints: str, problem: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[webhooks]\nenabled = true\n[[webhooks.endpoints]]\n{endpoints}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert problem in info.value.problems


def test_config_warnings(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[webhooks]\nenabled = true\n")
    assert [str(w) for w in load_config(path, environ={}).warnings] == [
        "webhooks (line 1): enabled without [[webhooks.endpoints]]: no events are sent"
    ]
    path.write_text(
        '[webhooks]\nenabled = true\n[[webhooks.endpoints]]\nurl = "http://hooks.example.com/x"\n'
        'auth_header = "Bearer t"\nevents = []\n'
    )
    warnings = [str(w) for w in load_config(path, environ={}).warnings]
    assert any("auth_header" in w and "clear text to hooks.example.com" in w for w in warnings)
    assert any("events" in w and "receives no events" in w for w in warnings)
    path.write_text(
        '[webhooks]\nenabled = true\n[[webhooks.endpoints]]\nurl = "http://127.0.0.1:9/x"\nauth_header = "Bearer t"\n'
    )
    assert load_config(path, environ={}).warnings == []


@pytest.mark.parametrize(
    "value, problem",
    [
        ("Bearer ", "has leading or trailing whitespace"),  # an empty ${TOKEN}
        (" Bearer s3cr3t-token", "has leading or trailing whitespace"),
        ("Bearer\ts3cr3t-token", "contains a control character"),
        ("Bearer s3cr3t-token\x7f", "contains a control character"),
        ("Bearer s3cr3t-t\u00f6ken", "not printable ASCII"),
        ("Bearer s3cr3t-token\nX: y", "must be a single line"),
    ],
)
def test_auth_header_must_be_a_clean_header_value(tmp_path: Path, value: str, problem: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[webhooks]\nenabled = true\n[[webhooks.endpoints]]\nurl = "https://example.com/hook"\nauth_header = "${TOKEN}"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"TOKEN": value})
    found = [p for p in info.value.problems if "auth_header" in p]
    assert len(found) == 1 and problem in found[0], info.value.problems
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in " ".join(info.value.problems)
    path.write_text(
        '[webhooks]\nenabled = true\n[[webhooks.endpoints]]\nurl = "https://example.com/hook"\nauth_header = "${TOKEN}"\n'
    )
    assert load_config(path, environ={"TOKEN": "Bearer s3cr3t-token"}).warnings == []
