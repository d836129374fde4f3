"""AutoNAT v1 (`enable_autonat`): serve dial-backs, and ask connected peers whether we are reachable.

py-libp2p 0.8.1 has AutoNAT v1 only (no v2). Its `check_reachability` counts
a peer that does not speak AutoNAT as a failed dial-back, which would call a
public node private as soon as it meets reference peers (they do not serve
AutoNAT); we query only peers that accept the protocol and skip the others.
`reachability` is "public", "private" or "unknown"; a change is logged once.
"""

from __future__ import annotations

import logging
from typing import cast

import trio
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID, AutoNATService, AutoNATStatus
from libp2p.host.basic_host import BasicHost
from libp2p.peer.id import ID

from .node import NodeRuntime
from .task_status import TaskStatus

log = logging.getLogger(__name__)

QUERY_TIMEOUT_SECS = 15.0
_NAMES = {AutoNATStatus.UNKNOWN: "unknown", AutoNATStatus.PUBLIC: "public", AutoNATStatus.PRIVATE: "private"}


class AutoNatService:
    """`rt.services["autonat"]`."""

    name = "autonat"

    def __init__(self, interval_secs: float = 300.0, confirmations: int = 4) -> None:
        self.interval_secs = interval_secs
        self.confirmations = confirmations
        self.autonat: AutoNATService | None = None
        self.non_servers: set[str] = set()  # peers that refused the protocol (while connected)
        self.queried: set[str] = set()
        self._logged: str | None = None
        self._wake = trio.Event()

    @property
    def reachability(self) -> str:
        if self.autonat is None:
            return "unknown"
        return _NAMES.get(self.autonat.get_status(), "unknown")

    async def run(self, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # AutoNATService is typed for BasicHost; build_host's host is one (IHost is what new_host declares)
        self.autonat = AutoNATService(cast(BasicHost, rt.host), serve=True, confirmations=self.confirmations)

        def on_peer(event: str, peer_id: str) -> None:
            if event == "connected":
                self._wake.set()
            else:
                self.non_servers.discard(peer_id)

        rt.peers.add_listener(on_peer)
        task_status.started()
        try:
            while True:
                self._wake = trio.Event()
                await self.check(rt)
                with trio.move_on_after(self.interval_secs):
                    await self._wake.wait()
                    await trio.sleep(0.5)  # batch peers that connect together
        finally:
            rt.peers.remove_listener(on_peer)
            rt.host.remove_stream_handler(AUTONAT_PROTOCOL_ID)

    async def check(self, rt: NodeRuntime) -> str:
        """Ask every connected AutoNAT server we have not asked yet; returns the status."""
        assert self.autonat is not None
        peers = [p for p in rt.peers.peers if p not in self.non_servers and p not in self.queried]
        async with trio.open_nursery() as nursery:
            for peer_id in peers:
                nursery.start_soon(self._query, peer_id)
        self.autonat.update_status()
        status = self.reachability
        if status != self._logged and status != "unknown":
            log.info("AutoNAT: this node is %s (%d server verdicts)", status, len(self.autonat.dial_results))
            self._logged = status
        return status

    async def _query(self, peer_id: str) -> None:
        assert self.autonat is not None
        try:
            await self.autonat.query_server(ID.from_base58(peer_id), timeout=QUERY_TIMEOUT_SECS)
            self.queried.add(peer_id)
        except Exception as exc:  # protocol refused, or the peer went away: no verdict
            self.non_servers.add(peer_id)
            log.debug("AutoNAT: %s gave no verdict: %s", peer_id, exc)

    async def shutdown(self, rt: NodeRuntime) -> None:
        return None
