"""`start --workers N`: one node of several processes, with one identity, one port and exact shared state.

Every test runs the real command (supervisor + worker processes), real clients
over loopback libp2p, and reads the node's one SQLite ledger. Clients are put
on chosen workers by looking at which worker process holds their connection.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import pytest

import interop
from lloom_executor import _native
from lloom_executor.client import LloomClient
from lloom_executor.client.lloom_client import LloomClientError
from openai_server import GatedServer
from service_rig import until
from workers_rig import WorkersNode, client_on_each_worker, workers_node

MODEL = "echo-model"
PRICE_IN, PRICE_OUT = "1000000000000", "2000000000000"


def ledger_rows(config_dir: Path) -> int:
    with sqlite3.connect(config_dir / "data" / "ledger.sqlite3") as conn:
        return int(conn.execute("SELECT count(*) FROM requests WHERE status = 'served'").fetchone()[0])


def signed_frame(client: _native.PrivateKey, executor_peer: str, prompt: str) -> bytes:
    now = int(time.time())
    return bytes(
        _native.encode_signed_request(
            client, MODEL, prompt, None, None, 16, executor_peer, PRICE_IN, PRICE_OUT, 1, now + 300, now
        )
    )


async def ask(client: LloomClient, peer: str, prompt: str) -> str | None:
    """One request; its error (None when served)."""
    answer = await client.request(peer, MODEL, prompt, inbound_price=PRICE_IN, outbound_price=PRICE_OUT)
    assert answer.signature_valid
    return answer.error


def test_same_signed_frame_to_two_workers_at_once_is_served_once(tmp_path: Path) -> None:
    config = interop.write_operator_config(tmp_path, models=[MODEL])
    with workers_node(config) as node:
        address = node.ready()
        peer = address.rsplit("/p2p/", 1)[1]

        async def scenario() -> tuple[list[_native.DecodedResponse], list[_native.DecodedResponse]]:
            clients = await client_on_each_worker(address, node.worker_pids())
            try:
                signer = _native.PrivateKey.generate()
                frame = signed_frame(signer, peer, "only once, please")
                at_once = await asyncio.gather(*(c.send_frame(peer, frame) for c in clients.values()))
                later = [await c.send_frame(peer, frame) for c in clients.values()]  # sequential, each worker again
                return [_native.decode_response(a) for a in at_once], [_native.decode_response(a) for a in later]
            finally:
                for c in clients.values():
                    await c.stop()

        at_once, later = asyncio.run(scenario())
        errors = sorted((a.error or "") for a in at_once)
        assert errors[0] == "" and errors[1].startswith("replay"), errors
        assert all((a.error or "").startswith("replay") for a in later), [a.error for a in later]
        assert node.stop() == 0, node.output
    assert ledger_rows(tmp_path) == 1


def test_rate_limit_holds_for_the_node_across_workers(tmp_path: Path) -> None:
    rule = '[rate_limiting]\nenabled = true\n[[rate_limiting.rules]]\nidentifier = "ip_address"\nmax_requests_per_minute = 4\n'
    config = interop.write_operator_config(tmp_path, models=[MODEL], extra=rule)
    with workers_node(config) as node:
        address = node.ready()
        peer = address.rsplit("/p2p/", 1)[1]

        async def scenario() -> list[str | None]:
            clients = list((await client_on_each_worker(address, node.worker_pids())).values())
            try:  # alternate between the workers: 8 requests from one IP address, 4 allowed a minute
                return [await ask(clients[i % 2], peer, f"request {i}") for i in range(8)]
            finally:
                for c in clients:
                    await c.stop()

        errors = asyncio.run(scenario())
        served = [e for e in errors if e is None]
        assert len(served) == 4, errors
        assert all(e is not None and e.startswith("rate limit") for e in errors if e is not None), errors
        assert node.stop() == 0, node.output


def test_kill_9_of_a_worker_under_load(tmp_path: Path) -> None:
    """The dead worker's clients fail, the other worker keeps serving, nothing committed is lost,
    the supervisor brings the worker back and it serves again."""
    config = interop.write_operator_config(tmp_path, models=[MODEL])
    with workers_node(config) as node:
        address = node.ready()
        peer = address.rsplit("/p2p/", 1)[1]
        pids = node.worker_pids()
        mark = len(node.lines)

        async def load(client: LloomClient, tag: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
            i = 0
            while not stop.is_set():
                try:
                    error = await asyncio.wait_for(ask(client, peer, f"{tag} {i}"), 15)
                    counts["ok" if error is None else "refused"] += 1
                except (LloomClientError, TimeoutError):
                    counts["failed"] += 1
                    if tag == "victim":
                        return  # its worker is gone; this client's connection with it
                i += 1

        async def scenario() -> tuple[dict[str, int], dict[str, int]]:
            clients = await client_on_each_worker(address, pids)
            stop = asyncio.Event()
            survivor_counts = {"ok": 0, "refused": 0, "failed": 0}
            victim_counts = {"ok": 0, "refused": 0, "failed": 0}
            try:
                tasks = [
                    asyncio.ensure_future(load(clients[0], "survivor", stop, survivor_counts)),
                    asyncio.ensure_future(load(clients[1], "victim", stop, victim_counts)),
                ]
                while victim_counts["ok"] < 5 or survivor_counts["ok"] < 5:
                    await asyncio.sleep(0.01)
                os.kill(pids[1], signal.SIGKILL)
                before = survivor_counts["ok"]
                await asyncio.to_thread(node.wait_for, r"worker 1 is back", 90, mark)
                while survivor_counts["ok"] < before + 5:  # the other worker kept serving meanwhile and after
                    await asyncio.sleep(0.01)
                stop.set()
                await asyncio.gather(*tasks)
            finally:
                for c in clients.values():
                    await c.stop()
            return survivor_counts, victim_counts

        survivor, victim = asyncio.run(scenario())
        assert "worker 1 (pid" in node.output and "died: signal SIGKILL" in node.output, node.output
        assert survivor["failed"] == 0 and survivor["refused"] == 0, survivor
        new_pids = node.worker_pids()
        assert new_pids[0] == pids[0] and new_pids[1] != pids[1]

        async def served_by_the_new_worker() -> str | None:
            clients = await client_on_each_worker(address, new_pids)
            try:
                return await ask(clients[1], peer, "after the restart")
            finally:
                for c in clients.values():
                    await c.stop()

        assert asyncio.run(served_by_the_new_worker()) is None
        assert node.stop() == 0, node.output
    answered = survivor["ok"] + victim["ok"] + 1
    assert ledger_rows(tmp_path) >= answered


def test_sigterm_drains_every_worker_with_requests_in_flight(tmp_path: Path) -> None:
    """Requests in flight on both workers are answered after SIGTERM; a request arriving while
    they drain gets the signed "shutting down" refusal; the node exits 0."""
    with GatedServer([{"id": MODEL}]) as server:
        llm = f'backend = "lmstudio"\nbase_url = "{server.base_url}"\ntimeout_secs = 60\nmax_retries = 0'
        extra = "[request_handling]\ndrain_timeout_secs = 60\n"
        config = interop.write_operator_config(tmp_path, llm=llm, models=[MODEL], extra=extra)
        with workers_node(config) as node:
            address = node.ready()
            peer = address.rsplit("/p2p/", 1)[1]
            mark = len(node.lines)

            async def scenario() -> tuple[list[str | None], str | None]:
                clients = await client_on_each_worker(address, node.worker_pids())
                try:
                    in_flight = [
                        asyncio.ensure_future(ask(c, peer, f"drain {i} {j}")) for i, c in clients.items() for j in range(2)
                    ]
                    try:
                        await until(lambda: len(server.chat_requests) == 4, "four requests at the backend", 30)
                        node.proc.send_signal(signal.SIGTERM)
                        for index in clients:  # logged just before each worker's handler drains
                            pattern = rf"w{index} lloom_executor\.service: signal received: draining"
                            await asyncio.to_thread(node.wait_for, pattern, 30, mark)
                        late = await ask(clients[1], peer, "too late")
                    finally:
                        server.open_gate()
                    return [await f for f in in_flight], late
                finally:
                    for c in clients.values():
                        await c.stop()

            answered, late = asyncio.run(scenario())
            assert answered == [None] * 4
            assert late is not None and "shutting down" in late
            assert node.stop() == 0, node.output
            assert node.output.count("executor stopped") == 2, node.output
        assert ledger_rows(tmp_path) == 4


def test_a_worker_that_cannot_start_stops_the_node_with_its_reason(tmp_path: Path) -> None:
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("def create_plugin(config, context):\n    raise RuntimeError('no licence for this box')\n")
    extra = f'[[plugins]]\nname = "broken"\npath = "{plugin}"\n'
    config = interop.write_operator_config(tmp_path, models=[MODEL], extra=extra)
    node = WorkersNode(config, 2)
    try:
        code = node.proc.wait(120)
    finally:
        node.kill()
    node._reader.join(5)
    assert code == 1, node.output
    assert "could not start" in node.output and "no licence for this box" in node.output, node.output


def test_a_port_another_process_listens_on_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = interop.write_operator_config(tmp_path, models=[MODEL])
        config.write_text(config.read_text().replace("/tcp/0", f"/tcp/{port}"))
        node = WorkersNode(config, 2)
        try:
            code = node.proc.wait(60)
        finally:
            node.kill()
        node._reader.join(5)
    assert code == 1 and f"port {port} is in use" in node.output, node.output


@pytest.mark.parametrize("discover", ["none", "kad", "gossip"])
def test_rust_peer_discovers_and_uses_a_two_worker_node(interop_peer: Path, tmp_path: Path, discover: str) -> None:
    """The reference-style peer, several runs (so several connections, spread by the kernel)."""
    config = interop.write_operator_config(tmp_path, models=[interop.MODEL])
    with workers_node(config) as node:
        address = node.ready()
        peer = address.rsplit("/p2p/", 1)[1]
        runs = []
        for i in range(4 if discover == "none" else 1):
            args = interop.client_args(
                address, "--inbound-price", PRICE_IN, "--outbound-price", PRICE_OUT, "--prompt", f"rust {i}", discover=discover
            )
            runs.append(interop.run_peer(interop_peer, args, timeout=45))
        for run in runs:
            assert run.returncode == 0, run.describe() + node.output
            line = run.one("response")
            assert line["signature_valid"] is True and line["error"] is None, run.describe()
            assert line["content"].startswith("echo: rust"), run.describe()
            if discover != "none":
                assert any(d["peer"] == peer for d in run.events("discovered")), run.describe()
        assert node.stop() == 0, node.output
    assert ledger_rows(tmp_path) == len(runs)


def test_gossip_message_ids_of_the_workers_never_collide(tmp_path: Path) -> None:
    """Workers of one PeerId started in the same second publish under rust-libp2p's id (source +
    seqno): a subscriber on each worker hears its worker's announcements, and no id heard from
    one worker is an id heard from the other (peers would drop one message as the other's
    duplicate)."""
    config = interop.write_operator_config(tmp_path, models=[MODEL])
    with workers_node(config) as node:
        address = node.ready()

        async def scenario() -> dict[int, set[bytes]]:
            clients = await client_on_each_worker(address, node.worker_pids())
            try:
                gossip = {i: c.gossip for i, c in clients.items()}
                assert all(g is not None for g in gossip.values())
                await until(
                    lambda: all(g is not None and g.recent_ids for g in gossip.values()),
                    "an announcement heard from each worker",
                    30,
                )
                return {i: set(g.recent_ids) for i, g in gossip.items() if g is not None}
            finally:
                for c in clients.values():
                    await c.stop()

        heard = asyncio.run(scenario())
        assert node.stop() == 0, node.output
    assert heard[0] and heard[1] and not heard[0] & heard[1], heard


def test_plugins_run_their_checks_in_every_worker_and_on_start_once_per_node(tmp_path: Path) -> None:
    journal = tmp_path / "plugin-journal.txt"
    plugin = tmp_path / "journal_plugin.py"
    plugin.write_text(
        "import os\n"
        f"JOURNAL = {str(journal)!r}\n"
        "def note(what):\n"
        "    with open(JOURNAL, 'a') as f:\n"
        "        f.write(f'{what} {os.getpid()}\\n')\n"
        "class Journal:\n"
        "    def __init__(self, context):\n"
        "        note(f'created {context.worker}/{context.workers}')\n"
        "    def on_start(self):\n"
        "        note('on_start')\n"
        "    def on_stop(self):\n"
        "        note('on_stop')\n"
        "    def check_request(self, request):\n"
        "        note('check')\n"
        "        return None\n"
        "def create_plugin(config, context):\n"
        "    return Journal(context)\n"
    )
    config = interop.write_operator_config(tmp_path, models=[MODEL], extra=f'[[plugins]]\nname = "journal"\npath = "{plugin}"\n')
    with workers_node(config) as node:
        address = node.ready()
        peer = address.rsplit("/p2p/", 1)[1]

        async def scenario() -> list[str | None]:
            clients = await client_on_each_worker(address, node.worker_pids())
            try:
                return [await ask(c, peer, f"checked on {i}") for i, c in clients.items()]
            finally:
                for c in clients.values():
                    await c.stop()

        assert asyncio.run(scenario()) == [None, None]
        pids = node.worker_pids()
        assert node.stop() == 0, node.output
    lines = [line.rsplit(" ", 1) for line in journal.read_text().splitlines()]
    assert sorted(what for what, _ in lines if what.startswith("created")) == ["created 0/2", "created 1/2"]
    assert [int(pid) for what, pid in lines if what == "on_start"] == [pids[0]]  # once per node, by the lead
    assert [int(pid) for what, pid in lines if what == "on_stop"] == [pids[0]]
    assert {int(pid) for what, pid in lines if what == "check"} == set(pids.values())  # checks in every worker
