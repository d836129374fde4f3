"""Workaround for a py-libp2p 0.8.1 leak that stops a long-running node accepting peers.

`Swarm._do_handle_inbound_connection` (TCP path) upgrades an inbound connection
and then awaits `self.manager.wait_finished()` -- the *swarm's* lifetime -- so
that trio's `serve_listeners` does not close the socket under it. The handler
task and its slot in `Swarm._inbound_limiter` (a `CapacityLimiter` of
`max_connections - min_connections` = 250) are therefore held long after the
connection closed. Measured on loopback: after 250 inbound connections *ever*,
every new inbound connection is refused (a rust client gets `dial_failed`), and
one trio task per past connection stays alive.

The fix keeps that handler alive only while its own connection lives. Only the
TCP inbound path changes (a ContextVar marks it); the other callers of
`upgrade_inbound_raw_conn` (relay/hole-punching paths) keep the original.
Found by tests/test_p2p_robustness.py (task count back to baseline).
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

log = logging.getLogger(__name__)

_TCP_INBOUND: contextvars.ContextVar[bool] = contextvars.ContextVar("lloom_tcp_inbound", default=False)


class InboundConnectionEnded(Exception):
    """Ends py-libp2p's inbound handler once its connection closed (frees the socket and the slot)."""


def bound_inbound_handlers(swarm: Any) -> None:
    """Patch one swarm instance (call right after the host is built)."""
    original_handle = getattr(swarm, "_do_handle_inbound_connection", None)
    original_upgrade = getattr(swarm, "upgrade_inbound_raw_conn", None)
    if original_handle is None or original_upgrade is None:
        log.warning("py-libp2p changed: inbound-connection workaround not applied (check for the leak it fixed)")
        return

    async def handle(read_write_closer: Any, maddr: Any, failure_event: Any) -> None:
        token = _TCP_INBOUND.set(True)
        try:
            await original_handle(read_write_closer, maddr, failure_event)
        finally:
            _TCP_INBOUND.reset(token)

    async def upgrade(raw_conn: Any, maddr: Any) -> Any:
        muxed = await original_upgrade(raw_conn, maddr)
        if not _TCP_INBOUND.get():
            return muxed
        conn = next((c for conns in swarm.connections.values() for c in conns if c.muxed_conn is muxed), None)
        if conn is not None:
            await conn.event_closed.wait()
        # py-libp2p's handler catches this (debug log, closes the raw conn) and
        # returns: trio closes the socket and the inbound slot is released
        raise InboundConnectionEnded()

    swarm._do_handle_inbound_connection = handle
    swarm.upgrade_inbound_raw_conn = upgrade
