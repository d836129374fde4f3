"""Peer bookkeeping: who is connected, how, since when, speaking what — the data behind `peers list`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from multiaddr import Multiaddr

PeerListener = Callable[[str, str], None]
"""`(event, peer_id)`: event is "connected" or "disconnected"."""


@dataclass
class PeerRecord:
    peer_id: str
    addresses: list[str] = field(default_factory=list)
    direction: str = "unknown"  # inbound | outbound
    connected_since: float = 0.0  # wall-clock seconds
    connections: int = 0
    protocols: set[str] = field(default_factory=set)
    latency_ms: float | None = None
    roles: set[str] = field(default_factory=set)  # executor | validator | client, as learned

    def as_dict(self) -> dict[str, object]:
        return {
            "peer_id": self.peer_id,
            "addresses": list(self.addresses),
            "direction": self.direction,
            "connected_since": self.connected_since,
            "protocols": sorted(self.protocols),
            "latency_ms": self.latency_ms,
            "roles": sorted(self.roles),
        }


class PeerBook(INotifee):
    """Fed by py-libp2p's network notifications (trio thread only).

    Listeners get `(event, peer_id)` with event "connected"/"disconnected" on the
    first/last connection of a peer; they must not block (they run inline).
    """

    def __init__(self) -> None:
        self.peers: dict[str, PeerRecord] = {}
        self._listeners: list[PeerListener] = []

    def add_listener(self, callback: PeerListener) -> None:
        self._listeners.append(callback)

    def remove_listener(self, callback: PeerListener) -> None:
        """A stopped service stops listening (no error if it was not registered)."""
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _emit(self, event: str, peer_id: str) -> None:
        for callback in list(self._listeners):
            callback(event, peer_id)

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer_id = str(conn.muxed_conn.peer_id)
        record = self.peers.get(peer_id)
        first = record is None
        if record is None:
            record = self.peers[peer_id] = PeerRecord(peer_id, connected_since=time.time())
        record.connections += 1
        direction = getattr(conn, "_direction", None)
        if direction is not None:
            record.direction = "outbound" if "out" in str(direction).lower() else "inbound"
        try:
            for addr in conn.get_transport_addresses():
                text = str(addr)
                if text not in record.addresses:
                    record.addresses.append(text)
        except Exception:  # a muxer without address information
            pass
        if first:
            self._emit("connected", peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer_id = str(conn.muxed_conn.peer_id)
        record = self.peers.get(peer_id)
        if record is None:
            return
        record.connections -= 1
        if record.connections <= 0:
            del self.peers[peer_id]
            self._emit("disconnected", peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        record = self.peers.get(str(stream.muxed_conn.peer_id))
        protocol = stream.get_protocol()
        if record is not None and protocol:
            record.protocols.add(str(protocol))

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    def note_role(self, peer_id: str, role: str) -> None:
        record = self.peers.get(peer_id)
        if record is not None:
            record.roles.add(role)

    def note_latency(self, peer_id: str, latency_ms: float) -> None:
        record = self.peers.get(peer_id)
        if record is not None:
            record.latency_ms = latency_ms

    def snapshot(self) -> list[dict[str, object]]:
        return [record.as_dict() for record in self.peers.values()]
