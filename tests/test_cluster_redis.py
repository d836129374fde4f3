"""`[clustering]` with Redis: two members (two `lloom-executor start` processes on loopback, the
same key files, their own data dirs) sharing one real redis-server.

Each member is driven over real libp2p by its own client (both members have the executor's one
PeerId, so a client reaches a member by its address); the state they share is Redis' only.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

import interop
from lloom_executor import _native
from lloom_executor.client import LloomClient
from redis_rig import RedisProcess
from workers_rig import WorkersNode

MODEL = "echo-model"
PRICE_IN, PRICE_OUT = "1000000000000", "2000000000000"
UNAVAILABLE = "this executor's shared state is temporarily unavailable"


def member_config(directory: Path, name: str, redis_url: str, extra: str = "", **sections: str) -> Path:
    """Member `name`'s config: the keys of `directory` (shared), data in `directory/data-<name>`."""
    clustering = f'[clustering]\nenabled = true\nnode_id = "{name}"\nshared_state_backend = "redis"\nredis_url = "{redis_url}"\n'
    path = interop.write_operator_config(directory, models=[MODEL], extra=clustering + extra, name=f"{name}.toml", **sections)
    text = path.read_text()
    path.write_text(text.replace(f'data_dir = "{directory / "data"}"', f'data_dir = "{directory / ("data-" + name)}"'))
    return path


@contextmanager
def members(configs: list[Path], workers: tuple[int, ...] = (1, 1)) -> Iterator[list[tuple[WorkersNode, str]]]:
    """Started members (`--workers` each as given) and their listen addresses."""
    with ExitStack() as stack:
        nodes = []
        for config, count in zip(configs, workers, strict=True):
            node = WorkersNode(config, count)
            stack.callback(node.kill)
            nodes.append(node)
        yield [
            (node, node.ready() if count > 1 else node.wait_for(r"listening on (/ip4/\S+/p2p/\S+)", 90).group(1))
            for node, count in zip(nodes, workers, strict=True)
        ]


def signed_frame(client: _native.PrivateKey, executor_peer: str, prompt: str) -> bytes:
    now = int(time.time())
    return bytes(
        _native.encode_signed_request(
            client, MODEL, prompt, None, None, 16, executor_peer, PRICE_IN, PRICE_OUT, 1, now + 300, now
        )
    )


async def clients_for(addresses: list[str]) -> list[LloomClient]:
    clients = []
    for address in addresses:
        client = LloomClient(bootstrap=[], request_timeout=30)
        await client.start()
        await client.connect(address)
        clients.append(client)
    return clients


async def ask(client: LloomClient, peer: str, prompt: str) -> str | None:
    answer = await client.request(peer, MODEL, prompt, inbound_price=PRICE_IN, outbound_price=PRICE_OUT)
    assert answer.signature_valid  # refusals too are signed answers
    return answer.error


def served_rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "ledger.sqlite3") as conn:
        return int(conn.execute("SELECT count(*) FROM requests WHERE status = 'served'").fetchone()[0])


def metric(url: str, name: str) -> float:
    text = httpx.get(url, timeout=10, trust_env=False).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in {url}")


def test_rate_limits_and_openai_limits_hold_across_members(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    try:
        limits = (
            '[rate_limiting]\nenabled = true\n[[rate_limiting.rules]]\nidentifier = "ip_address"\nmax_requests_per_minute = 4\n'
            "[openai_limits]\nmax_requests_per_minute = 3\n"
        )
        configs = [member_config(tmp_path, name, redis.url, limits) for name in ("a", "b")]
        with members(configs, workers=(1, 2)) as started:  # b: 2 workers, each a member to Redis
            addresses = [address for _, address in started]
            peer = addresses[0].rsplit("/p2p/", 1)[1]

            async def scenario() -> list[str | None]:
                clients = await clients_for(addresses)
                try:  # alternate between the members, all from 127.0.0.1
                    return [await ask(clients[i % 2], peer, f"request {i}") for i in range(8)]
                finally:
                    for c in clients:
                        await c.stop()

            errors = asyncio.run(scenario())
            for node, _ in started:
                assert node.stop() == 0, node.output
        # 3 served (the account's 3 a minute, not 3 per member); the 4th passes the IP's 4 a minute
        # and meets the account's limit; the IP's 4 are then spent on both members
        assert errors[:3] == [None] * 3, errors
        assert errors[3] is not None and "usage limit" in errors[3], errors
        assert all(e is not None and e.startswith("rate limit") for e in errors[4:]), errors
        assert served_rows(tmp_path / "data-a") + served_rows(tmp_path / "data-b") == 3
        assert "leader-only duties (settlement) do not run on a member" in started[0][0].output
    finally:
        redis.stop()


def test_one_frame_once_across_members_and_a_redis_outage_fails_closed_then_recovers(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    try:
        http = {"metrics": 'enabled = true\nendpoint = "127.0.0.1:0"', "api": 'enabled = true\nlisten_address = "127.0.0.1:0"'}
        configs = [member_config(tmp_path, "a", redis.url, **http), member_config(tmp_path, "b", redis.url)]
        with members(configs) as started:
            (node_a, _), (node_b, _) = started
            addresses = [address for _, address in started]
            peer = addresses[0].rsplit("/p2p/", 1)[1]
            metrics_url = node_a.wait_for(r"metrics on (http://\S+/metrics)").group(1)
            api_url = node_a.wait_for(r"api listening on (http://\S+)").group(1)
            signer = _native.PrivateKey.generate()
            frame = signed_frame(signer, peer, "only once, please")

            def detailed() -> dict[str, object]:
                body: dict[str, object] = httpx.get(api_url + "/health/detailed", timeout=10, trust_env=False).json()
                return body

            async def scenario() -> dict[str, object]:
                clients = await clients_for(addresses)
                try:
                    at_once = await asyncio.gather(*(c.send_frame(peer, frame) for c in clients))
                    errors = sorted(_native.decode_response(a).error or "" for a in at_once)
                    assert errors[0] == "" and errors[1].startswith("replay"), errors
                    assert detailed()["shared_state"] == {
                        "backend": "redis",
                        "reachable": True,
                        "failures": 0,
                        "last_error": None,
                        "appendonly": "yes",
                    }
                    assert metric(metrics_url, "lloom_executor_shared_state_up") == 1

                    redis.stop(kill=True)  # a crash; appendfsync always: nothing acknowledged is lost
                    for client in clients:
                        for i in range(3):
                            error = await ask(client, peer, f"during the outage {i}")
                            assert error is not None and error.startswith(UNAVAILABLE), error
                            assert "127.0.0.1" not in error and "redis" not in error.lower()
                    down = detailed()
                    assert down["status"] == "unhealthy"
                    state = down["shared_state"]
                    assert isinstance(state, dict) and state["reachable"] is False and state["last_error"] == "ConnectionError"
                    assert metric(metrics_url, "lloom_executor_shared_state_up") == 0
                    assert metric(metrics_url, "lloom_executor_shared_state_failures_total") >= 1

                    redis.start()  # same port, same AOF directory; the members are not restarted
                    deadline = time.monotonic() + 30
                    for client in clients:
                        while (error := await ask(client, peer, f"after the outage {time.monotonic()}")) is not None:
                            assert error.startswith(UNAVAILABLE), error
                            assert time.monotonic() < deadline, "not served again within 30 s of redis' return"
                            await asyncio.sleep(0.1)
                    again = [_native.decode_response(await c.send_frame(peer, frame)).error or "" for c in clients]
                    assert all(e.startswith("replay") for e in again), again  # remembered through the restart
                    return detailed()
                finally:
                    for c in clients:
                        await c.stop()

            after = asyncio.run(scenario())
            assert after["status"] != "unhealthy" and isinstance(after["shared_state"], dict)
            assert after["shared_state"]["reachable"] is True
            for node in (node_a, node_b):
                assert node.stop() == 0, node.output
                lost = [line for line in node.lines if "shared state (redis) unreachable" in line]
                back = [line for line in node.lines if "shared state (redis) reachable again" in line]
                assert len(lost) == 1 and len(back) == 1, node.output  # one line per change, not per request
                assert not re.search(r"without appendonly", node.output)
        rows = served_rows(tmp_path / "data-a") + served_rows(tmp_path / "data-b")
        assert rows == 3  # the frame once, one request per member after the outage
    finally:
        redis.stop()
