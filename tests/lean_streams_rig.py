"""Rig for tests/test_lean_streams.py: a server host from our `build_host` and a stock py-libp2p
client host, both in one trio run on loopback, plus observers for what the lean_* patches do.

Why one trio run: every step (a stream opened, a socket killed, a frame queued) can then be
awaited directly, so the tests synchronise on events and polled conditions, never on sleeps.
Why a stock client: py-libp2p's own Yamux, Noise and MultiselectClient on the other side show
that the patched server still speaks the unchanged wire (the client shares only the process-wide
window policy of lean_yamux.install()). The observers wrap methods of one instance and call
through: they record, they never replace what our code does.
"""

from __future__ import annotations

import socket
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import libp2p
import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.trio import TrioTCPStream
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamReset
from libp2p.stream_muxer.yamux.yamux import FLAG_RST, TYPE_WINDOW_UPDATE, YAMUX_HEADER_FORMAT, Yamux
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.utils.varint import encode_delim

from lloom_executor import _native
from lloom_executor.p2p.host import build_host
from lloom_executor.p2p.lean_yamux import CoalescingYamux
from lloom_executor.p2p.streams import read_to_eof

ECHO = TProtocol("/lean-test/echo/1.0.0")  # answers with the request, byte for byte
HOLD = TProtocol("/lean-test/hold/1.0.0")  # hands the stream to the test after the request
MAX_ECHO_BYTES = 8 * 1024 * 1024
HEADER = encode_delim(b"/multistream/1.0.0")


def line(text: str) -> bytes:
    """One multistream-select message as it goes on the wire."""
    return encode_delim(text.encode())


def uvarint(value: int) -> bytes:
    """An unsigned LEB128 varint (multistream's length prefix)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that encode their own position: a lost, doubled or reordered chunk changes them."""
    words = (size + 3) // 4
    return b"".join(((seed << 24) + i).to_bytes(4, "big") for i in range(words))[:size]


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition inside trio instead of sleeping a fixed time; True once it holds."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return True
    return False


async def read_all(stream: INetStream) -> bytes:
    """A py-libp2p stream read to its end (0.8.1 raises StreamEOF there)."""
    received = bytearray()
    while True:
        try:
            data = await stream.read(65536)
        except StreamEOF:
            return bytes(received)
        if not data:
            return bytes(received)
        received += data


@dataclass
class Frame:
    """One Yamux frame as a muxer queued it."""

    type: int
    flags: int
    stream_id: int
    length: int

    @property
    def is_reset(self) -> bool:
        return bool(self.flags & FLAG_RST)

    @property
    def is_credit(self) -> bool:
        """A WINDOW_UPDATE that grants bytes (SYN/ACK/FIN/RST ones carry 0)."""
        return self.type == TYPE_WINDOW_UPDATE and self.length > 0


def observe_frames(muxer: CoalescingYamux) -> list[Frame]:
    """Record every frame `muxer` queues from now on (its own `_write_frame` still runs)."""
    frames: list[Frame] = []
    queue_frame = muxer._write_frame

    async def observed(data: bytes) -> None:
        _, typ, flags, stream_id, length = struct.unpack(YAMUX_HEADER_FORMAT, data[:12])
        frames.append(Frame(typ, flags, stream_id, length))
        await queue_frame(data)

    muxer._write_frame = observed  # type: ignore[method-assign]
    return frames


@dataclass
class ReadLog(ReadWriteCloser):
    """A ReadWriteCloser that passes through and records the size of every read's result."""

    inner: ReadWriteCloser
    sizes: list[int] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    async def read(self, n: int | None = None) -> bytes:
        data = await self.inner.read(n)
        self.sizes.append(len(data))
        self._changed.set()
        self._changed = trio.Event()
        return data

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def close(self) -> None:
        await self.inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return None

    async def wait_reads(self, count: int) -> None:
        """Until `count` reads have returned (a writer paces itself to the reader with this)."""
        while len(self.sizes) < count:
            await self._changed.wait()


@dataclass
class RawExchange:
    """What an initiator got back on a stream it drove by hand, and how the stream ended."""

    stream_id: int
    received: bytes
    ended_by_reset: bool  # py-libp2p reports a reset as EOF once the stream is gone: see frames


@dataclass
class Rig:
    """Our server host and a stock py-libp2p client, connected once."""

    server: IHost
    client: IHost
    held: trio.MemoryReceiveChannel[INetStream]
    release: trio.Event

    def server_muxer(self) -> CoalescingYamux:
        """The server's muxer of its one connection to the client (what lean_yamux built)."""
        conns = self.server.get_network().get_connections(self.client.get_id())
        assert len(conns) == 1, conns
        muxer = conns[0].muxed_conn
        assert isinstance(muxer, CoalescingYamux), type(muxer)
        return muxer

    def client_muxer(self) -> Yamux:
        conns = self.client.get_network().get_connections(self.server.get_id())
        assert len(conns) == 1, conns
        muxer = conns[0].muxed_conn
        assert isinstance(muxer, Yamux) and not isinstance(muxer, CoalescingYamux), type(muxer)
        return muxer

    def server_connected(self) -> bool:
        return bool(self.server.get_network().get_connections(self.client.get_id()))

    async def echo(self, payload: bytes, chunk: int = 65536, protocols: list[TProtocol] | None = None) -> bytes:
        """One request through py-libp2p's client (line-by-line negotiation): write, close, read."""
        stream = await self.client.new_stream(self.server.get_id(), protocols or [ECHO])
        for start in range(0, len(payload), chunk):
            await stream.write(payload[start : start + chunk])
        await stream.close()
        return await read_all(stream)

    async def raw(self, data: bytes, *, close: bool = True) -> RawExchange:
        """Write `data` on a bare Yamux stream in one write (no negotiation of ours), then read to
        EOF or reset: the initiator decides exactly which bytes arrive together."""
        stream = await self.client_muxer().open_stream()
        await stream.write(data)
        if close:
            await stream.close()
        received = bytearray()
        while True:
            try:
                received += await stream.read(65536)
            except MuxedStreamEOF:
                return RawExchange(stream.stream_id, bytes(received), ended_by_reset=False)
            except MuxedStreamReset:
                return RawExchange(stream.stream_id, bytes(received), ended_by_reset=True)

    def client_tcp(self) -> TrioTCPStream:
        return tcp_under(self.client_muxer())

    def server_tcp(self) -> TrioTCPStream:
        return tcp_under(self.server_muxer())

    def kill_client_socket(self) -> None:
        """Close the client's TCP socket with an RST (SO_LINGER 0): gone, no FIN, no GO_AWAY."""
        sock = self.client_tcp().stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def tcp_under(muxer: Yamux) -> TrioTCPStream:
    """A muxer's TCP stream under Noise (py-libp2p 0.8.1: session.conn.read_writer...)."""
    raw: Any = muxer.secured_conn.conn.read_writer.read_write_closer  # type: ignore[attr-defined]
    assert isinstance(raw.stream, TrioTCPStream), type(raw.stream)
    return raw.stream


@asynccontextmanager
async def reader_paused(tcp: TrioTCPStream) -> AsyncIterator[trio.Event]:
    """Hold a connection's read lock, so its Yamux reader stops after the read in progress: a
    peer that reads slowly or not at all. Yields once we wait in line for the lock; the event
    is set when we hold it (the reader's current read must return first: data must arrive)."""
    acquired, resume = trio.Event(), trio.Event()

    async def hold() -> None:
        async with tcp.read_lock:
            acquired.set()
            await resume.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        assert await eventually(lambda: tcp.read_lock.statistics().tasks_waiting > 0), "the reader is not reading"
        try:
            yield acquired
        finally:
            resume.set()


def stock_client_host() -> IHost:
    """py-libp2p as it ships: Noise and Yamux, no patch of ours on the instance."""
    key_pair = create_new_key_pair()
    noise = NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)
    return libp2p.new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt=OrderedDict([(TProtocol(YAMUX_PROTOCOL_ID), Yamux)]),
    )


@asynccontextmanager
async def connected_rig() -> AsyncIterator[Rig]:
    """Both hosts listening on loopback, the client connected, the server's side registered."""
    server = build_host(_native.PrivateKey.generate())
    client = stock_client_host()
    send_held, held = trio.open_memory_channel[INetStream](16)
    release = trio.Event()

    async def echo(stream: INetStream) -> None:
        await stream.write(await read_to_eof(stream, MAX_ECHO_BYTES))
        await stream.close()

    async def hold(stream: INetStream) -> None:
        await read_to_eof(stream, MAX_ECHO_BYTES)
        await send_held.send(stream)
        await release.wait()

    server.set_stream_handler(ECHO, echo)
    server.set_stream_handler(HOLD, hold)
    loopback = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with server.run(listen_addrs=loopback), client.run(listen_addrs=loopback):
        with trio.fail_after(10):
            await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
        rig = Rig(server, client, held, release)
        assert await eventually(rig.server_connected), "the server never registered the connection"
        try:
            yield rig
        finally:
            release.set()


def split_messages(data: bytes) -> list[bytes]:
    """Cut varint-prefixed multistream messages (each with its newline) out of `data`."""
    messages: list[bytes] = []
    while data:
        length = shift = index = 0
        while True:
            byte = data[index]
            length |= (byte & 0x7F) << shift
            index += 1
            if byte < 0x80:
                break
            shift += 7
        messages.append(data[index : index + length])
        data = data[index + length :]
    return messages
