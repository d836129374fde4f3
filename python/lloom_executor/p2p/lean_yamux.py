"""Yamux with batched writes and go-yamux window credit: fewer sends, fewer frames per request.

Measured with py-spy on a node under load from the rust peer (32 requests in flight on one
connection, benches/bench_e2e.py): in py-libp2p 0.8.1 every Yamux frame is its own Noise
message and its own `send()` -- the multistream-select replies, the answer, the FIN, and a
WINDOW_UPDATE after every read, about five per request -- and those sends were the single
largest cost of the process (~28% of its samples in trio's socket send, ~20% under
`Yamux._write_frame`). Two changes, both invisible on the wire (frames and their order are
unchanged, a peer sees the same bytes, in fewer TCP segments):

- **Batched writes** (`CoalescingYamux`): `_write_frame` appends the frame to an outbox and
  returns; one flusher task per connection (started with the muxer's reader) sends
  everything queued since its last send as one Noise message (chunked at Noise's
  65,519-byte limit as before) in one `send()`.
  Frames written in the same scheduler tick -- by one stream or by many -- leave together.
  A writer waits only when the outbox holds more than `OUTBOX_HIGH_WATER` bytes
  (backpressure). A send failure is kept and raised to every later writer, and the
  connection is torn down as py-libp2p does on a read failure. Before the muxer's reader
  runs (or once it is closing), writes go out directly, after whatever is queued.
- **Window credit at half the window** (`credit_window_at_half`): py-libp2p 0.8.1 credits
  the sender after every read smaller than half the window (its "partial slack" path),
  so each request stream costs one WINDOW_UPDATE frame. go-yamux and rust-yamux send
  credit only once half the window is consumed; this does the same (and keeps
  py-libp2p's auto-tuning growth when it does send). A request under 128 KiB never
  needs a WINDOW_UPDATE.

Both could go upstream as they are. `install()` applies the window policy to py-libp2p's
`YamuxStream` class (streams are created inside `Yamux.handle_incoming`, which names the
class directly) and is idempotent; `use_coalescing_yamux(swarm)` makes one swarm build
`CoalescingYamux` (py-libp2p 0.8.1's `MuxerMultistream.new_conn` builds `Yamux` by name for
the Yamux protocol id, whatever class the muxer options give). tests/test_lean_streams.py
covers ordering, backpressure, failure, close and the frame counts; tests/test_interop_rust.py
the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import ISecureConn
from libp2p.network.connection.exceptions import RawConnError
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import GO_AWAY_NORMAL, PROTOCOL_ID, Yamux, YamuxStream

log = logging.getLogger(__name__)

# A writer waits for the flusher once this many bytes are queued: more than a few full
# Yamux data frames (64 KiB each), so concurrent streams rarely wait, yet bounded.
OUTBOX_HIGH_WATER = 1024 * 1024


class CoalescingYamux(Yamux):
    """py-libp2p's Yamux whose frames are queued and sent by one flusher task per connection."""

    def __init__(
        self,
        secured_conn: ISecureConn,
        peer_id: ID,
        is_initiator: bool | None = None,
        on_close: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        super().__init__(secured_conn, peer_id, is_initiator, on_close)
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._outbox_ready = trio.Event()
        self._outbox_drained = trio.Event()
        self._flusher_started = False
        self._direct_writes = False
        self._send_failure: BaseException | None = None
        self._on_gone: set[Callable[[], None]] = set()
        self._on_reset: dict[int, Callable[[], None]] = {}
        self.frames_queued = 0  # frames handed to _write_frame
        self.sends = 0  # Noise writes (one per batch), for tests and diagnostics

    async def _write_frame(self, data: bytes) -> None:
        """Queue one frame; the flusher sends it with whatever else is queued this tick."""
        self._raise_if_failed()
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        self.frames_queued += 1
        if self._direct_writes or not self._flusher_started or self.event_shutting_down.is_set():
            await self._send_outbox()
            return
        self._outbox_ready.set()
        while self._outbox_bytes > OUTBOX_HIGH_WATER:
            await self._outbox_drained.wait()
            self._raise_if_failed()

    async def _handle_incoming_with_ready_signal(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start the flusher beside the reader, in the muxer's nursery (one task per connection
        for its whole life, so a connection's task count does not change when it first writes)."""
        if self._nursery is not None and not self._flusher_started:
            self._flusher_started = True
            self._nursery.start_soon(self._flush_loop)
        await super()._handle_incoming_with_ready_signal(task_status)

    def _raise_if_failed(self) -> None:
        if self._send_failure is not None:
            raise RawConnError(f"connection send failed: {self._send_failure!r}") from self._send_failure

    async def _send_outbox(self) -> None:
        """Send everything queued, in order, under the muxer's write lock (one writer at a time)."""
        async with self._write_lock:
            while self._outbox:
                batch = b"".join(self._outbox) if len(self._outbox) > 1 else self._outbox[0]
                self._outbox.clear()
                self._outbox_bytes = 0
                self.sends += 1
                await self.secured_conn.write(batch)
        drained, self._outbox_drained = self._outbox_drained, trio.Event()
        drained.set()

    async def _flush_loop(self) -> None:
        """Send queued frames once per scheduler tick until the connection ends."""
        try:
            while True:
                await self._outbox_ready.wait()
                self._outbox_ready = trio.Event()
                # One more tick: tasks made runnable by the same inbound batch add their
                # frames first, so they leave in this send.
                await trio.lowlevel.checkpoint()
                await self._send_outbox()
        except trio.Cancelled:
            raise
        except Exception as exc:  # the socket failed or closed: fail writers, tear down like a read failure
            self._send_failure = exc
            drained, self._outbox_drained = self._outbox_drained, trio.Event()
            drained.set()
            log.debug("yamux send to %s failed: %r", self.peer_id, exc)
            await self._cleanup_on_error()

    def when_gone(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (synchronously, once) when this connection ends -- the peer closed or
        reset it, a send or read failed, or we closed it -- and return what unregisters it.
        Why: work done for a peer (a backend call) is pointless once nobody can get its answer;
        the request handler cancels it from here, with no task per request."""
        if self.event_shutting_down.is_set():
            callback()
            return _nothing
        self._on_gone.add(callback)
        return lambda: self._on_gone.discard(callback)

    def when_stream_gone(self, stream_id: int, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (synchronously, once) when the peer resets stream `stream_id` (RST,
        the connection kept) or the connection ends; return what unregisters it. Why: a client
        that gives up on one request resets its stream and keeps the connection for the next;
        the work for the abandoned one is as pointless as for a closed connection."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.reset_received:  # already reset (or fully closed): nobody reads
            callback()
            return _nothing
        self._on_reset[stream_id] = callback
        stop_gone = self.when_gone(callback)

        def stop() -> None:
            self._on_reset.pop(stream_id, None)
            stop_gone()

        return stop

    def _finalize_stream_locked(self, stream: YamuxStream, *, fully_closed: bool) -> None:
        """py-libp2p calls this wherever a stream ends, an RST from the peer included: the hook
        for `when_stream_gone` (no patch of the reader's frame handling needed)."""
        super()._finalize_stream_locked(stream, fully_closed=fully_closed)
        if stream.reset_received:
            callback = self._on_reset.pop(stream.stream_id, None)
            if callback is not None:
                self._on_gone.discard(callback)
                try:
                    callback()
                except Exception:  # the reader must not die of a listener's fault
                    log.exception("stream-reset listener failed")

    def _gone(self) -> None:
        self._on_reset.clear()
        callbacks, self._on_gone = self._on_gone, set()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one listener's fault must not keep the others waiting
                log.exception("connection-gone listener failed")

    async def _cleanup_on_error(self) -> None:
        self._gone()
        await super()._cleanup_on_error()

    def unread(self, stream_id: int, data: bytes | bytearray) -> None:
        """Put bytes a reader took but does not own back at the front of a stream's receive
        buffer (lean_multiselect.py reads past the protocol line). They were consumed from
        the receive window when they arrived and are credited when read again, as any."""
        if not data:
            return
        buffer = self.stream_buffers.get(stream_id)
        if buffer is None:
            raise RawConnError(f"stream {stream_id} has no receive buffer (closed)")
        buffer[:0] = data
        event = self.stream_events.get(stream_id)
        if event is not None:
            event.set()

    async def close(self, error_code: int = GO_AWAY_NORMAL) -> None:
        """Send what is queued (the last FINs) before GO_AWAY and the socket close."""
        self._direct_writes = True
        self._gone()
        if self._send_failure is None:
            try:
                await self._send_outbox()
            except Exception as exc:  # closing anyway; py-libp2p's close logs the same way
                log.debug("yamux flush before close to %s failed: %r", self.peer_id, exc)
        await super().close(error_code)


def _nothing() -> None:
    return None


async def _credit_window_at_half(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """Send WINDOW_UPDATE only once half the receive window is consumed (go-yamux's rule)."""
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        consumed = self.target_recv_window - (self.recv_window + buffered)
        if consumed <= 0 or consumed < self.target_recv_window // 2:  # no env lookups per read
            return
        increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
    if increment > 0:
        await self.send_window_update(increment, skip_lock=True)


def install() -> None:
    """Apply the window-credit policy to py-libp2p's YamuxStream (idempotent)."""
    if not hasattr(YamuxStream, "_auto_tune_and_send_window_update") or not hasattr(YamuxStream, "_grow_to_delta"):
        log.warning("py-libp2p's YamuxStream changed: window-credit policy not applied (per-read WINDOW_UPDATE stays)")
        return
    if yamux_module.YamuxStream._auto_tune_and_send_window_update is not _credit_window_at_half:
        yamux_module.YamuxStream._auto_tune_and_send_window_update = _credit_window_at_half  # type: ignore[method-assign]


def use_coalescing_yamux(swarm: Any) -> None:
    """Make `swarm`'s upgrader build `CoalescingYamux` for Yamux connections (one instance)."""
    muxers = getattr(getattr(swarm, "upgrader", None), "muxer_multistream", None)
    selector = getattr(muxers, "_selector", None)
    if muxers is None or selector is None or not hasattr(muxers, "_annotate_connection"):
        log.warning("py-libp2p's MuxerMultistream changed: Yamux writes are not batched")
        return

    async def new_conn(conn: ISecureConn, peer_id: ID) -> Any:
        protocol, transport_class = await selector.select(conn, conn.is_initiator, muxers.negotiate_timeout)
        if protocol == PROTOCOL_ID:
            muxed = CoalescingYamux(conn, peer_id, is_initiator=conn.is_initiator)
        else:
            muxed = transport_class(conn, peer_id)
        return muxers._annotate_connection(muxed, conn, protocol)

    muxers.new_conn = new_conn
