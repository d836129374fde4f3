"""Stream helpers shared by the executor and the client (py-libp2p 0.8.1 semantics).

`read()` raises `StreamEOF` at the end of a stream instead of returning b"",
and a reset of an already closed stream raises: both are handled here once.
"""

from __future__ import annotations

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF

READ_CHUNK = 65536


class FrameTooLarge(Exception):
    pass


async def read_to_eof(stream: INetStream, limit: int) -> bytes:
    """The whole message, or `FrameTooLarge` as soon as it passes `limit` bytes."""
    buf = bytearray()
    while True:
        try:
            chunk = await stream.read(READ_CHUNK)
        except StreamEOF:
            break
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise FrameTooLarge(len(buf))
    return bytes(buf)


async def reset_quietly(stream: INetStream | None, timeout: float = 5.0) -> None:
    """Reset a stream that may already be closed or reset by the peer; shielded, bounded."""
    if stream is None:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(timeout):
        try:
            await stream.reset()
        except Exception:
            pass
