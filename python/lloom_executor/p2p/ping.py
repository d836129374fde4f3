"""Latency to connected peers, measured with `/ipfs/ping/1.0.0`, kept in the PeerBook.

Reference rust peers do not serve ping: a peer that refuses the protocol is
remembered and not asked again while it stays connected; every failure is
silent (debug log only).
"""

from __future__ import annotations

import logging
import secrets
import time

import trio
from libp2p.abc import IHost
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.io.utils import read_exactly
from libp2p.peer.id import ID

from .node import NodeRuntime
from .streams import reset_quietly
from .task_status import TaskStatus

log = logging.getLogger(__name__)

PING_BYTES = 32
PING_TIMEOUT_SECS = 5.0


async def ping_once(host: IHost, peer: ID, timeout: float = PING_TIMEOUT_SECS) -> float | None:
    """One round trip in milliseconds (float: loopback is well under 1 ms), or None."""
    stream = None
    with trio.move_on_after(timeout):
        try:
            stream = await host.new_stream(peer, [PING_PROTOCOL_ID])
            payload = secrets.token_bytes(PING_BYTES)
            start = time.perf_counter()
            await stream.write(payload)
            pong = await read_exactly(stream, PING_BYTES)
            rtt = (time.perf_counter() - start) * 1000.0
            await stream.close()
            return rtt if pong == payload else None
        except Exception as exc:
            log.debug("ping %s failed: %s", peer, exc)
    await reset_quietly(stream)
    return None


class PingService:
    """Pings each connected peer on connect and then every `interval_secs`; `rt.services["ping"]`."""

    name = "ping"

    def __init__(self, interval_secs: float = 30.0) -> None:
        self.interval_secs = interval_secs
        self.no_ping: set[str] = set()  # connected peers that do not serve ping
        self._pinged_at: dict[str, float] = {}
        self._wake = trio.Event()

    async def run(self, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        def on_peer(event: str, peer_id: str) -> None:
            if event == "disconnected":
                self.no_ping.discard(peer_id)
                self._pinged_at.pop(peer_id, None)
            else:
                self._wake.set()

        rt.peers.add_listener(on_peer)
        task_status.started()
        try:
            while True:
                self._wake = trio.Event()
                async with trio.open_nursery() as nursery:
                    for peer_id in list(rt.peers.peers):
                        if peer_id in self.no_ping:
                            continue
                        if time.monotonic() - self._pinged_at.get(peer_id, -1e9) < self.interval_secs * 0.9:
                            continue
                        nursery.start_soon(self._ping, rt, peer_id)
                with trio.move_on_after(self.interval_secs):
                    await self._wake.wait()
                    await trio.sleep(0.05)  # let the connection settle
        finally:
            rt.peers.remove_listener(on_peer)

    async def _ping(self, rt: NodeRuntime, peer_id: str) -> None:
        self._pinged_at[peer_id] = time.monotonic()
        rtt = await ping_once(rt.host, ID.from_base58(peer_id))
        if rtt is None:
            self.no_ping.add(peer_id)
            return
        rt.peers.note_latency(peer_id, rtt)

    async def shutdown(self, rt: NodeRuntime) -> None:
        return None
