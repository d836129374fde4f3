"""mDNS discovery of local peers (`enable_mdns`), run as a service on the node's existing host.

py-libp2p's `MDNSDiscovery` (zeroconf, `_p2p._udp.local.`, dnsaddr TXT records)
only fills the peerstore and fires the process-wide `peerDiscovery` event;
it never dials. We dial every discovered peer so it appears in the PeerBook.
`new_host(enable_mDNS=True)` is not needed: the discovery object is built
here from the running host, and zeroconf's blocking calls (probe/announce,
goodbye) run in a worker thread so the trio loop never stalls.

`fingerprint` selects a private service name (`_p2p-<fp>._udp.local.`): tests
use it to see only their own nodes.
"""

from __future__ import annotations

import logging

import trio
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.discovery.mdns.mdns import MDNSDiscovery, create_mdns_discovery
from libp2p.peer.peerinfo import PeerInfo

from .node import NodeRuntime
from .task_status import TaskStatus

log = logging.getLogger(__name__)

DIAL_TIMEOUT_SECS = 10.0
STOP_TIMEOUT_SECS = 5.0


class MdnsService:
    """`rt.services["mdns"]`; `discovered` holds peer ids seen via mDNS."""

    name = "mdns"

    def __init__(self, fingerprint: str | None = None) -> None:
        self.fingerprint = fingerprint
        self.discovered: set[str] = set()
        self.dialed: set[str] = set()
        self._mdns: MDNSDiscovery | None = None

    async def run(self, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        own = str(rt.host.get_id())
        token = trio.lowlevel.current_trio_token()
        send, recv = trio.open_memory_channel[PeerInfo](256)

        def on_discovered(info: PeerInfo) -> None:  # zeroconf's thread: hop into trio
            if str(info.peer_id) == own:
                return
            try:
                token.run_sync_soon(_offer, info)
            except trio.RunFinishedError:
                pass

        def _offer(info: PeerInfo) -> None:
            try:
                send.send_nowait(info)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass

        try:
            self._mdns = await trio.to_thread.run_sync(self._create, rt)
        except Exception as exc:
            log.error("mDNS unavailable, local discovery is off: %s", exc)
            raise
        peerDiscovery.register_peer_discovered_handler(on_discovered)
        try:
            await trio.to_thread.run_sync(self._mdns.broadcaster.register)
            log.info("mDNS: announcing %s on %s", own, self._mdns.service_type)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._dial_discovered, rt, recv, nursery)
                nursery.start_soon(self._cleanup_loop)
                task_status.started()
        finally:
            peerDiscovery.unregister_peer_discovered_handler(on_discovered)
            send.close()
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT_SECS):
                await self._stop()

    def _create(self, rt: NodeRuntime) -> MDNSDiscovery:
        return create_mdns_discovery(rt.host.get_network(), host=rt.host, private_network_fingerprint=self.fingerprint)

    async def _cleanup_loop(self) -> None:
        assert self._mdns is not None
        await self._mdns._cleanup_loop()  # py-libp2p's own stale-entry sweep, in our nursery

    async def _dial_discovered(self, rt: NodeRuntime, recv: trio.MemoryReceiveChannel[PeerInfo], nursery: trio.Nursery) -> None:
        async with recv:
            async for info in recv:
                peer_id = str(info.peer_id)
                self.discovered.add(peer_id)
                if peer_id not in rt.peers.peers:
                    nursery.start_soon(self._dial, rt, info)

    async def _dial(self, rt: NodeRuntime, info: PeerInfo) -> None:
        with trio.move_on_after(DIAL_TIMEOUT_SECS):
            try:
                await rt.host.connect(info)
                self.dialed.add(str(info.peer_id))
                log.info("mDNS: connected to local peer %s", info.peer_id)
            except Exception as exc:
                log.debug("mDNS: dial %s failed: %s", info.peer_id, exc)

    async def _stop(self) -> None:
        mdns, self._mdns = self._mdns, None
        if mdns is not None:
            try:
                # trio-typing's stubs predate `abandon_on_cancel` (trio >= 0.23 renamed `cancellable`)
                await trio.to_thread.run_sync(mdns.stop, abandon_on_cancel=True)  # type: ignore[call-arg]
            except Exception as exc:
                log.debug("mDNS stop: %s", exc)

    async def shutdown(self, rt: NodeRuntime) -> None:
        """Unregister (goodbye packet) while the loop still runs."""
        await self._stop()
