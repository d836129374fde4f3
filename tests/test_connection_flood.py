"""Connection floods cannot lock clients out (issue 11): admission caps, at scale, on loopback.

1. The rules of `InboundAdmission` (p2p/admission.py), on the real object: each cap refuses
   exactly at its value, IPv6 /64 and IPv4-mapped addresses count as they should, released
   tickets free their slots, refusals are logged once per interval, not once per connection.
2. Its metric families, scraped from a real `Metrics` registry.
3. At scale against `lloom-executor start` (benches/flood.py's code, CI sizes): thousands of
   junk connections held open (and reopened) from 127.0.0.2, then from twenty addresses of
   one /24, then stalled request streams over many py-libp2p connections, while the Rust
   interop client sends signed requests from 127.0.0.1: every request answered, p99 under
   1 s, the executor's fds within the caps during the flood and back to the baseline after,
   RSS bounded, and the refusal log one line per interval. benches/flood.py runs the full
   size (5,000 connections, 10,000 streams) with the same verdict.

The test process holds the attacking sockets, so it raises its own RLIMIT_NOFILE; the
executor gets 4096 (benches/flood.py `Executor`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import generate_latest

import interop
from interop import INBOUND_PRICE_WEI, MODEL, OUTBOUND_PRICE_WEI
from lloom_executor.metrics import Metrics
from lloom_executor.p2p.admission import (
    CONNECTIONS_PER_IP,
    CONNECTIONS_PER_PEER,
    PENDING_PER_IP,
    PENDING_PER_PREFIX,
    PENDING_TOTAL,
    AdmissionLimits,
    InboundAdmission,
    source_keys,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
import flood  # noqa: E402

# CI size: as much as fits in about a minute on two cores
# Smaller than benches/flood.py's full size, and a looser latency bound: on CI's two cores the attacker,
# the node and the client share the CPU, so p99 of 30 requests is their maximum. The full-size run
# (README) holds the 1 s; here every request must still be answered within 3 s.
CI_SIZES = flood.Sizes(
    junk=3000,
    junk_prefix=1000,
    reopen=3,
    streams=1500,
    stream_peers=15,
    batches=3,
    requests=30,
    single_address_min_secs=12.0,
    p99_bound_ms=3000.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- 1. the rules ---------------------------------------------------------------------------------------
def test_each_cap_refuses_at_its_value() -> None:
    limits = AdmissionLimits(
        max_pending_per_ip=2, max_pending_per_prefix=3, max_pending_total=5, max_connections_per_ip=3, max_connections_per_peer=2
    )
    gate = InboundAdmission(limits)
    a = [gate.admit("10.0.0.1") for _ in range(2)]
    assert all(a) and gate.admit("10.0.0.1") is None  # pending per address
    assert gate.admit("10.0.0.2") is not None and gate.admit("10.0.0.3") is None  # the /24 holds 3 pending
    assert gate.refused[PENDING_PER_IP] == 1 and gate.refused[PENDING_PER_PREFIX] == 1
    b = [gate.admit("10.0.1.1"), gate.admit("10.0.2.1")]
    assert all(b) and gate.pending == 5
    assert gate.admit("10.0.3.1") is None and gate.refused[PENDING_TOTAL] == 1  # in total

    first = a[0]
    assert first is not None
    gate.mark_established(first)  # 10.0.0.1: 1 established + 1 pending
    assert (gate.pending, gate.established) == (4, 1)
    third = gate.admit("10.0.0.1")  # pending back to 2 of 2
    assert third is not None
    gate.mark_established(third)
    assert gate.admit("10.0.0.1") is None and gate.refused[CONNECTIONS_PER_IP] == 1  # 2 established + 1 pending = 3

    for ticket in (*a, *b, third):
        assert ticket is not None
        gate.release(ticket)
        gate.release(ticket)  # idempotent
    assert (gate.pending, gate.established) == (1, 0)  # only 10.0.0.2 is left
    assert gate.pending_from("10.0.0.1") == 0 and gate.established_from("10.0.0.1") == 0

    assert gate.begin_peer("peer", registered=0) and gate.begin_peer("peer", registered=0)
    assert not gate.begin_peer("peer", registered=0)  # two upgrading at once already
    gate.end_peer("peer")
    gate.end_peer("peer")
    assert not gate.begin_peer("peer", registered=2) and gate.refused[CONNECTIONS_PER_PEER] == 2


def test_addresses_and_prefixes() -> None:
    assert source_keys("::ffff:192.0.2.7") == source_keys("192.0.2.7") == ("192.0.2.7", (4, 0xC00002))
    assert source_keys("2001:db8:1:2::5")[1] == source_keys("2001:db8:1:2:ffff::1")[1]  # one /64
    assert source_keys("2001:db8:1:3::5")[1] != source_keys("2001:db8:1:2::5")[1]
    gate = InboundAdmission(AdmissionLimits(max_pending_per_ip=10, max_pending_per_prefix=2))
    assert gate.admit("2001:db8::1") and gate.admit("2001:db8::2")
    assert gate.admit("2001:db8::3") is None and gate.refused[PENDING_PER_PREFIX] == 1
    assert gate.admit("2001:db8:0:1::1") is not None  # the next /64


def test_refusals_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    gate = InboundAdmission(AdmissionLimits(max_pending_per_ip=1), clock=clock, log_interval=10.0)
    assert gate.admit("10.0.0.1") is not None
    with caplog.at_level(logging.WARNING, logger="lloom_executor.p2p.admission"):
        for _ in range(1000):
            gate.admit("10.0.0.1")
        clock.now += 10.0
        gate.handshake_timed_out()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "pending_per_ip 1 " in lines[0] and "pending_per_ip 999, handshake_timeout 1" in lines[1], lines
    assert gate.refused[PENDING_PER_IP] == 1000 and gate.handshake_timeouts == 1


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        AdmissionLimits(max_pending_total=0)
    with pytest.raises(ValueError):
        AdmissionLimits(handshake_timeout_secs=0)


# -- 2. metrics -------------------------------------------------------------------------------------------
def test_metric_families() -> None:
    gate = InboundAdmission(AdmissionLimits(max_pending_per_ip=1))
    ticket = gate.admit("10.0.0.1")
    assert ticket is not None and gate.admit("10.0.0.1") is None
    gate.handshake_timed_out()
    metrics = Metrics()
    metrics.watch_connections(gate.counts)
    text = generate_latest(metrics.registry).decode()
    assert 'lloom_executor_connections_refused_total{reason="pending_per_ip"} 1.0' in text
    assert 'lloom_executor_connections_refused_total{reason="connections_per_peer"} 0.0' in text
    assert "lloom_executor_handshake_timeouts_total 1.0" in text
    assert 'lloom_executor_inbound_connections{state="pending"} 1.0' in text
    assert 'lloom_executor_inbound_connections{state="established"} 0.0' in text


# -- 3. at scale -----------------------------------------------------------------------------------------
def test_floods_do_not_lock_clients_out(tmp_path: Path, interop_peer: Path) -> None:
    flood.raise_fd_limit(CI_SIZES.junk + CI_SIZES.junk_prefix + 1024)
    executor = flood.Executor(tmp_path)
    try:
        reports = flood.run_all(interop_peer, executor, CI_SIZES)
        log = executor.log_text()
    finally:
        executor.stop()
    assert [r.problems for r in reports] == [[], [], []], "\n".join(r.text() for r in reports)

    one, prefix, streams = reports
    assert one.flood["closed_by_node"] >= CI_SIZES.junk - 32, one.text()  # all but the admitted handshakes, at once
    assert one.peak_fds <= one.baseline_fds + 32 + flood.FD_SLACK
    assert prefix.flood["closed_by_node"] >= CI_SIZES.junk_prefix - 128, prefix.text()
    assert streams.flood["opened"] + streams.flood["refused"] == CI_SIZES.streams, streams.text()

    refusal_lines = [line for line in log.splitlines() if flood.REFUSAL_LOG in line]
    total_secs = sum(r.duration_secs for r in reports)
    assert 1 <= len(refusal_lines) <= total_secs / 10 + 3, refusal_lines  # one line per 10 s at most
    assert any("handshake_timeout" in line for line in refusal_lines), refusal_lines  # held handshakes were cut


# -- stalled streams from many peers -------------------------------------------------------------------
async def _connect(host: Any, addr: str) -> str:
    from lloom_executor.p2p.node import dial

    with trio.fail_after(10):
        return await dial(host, addr)


async def _stall(host: Any, peer_id: str, count: int) -> None:
    """Open `count` request streams, write half a frame on each, and hold them."""
    from libp2p.peer.id import ID

    from lloom_executor.p2p.llm_protocol import LLM_PROTOCOL

    held = []
    for _ in range(count):
        with contextlib.suppress(Exception):
            stream = await host.new_stream(ID.from_base58(peer_id), [LLM_PROTOCOL])
            await stream.write(b"\xa2\x64")
            held.append(stream)
    await trio.sleep_forever()


async def _ask(host: Any, peer_id: str, frame: bytes) -> bytes:
    from libp2p.network.stream.exceptions import StreamEOF
    from libp2p.peer.id import ID

    from lloom_executor.p2p.llm_protocol import LLM_PROTOCOL

    with trio.fail_after(10):
        stream = await host.new_stream(ID.from_base58(peer_id), [LLM_PROTOCOL])
        await stream.write(frame)
        await stream.close()
        answer = bytearray()
        while True:
            try:
                chunk = await stream.read(65536)
            except StreamEOF:
                return bytes(answer)
            if not chunk:
                return bytes(answer)
            answer += chunk


def test_many_peers_stalling_streams_cannot_take_every_slot(executor_node: Any) -> None:
    """Three peers fill every request slot with stalled streams (each within its per-peer cap):
    a fourth peer is still served at once, by evicting a stalled read of the busiest peer."""
    from lloom_executor import _native
    from lloom_executor.config import RequestHandlingConfig

    node = executor_node(
        handling=RequestHandlingConfig(stream_read_timeout_secs=30, max_inflight_streams=16, max_inflight_streams_per_peer=8)
    )
    with contextlib.ExitStack() as stack:
        bad = [stack.enter_context(interop.trio_host()) for _ in range(3)]
        good = stack.enter_context(interop.trio_host())
        for host in bad:
            host.run(_connect, node.addr)
            host.spawn(_stall, node.peer_id, 8)
        assert interop.wait_until(lambda: node.stats.inflight >= 16 and node.stats.refused_busy + node.stats.evicted >= 8, 20), (
            node.stats
        )
        good.run(_connect, node.addr)
        evicted_before = node.stats.evicted
        for n in range(3):
            now = int(time.time())
            frame = _native.encode_signed_request(
                good.key, MODEL, f"still served {n}", None, None, None, node.peer_id, str(INBOUND_PRICE_WEI),
                str(OUTBOUND_PRICE_WEI), 1, now + 300, now,
            )  # fmt: skip
            decoded = _native.decode_response(good.run(_ask, node.peer_id, frame))
            assert decoded.error is None and decoded.signature_valid and decoded.content == f"echo: still served {n}"
        assert node.stats.evicted >= evicted_before + 1, node.stats  # the first answer took a stalled slot
        assert node.stats.read_timeouts == 0, node.stats  # nothing waited for the read timeout
