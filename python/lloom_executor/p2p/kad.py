"""Kademlia discovery (docs/PROTOCOL.md §6): provider + record for `lloom/executor`, server mode.

- Provides the raw key `b"lloom/executor"` (no hashing, no namespace: rust
  sends the 14 bytes as-is) and puts the record `lloom/executor -> <PeerId
  bytes>`, every `announce_interval_secs`; answers provider, record and
  closest-peer queries (py-libp2p's KadDHT in server mode does that).
- Sends one FIND_NODE to every newly connected peer: rust-libp2p only adds a
  peer to its routing table after a successful Kademlia exchange (the
  reference runs no identify), and a client's `get_providers` reaches only
  peers in that table. A peer that answers goes into our routing table too.
- A bootstrap peer that answered triggers a re-provide, so the record is
  stored there as soon as we are connected.
"""

from __future__ import annotations

import logging

import multiaddr
import trio
import varint
from libp2p.abc import IHost
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.kad_dht.utils import maybe_consume_signed_record
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from .node import NodeRuntime
from .streams import reset_quietly
from .task_status import TaskStatus

log = logging.getLogger(__name__)

EXECUTOR_KEY = b"lloom/executor"
VALIDATOR_KEY = b"lloom/validator"
FIND_NODE_TIMEOUT_SECS = 10.0
MAX_KAD_MESSAGE = 1 << 20


async def find_node(
    host: IHost, peer: ID, target: bytes | None = None, timeout: float = FIND_NODE_TIMEOUT_SECS
) -> Message | None:
    """One FIND_NODE exchange on a fresh stream; the response, or None on any failure.

    We send our signed peer record with it, so a py-libp2p peer learns our
    listen addresses (rust ignores the unknown field).
    """
    stream = None
    with trio.move_on_after(timeout):
        try:
            stream = await host.new_stream(peer, [KAD_PROTOCOL_ID])
            msg = Message()
            msg.type = Message.MessageType.FIND_NODE
            msg.key = target or host.get_id().to_bytes()
            try:
                msg.senderRecord = env_to_send_in_RPC(host)[0]
            except Exception:  # an optional courtesy
                pass
            data = msg.SerializeToString()
            await stream.write(varint.encode(len(data)) + data)
            resp = Message()
            resp.ParseFromString(await read_varint_prefixed_bytes_limited(stream, MAX_KAD_MESSAGE))
            await stream.close()
            return resp
        except Exception as exc:
            log.debug("FIND_NODE to %s failed: %s", peer, exc)
            await reset_quietly(stream)
            return None
    log.debug("FIND_NODE to %s timed out", peer)
    return None


class KadService:
    """The Kademlia subsystem; `rt.services["kad"]`."""

    name = "kad"

    def __init__(self, key: bytes = EXECUTOR_KEY, announce_interval_secs: float | None = None) -> None:
        self.key = key
        self.announce_interval_secs = announce_interval_secs
        self.dht: KadDHT | None = None
        self.announcements = 0  # completed provide+put rounds
        self.find_node_ok = 0
        self.find_node_failed = 0
        self._rt: NodeRuntime | None = None
        self._reannounce = trio.Event()
        self._reported: set[str] = set()

    async def run(self, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._rt = rt
        self.dht = KadDHT(rt.host, DHTMode.SERVER)
        send, recv = trio.open_memory_channel[str](512)

        def on_peer(event: str, peer_id: str) -> None:  # runs inline in the notifee: never block
            if event != "connected":
                return
            try:
                send.send_nowait(peer_id)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                log.debug("kad: new-peer queue full, %s skipped", peer_id)

        rt.peers.add_listener(on_peer)
        try:
            async with background_trio_service(self.dht):
                for peer_id in list(rt.peers.peers):  # connected before we started
                    on_peer("connected", peer_id)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._new_peers, recv, nursery)
                    nursery.start_soon(self._announce_loop, rt)
                    task_status.started()
        finally:
            rt.peers.remove_listener(on_peer)
            send.close()

    async def shutdown(self, rt: NodeRuntime) -> None:
        return None

    # -- public API -----------------------------------------------------------------
    async def announce(self) -> None:
        """Provide the key and put our record, locally and at the closest peers we know."""
        assert self._rt is not None and self.dht is not None
        peer_bytes = self._rt.host.get_id().to_bytes()
        try:
            await self.dht.provider_store.provide(self.key)
        except Exception as exc:
            self._log_once("provide", f"kad provide failed: {exc}")
        try:
            await self.dht.put_value(self.key.decode(), peer_bytes)
        except Exception as exc:
            self._log_once("put", f"kad put_value failed: {exc}")
        self.announcements += 1

    def reannounce_soon(self) -> None:
        self._reannounce.set()

    @property
    def routing_table_size(self) -> int:
        return self.dht.routing_table.size() if self.dht is not None else 0

    # -- internals -------------------------------------------------------------------
    def _log_once(self, what: str, text: str) -> None:
        if what not in self._reported:
            self._reported.add(what)
            log.warning("%s (logged once)", text)

    async def _announce_loop(self, rt: NodeRuntime) -> None:
        period = self.announce_interval_secs or rt.network.announce_interval_secs
        while True:
            self._reannounce = trio.Event()  # before announcing: a request made meanwhile is kept
            await self.announce()
            with trio.move_on_after(period):
                await self._reannounce.wait()

    async def _new_peers(self, recv: trio.MemoryReceiveChannel[str], nursery: trio.Nursery) -> None:
        async with recv:
            async for peer_id in recv:
                nursery.start_soon(self._greet, peer_id)

    async def _greet(self, peer_id: str) -> None:
        """FIND_NODE to a new peer; on an answer, route to it (and re-provide to a bootstrap peer)."""
        assert self._rt is not None and self.dht is not None
        host = self._rt.host
        peer = ID.from_base58(peer_id)
        resp = await find_node(host, peer)
        if resp is None:
            self.find_node_failed += 1
            return
        self.find_node_ok += 1
        try:
            maybe_consume_signed_record(resp, host, peer)
        except Exception:
            pass
        addrs = self._dialable_addrs(peer, peer_id)
        if addrs:
            await self.dht.routing_table.add_peer(PeerInfo(peer, addrs), skip_server_mode_check=True)
        else:
            log.debug("kad: %s answered but has no dialable address; not routed", peer_id)
        bootstrap_ids = {a.rsplit("/p2p/", 1)[-1] for a in self._rt.network.bootstrap_peers}
        if peer_id in bootstrap_ids:
            self.reannounce_soon()

    def _dialable_addrs(self, peer: ID, peer_id: str) -> list[multiaddr.Multiaddr]:
        """Addresses others can dial: certified/peerstore ones, else an outbound connection's."""
        assert self._rt is not None
        try:
            addrs = list(self._rt.host.get_peerstore().addrs(peer))
        except Exception:
            addrs = []
        if addrs:
            return addrs
        record = self._rt.peers.peers.get(peer_id)
        if record is not None and record.direction == "outbound":
            return [multiaddr.Multiaddr(a) for a in record.addresses]
        return []
