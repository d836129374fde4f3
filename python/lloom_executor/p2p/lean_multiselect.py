"""Inbound multistream-select in one read and one write, for streams on our Yamux.

py-libp2p 0.8.1's responder (`Multiselect.negotiate`) writes its header, then reads the
initiator's lines through `read_delim`, which decodes each varint a byte at a time: every
byte is a `NetStream.read` down to `Yamux.read_stream` (locks, checkpoints, formatted debug
strings), and every reply is its own Yamux frame. py-spy put negotiation at about a tenth
of the P2P thread's samples per request stream (benches/bench_e2e.py (b)).

`fast_negotiate` reads what the stream has in one call, answers every complete line at once
in one write (our header, then each reply), and hands back what it read past the selected
protocol's line by putting it back at the front of the stream's Yamux receive buffer, where
the protocol handler reads it as if never taken. Before it would wait for more input it
first sends the replies so far, so an initiator that waits for our header (or for "na")
before its next line is never stalled. The bytes on the wire are the same lines as
py-libp2p's, in the same order; only their grouping into frames differs, and our header goes
out once the initiator's has arrived (as rust-libp2p's listener does; every initiator --
go, rust, js, py -- sends its header first without waiting for ours). Streams on any
other muxer (Mplex), and the multistream `ls` command, keep py-libp2p's negotiation.

A replacement for one method of one `Multiselect` instance (the host's), documented so it
could go upstream; `install(host)` applies it.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.custom_types import StreamHandlerFn, TProtocol
from libp2p.network.connection.exceptions import RawConnError
from libp2p.protocol_muxer.exceptions import MultiselectError
from libp2p.protocol_muxer.multiselect import (
    DEFAULT_NEGOTIATE_TIMEOUT,
    MULTISELECT_PROTOCOL_ID,
    PROTOCOL_NOT_FOUND_MSG,
    Multiselect,
)
from libp2p.utils.varint import decode_varint_with_size, encode_delim

from .lean_yamux import CoalescingYamux

log = logging.getLogger(__name__)

# multistream-select's own limit on one message (go-multistream: 64 KiB); a peer that sends
# more before naming a protocol is not negotiating.
MAX_NEGOTIATION_BYTES = 64 * 1024
READ_SIZE = 64 * 1024
_HEADER_LINE = MULTISELECT_PROTOCOL_ID.encode() + b"\n"


class _Negotiation:
    """The lines received so far on one stream and the replies not yet sent."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.received = bytearray()
        self.replies: list[bytes] = []

    def next_line(self) -> bytes | None:
        """Cut one complete `<uvarint length><line>\\n` message, or None if it is not all here."""
        data = self.received
        try:
            length, size = decode_varint_with_size(bytes(data[:10]))  # 10 bytes hold any uvarint
        except ValueError as exc:
            raise MultiselectError("multistream length prefix too long") from exc
        if size == 0 or data[size - 1] & 0x80:  # the length itself is not all here yet
            return None
        end = size + length
        if len(data) < end:
            return None
        line = bytes(data[size:end])
        del data[:end]
        if not line.endswith(b"\n"):
            raise MultiselectError("multistream message without its newline")
        return line[:-1]

    async def read_more(self) -> None:
        """Send the replies so far (the peer may wait for them), then wait for more input."""
        await self.flush()
        if len(self.received) >= MAX_NEGOTIATION_BYTES:
            raise MultiselectError("multistream negotiation too long")
        try:
            chunk = await self.stream.read(READ_SIZE)
        except Exception as exc:  # EOF, reset, connection gone: a failed negotiation
            raise MultiselectError(f"stream ended during negotiation: {exc!r}") from exc
        if not chunk:
            raise MultiselectError("stream ended during negotiation")
        self.received += chunk

    async def line(self) -> bytes:
        while (line := self.next_line()) is None:
            await self.read_more()
        return line

    async def flush(self) -> None:
        if self.replies:
            data = b"".join(self.replies)
            self.replies.clear()
            try:
                await self.stream.write(data)
            except Exception as exc:
                raise MultiselectError(f"stream write failed during negotiation: {exc!r}") from exc


def install(multiselect: Multiselect) -> None:
    """Replace `negotiate` on this one instance (the host's inbound protocol selector)."""
    original = multiselect.negotiate
    handlers = multiselect.handlers

    async def negotiate(
        communicator: Any, negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT
    ) -> tuple[TProtocol | None, StreamHandlerFn | None]:
        stream = getattr(communicator, "read_writer", None)
        muxed_stream = getattr(stream, "muxed_stream", None)
        conn = getattr(muxed_stream, "conn", None)
        if muxed_stream is None or not isinstance(conn, CoalescingYamux):
            return await original(communicator, negotiate_timeout)
        talk = _Negotiation(stream)
        try:
            with trio.fail_after(negotiate_timeout):
                if await talk.line() + b"\n" != _HEADER_LINE:
                    raise MultiselectError("multiselect protocol ID mismatch")
                talk.replies.append(encode_delim(_HEADER_LINE[:-1]))
                while True:
                    command = (await talk.line()).decode("utf-8", "replace")
                    protocol = TProtocol(command) if command else None
                    if command != "ls" and protocol in handlers:
                        talk.replies.append(encode_delim(command.encode()))
                        await talk.flush()
                        try:
                            conn.unread(muxed_stream.stream_id, talk.received)
                        except RawConnError as exc:  # the stream closed meanwhile
                            raise MultiselectError(str(exc)) from exc
                        return protocol, handlers[protocol]
                    if command == "ls":
                        listing = "\n".join(p for p in handlers if p is not None) + "\n"
                        talk.replies.append(encode_delim(listing.encode()))
                    else:
                        talk.replies.append(encode_delim(PROTOCOL_NOT_FOUND_MSG.encode()))
        except trio.TooSlowError:
            raise MultiselectError("handshake read timeout") from None

    multiselect.negotiate = negotiate  # type: ignore[method-assign]
