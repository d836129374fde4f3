"""Noise whose transport messages are read from a receive buffer: one `recv` for many messages.

py-libp2p 0.8.1 reads every Noise transport message with two exact reads -- its 2-byte length,
then its body -- each a `recv()` on the socket (and a trio checkpoint, and, for a short read,
more). Under load from the rust peer that was 6.3 `recvfrom` calls per request (strace -c,
benches/bench_e2e.py (b)), while a peer's messages mostly arrive several to a TCP segment.
`BufferedNoiseTransport` reads up to `RECV_SIZE` bytes at a time into a buffer and cuts the
messages out of it; the handshake (which reads exactly, before the buffer exists) and the
bytes on the wire are unchanged. End of stream mid-message raises py-libp2p's
`IncompleteReadError`, with `received_bytes = 0` at a message boundary (a clean close, as
py-libp2p's Yamux reports it).

A documented subclass that could go upstream as it is (`NoisePacketReadWriter.read_msg`).
"""

from __future__ import annotations

from libp2p.abc import IRawConnection, ISecureConn
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import IncompleteReadError
from libp2p.peer.id import ID
from libp2p.security.noise.io import SIZE_NOISE_MESSAGE_LEN, NoisePacketReadWriter
from libp2p.security.noise.transport import Transport as NoiseTransport

# One read takes what the socket has, up to this: a few full Noise messages (65,537 bytes each
# at most), so large transfers also need few reads.
RECV_SIZE = 256 * 1024


class BufferedNoisePackets(NoisePacketReadWriter):
    """Length-prefixed Noise messages cut out of a receive buffer (writes unchanged)."""

    def __init__(self, read_write_closer: ReadWriteCloser) -> None:
        super().__init__(read_write_closer)
        self._received = bytearray()

    async def read_msg(self) -> bytes:
        received = self._received
        while True:
            have = len(received)
            if have >= SIZE_NOISE_MESSAGE_LEN:
                end = SIZE_NOISE_MESSAGE_LEN + int.from_bytes(received[:SIZE_NOISE_MESSAGE_LEN], "big")
                if have >= end:
                    message = bytes(received[SIZE_NOISE_MESSAGE_LEN:end])
                    del received[:end]
                    return message
            chunk = await self.read_write_closer.read(RECV_SIZE)
            if not chunk:
                raise IncompleteReadError(
                    f"connection closed with {have} bytes of a Noise message received",
                    expected_bytes=max(have, SIZE_NOISE_MESSAGE_LEN),
                    received_bytes=have,
                )
            received += chunk


class BufferedNoiseTransport(NoiseTransport):
    """py-libp2p's Noise transport whose sessions read through `BufferedNoisePackets`."""

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return _buffered(await super().secure_inbound(conn), conn)

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return _buffered(await super().secure_outbound(conn, peer_id), conn)


def _buffered(session: ISecureConn, raw: IRawConnection) -> ISecureConn:
    """Swap the session's packet reader (py-libp2p 0.8.1: `SecureSession.conn.read_writer`)."""
    transport = getattr(session, "conn", None)
    if transport is not None and isinstance(getattr(transport, "read_writer", None), NoisePacketReadWriter):
        transport.read_writer = BufferedNoisePackets(raw)
    return session
