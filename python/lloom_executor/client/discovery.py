"""How a client finds executors (docs/PROTOCOL.md §6), trio side.

Four channels feed one `ExecutorBook`:
- Kademlia: GET_PROVIDERS and GET_VALUE on b"lloom/executor" (the value is an
  executor's PeerId bytes), asked of every connected peer and the closer peers
  they name. The client runs Kademlia in client mode: it asks, it serves nothing.
- gossip: `EXECUTOR_AVAILABLE:<PeerId>` on lloom/executor-announcements, and
  verified `SignedMessage<ModelAnnouncement>` JSON on lloom/model-announcements
  (models, prices, EVM address). A Removal withdraws the gossip evidence.
- mDNS (when enabled, the node's own `p2p.mdns.MdnsService`): local peers are
  dialed and so become Kademlia seeds and gossip peers; an executor also seen
  on mDNS gets "mdns" in its `via`. mDNS finds *peers*, not roles, so it never
  makes a peer an executor on its own.
- direct: the bootstrap peers themselves (reference clients talk to the peer
  they dialed when discovery finds nothing else).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable

import trio
from libp2p.abc import ISubscriptionAPI
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID as MESHSUB_V10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as MESHSUB_V11
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from ..p2p.announcements import InvalidAnnouncement, verify_announcement
from ..p2p.node import NodeRuntime
from ..p2p.task_status import TaskStatus
from .exchange import peerstore_addrs
from .peer_identity import NotSecp256k1PeerId, evm_address_from_peer_id
from .types import VIA_DIRECT, VIA_GOSSIP, VIA_KAD_PROVIDERS, VIA_KAD_RECORD, VIA_MDNS, ExecutorInfo

log = logging.getLogger(__name__)

EXECUTOR_KEY = b"lloom/executor"
TOPIC_EXECUTOR_ANNOUNCEMENTS = "lloom/executor-announcements"
TOPIC_MODEL_ANNOUNCEMENTS = "lloom/model-announcements"
AVAILABLE_PREFIX = "EXECUTOR_AVAILABLE:"
RECENT_IDS = 256  # message ids a client remembers (GossipWatchService.recent_ids)


class ExecutorBook:
    """Everything learned about executors so far (trio thread only; copies go out)."""

    def __init__(self) -> None:
        self.executors: dict[str, ExecutorInfo] = {}
        self.mdns_peers: set[str] = set()
        self.changed = trio.Event()

    def note(self, peer_id: str, via: str, addresses: Iterable[str] = ()) -> ExecutorInfo | None:
        try:
            ID.from_base58(peer_id)
        except Exception:
            log.debug("ignoring executor with an invalid PeerId %r (via %s)", peer_id, via)
            return None
        info = self.executors.get(peer_id)
        if info is None:
            info = self.executors[peer_id] = ExecutorInfo(peer_id)
            try:
                info.evm_address = evm_address_from_peer_id(peer_id)
            except NotSecp256k1PeerId:
                pass  # only a verified announcement can tell us its EVM address
        if via not in info.via:
            info.via.add(via)
            self._wake()
        for addr in addresses:
            if addr not in info.addresses:
                info.addresses.append(addr)
        if peer_id in self.mdns_peers:
            info.via.add(VIA_MDNS)
        return info

    def withdraw(self, peer_id: str, via: str) -> None:
        info = self.executors.get(peer_id)
        if info is None:
            return
        info.via.discard(via)
        if via == VIA_GOSSIP:
            info.models = None
            info.announcement = None
        if not info.via - {VIA_MDNS}:
            del self.executors[peer_id]

    def note_mdns_peer(self, peer_id: str) -> None:
        self.mdns_peers.add(peer_id)
        info = self.executors.get(peer_id)
        if info is not None:
            info.via.add(VIA_MDNS)

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def snapshot(self) -> list[ExecutorInfo]:
        """Copies, most-vouched-for first."""
        out = [info.copy() for info in self.executors.values()]
        out.sort(key=lambda i: (-len(i.via - {VIA_DIRECT}), i.peer_id))
        return out


def _peer_addresses(rt: NodeRuntime, peer: ID) -> list[str]:
    found = [str(a) for a in peerstore_addrs(rt.host, peer)]
    if not found:
        record = rt.peers.peers.get(str(peer))
        found = list(record.addresses) if record else []
    return found


class KadLookupService:
    """Kademlia in client mode; `lookup()` runs one provider + record query."""

    name = "kad-client"

    def __init__(self, book: ExecutorBook) -> None:
        self.book = book
        self.dht: KadDHT | None = None

    async def run(self, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.dht = KadDHT(rt.host, DHTMode.CLIENT)
        async with background_trio_service(self.dht):
            task_status.started()
            await trio.sleep_forever()

    async def seed(self, rt: NodeRuntime) -> int:
        """Put every connected peer into the routing table.

        py-libp2p adds peers only after identify tells it they serve Kademlia;
        reference peers run no identify, so without this the table stays empty.
        """
        assert self.dht is not None
        added = 0
        for peer in list(rt.host.get_network().connections):
            addrs = peerstore_addrs(rt.host, peer)
            if addrs and await self.dht.routing_table.add_peer(PeerInfo(peer, addrs), skip_server_mode_check=True):
                added += 1
        return added

    async def lookup(self, rt: NodeRuntime, timeout: float) -> None:
        """GET_PROVIDERS and GET_VALUE for b"lloom/executor", both bounded by `timeout`."""
        if self.dht is None:
            return
        await self.seed(rt)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._providers, rt, timeout)
            nursery.start_soon(self._record, rt, timeout)

    async def _providers(self, rt: NodeRuntime, timeout: float) -> None:
        assert self.dht is not None
        store = self.dht.provider_store
        store.providers.pop(EXECUTOR_KEY, None)  # private: else py-libp2p answers from its cache
        with trio.move_on_after(timeout):
            try:
                found = await store.find_providers(EXECUTOR_KEY)
            except Exception as exc:
                log.info("Kademlia provider lookup failed: %s", exc)
                return
            for info in found:
                if info.peer_id != rt.host.get_id():
                    self.book.note(str(info.peer_id), VIA_KAD_PROVIDERS, [str(a) for a in info.addrs])

    async def _record(self, rt: NodeRuntime, timeout: float) -> None:
        assert self.dht is not None
        self.dht.value_store.store.pop(EXECUTOR_KEY, None)  # private: same cache problem as above
        with trio.move_on_after(timeout):
            try:
                value = await self.dht.get_value(EXECUTOR_KEY.decode())
            except Exception as exc:
                log.info("Kademlia record lookup failed: %s", exc)
                return
            if not value:
                return
            try:
                peer = ID(value)
                peer.to_base58()
            except Exception:
                log.info("Kademlia record for lloom/executor holds no PeerId (%d bytes)", len(value))
                return
            if peer != rt.host.get_id():
                self.book.note(str(peer), VIA_KAD_RECORD, _peer_addresses(rt, peer))

    async def shutdown(self, rt: NodeRuntime) -> None:
        return None


def rust_message_id(msg: rpc_pb2.Message) -> bytes:
    """rust-libp2p gossipsub's default id: base58(source) + decimal seqno (see p2p-proto NOTES §4)."""
    return (ID(msg.from_id).to_base58() + str(int.from_bytes(msg.seqno, "big"))).encode()


class GossipWatchService:
    """Subscribes to the two announcement topics and feeds the book; publishes nothing."""

    name = "gossip-client"

    def __init__(self, book: ExecutorBook) -> None:
        self.book = book
        self.received = 0
        self.rejected = 0
        # the ids (rust-libp2p's: source + seqno) of the last messages heard, for diagnostics: two
        # different messages under one id would be dropped as duplicates by every peer
        self.recent_ids: collections.deque[bytes] = collections.deque(maxlen=RECENT_IDS)

    async def run(self, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        gossipsub = GossipSub(protocols=[MESHSUB_V11, MESHSUB_V10], degree=6, degree_low=5, degree_high=12, heartbeat_interval=1)
        pubsub = Pubsub(rt.host, gossipsub, strict_signing=True, msg_id_constructor=rust_message_id)
        async with background_trio_service(pubsub), background_trio_service(gossipsub):
            await pubsub.wait_until_ready()
            executor_sub = await pubsub.subscribe(TOPIC_EXECUTOR_ANNOUNCEMENTS)
            model_sub = await pubsub.subscribe(TOPIC_MODEL_ANNOUNCEMENTS)
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain, rt, executor_sub, self._on_available)
                nursery.start_soon(self._drain, rt, model_sub, self._on_model_announcement)

    async def _drain(
        self, rt: NodeRuntime, subscription: ISubscriptionAPI, handle: Callable[[NodeRuntime, ID, bytes], None]
    ) -> None:
        own = rt.host.get_id().to_bytes()
        while True:
            message = await subscription.get()
            if message.from_id == own:
                continue
            self.received += 1
            self.recent_ids.append(rust_message_id(message))
            try:
                handle(rt, ID(message.from_id), bytes(message.data))
            except Exception as exc:  # a bad message must not end the subscription
                self.rejected += 1
                log.debug("gossip message rejected: %s", exc)

    def _on_available(self, rt: NodeRuntime, author: ID, data: bytes) -> None:
        text = data.decode("utf-8", "replace").strip()
        if not text.startswith(AVAILABLE_PREFIX):
            return
        peer_id = text[len(AVAILABLE_PREFIX) :].strip()
        if peer_id and peer_id != str(rt.host.get_id()):
            self.book.note(peer_id, VIA_GOSSIP, _peer_addresses(rt, author) if str(author) == peer_id else ())

    def _on_model_announcement(self, rt: NodeRuntime, author: ID, data: bytes) -> None:
        try:
            payload = verify_announcement(data, source_peer_id=str(author))
        except InvalidAnnouncement as exc:
            self.rejected += 1
            log.debug("model announcement from %s rejected: %s", author, exc)
            return
        peer_id = payload["executor_peer_id"]
        try:
            if evm_address_from_peer_id(peer_id) != str(payload["executor_address"]).lower():
                self.rejected += 1
                log.debug("model announcement for %s: executor_address is not the PeerId's key", peer_id)
                return
        except NotSecp256k1PeerId:
            pass  # the signature already binds executor_address; the PeerId cannot be checked
        if payload["announcement_type"] == "Removal":
            self.book.withdraw(peer_id, VIA_GOSSIP)
            return
        info = self.book.note(peer_id, VIA_GOSSIP, _peer_addresses(rt, author))
        if info is not None:
            info.evm_address = str(payload["executor_address"]).lower()
            info.models = tuple(m.get("model_id", "") for m in payload.get("models") or [])
            info.announcement = payload

    async def shutdown(self, rt: NodeRuntime) -> None:
        return None
