"""Circuit relay v2 client (`enable_relay`): reserve on `network.relay_addresses`, be reachable through them.

- Serves the STOP side (`/libp2p/circuit/relay/0.2.0/stop`), so a peer that
  connects to us through a relay gets an ordinary (relayed) connection on
  which `/lloom/llm/1.0.0` works.
- Keeps a connection and a reservation on every configured relay (re-dialed
  with backoff; py-libp2p refreshes the reservation before it expires).
- Advertises `<relay addr>/p2p-circuit/p2p/<us>`: py-libp2p 0.8.1's
  `get_addrs()` strips everything from the first `/p2p/` of an address, which
  turns a circuit address into the relay's own TCP address, so an
  `addrs_factory` cannot carry it; we extend the host's `get_addrs` on the
  instance instead (identify and Kademlia provider records read it).
- Not done by py-libp2p 0.8.1 here: relay discovery (auto-relay via DHT) and
  DCUtR hole punching; only the configured relays are used.
"""

from __future__ import annotations

import logging
import random

import multiaddr
import trio
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from .node import NodeRuntime
from .task_status import TaskStatus

log = logging.getLogger(__name__)

INITIAL_BACKOFF_SECS = 1.0
MAX_BACKOFF_SECS = 300.0
CHECK_SECS = 2.0


class RelayClientService:
    """`rt.services["relay"]`; `circuit_addrs` are the addresses we are reachable at through relays."""

    name = "relay"

    def __init__(self, addresses: tuple[str, ...] = ()) -> None:
        self._addresses = addresses
        self.reserved: dict[str, float] = {}  # relay address -> reservation expiry (unix seconds)
        self.protocol: CircuitV2Protocol | None = None
        self.transport: CircuitV2Transport | None = None
        self._reported: set[str] = set()

    @property
    def circuit_addrs(self) -> list[str]:
        return [self._circuit(a) for a in self.reserved]

    @staticmethod
    def _circuit(relay_addr: str) -> str:
        return f"{relay_addr}/p2p-circuit"

    async def run(self, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        addresses = self._addresses or rt.network.relay_addresses
        self.protocol = CircuitV2Protocol(rt.host, allow_hop=False)
        self.transport = CircuitV2Transport(rt.host, self.protocol, RelayConfig())
        host = rt.host
        plain_get_addrs = host.get_addrs
        own = f"/p2p/{host.get_id()}"

        def get_addrs() -> list[multiaddr.Multiaddr]:
            return list(plain_get_addrs()) + [multiaddr.Multiaddr(c + own) for c in self.circuit_addrs]

        host.get_addrs = get_addrs  # type: ignore[method-assign]  # see module docstring
        try:
            async with background_trio_service(self.protocol):
                await self.protocol.event_started.wait()
                async with trio.open_nursery() as nursery:
                    for address in addresses:
                        nursery.start_soon(self._keep_reserved, rt, address, nursery)
                    if not addresses:
                        log.info("relay: client on (STOP served), no relay_addresses configured")
                    task_status.started()
                    await trio.sleep_forever()  # keep serving STOP even with no relay to reserve on
        finally:
            host.get_addrs = plain_get_addrs  # type: ignore[method-assign]

    async def _keep_reserved(self, rt: NodeRuntime, address: str, nursery: trio.Nursery) -> None:
        backoff = INITIAL_BACKOFF_SECS
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        relay_id = str(info.peer_id)
        while True:
            if address in self.reserved and relay_id in rt.peers.peers:
                await trio.sleep(CHECK_SECS)
                continue
            self.reserved.pop(address, None)
            try:
                with trio.fail_after(30):
                    if relay_id not in rt.peers.peers:
                        await rt.host.connect(info)
                    ok = await self._reserve(rt, info, nursery)
                if ok:
                    assert self.transport is not None  # _reserve just used it
                    self.reserved[address] = self.transport._reservations.get(info.peer_id, 0)
                    log.info("relay: reserved on %s; reachable at %s", address, self._circuit(address))
                    self._reported.discard(address)
                    backoff = INITIAL_BACKOFF_SECS
                    continue
                raise RuntimeError("reservation refused")
            except Exception as exc:
                if address not in self._reported:
                    self._reported.add(address)
                    log.warning("relay %s: no reservation (%s); retrying with backoff", address, exc)
            await trio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, MAX_BACKOFF_SECS)

    async def _reserve(self, rt: NodeRuntime, info: PeerInfo, nursery: trio.Nursery) -> bool:
        assert self.transport is not None
        stream = await rt.host.new_stream(info.peer_id, [HOP_PROTOCOL_ID])
        try:
            return await self.transport.reserve(stream, info.peer_id, nursery)
        finally:
            try:
                await stream.close()
            except Exception:
                pass

    async def shutdown(self, rt: NodeRuntime) -> None:
        return None
