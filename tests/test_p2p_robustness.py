"""Misbehaving peers against our node: it keeps serving others and nothing leaks.

Real py-libp2p hosts on loopback misbehave at the stream level (half frames
then a dropped connection, garbage, streams that never write, a flood of
streams), while a well-behaved client keeps sending signed requests. After
each, the node's in-flight counter, its trio task count (a walk of the task
tree from the root task, inside the node's thread) and the open streams per
connection must be back where they were.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

import interop
from interop import INBOUND_PRICE_WEI, MODEL, OUTBOUND_PRICE_WEI

READ_TIMEOUT_SECS = 1.0
MAX_INFLIGHT = 16
MAX_PER_PEER = MAX_INFLIGHT // 2
SETTLE_SECS = 10.0


# -- client-side actions, run in a TrioHost's trio thread ---------------------------------------------
async def connect(host, addr: str) -> str:
    from lloom_executor.p2p.node import dial

    with trio.fail_after(10):
        return await dial(host, addr)


async def open_llm_stream(host, peer_id: str):
    from libp2p.peer.id import ID

    from lloom_executor.p2p.llm_protocol import LLM_PROTOCOL

    with trio.fail_after(10):
        return await host.new_stream(ID.from_base58(peer_id), [LLM_PROTOCOL])


async def read_answer(stream, timeout: float = 10.0) -> bytes | None:
    """The whole answer, or None when the node reset the stream."""
    from libp2p.network.stream.exceptions import StreamEOF

    buf = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.read(65536)
            except StreamEOF:
                return bytes(buf)
            except Exception:  # reset by the node
                return None
            if not chunk:
                return bytes(buf)
            buf += chunk


async def send_frame(host, peer_id: str, frame: bytes) -> bytes | None:
    """One request the reference way: write the frame, close our write half, read to EOF."""
    stream = await open_llm_stream(host, peer_id)
    try:
        await stream.write(frame)
        await stream.close()
        return await read_answer(stream)
    except Exception:
        return None


async def write_half_frame(host: Any, peer_id: str, frame: bytes) -> None:
    """Open a request stream and write half of `frame`; the stream stays open, never finished."""
    stream = await open_llm_stream(host, peer_id)
    await stream.write(frame[: len(frame) // 2])


async def stalled_streams(host, peer_id: str, count: int, outcome: dict[str, int]) -> None:
    """Open `count` streams at once and never write; count how each one ends."""

    async def one() -> None:
        try:
            stream = await open_llm_stream(host, peer_id)
        except Exception:
            outcome["open_failed"] += 1
            return
        started = trio.current_time()
        answer = await read_answer(stream, timeout=READ_TIMEOUT_SECS * 10)
        key = "answered" if answer else "reset"
        outcome[key] += 1
        outcome[f"{key}_max_ms"] = max(outcome.get(f"{key}_max_ms", 0), int((trio.current_time() - started) * 1000))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)


# -- a good client that keeps asking while others misbehave -------------------------------------------
@dataclass
class GoodClient:
    client: interop.TrioHost
    node: interop.ExecutorNode
    ok: int = 0
    bad: list[str] = field(default_factory=list)

    def frame(self) -> bytes:
        from lloom_executor import _native

        now = int(time.time())
        return _native.encode_signed_request(
            self.client.key,
            MODEL,
            f"still served {self.ok}",
            None,
            None,
            None,
            self.node.peer_id,
            str(INBOUND_PRICE_WEI),
            str(OUTBOUND_PRICE_WEI),
            1,
            now + 300,
            now,
        )

    def ask(self) -> None:
        from lloom_executor import _native

        answer = self.client.run(send_frame, self.node.peer_id, self.frame())
        if not answer:
            self.bad.append("no answer (stream reset)")
            return
        decoded = _native.decode_response(answer)
        if decoded.error or not decoded.signature_valid or not (decoded.content or "").startswith("echo: "):
            self.bad.append(f"bad answer: error={decoded.error!r} valid={decoded.signature_valid}")
            return
        self.ok += 1


@dataclass
class Baseline:
    tasks: int
    streams: dict[str, tuple[int, int]]
    names: dict[str, int]


def snapshot(node: interop.ExecutorNode) -> Baseline:
    return Baseline(
        node.call(interop.count_trio_tasks),
        node.call(interop.open_streams_per_peer),
        node.call(interop.trio_task_names),
    )


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after) if after.get(k, 0) != before.get(k, 0)}


def settle(node: interop.ExecutorNode, base: Baseline, peers: list[str]) -> Baseline:
    """Wait until in-flight is 0 and tasks and the given peers' streams are back to `base`."""
    last: list[Baseline] = []

    def back() -> bool:
        if node.stats.inflight != 0:
            return False
        now = snapshot(node)
        last[:] = [now]
        return now.tasks == base.tasks and all(now.streams.get(p) == base.streams.get(p) for p in peers)

    ok = interop.wait_until(back, SETTLE_SECS, interval=0.1)
    now = last[0] if last else snapshot(node)
    assert ok, (
        f"not back to baseline: inflight={node.stats.inflight} tasks {base.tasks}->{now.tasks} "
        f"streams {base.streams}->{now.streams}; task changes {_diff(base.names, now.names)}"
    )
    return now


def stable_baseline(node: interop.ExecutorNode) -> Baseline:
    """A snapshot once nothing is in flight and the task count held still for a few polls
    (a just-answered stream's task may still be finishing)."""
    seen: list[Baseline] = []

    def steady() -> bool:
        if node.stats.inflight != 0:
            seen.clear()
            return False
        seen.append(snapshot(node))
        recent = seen[-4:]
        return len(recent) == 4 and len({b.tasks for b in recent}) == 1

    assert interop.wait_until(steady, SETTLE_SECS, interval=0.1), f"node never settled: {node.stats}"
    return seen[-1]


@dataclass
class Scene:
    node: interop.ExecutorNode
    good: GoodClient
    bad: interop.TrioHost
    base_without_bad: Baseline
    base_with_bad: Baseline

    @property
    def good_peer(self) -> str:
        return self.good.client.key.peer_id

    @property
    def bad_peer(self) -> str:
        return self.bad.key.peer_id

    def check_recovered(self) -> None:
        """Good client still served on the same connection; nothing of the bad peer's left."""
        before = self.good.ok
        for _ in range(3):
            self.good.ask()
        assert self.good.ok == before + 3 and not self.good.bad, self.good.bad
        if self.bad_peer in self.node.call(interop.open_streams_per_peer):
            settle(self.node, self.base_with_bad, [self.good_peer, self.bad_peer])
            self.bad.run(_disconnect, self.node.peer_id)
        settle(self.node, self.base_without_bad, [self.good_peer])
        assert self.node.stats.inflight == 0


async def _disconnect(host, peer_id: str) -> None:
    from libp2p.peer.id import ID

    await host.disconnect(ID.from_base58(peer_id))


@pytest.fixture
def scene(executor_node) -> Iterator[Scene]:
    from lloom_executor.config import RequestHandlingConfig

    node = executor_node(
        handling=RequestHandlingConfig(
            stream_read_timeout_secs=READ_TIMEOUT_SECS,
            max_inflight_streams=MAX_INFLIGHT,
            max_inflight_streams_per_peer=MAX_PER_PEER,
        )
    )
    with interop.trio_host() as good_host, interop.trio_host() as bad_host:
        good_host.run(connect, node.addr)
        good = GoodClient(good_host, node)
        good.ask()  # warm: the connection and its first stream exist before the baseline
        assert good.ok == 1, good.bad
        base_without_bad = stable_baseline(node)
        bad_host.run(connect, node.addr)
        assert interop.wait_until(lambda: bad_host.key.peer_id in node.call(interop.open_streams_per_peer), 5)
        base_with_bad = stable_baseline(node)
        yield Scene(node, good, bad_host, base_without_bad, base_with_bad)


# -- the tests ------------------------------------------------------------------------------------
def test_disconnect_mid_request(scene: Scene) -> None:
    from lloom_executor import _native

    now = int(time.time())
    frame = _native.encode_signed_request(
        scene.bad.key, MODEL, "x" * 2000, None, None, None, scene.node.peer_id, "1", "1", 1, now + 300, now
    )
    for _ in range(3):
        assert interop.wait_until(lambda: scene.node.stats.inflight == 0, SETTLE_SECS), scene.node.stats
        scene.bad.run(write_half_frame, scene.node.peer_id, frame)
        # the only stream in flight is the half frame: the node is reading it when the connection drops
        assert interop.wait_until(lambda: scene.node.stats.inflight == 1, 5), scene.node.stats
        scene.bad.run(_disconnect, scene.node.peer_id)
        scene.good.ask()
        scene.bad.run(connect, scene.node.addr)
    assert scene.node.stats.served == scene.good.ok  # the half frames were never answered
    scene.check_recovered()


def test_garbage_gets_signed_error_or_reset(scene: Scene) -> None:
    from lloom_executor import _native

    answered = 0
    for size in (1, 7, 100, 5000, 70000):
        answer = scene.bad.run(send_frame, scene.node.peer_id, os.urandom(size))
        scene.good.ask()
        if answer is None:
            continue  # a reset is an acceptable way to refuse
        decoded = _native.decode_response(answer)
        assert decoded.signature_valid and decoded.error and decoded.error.startswith("malformed request"), decoded.error
        assert decoded.content == "" and decoded.total_cost == "0"
        answered += 1
    assert answered >= 1  # random bytes are a complete frame: the node answers it
    assert not scene.good.bad, scene.good.bad
    scene.check_recovered()


def test_stalled_streams_time_out(scene: Scene) -> None:
    timeouts_before = scene.node.stats.read_timeouts
    outcome: dict[str, int] = {"open_failed": 0, "answered": 0, "reset": 0}
    scene.bad.spawn(stalled_streams, scene.node.peer_id, 4, outcome)
    assert interop.wait_until(lambda: scene.node.stats.inflight == 4, 5), scene.node.stats
    scene.good.ask()  # served while four streams stall
    assert interop.wait_until(lambda: outcome["reset"] == 4, READ_TIMEOUT_SECS * 8), outcome
    assert outcome["reset_max_ms"] >= READ_TIMEOUT_SECS * 1000 * 0.9, outcome
    assert scene.node.stats.read_timeouts - timeouts_before == 4
    scene.check_recovered()


def test_stream_flood_beyond_max_inflight(scene: Scene) -> None:
    flood = MAX_INFLIGHT * 3
    refused_before = scene.node.stats.refused_busy
    outcome: dict[str, int] = {"open_failed": 0, "answered": 0, "reset": 0}
    scene.bad.spawn(stalled_streams, scene.node.peer_id, flood, outcome)
    assert interop.wait_until(lambda: outcome["reset"] + outcome["open_failed"] == flood, READ_TIMEOUT_SECS * 10), outcome
    stats = scene.node.stats
    assert stats.refused_busy - refused_before >= flood - MAX_INFLIGHT, f"flood of {flood} streams: {outcome}; {stats}"
    assert stats.read_timeouts >= 1, f"flood of {flood} streams: {outcome}; {stats}"
    scene.check_recovered()


def test_one_peer_cannot_take_every_slot(scene: Scene) -> None:
    """The per-peer cap keeps slots free for others while one peer floods stalled streams."""
    flood = MAX_INFLIGHT * 3
    outcome: dict[str, int] = {"open_failed": 0, "answered": 0, "reset": 0}
    scene.bad.spawn(stalled_streams, scene.node.peer_id, flood, outcome)
    assert interop.wait_until(lambda: scene.node.stats.inflight == MAX_PER_PEER, 5), scene.node.stats
    served_before = scene.good.ok
    for _ in range(3):
        scene.good.ask()  # served at once, not after the stalled streams time out
    assert scene.good.ok == served_before + 3 and not scene.good.bad, scene.good.bad
    # the flood still holds its share (the good streams' handlers finish just after their answers)
    assert interop.wait_until(lambda: scene.node.stats.inflight == MAX_PER_PEER, 1), scene.node.stats
    assert interop.wait_until(lambda: outcome["reset"] + outcome["open_failed"] == flood, READ_TIMEOUT_SECS * 10), outcome
    scene.check_recovered()
