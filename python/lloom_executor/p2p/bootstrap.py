"""Dial the configured bootstrap peers at start, and again with backoff while disconnected."""

from __future__ import annotations

import logging
import random

import trio

from .node import NodeRuntime, dial
from .task_status import TaskStatus

log = logging.getLogger(__name__)

INITIAL_BACKOFF_SECS = 1.0
MAX_BACKOFF_SECS = 300.0


class BootstrapService:
    name = "bootstrap"

    def __init__(self, addresses: tuple[str, ...] = ()) -> None:
        self._addresses = addresses
        self.connected: dict[str, bool] = {}

    async def run(self, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        addresses = self._addresses or rt.network.bootstrap_peers
        task_status.started()
        async with trio.open_nursery() as nursery:
            for address in addresses:
                nursery.start_soon(self._keep_connected, rt, address)

    async def _keep_connected(self, rt: NodeRuntime, address: str) -> None:
        backoff = INITIAL_BACKOFF_SECS
        peer_id = address.rsplit("/p2p/", 1)[-1]
        reported = False
        while True:
            if peer_id in rt.peers.peers:
                self.connected[address] = True
                backoff = INITIAL_BACKOFF_SECS
                await trio.sleep(INITIAL_BACKOFF_SECS)
                continue
            self.connected[address] = False
            try:
                with trio.fail_after(30):
                    await dial(rt.host, address)
                log.info("connected to bootstrap peer %s", address)
                reported = False
                continue
            except Exception as exc:
                if not reported:
                    log.warning("bootstrap peer %s unreachable (%s); retrying with backoff", address, exc)
                    reported = True
            await trio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, MAX_BACKOFF_SECS)

    async def shutdown(self, rt: NodeRuntime) -> None:
        return None
