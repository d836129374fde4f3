"""`/lloom/llm/1.0.0` on the trio side: one request per stream, read to EOF, answer, close.

The wire format is the reference codec's (docs/PROTOCOL.md §3): no length prefix,
so py-libp2p's own request_response module (varint framed) cannot be used.
Two py-libp2p 0.8.1 facts shape this handler:
- `read()` raises `StreamEOF` at end of stream instead of returning b"";
- an exception escaping a stream handler closes the whole *connection*
  (every other request on it fails), so nothing may escape here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol

from ..bridge import TrioBridge
from .streams import FrameTooLarge, read_to_eof, reset_quietly

LLM_PROTOCOL = TProtocol("/lloom/llm/1.0.0")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestContext:
    """What the transport knows about a request, for admission on the asyncio side."""

    peer_id: str
    remote_ip: str | None
    frame_size: int
    received_at: float  # time.monotonic() when the frame was complete


RequestHandler = Callable[[bytes, RequestContext], Coroutine[Any, Any, bytes | None]]


@dataclass
class StreamStats:
    """Counters behind metrics and the leak tests: `inflight` returns to 0 when idle."""

    inflight: int = 0
    served: int = 0
    too_large: int = 0
    read_timeouts: int = 0
    refused_busy: int = 0
    failed: int = 0
    evicted: int = 0  # stalled reads cut to make room for a peer holding fewer streams
    abandoned: int = 0  # the connection ended while the request was being served: its work was cancelled


@dataclass(eq=False)
class _Read:
    """A stream still reading its request: the only kind that may be evicted."""

    scope: trio.CancelScope
    evicted: bool = False


class LlmStreamHandler:
    """Reads a frame, hands it across the bridge to `handle`, writes the answer."""

    def __init__(
        self,
        bridge: TrioBridge,
        handle: RequestHandler,
        *,
        max_request_bytes: int,
        read_timeout: float,
        max_inflight: int,
        max_inflight_per_peer: int | None = None,
    ) -> None:
        self._bridge = bridge
        self._handle = handle
        self._limit = max_request_bytes
        self._read_timeout = read_timeout
        self._max_inflight = max_inflight
        self._max_per_peer = max_inflight_per_peer or max_inflight
        self._per_peer: dict[str, int] = {}
        self._reading: dict[str, dict[_Read, None]] = {}  # per peer, oldest first
        self.stats = StreamStats()

    async def __call__(self, stream: INetStream) -> None:
        """Admits the stream under both limits: one peer cannot take every slot, and many peers
        together cannot lock a newcomer out (see `_make_room`)."""
        stats = self.stats
        peer = str(stream.muxed_conn.peer_id)
        held = self._per_peer.get(peer, 0)
        if held >= self._max_per_peer or (stats.inflight >= self._max_inflight and not self._make_room(held)):
            stats.refused_busy += 1
            await reset_quietly(stream)
            return
        stats.inflight += 1
        self._per_peer[peer] = held + 1
        try:
            await self._serve(stream)
        except trio.Cancelled:
            raise
        except Exception as exc:  # never let it reach py-libp2p: it would drop the connection
            stats.failed += 1
            log.warning("request stream failed: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            await reset_quietly(stream)
        finally:
            stats.inflight -= 1
            left = self._per_peer[peer] - 1
            if left:
                self._per_peer[peer] = left
            else:
                del self._per_peer[peer]

    def _make_room(self, held: int) -> bool:
        """All slots taken: cut the oldest stalled read of the peer that has the most streams
        still reading, if that is more than the newcomer's peer would then hold (a fair share).

        Why: the per-peer cap alone does not stop many peers (PeerIds are free) from filling
        every slot with streams that never finish their request, and a legitimate client
        would then be refused until they time out. Streams past their read (at the backend)
        are never cut: their slots are bounded by the backend's own limits and timeouts."""
        busiest = max(self._reading.values(), key=len, default=None)
        if busiest is None or len(busiest) <= held + 1:
            return False
        victim = next(iter(busiest))
        del busiest[victim]  # it cannot be picked twice
        victim.evicted = True
        victim.scope.cancel()
        self.stats.evicted += 1
        return True

    async def _serve(self, stream: INetStream) -> None:
        frame = b""
        peer = str(stream.muxed_conn.peer_id)
        with trio.move_on_after(self._read_timeout) as scope:
            read = _Read(scope)
            reading = self._reading.setdefault(peer, {})
            reading[read] = None
            try:
                frame = await read_to_eof(stream, self._limit)
            except FrameTooLarge:
                self.stats.too_large += 1
                await reset_quietly(stream)
                return
            finally:
                reading.pop(read, None)
                if not reading and self._reading.get(peer) is reading:
                    del self._reading[peer]
        if scope.cancelled_caught:
            if not read.evicted:
                self.stats.read_timeouts += 1
            await reset_quietly(stream)
            return
        remote = stream.get_remote_address()
        ctx = RequestContext(str(stream.muxed_conn.peer_id), remote[0] if remote else None, len(frame), time.monotonic())
        # The peer resetting this stream, or its connection ending, cancels the work done for it
        # (the backend call with it): nobody could receive the answer
        # (lean_yamux.CoalescingYamux.when_stream_gone).
        with trio.CancelScope() as serving:
            when_gone = getattr(stream.muxed_conn, "when_stream_gone", None)
            stream_id = getattr(getattr(stream, "muxed_stream", None), "stream_id", None)
            stop_watching = when_gone(stream_id, serving.cancel) if when_gone is not None and stream_id is not None else None
            try:
                answer = await self._bridge.call_asyncio(self._handle, frame, ctx)
            finally:
                if stop_watching is not None:
                    stop_watching()
        if serving.cancelled_caught:
            self.stats.abandoned += 1
            return
        if answer is None:  # the pipeline chose a clean refusal without an answer
            await reset_quietly(stream)
            return
        await stream.write(answer)
        await stream.close()
        self.stats.served += 1
