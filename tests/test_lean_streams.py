"""The lean py-libp2p patches (p2p/lean_yamux.py, lean_noise.py, lean_multiselect.py) on real hosts.

Why these tests: the patches change how py-libp2p groups frames, credits windows, reads Noise
messages and negotiates protocols, while promising that every peer sees the same bytes. So each
behaviour is driven through real hosts on loopback -- our `build_host` serving, a stock
py-libp2p client (its MultiselectClient negotiates line by line, waiting for every reply), bare
Yamux streams written by hand (an initiator that pipelines everything in one write) and the
rust peer -- and checked by what arrives plus counters and frames observed on the server's own
muxer. Noise's buffer edge cases (a message over several reads, EOF mid-message) are driven
over a real socket pair, where the reads can be paced exactly.
"""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IncompleteReadError
from libp2p.io.trio import TrioTCPStream
from libp2p.network.stream.exceptions import StreamError
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, MAX_MESSAGE_SIZE

import interop
from conftest import ExecutorFactory
from lean_streams_rig import (
    ECHO,
    HEADER,
    HOLD,
    Frame,
    ReadLog,
    Rig,
    connected_rig,
    eventually,
    line,
    observe_frames,
    pattern,
    read_all,
    reader_paused,
    split_messages,
    uvarint,
)
from lloom_executor.p2p.lean_multiselect import MAX_NEGOTIATION_BYTES
from lloom_executor.p2p.lean_noise import BufferedNoisePackets
from lloom_executor.p2p.lean_yamux import OUTBOX_HIGH_WATER, CoalescingYamux

CONCURRENT_STREAMS = 64


def run(scenario: Callable[[Rig], Awaitable[None]]) -> None:
    """Run one async scenario against a fresh connected rig, bounded so a hang fails."""

    async def main() -> None:
        with trio.fail_after(90):
            async with connected_rig() as rig:
                await scenario(rig)

    trio.run(main)


# -- 1. batched writes -----------------------------------------------------------------------------
def test_concurrent_streams_answered_in_order_with_fewer_sends_than_frames() -> None:
    """Many request streams on one connection at once: each answer is its own request byte for
    byte (written in several chunks, so frames of all streams interleave in the outbox), and
    the server sent fewer Noise messages than it queued frames -- the point of the flusher. The
    server's Noise reader cut more messages than it made reads (many per read) on the way."""

    async def scenario(rig: Rig) -> None:
        muxer = rig.server_muxer()
        packets = muxer.secured_conn.conn.read_writer  # type: ignore[attr-defined]
        assert isinstance(packets, BufferedNoisePackets), type(packets)
        reads = ReadLog(packets.read_write_closer)
        packets.read_write_closer = reads
        messages = 0
        cut_message = packets.read_msg

        async def counted_read_msg() -> bytes:
            nonlocal messages
            message = await cut_message()
            messages += 1
            return message

        packets.read_msg = counted_read_msg  # type: ignore[method-assign]
        frames_before, sends_before = muxer.frames_queued, muxer.sends
        payloads = [pattern(12_000, seed=i) for i in range(CONCURRENT_STREAMS)]
        answers: dict[int, bytes] = {}

        async def ask(index: int) -> None:
            answers[index] = await rig.echo(payloads[index], chunk=4096)

        async with trio.open_nursery() as nursery:
            for index in range(CONCURRENT_STREAMS):
                nursery.start_soon(ask, index)

        wrong = [i for i in range(CONCURRENT_STREAMS) if answers.get(i) != payloads[i]]
        assert not wrong, f"streams with a wrong answer: {wrong}"
        frames, sends = muxer.frames_queued - frames_before, muxer.sends - sends_before
        assert 0 < sends < frames, f"{sends} sends for {frames} frames"
        assert messages > len(reads.sizes) > 0, f"{messages} Noise messages from {len(reads.sizes)} reads"

    run(scenario)


def test_large_answers_wait_at_the_outbox_high_water_and_arrive_intact() -> None:
    """Answers of 1.25 MiB on eight streams while the client's socket reader is held (a slow
    client: the server's socket fills, its flusher blocks in send): the outbox passes
    OUTBOX_HIGH_WATER and stays within one frame per writer above it (writers wait instead of
    queueing without bound); once the client reads again every byte arrives, in order."""
    size, streams = 1280 * 1024, 8

    async def scenario(rig: Rig) -> None:
        muxer = rig.server_muxer()
        most_queued = 0
        queue_frame = muxer._write_frame

        async def observed(data: bytes) -> None:
            nonlocal most_queued
            most_queued = max(most_queued, muxer._outbox_bytes + len(data))
            await queue_frame(data)

        muxer._write_frame = observed  # type: ignore[method-assign]
        client_streams = []
        for _ in range(streams):
            stream = await rig.client.new_stream(rig.server.get_id(), [HOLD])
            await stream.write(b"send me a lot")
            await stream.close()
            client_streams.append(stream)
        held = [await rig.held.receive() for _ in range(streams)]
        payloads = [pattern(size, seed=i) for i in range(streams)]
        answers: dict[int, bytes] = {}

        async def answer(index: int) -> None:
            await held[index].write(payloads[index])
            await held[index].close()

        async def read(index: int) -> None:
            answers[index] = await read_all(client_streams[index])

        async with trio.open_nursery() as nursery:
            async with reader_paused(rig.client_tcp()):
                for index in range(streams):
                    nursery.start_soon(read, index)
                    nursery.start_soon(answer, index)
                reached = await eventually(lambda: most_queued > OUTBOX_HIGH_WATER, 20)
        assert reached, f"the outbox never passed its high water ({most_queued} bytes queued at most)"
        # past the high water each writer adds at most the frame it holds, then waits
        assert most_queued <= OUTBOX_HIGH_WATER + streams * (MAX_MESSAGE_SIZE + 12) + 4096, most_queued
        for index in range(streams):
            assert answers[index] == payloads[index], f"stream {index}: {len(answers[index])} bytes back of {size}"

    run(scenario)


@pytest.mark.parametrize("noticed_by", ["reader", "sender"])
def test_write_after_client_socket_is_gone_raises_and_connection_is_cleaned_up(noticed_by: str) -> None:
    """A client whose socket vanished (RST, no GO_AWAY) must not leave a server writer waiting
    forever on the outbox or a window: the write raises, and the connection leaves the swarm.
    "reader": the server's Yamux reader sees the RST first (py-libp2p's teardown). "sender":
    the server's reader is held, so only the flusher's failed send can notice; it must fail the
    writers and tear the connection down itself."""

    async def scenario(rig: Rig) -> None:
        muxer = rig.server_muxer()
        stream = await rig.client.new_stream(rig.server.get_id(), [HOLD])
        await stream.write(b"hold me")
        await stream.close()
        with trio.fail_after(10):
            held = await rig.held.receive()
        async with AsyncExitStack() as paused:
            if noticed_by == "sender":
                server_holds_its_reads = await paused.enter_async_context(reader_paused(rig.server_tcp()))
                await rig.client_muxer().open_stream()  # a SYN: the server's read in progress returns
                await server_holds_its_reads.wait()
            rig.kill_client_socket()
            failure: BaseException | None = None
            with trio.fail_after(20):  # a writer stuck on the outbox or a window fails here
                try:
                    while True:
                        await held.write(pattern(16 * 1024))
                except Exception as exc:
                    failure = exc
            assert isinstance(failure, StreamError | MuxedStreamError | OSError | ConnectionError), repr(failure)
            if noticed_by == "sender":
                assert muxer._send_failure is not None, "the failure was not the flusher's"
        assert await eventually(lambda: not rig.server_connected()), "the dead connection stayed in the swarm"
        assert muxer.event_shutting_down.is_set()

    run(scenario)


# -- 2. window credit --------------------------------------------------------------------------------
def credits(frames: list[Frame]) -> list[Frame]:
    return [frame for frame in frames if frame.is_credit]


def test_small_request_costs_no_window_update_and_large_upload_gets_credit() -> None:
    """py-libp2p 0.8.1 sent a WINDOW_UPDATE after every read; with credit at half the window
    a request under 128 KiB costs none, while a 1 MiB upload (four windows) still completes
    because credit is sent once half the window is consumed."""
    small = DEFAULT_WINDOW_SIZE // 2 - 8 * 1024
    assert small < 128 * 1024

    async def scenario(rig: Rig) -> None:
        frames = observe_frames(rig.server_muxer())
        assert await rig.echo(pattern(small)) == pattern(small)
        assert await rig.echo(b"tiny") == b"tiny"
        assert not credits(frames), f"credit for small requests: {credits(frames)}"
        upload = pattern(1024 * 1024, seed=7)
        assert await rig.echo(upload) == upload
        granted = credits(frames)
        assert granted, "a 1 MiB upload completed without any credit from the server?"
        assert all(frame.length >= DEFAULT_WINDOW_SIZE // 2 for frame in granted), granted

    run(scenario)


# -- 3. buffered Noise ----------------------------------------------------------------------------------
def noise_message(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


NoiseScript = Callable[[BufferedNoisePackets, ReadLog, trio.SocketStream], Awaitable[None]]


async def socket_pair_scenario(script: NoiseScript) -> None:
    """A BufferedNoisePackets reading one end of a real socket pair; `script(packets, reads, peer)`."""
    left, right = trio.socket.socketpair()
    reads = ReadLog(TrioTCPStream(trio.SocketStream(left)))
    peer = trio.SocketStream(right)
    with trio.fail_after(10):
        try:
            await script(BufferedNoisePackets(reads), reads, peer)
        finally:
            await peer.aclose()
            await reads.close()


def test_noise_messages_split_across_reads_are_reassembled() -> None:
    """A message whose length prefix, and another whose body, arrive over several reads (paced:
    each piece is sent only after the reader's previous read returned) decode intact."""
    first, second = pattern(5000, seed=1), pattern(3000, seed=2)
    wire = noise_message(first) + noise_message(second)
    pieces = [wire[:1], wire[1:1000], wire[1000:6000], wire[6000:]]

    async def script(packets: BufferedNoisePackets, reads: ReadLog, peer: trio.SocketStream) -> None:
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await packets.read_msg())
            got.append(await packets.read_msg())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for count, piece in enumerate(pieces):
                await peer.send_all(piece)
                await reads.wait_reads(count + 1)
        assert got == [first, second]
        assert reads.sizes == [len(piece) for piece in pieces]

    trio.run(socket_pair_scenario, script)


def test_many_noise_messages_in_one_read() -> None:
    """Fifty messages that arrived together cost one read, not two per message."""
    bodies = [pattern(100 + i, seed=i) for i in range(50)]

    async def script(packets: BufferedNoisePackets, reads: ReadLog, peer: trio.SocketStream) -> None:
        await peer.send_all(b"".join(noise_message(body) for body in bodies))
        assert [await packets.read_msg() for _ in bodies] == bodies
        assert len(reads.sizes) == 1, reads.sizes

    trio.run(socket_pair_scenario, script)


@pytest.mark.parametrize("sent", [1, 2, 12], ids=["half-a-prefix", "prefix-only", "part-of-a-body"])
def test_noise_eof_mid_message_is_an_incomplete_read(sent: int) -> None:
    """EOF inside a message is a truncated connection: IncompleteReadError with what was received."""

    async def script(packets: BufferedNoisePackets, reads: ReadLog, peer: trio.SocketStream) -> None:
        await peer.send_all(noise_message(pattern(100))[:sent])
        await peer.aclose()
        with pytest.raises(IncompleteReadError) as caught:
            await packets.read_msg()
        assert caught.value.received_bytes == sent > 0

    trio.run(socket_pair_scenario, script)


def test_noise_eof_at_a_message_boundary_is_a_clean_close() -> None:
    """EOF right after a whole message: the message is delivered, then received_bytes == 0,
    which py-libp2p's Yamux reports as a clean close."""

    async def script(packets: BufferedNoisePackets, reads: ReadLog, peer: trio.SocketStream) -> None:
        await peer.send_all(noise_message(b"last words"))
        await peer.aclose()
        assert await packets.read_msg() == b"last words"
        with pytest.raises(IncompleteReadError) as caught:
            await packets.read_msg()
        assert caught.value.received_bytes == 0

    trio.run(socket_pair_scenario, script)


# -- 4. multistream-select --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 20_000, 3 * MAX_MESSAGE_SIZE], ids=["no-data", "one-frame", "many-frames"])
def test_pipelined_header_protocol_and_request_in_one_write(size: int) -> None:
    """An initiator that sends header, protocol and request data together (multistream V1Lazy):
    what the negotiation read past the protocol line is handed to the handler, not lost."""
    payload = pattern(size, seed=3)

    async def scenario(rig: Rig) -> None:
        got = await rig.raw(HEADER + line(ECHO) + payload)
        assert not got.ended_by_reset
        assert got.received == HEADER + line(ECHO) + payload

    run(scenario)


def test_unknown_protocol_first_gets_na_then_the_right_one_succeeds() -> None:
    """Pipelined (one write) and line by line (py-libp2p's client waits for our header and
    for "na" before each next line): both end on the echo protocol with their answer."""

    async def scenario(rig: Rig) -> None:
        got = await rig.raw(HEADER + line("/no/such/1.0.0") + line(ECHO) + b"after na")
        assert (got.ended_by_reset, got.received) == (False, HEADER + line("na") + line(ECHO) + b"after na")
        unknown = TProtocol("/lean-test/nothing/1.0.0")
        assert await rig.echo(b"line by line", protocols=[unknown, ECHO]) == b"line by line"

    run(scenario)


def test_ls_lists_the_protocols() -> None:
    """`ls` is answered with the handlers' protocols and negotiation goes on after it: pipelined
    (ls, then a protocol and its request in the same write) and through py-libp2p's client."""

    async def scenario(rig: Rig) -> None:
        got = await rig.raw(HEADER + line("ls") + line(ECHO) + b"after ls")
        assert not got.ended_by_reset and got.received.endswith(b"after ls"), got
        messages = split_messages(got.received.removesuffix(b"after ls"))
        assert len(messages) == 3 and messages[0] == b"/multistream/1.0.0\n" and messages[2] == f"{ECHO}\n".encode(), messages
        assert {ECHO, HOLD} <= set(messages[1].decode().split()), messages
        stream = await rig.client_muxer().open_stream()
        listed = await MultiselectClient().query_multistream_command(MultiselectCommunicator(stream), "ls")
        assert {ECHO, HOLD} <= set(listed), listed
        await stream.reset()

    run(scenario)


@pytest.mark.parametrize(
    "garbage",
    [
        HEADER + uvarint(100_000) + b"x" * (MAX_NEGOTIATION_BYTES + 4096),
        HEADER + b"\xff" * 10,
        HEADER + b"\x05hello",
    ],
    ids=["over-64-KiB", "varint-too-long", "line-without-newline"],
)
def test_broken_negotiation_resets_the_stream_and_the_node_serves_on(garbage: bytes) -> None:
    """A negotiation that is too long or malformed ends in a reset of that stream only (the
    initiator keeps its write half open, so it is not EOF that ends it); the connection and
    other streams on it are served as before."""

    async def scenario(rig: Rig) -> None:
        frames = observe_frames(rig.server_muxer())
        got = await rig.raw(garbage, close=False)
        assert got.received in (b"", HEADER), got
        assert [frame for frame in frames if frame.stream_id == got.stream_id and frame.is_reset], frames
        assert rig.server_connected()
        assert await rig.echo(b"still served") == b"still served"

    run(scenario)


def test_rust_peer_pipelined_concurrent_requests(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    """rust-libp2p's dialer sends its header and protocol line together and 48 streams at once
    on one connection: every request is served, with fewer Noise sends than frames queued."""
    node = executor_node()
    count = 48
    args = interop.client_args(node.addr, "--count", str(count), "--concurrency", str(count), "--listen-gossip-secs", "60")
    proc = subprocess.Popen([str(interop_peer), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines: list[dict[str, Any]] = []
        for raw in proc.stdout:  # ends at the summary line, or at EOF if the peer gave up
            lines.extend(interop.parse_lines(raw)[0])
            if lines and lines[-1].get("event") == "summary":
                break
        counters = node.call(_muxer_counters)  # the rust peer still holds its connection here
    finally:
        proc.kill()
        proc.wait(10)
    summary = next((entry for entry in lines if entry.get("event") == "summary"), None)
    assert summary is not None and (summary["ok"], summary["failed"]) == (count, 0), lines[-10:]
    assert len(counters) == 1, counters
    frames, sends = counters[0]
    assert 0 < sends < frames, f"{sends} sends for {frames} frames"


async def _muxer_counters(rt: Any) -> list[tuple[int, int]]:
    """(frames queued, Noise sends) of every CoalescingYamux connection of the node."""
    return [
        (conn.muxed_conn.frames_queued, conn.muxed_conn.sends)
        for conns in rt.host.get_network().get_connections_map().values()
        for conn in conns
        if isinstance(conn.muxed_conn, CoalescingYamux)
    ]
