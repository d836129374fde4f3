"""Per-backend limits held once for the node (workers/shared_limits.py): `[openai_limits]` counts
and `max_concurrent_requests` slots, across real processes on one `NodeState` file and through a
real `start --workers 2` node.

Oracles: exact counts (a bucket of n requests admits n among all processes; a budget of k
reservations admits k), a counter the processes keep in shared memory for the slots, and the
OpenAI-wire test server's own record of what reached it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

import interop
from lloom_executor.workers.shared_limits import SharedNodeLimits, SharedSlots
from lloom_executor.workers.shared_state import NodeState
from openai_server import GatedServer
from service_rig import until
from workers_rig import client_on_each_worker, workers_node

MODEL = "echo-model"
PRICE_IN, PRICE_OUT = "1000000000000", "2000000000000"
DAY = 20_000
ATTEMPTS = 60


def admit_many(
    path: str, worker: int, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue[tuple[int, int]]
) -> None:
    limits = SharedNodeLimits(NodeState(path), worker)
    requests = limits.book("rpm", 50, None)
    budget = limits.book("budget", None, None)
    start.wait()
    by_rate = sum(requests.admit(0, Decimal(0), None, DAY, 1.0) is None for _ in range(ATTEMPTS))
    by_budget = sum(budget.admit(0, Decimal("0.1"), Decimal("1"), DAY, 1.0) is None for _ in range(ATTEMPTS))
    out.put((by_rate, by_budget))


def test_a_backend_account_admits_its_limit_once_among_all_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))  # spawned children import this module
    path = str(tmp_path / "node-state.sqlite3")
    NodeState(path).close()
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=admit_many, args=(path, w, start, out)) for w in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    # 50 requests a minute among 180 attempts within a fraction of a second (refill: 0.83 a second)
    assert sum(r for r, _ in results) in (50, 51), results
    assert sum(b for _, b in results) == 10, results  # $1 of $0.10 reservations: 10, never 11
    state = NodeState(path)
    book = SharedNodeLimits(state, 0).book("budget", None, None)
    assert book.status(DAY).reserved == Decimal("1.0")
    book.settle(Decimal("0.1"), Decimal("0.04"), DAY)  # one answer cost less than reserved
    assert book.status(DAY).spent_today == Decimal("0.04") and book.status(DAY).reserved == Decimal("0.9")


def hold_slots(
    path: str,
    worker: int,
    limit: int,
    start: multiprocessing.synchronize.Barrier,
    holders: multiprocessing.sharedctypes.Synchronized[int],
    peak: multiprocessing.sharedctypes.Synchronized[int],
) -> None:
    slots = SharedSlots(NodeState(path), "gpu", limit, worker)

    async def one() -> None:
        await slots.acquire()
        try:
            with holders.get_lock():
                holders.value += 1
                peak.value = max(peak.value, holders.value)
            await asyncio.sleep(0.003)  # the call's own duration, not a wait for a condition
            with holders.get_lock():
                holders.value -= 1
        finally:
            slots.release()

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(15)))

    start.wait()
    asyncio.run(many())


def test_slots_bound_the_calls_in_flight_of_all_processes_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    path = str(tmp_path / "node-state.sqlite3")
    NodeState(path).close()
    ctx = multiprocessing.get_context("spawn")
    start, holders, peak = ctx.Barrier(3), ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [ctx.Process(target=hold_slots, args=(path, w, 2, start, holders, peak)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]  # every one of the 45 calls got its slot
    assert peak.value == 2 and holders.value == 0
    assert SharedSlots(NodeState(path), "gpu", 2, 0).held() == 0


def take_and_die(path: str, ready: multiprocessing.synchronize.Event) -> None:
    limits = SharedNodeLimits(NodeState(path), 1)
    assert limits.slots("gpu", 1).try_take()
    assert limits.book("budget", None, None).admit(0, Decimal("0.25"), Decimal("1"), DAY, 1.0) is None
    ready.set()
    signal.pause()


def test_what_a_killed_worker_held_is_returned_when_its_index_starts_again(tmp_path: Path) -> None:
    path = str(tmp_path / "node-state.sqlite3")
    NodeState(path).close()
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=take_and_die, args=(path, ready))
    proc.start()
    assert ready.wait(30)
    os.kill(proc.pid or 0, signal.SIGKILL)
    proc.join(10)
    state = NodeState(path)
    slots = SharedSlots(state, "gpu", 1, 0)
    assert slots.held() == 1 and not slots.try_take()  # the dead worker's slot is still counted
    state.forget_worker(1, DAY)  # what worker 1's next process does first
    assert slots.try_take()
    status = SharedNodeLimits(state, 0).book("budget", None, None).status(DAY)
    assert status.reserved == 0 and status.spent_today == Decimal("0.25")  # abandoned: may have been billed


def ask_errors(address: str, pids: dict[int, int], plan: list[int], peer: str) -> list[str | None]:
    async def scenario() -> list[str | None]:
        clients = await client_on_each_worker(address, pids)
        try:
            out = []
            for i, worker in enumerate(plan):
                answer = await clients[worker].request(
                    peer, MODEL, f"request {i}", inbound_price=PRICE_IN, outbound_price=PRICE_OUT
                )
                assert answer.signature_valid
                out.append(answer.error)
            return out
        finally:
            for c in clients.values():
                await c.stop()

    return asyncio.run(scenario())


def test_openai_limits_hold_for_the_node_across_workers(tmp_path: Path) -> None:
    config = interop.write_operator_config(tmp_path, models=[MODEL], extra="[openai_limits]\nmax_requests_per_minute = 4\n")
    with workers_node(config) as node:
        address = node.ready()
        peer = address.rsplit("/p2p/", 1)[1]
        errors = ask_errors(address, node.worker_pids(), [0, 1] * 4, peer)
        assert node.stop() == 0, node.output
    assert [e is None for e in errors].count(True) == 4, errors  # not 2 per worker, not 4 per worker
    refused = [e for e in errors if e is not None]
    assert all("usage limit" in e for e in refused), refused


def test_a_backends_concurrency_cap_is_the_nodes_not_a_workers_share(tmp_path: Path) -> None:
    """`max_concurrent_requests = 2` on a backend of a 2-worker node: one worker alone may have both
    slots (a per-worker share would give it one), and the node never has three calls there."""
    with GatedServer([{"id": MODEL}]) as server:
        extra = (
            f'[[llm_backends]]\nname = "gpu"\nbackend = "lmstudio"\nbase_url = "{server.base_url}"\n'
            "timeout_secs = 60\nmax_retries = 0\nmax_concurrent_requests = 2\n"
            f'[[models]]\nname = "{MODEL}"\nbackend = "gpu"\ninbound_price = "0.000001"\noutbound_price = "0.000002"\n'
        )
        config = interop.write_operator_config(tmp_path, extra=extra)
        with workers_node(config) as node:
            address = node.ready()
            peer = address.rsplit("/p2p/", 1)[1]
            state = tmp_path / "data" / "node-state.sqlite3"

            def held() -> int:
                with sqlite3.connect(state) as conn:
                    return int(conn.execute("SELECT coalesce(sum(held), 0) FROM slots WHERE scope = 'gpu'").fetchone()[0])

            async def scenario() -> list[str | None]:
                clients = await client_on_each_worker(address, node.worker_pids())
                try:

                    async def ask(worker: int, i: int) -> str | None:
                        answer = await clients[worker].request(
                            peer, MODEL, f"r{i}", inbound_price=PRICE_IN, outbound_price=PRICE_OUT
                        )
                        return answer.error

                    first = [asyncio.ensure_future(ask(0, i)) for i in range(3)]
                    await until(lambda: len(server.chat_requests) == 2, "worker 0 holds both slots", 30)
                    second = [asyncio.ensure_future(ask(1, i)) for i in range(3, 5)]
                    await until(lambda: held() == 2, "the node's slot table says 2", 10)
                    assert len(server.chat_requests) == 2
                    server.open_gate()
                    return [await f for f in first + second]
                finally:
                    for c in clients.values():
                        await c.stop()

            errors = asyncio.run(scenario())
            assert errors == [None] * 5, errors
            assert len(server.chat_requests) == 5 and held() == 0
            assert node.stop() == 0, node.output
