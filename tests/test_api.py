"""The [api] health/admin HTTP API: a real ExecutorService (real libp2p on loopback), real HTTP.

In-process tests run the service on a uvloop thread (`loop_thread`) and talk
to it with httpx from the test thread; the CLI tests run `lloom-executor start`
as a process and `peers list` / `models list` against it, as an operator would.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import interop
from lloom_executor._native import PrivateKey
from lloom_executor.api import ApiServer
from lloom_executor.backends import EchoBackend
from lloom_executor.client import LloomClient
from lloom_executor.config import Config
from lloom_executor.identity import load_identity
from lloom_executor.service import ExecutorService
from openai_server import OpenAIServer, refused_url

TOKEN = "s3cret-admin-token"
IN_WEI, OUT_WEI = 10**12, 2 * 10**12
DETAILED_FIELDS = {
    "status",
    "uptime_seconds",
    "models_loaded",
    "active_requests",
    "total_requests",
    "backend_status",
    "p2p_peers",
    "throttled_models",
    "backends",
}


def write_keys(tmp_path: Path) -> dict[str, str]:
    key = PrivateKey.generate()
    for name in ("identity_key", "eth_key"):
        path = tmp_path / name
        path.write_text(key.to_hex())
        path.chmod(0o600)
    return {"private_key_path": str(tmp_path / "identity_key"), "ethereum_private_key_path": str(tmp_path / "eth_key")}


def make_config(tmp_path: Path, *, api: dict[str, Any], llm: dict[str, Any] | None = None) -> Config:
    return Config.from_dict(
        {
            "network": {
                "listen_address": "/ip4/127.0.0.1/tcp/0",
                "protocols": {"enable_mdns": False, "enable_autonat": False, "enable_relay": False},
            },
            "identity": write_keys(tmp_path),
            "llm_client": llm or {"backend": "echo"},
            "models": [
                {"name": "test-model", "inbound_price": "0.000001", "outbound_price": "0.000002"},
                {"name": "unloaded-model", "inbound_price": "0.000001", "outbound_price": "0.000002"},
                {"name": "off-model", "inbound_price": "0.000003", "outbound_price": "0.000004", "enabled": False},
            ],
            "model_aliases": {"fast": "test-model"},
            "metrics": {"enabled": False},
            "api": {"listen_address": "127.0.0.1:0", **api},
        }
    )


@pytest.fixture
def start_service(loop_thread) -> Iterator[Callable[..., ExecutorService]]:
    started: list[ExecutorService] = []

    def start(config: Config, backend=None) -> ExecutorService:
        service = ExecutorService(config, load_identity(config.identity, environ={}), backend)
        loop_thread.run(service.start(), timeout=40)
        started.append(service)
        assert service.api is not None and service.api.url
        return service

    try:
        yield start
    finally:
        for service in reversed(started):
            loop_thread.run(service.stop(), timeout=40)


def poll(fn: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if until(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_health_detailed_and_admin_after_real_requests(tmp_path: Path, start_service, loop_thread) -> None:
    config = make_config(tmp_path, api={})
    service = start_service(config, EchoBackend(["test-model", "unloaded-model"], latency_ms=600))
    url = service.api.url
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)

    health = httpx.get(url + "/health")
    assert (health.status_code, health.json()) == (200, {"status": "healthy"})
    before = httpx.get(url + "/health/detailed").json()
    assert set(before) == DETAILED_FIELDS
    assert before["models_loaded"] == ["test-model", "unloaded-model"]  # enabled ones only
    assert (before["total_requests"], before["active_requests"], before["p2p_peers"]) == (0, 0, 0)
    assert before["backend_status"] == "connected" and before["status"] == "healthy"
    assert before["throttled_models"] == {}  # no [[models]] max_tokens_per_second here
    assert isinstance(before["uptime_seconds"], int) and before["uptime_seconds"] >= 0

    address = service.node.listen_addrs[0]
    peer = service.identity.peer_id

    async def scenario() -> tuple[str, list, dict, list]:
        async with LloomClient(bootstrap=[address], request_timeout=30, enable_kad=False, enable_gossip=False) as client:
            answers = [
                await client.request(peer, model, f"hello {i}", inbound_price=str(IN_WEI), outbound_price=str(OUT_WEI))
                for i, model in enumerate(["test-model", "fast", "test-model"])
            ]
            slow = asyncio.ensure_future(
                client.request(peer, "test-model", "in flight", inbound_price=str(IN_WEI), outbound_price=str(OUT_WEI))
            )
            async with httpx.AsyncClient() as http:
                deadline = time.monotonic() + 5
                during = (await http.get(url + "/health/detailed")).json()
                while during["active_requests"] != 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    during = (await http.get(url + "/health/detailed")).json()
                answers.append(await slow)
                peers = (await http.get(url + "/admin/peers")).json()
            return client.peer_id, answers, during, peers

    client_id, answers, during, peers = loop_thread.run(scenario(), timeout=40)
    assert [a.error for a in answers] == [None] * 4 and all(a.signature_valid for a in answers)
    assert during["active_requests"] == 1 and during["total_requests"] == 3 and during["p2p_peers"] == 1

    mine = [p for p in peers if p["peer_id"] == client_id]
    assert len(mine) == 1
    assert set(mine[0]) == {"peer_id", "addresses", "direction", "connected_since", "protocols", "latency_ms", "roles"}
    assert mine[0]["direction"] == "inbound" and mine[0]["addresses"][0].startswith("/ip4/127.0.0.1/tcp/")
    assert abs(mine[0]["connected_since"] - time.time()) < 60

    after = poll(lambda: httpx.get(url + "/health/detailed").json(), lambda d: d["active_requests"] == 0)
    assert (after["total_requests"], after["active_requests"]) == (4, 0)
    assert after["uptime_seconds"] >= before["uptime_seconds"]

    models = httpx.get(url + "/admin/models").json()
    assert models["backend_status"] == "connected" and models["backend"]["type"] == "echo"
    rows = {m["name"]: m for m in models["models"]}
    assert rows["test-model"]["aliases"] == ["fast"] and rows["test-model"]["inbound_price_wei"] == IN_WEI
    assert rows["test-model"]["outbound_price_wei"] == OUT_WEI and rows["test-model"]["backend_state"] == "listed"
    assert rows["off-model"]["enabled"] is False and rows["off-model"]["backend_state"] == "missing"
    assert rows["off-model"]["inbound_price_wei"] == 3 * 10**12
    assert models["network"] == {}  # gossip on, but no other executor around

    service.handler.draining = True  # shutting down: load balancers must route elsewhere
    try:
        drained = httpx.get(url + "/health")
        assert (drained.status_code, drained.json()) == (503, {"status": "unhealthy"})
        assert httpx.get(url + "/health/detailed").status_code == 503
    finally:
        service.handler.draining = False


def test_backend_status_follows_the_backend(tmp_path: Path, start_service, monkeypatch) -> None:
    monkeypatch.setattr(ApiServer, "probe_interval_secs", 0.2)
    server = OpenAIServer().start()
    try:
        llm = {"backend": "lmstudio", "base_url": server.base_url, "timeout_secs": 2, "max_retries": 0}
        service = start_service(make_config(tmp_path, api={}, llm=llm))
        url = service.api.url
        detailed = httpx.get(url + "/health/detailed").json()
        assert (detailed["status"], detailed["backend_status"]) == ("healthy", "connected")
        states = {m["name"]: m["backend_state"] for m in httpx.get(url + "/admin/models").json()["models"]}
        assert states == {"test-model": "loaded", "unloaded-model": "not-loaded", "off-model": "missing"}
        started = time.monotonic()
        with httpx.Client() as http:
            for _ in range(20):
                assert http.get(url + "/health/detailed").json()["backend_status"] == "connected"
                assert http.get(url + "/admin/models").status_code == 200
        ended = time.monotonic()
        # cached: only the periodic probe (every 0.2 s) reaches the backend, never an HTTP request
        probes = [r.time for r in server.requests if started <= r.time <= ended]
        assert all(b - a > 0.1 for a, b in zip(probes, probes[1:], strict=False)), probes
        assert len(probes) <= (ended - started) / 0.2 + 1
    finally:
        server.stop()
    down = poll(lambda: httpx.get(url + "/health/detailed").json(), lambda d: d["backend_status"] == "disconnected")
    assert (down["status"], down["backend_status"]) == ("degraded", "disconnected")
    assert httpx.get(url + "/health").json() == {"status": "degraded"}


def test_backend_down_from_the_start(tmp_path: Path, start_service) -> None:
    llm = {"backend": "openai", "base_url": refused_url(), "api_key": "sk-test", "timeout_secs": 2, "max_retries": 0}
    service = start_service(make_config(tmp_path, api={}, llm=llm))
    url = service.api.url
    health = httpx.get(url + "/health")
    assert (health.status_code, health.json()) == (200, {"status": "degraded"})
    detailed = httpx.get(url + "/health/detailed").json()
    assert detailed["backend_status"] == "disconnected" and detailed["status"] == "degraded"
    models = httpx.get(url + "/admin/models").json()
    assert models["backend_status"].startswith("disconnected (BackendUnavailable")
    assert {m["backend_state"] for m in models["models"]} == {"unknown"}


def test_auth_token_protects_everything_but_health(tmp_path: Path, start_service) -> None:
    service = start_service(make_config(tmp_path, api={"auth_token": TOKEN}))
    url = service.api.url
    assert httpx.get(url + "/health").json() == {"status": "healthy"}  # open, for load balancers
    for path in ("/health/detailed", "/admin/peers", "/admin/models", "/no-such-path"):
        missing = httpx.get(url + path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.get(url + path, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401
        assert httpx.get(url + path, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert set(httpx.get(url + "/health/detailed", headers=ok).json()) == DETAILED_FIELDS
    assert httpx.get(url + "/admin/peers", headers=ok).json() == []
    assert httpx.get(url + "/admin/models", headers=ok).status_code == 200
    assert httpx.get(url + "/no-such-path", headers=ok).status_code == 404


def self_signed_cert(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lloom-executor test")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "api-cert.pem", tmp_path / "api-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls(tmp_path: Path, start_service) -> None:
    cert, key = self_signed_cert(tmp_path)
    service = start_service(make_config(tmp_path, api={"tls_cert": str(cert), "tls_key": str(key), "auth_token": TOKEN}))
    url = service.api.url
    assert url.startswith("https://127.0.0.1:")
    trusted = ssl.create_default_context(cafile=str(cert))
    assert httpx.get(url + "/health", verify=trusted).json() == {"status": "healthy"}
    detailed = httpx.get(url + "/health/detailed", verify=trusted, headers={"Authorization": f"Bearer {TOKEN}"})
    assert detailed.status_code == 200 and detailed.json()["backend_status"] == "connected"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url + "/health")  # not signed by a public CA
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/health", timeout=5)  # TLS only


# -- the CLI against a real `lloom-executor start` process ----------------------------------


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
    return subprocess.run(
        [sys.executable, "-m", "lloom_executor", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config_file(tmp_path: Path, name: str, api: str) -> Path:
    return interop.write_operator_config(
        tmp_path, models=["test-model"], api=api, extra='[model_aliases]\nfast = "test-model"', name=name
    )


def test_peers_list_and_models_list_against_a_running_node(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    port = free_port()
    api = f'enabled = true\nlisten_address = "127.0.0.1:{port}"\nauth_token = "{TOKEN}"\ntls_cert = "{cert}"\ntls_key = "{key}"'
    config = write_config_file(tmp_path, "config.toml", api)
    wrong_token = write_config_file(tmp_path, "wrong.toml", api.replace(TOKEN, "not-the-token"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLOOM_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lloom_executor", "start", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    base = f"https://127.0.0.1:{port}"
    try:
        address, api_url, lines = None, None, []
        deadline = time.monotonic() + 30
        while api_url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"listening on (/ip4/\S+/p2p/\S+)", line):
                address = m.group(1)
            if m := re.search(r"api listening on (\S+)", line):
                api_url = m.group(1)
        assert address and api_url == base, "".join(lines)

        async def with_a_client() -> tuple[str, list[subprocess.CompletedProcess[str]]]:
            async with LloomClient(bootstrap=[address], request_timeout=30, enable_kad=False, enable_gossip=False) as client:
                answer = await client.request(
                    address.rsplit("/p2p/", 1)[1], "fast", "hi", inbound_price=str(IN_WEI), outbound_price=str(OUT_WEI)
                )
                assert answer.error is None
                runs = await asyncio.gather(
                    asyncio.to_thread(cli, "peers", "list", "--config", str(config)),
                    asyncio.to_thread(cli, "peers", "list", "--json", "--insecure", "--config", str(config)),
                )
                return client.peer_id, list(runs)

        client_id, (table, as_json) = asyncio.run(with_a_client())
        assert table.returncode == 0, table.stdout + table.stderr
        assert "1 connected peer(s)" in table.stdout
        header, row = table.stdout.splitlines()[1:3]
        assert header.split() == ["peer", "direction", "address", "latency", "roles", "protocols"]
        assert row.startswith(client_id) and " inbound " in row and "/ip4/127.0.0.1/tcp/" in row
        assert as_json.returncode == 0, as_json.stderr
        peers = json.loads(as_json.stdout)
        assert [p["peer_id"] for p in peers] == [client_id] and peers[0]["direction"] == "inbound"

        models = cli("models", "list", "--json", "--config", str(config))
        assert models.returncode == 0, models.stderr
        data = json.loads(models.stdout)
        assert data["source"] == base and data["backend_status"] == "connected" and "network" in data
        assert data["models"] == [
            {
                "name": "test-model",
                "aliases": ["fast"],
                "enabled": True,
                "context_length": 4096,
                "inbound_price_wei": IN_WEI,
                "outbound_price_wei": OUT_WEI,
                "backend_state": "listed",
            }
        ]
        table = cli("models", "list", "--config", str(config))
        assert table.returncode == 0 and f"source: running executor at {base}" in table.stdout
        assert "other executors on the network: 0" in table.stdout

        denied = cli("peers", "list", "--config", str(wrong_token))
        assert denied.returncode != 0 and "401 unauthorized" in denied.stderr

        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    gone = cli("peers", "list", "--config", str(config))
    assert gone.returncode == 1
    assert f"no running executor at {base} (start one with `lloom-executor start`)" in gone.stderr
    fallback = json.loads(cli("models", "list", "--json", "--config", str(config)).stdout)
    assert fallback["source"] == "config" and fallback["models"][0]["backend_state"] == "listed"


def test_peers_list_needs_the_api(tmp_path: Path) -> None:
    config = write_config_file(tmp_path, "config.toml", "enabled = false")
    out = cli("peers", "list", "--config", str(config))
    assert out.returncode == 1 and "[api] is disabled" in out.stderr
    helped = cli("peers", "list", "--help")
    assert helped.returncode == 0 and "--insecure" in helped.stdout and "--json" in helped.stdout
