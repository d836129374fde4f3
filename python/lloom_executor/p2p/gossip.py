"""Gossipsub discovery (docs/PROTOCOL.md §6): executor availability and model announcements.

- Subscribes to the five Lloom topics.
- `EXECUTOR_AVAILABLE:<PeerId>` on `lloom/executor-announcements` with each
  re-announce (every `announce_interval_secs`) and whenever a remote peer
  subscribes to that topic: a reference client that dials us gives up after
  about a minute, far shorter than the reference 300 s period.
- JSON `SignedMessage<ModelAnnouncement>` on `lloom/model-announcements`:
  Initial at start, Heartbeat every `heartbeat_secs`, Update when the catalog
  changes, Removal at shutdown. An Initial that reached nobody (no peer yet) is
  sent again when the first peer subscribes; later subscribers get a
  Heartbeat at once instead of waiting for the timer.
- Announcements from others are verified and kept in a `NetworkView`.

Messages are signed by our key (strict signing) and carry rust-libp2p's
default message id, so IHAVE/IWANT dedup works with reference peers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import trio
from libp2p.abc import ISubscriptionAPI
from libp2p.peer.id import ID
from libp2p.pubsub import gossipsub as _gs
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from ..config import ModelConfig
from .announcements import InvalidAnnouncement, ModelCatalog, NetworkView, verify_announcement
from .node import NodeRuntime
from .task_status import TaskStatus

log = logging.getLogger(__name__)

TOPIC_ANNOUNCEMENTS = "lloom/announcements"
TOPIC_EXECUTOR_UPDATES = "lloom/executor-updates"
TOPIC_EXECUTOR_ANNOUNCEMENTS = "lloom/executor-announcements"
TOPIC_MODEL_ANNOUNCEMENTS = "lloom/model-announcements"
TOPIC_MODEL_QUERIES = "lloom/model-queries"
TOPICS = (
    TOPIC_ANNOUNCEMENTS,
    TOPIC_EXECUTOR_UPDATES,
    TOPIC_EXECUTOR_ANNOUNCEMENTS,
    TOPIC_MODEL_ANNOUNCEMENTS,
    TOPIC_MODEL_QUERIES,
)
EXECUTOR_AVAILABLE = "EXECUTOR_AVAILABLE:"
# Newest first: py-libp2p 0.8.1 speaks 1.2 (IDONTWANT) and rust picks it; 1.1/1.0 as the spec lists.
MESHSUB_PROTOCOLS = [_gs.PROTOCOL_ID_V12, _gs.PROTOCOL_ID_V11, _gs.PROTOCOL_ID]
MESH_WAIT_SECS = 2.5  # how long a reply to a new subscriber waits for the mesh graft


def rust_msg_id(msg: rpc_pb2.Message) -> bytes:
    """rust-libp2p gossipsub's default id: base58(source) + decimal u64 seqno."""
    return (ID(msg.from_id).to_base58() + str(int.from_bytes(msg.seqno, "big"))).encode()


class _NotifyingPubsub(Pubsub):
    """Pubsub that reports remote subscriptions into a trio channel (the hook is sync), and
    whose sequence numbers never collide with another worker's of the same node.

    rust-libp2p's message id is source + seqno, and py-libp2p 0.8.1 starts its seqno counter at
    `int(time.time())` and adds 1 per message: two workers of one PeerId started in the same
    second would publish different messages under one id, and peers would drop one as a
    duplicate. With `count` workers each worker starts from nanoseconds rounded to a multiple of
    `count` plus its index and steps by `count`: the residues differ, so the ids never collide,
    and a restarted worker starts above what it used before.
    """

    subscriptions: trio.MemorySendChannel[tuple[ID, str]] | None = None
    seqno_step = 1

    def space_seqnos(self, index: int, count: int) -> None:
        if count > 1:
            self.seqno_step = count
            self.counter = (time.time_ns() // count) * count + index - count

    def _next_seqno(self) -> bytes:
        self.counter += self.seqno_step
        return self.counter.to_bytes(8, "big")

    def handle_subscription(self, origin_id: ID, sub_message: rpc_pb2.RPC.SubOpts) -> None:
        super().handle_subscription(origin_id, sub_message)
        if self.subscriptions is not None and sub_message.subscribe:
            try:
                self.subscriptions.send_nowait((origin_id, sub_message.topicid))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass


class GossipService:
    """The gossipsub subsystem; `rt.services["gossip"]`."""

    name = "gossip"

    def __init__(
        self,
        catalog: ModelCatalog,
        *,
        heartbeat_secs: float = 30.0,
        announce_interval_secs: float | None = None,
        view: NetworkView | None = None,
        mesh_heartbeat_secs: int = 1,
        duties: bool = True,
        worker: tuple[int, int] = (0, 1),
    ) -> None:
        """`duties`: publish the periodic, changed and final announcements (the lead worker, or the
        only process); without, only new subscribers on our connections are answered."""
        self.catalog = catalog
        self.duties = duties
        self.worker = worker
        self.heartbeat_secs = heartbeat_secs
        self.announce_interval_secs = announce_interval_secs
        self.view = view or NetworkView(expire_after_secs=max(3.5 * heartbeat_secs, 5.0))
        self.mesh_heartbeat_secs = mesh_heartbeat_secs
        self.pubsub: _NotifyingPubsub | None = None
        self.router: GossipSub | None = None
        self.available_executors: dict[str, float] = {}  # peer id -> monotonic time of EXECUTOR_AVAILABLE
        self.published: dict[str, int] = {}  # announcement type / "EXECUTOR_AVAILABLE" -> count
        self.invalid_messages = 0
        self._rt: NodeRuntime | None = None
        self._initial_reached_someone = False
        self._closing = False  # after Removal nothing else about our models may follow

    # -- lifecycle ----------------------------------------------------------------
    async def run(self, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._rt = rt
        router = GossipSub(
            protocols=MESHSUB_PROTOCOLS,
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=self.mesh_heartbeat_secs,
            heartbeat_initial_delay=0.1,
        )
        pubsub = _NotifyingPubsub(rt.host, router, strict_signing=True, msg_id_constructor=rust_msg_id)
        send, recv = trio.open_memory_channel[tuple[ID, str]](256)
        pubsub.subscriptions = send
        pubsub.space_seqnos(*self.worker)
        self.pubsub, self.router = pubsub, router
        try:
            async with background_trio_service(pubsub), background_trio_service(router):
                await pubsub.wait_until_ready()
                subs = {topic: await pubsub.subscribe(topic) for topic in TOPICS}
                async with trio.open_nursery() as nursery:
                    for topic, sub in subs.items():
                        nursery.start_soon(self._drain, topic, sub)
                    nursery.start_soon(self._on_subscriptions, recv)
                    if self.duties:
                        nursery.start_soon(self._executor_announce_loop, rt)
                        nursery.start_soon(self._heartbeat_loop)
                    nursery.start_soon(self._expire_loop)
                    task_status.started()
        finally:
            pubsub.subscriptions = None
            send.close()
            self.pubsub = None
            # py-libp2p never stops the seen-message cache's sweeper thread itself:
            # without this every stopped node leaves one thread behind.
            pubsub.seen_messages.stop()

    async def shutdown(self, rt: NodeRuntime) -> None:
        """Say goodbye: a Removal reaches peers before the host closes (not a worker that only
        restarts: the node is still there)."""
        if self.pubsub is None or not self.duties:
            return
        self._closing = True
        await self._publish_model("Removal", final=True)
        # py-libp2p queues each RPC per peer and a writer task sends it: wait (bounded) until they left.
        pubsub = self.pubsub
        with trio.move_on_after(1.5):
            while pubsub is not None and any(len(q) for q in list(pubsub.peer_queues.values())):
                await trio.sleep(0.02)
            await trio.sleep(0.1)  # the last write itself

    # -- public API (trio thread; from asyncio via P2PNode.call) ----------------------
    async def update_models(self, models: Iterable[ModelConfig | Mapping[str, Any]]) -> bool:
        """Replace the catalog's models; announce an Update when anything changed."""
        changed = self.catalog.set_models(models)
        if changed and self.duties:
            await self.announce_update()
        return changed

    async def announce_update(self) -> None:
        """Publish an Update with the catalog as it is now."""
        await self._publish_model("Update")

    async def announce_available(self) -> None:
        """Publish `EXECUTOR_AVAILABLE:<PeerId>`."""
        assert self._rt is not None
        await self._publish(TOPIC_EXECUTOR_ANNOUNCEMENTS, f"{EXECUTOR_AVAILABLE}{self._rt.key.peer_id}".encode())
        self.published["EXECUTOR_AVAILABLE"] = self.published.get("EXECUTOR_AVAILABLE", 0) + 1

    def network_view(self) -> dict[str, dict[str, Any]]:
        return self.view.snapshot()

    # -- internals ---------------------------------------------------------------
    def _topic_peers(self, topic: str) -> set[ID]:
        if self.pubsub is None:
            return set()
        return set(self.pubsub.peer_topics.get(topic, ()))

    async def _publish(self, topic: str, data: bytes) -> bool:
        if self.pubsub is None:
            return False
        try:
            await self.pubsub.publish(topic, data)
            return True
        except Exception as exc:  # a broken peer stream must not stop the service
            log.warning("gossip publish on %s failed: %s", topic, exc)
            return False

    async def _publish_model(self, kind: str, final: bool = False) -> None:
        assert self._rt is not None
        if self._closing and not final:
            return
        reached = bool(self._topic_peers(TOPIC_MODEL_ANNOUNCEMENTS))
        if await self._publish(TOPIC_MODEL_ANNOUNCEMENTS, self.catalog.signed_json(self._rt.key, kind)):
            self.published[kind] = self.published.get(kind, 0) + 1
            if kind == "Initial" and reached:
                self._initial_reached_someone = True

    async def _executor_announce_loop(self, rt: NodeRuntime) -> None:
        period = self.announce_interval_secs or rt.network.announce_interval_secs
        await self._publish_model("Initial")
        while True:
            await self.announce_available()
            await trio.sleep(period)

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_secs)
            await self._publish_model("Heartbeat")

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(min(5.0, self.heartbeat_secs))
            for peer in self.view.expire():
                log.info("executor %s expired from the network view (no heartbeat)", peer)

    async def _on_subscriptions(self, recv: trio.MemoryReceiveChannel[tuple[ID, str]]) -> None:
        """Answer new subscribers at once (coalesced: one publish per topic per burst)."""
        async with recv:
            async for peer, topic in recv:
                pending = {topic: {peer}}
                await trio.sleep(0.05)
                while True:
                    try:
                        p, t = recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    pending.setdefault(t, set()).add(p)
                for t, peers in pending.items():
                    if t in (TOPIC_EXECUTOR_ANNOUNCEMENTS, TOPIC_MODEL_ANNOUNCEMENTS):
                        await self._wait_in_mesh(t, peers)
                    if t == TOPIC_EXECUTOR_ANNOUNCEMENTS:
                        await self.announce_available()
                    elif t == TOPIC_MODEL_ANNOUNCEMENTS:
                        await self._publish_model("Heartbeat" if self._initial_reached_someone else "Initial")

    async def _wait_in_mesh(self, topic: str, peers: set[ID]) -> None:
        """We are subscribed, so publish goes to the mesh: wait (bounded) for the graft."""
        router = self.router
        if router is None:
            return
        with trio.move_on_after(MESH_WAIT_SECS):
            while topic in router.mesh and not peers <= set(router.mesh[topic]):
                await trio.sleep(0.05)

    async def _drain(self, topic: str, sub: ISubscriptionAPI) -> None:
        assert self._rt is not None
        own = self._rt.host.get_id().to_bytes()
        while True:
            msg = await sub.get()
            if msg.from_id == own:
                continue
            try:
                self._handle(topic, msg)
            except Exception as exc:  # never let one bad message stop the reader
                self.invalid_messages += 1
                log.debug("gossip message on %s dropped: %s", topic, exc)

    def _handle(self, topic: str, msg: rpc_pb2.Message) -> None:
        assert self._rt is not None
        source = ID(msg.from_id).to_base58()
        if topic == TOPIC_EXECUTOR_ANNOUNCEMENTS:
            text = msg.data.decode("utf-8", "replace")
            if text.startswith(EXECUTOR_AVAILABLE):
                peer = text[len(EXECUTOR_AVAILABLE) :].strip()
                self.available_executors[peer] = time.monotonic()
                self._rt.peers.note_role(peer, "executor")
        elif topic == TOPIC_MODEL_ANNOUNCEMENTS:
            try:
                payload = verify_announcement(bytes(msg.data), source_peer_id=source)
            except InvalidAnnouncement as exc:
                self.view.invalid += 1
                log.debug("invalid model announcement from %s: %s", source, exc)
                return
            self.view.apply(payload)
            self._rt.peers.note_role(payload["executor_peer_id"], "executor")
