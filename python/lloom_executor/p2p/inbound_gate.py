"""Puts `InboundAdmission` (admission.py) in front of a py-libp2p 0.8.1 swarm's inbound path.

A documented patch of one swarm instance, like inbound_fix.py, shaped so it
could go upstream as a connection gater with per-source counters. Where it hooks:
the TCP listener (`libp2p/transport/tcp`) runs `trio.serve_listeners`, which
accepts each socket and starts one task for it; that task calls the swarm's
`_handle_inbound_connection(stream, maddr)`. That method is replaced:

- the decision is made there, at accept, before a byte is read or any crypto
  runs; a refused socket gets SO_LINGER 0 and is closed at once (a reset: no
  TIME_WAIT entries pile up under a flood, no handshake is started);
- py-libp2p's `_inbound_limiter` (one pool of 250 slots for every source, held
  through the handshake: what let one address lock everyone out) is no longer
  taken; the per-source caps replace it;
- an admitted connection runs py-libp2p's own path (`_do_handle_inbound_connection`,
  inbound_fix.py's wrapper included) under one trio deadline, from accept until
  the swarm registered it: `handshake_timeout_secs` covers the multistream,
  noise and muxer negotiations together, and is lifted once it is registered.

`add_conn` is wrapped for inbound connections (TCP and relayed alike): the
per-PeerId cap is checked once noise told us the PeerId, and a TCP connection
turns from pending to established. The swarm's `connection_config` is replaced
by a copy whose `inbound_upgrade_timeout` is our handshake timeout (it bounds
relayed upgrades, which never pass our accept) and whose
`max_connections_per_peer` is ours (py-libp2p would otherwise close a peer's
connections beyond 3).

`widen_accept_backlog` raises the listen backlog py-libp2p sets (128): a burst
of connects faster than the accept loop would otherwise fill it, and the
kernel drops a legitimate client's SYN, which it then retries only after 1 s.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import socket
import struct
from typing import Any

import trio
from libp2p.metrics.swarm import SwarmEvent
from libp2p.network.exceptions import SwarmException

from .admission import InboundAdmission, Ticket

log = logging.getLogger(__name__)

ACCEPT_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
CLOSE_REFUSED_SECS = 2.0
_LINGER_RESET = struct.pack("ii", 1, 0)

# The admitted connection the current task handles, with the deadline over its handshake.
_CURRENT: contextvars.ContextVar[tuple[Ticket, trio.CancelScope] | None] = contextvars.ContextVar(
    "lloom_inbound_ticket", default=None
)


def install_inbound_gate(swarm: Any, admission: InboundAdmission) -> None:
    """Patch one swarm instance (after inbound_fix.bound_inbound_handlers, whose wrapper it calls)."""
    do_handle = getattr(swarm, "_do_handle_inbound_connection", None)
    add_conn = getattr(swarm, "add_conn", None)
    config = getattr(swarm, "connection_config", None)
    if do_handle is None or add_conn is None or not dataclasses.is_dataclass(config) or isinstance(config, type):
        log.warning("py-libp2p changed: inbound connection admission not installed (per-source caps are off)")
        return
    limits = admission.limits
    swarm.connection_config = dataclasses.replace(
        config,
        inbound_upgrade_timeout=limits.handshake_timeout_secs,
        max_connections_per_peer=limits.max_connections_per_peer,
    )

    async def handle_inbound(read_write_closer: Any, maddr: Any) -> None:
        ticket = admission.admit(_remote_ip(read_write_closer))
        if ticket is None:
            await _refuse(read_write_closer)
            return
        ticket.owner = trio.lowlevel.current_task()
        scope = trio.CancelScope(deadline=trio.current_time() + limits.handshake_timeout_secs)
        token = _CURRENT.set((ticket, scope))
        try:
            with scope:
                channel = getattr(swarm, "metric_send_channel", None)
                if channel is not None:  # what py-libp2p's handler reports, for admitted connections only
                    event = SwarmEvent()
                    event.conn_incoming = True
                    await channel.send(event)
                await do_handle(read_write_closer, maddr, SwarmEvent())
        finally:
            _CURRENT.reset(token)
            # py-libp2p's own upgrade timeout (the same length, started a little later) may fire
            # first: a connection that never got registered within the deadline timed out either way
            timed_out = not ticket.established and (scope.cancelled_caught or _elapsed(admission, ticket))
            admission.release(ticket)
            if timed_out:
                admission.handshake_timed_out()

    async def gated_add_conn(muxed_conn: Any, direction: str = "unknown") -> Any:
        if direction != "inbound":
            return await add_conn(muxed_conn, direction)
        peer_id = muxed_conn.peer_id
        peer = str(peer_id)
        if not admission.begin_peer(peer, len(swarm.connections.get(peer_id) or ())):
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_REFUSED_SECS):
                with contextlib.suppress(Exception):
                    await muxed_conn.close()
            raise SwarmException(f"inbound connection refused: {peer} is at max_connections_per_peer")
        try:
            conn = await add_conn(muxed_conn, direction)
        finally:
            admission.end_peer(peer)
        current = _CURRENT.get()
        # only in the task that accepted it: tasks spawned from there inherit the variable
        if current is not None and current[0].owner is trio.lowlevel.current_task():
            ticket, scope = current
            admission.mark_established(ticket)
            scope.deadline = math.inf
        return conn

    swarm._handle_inbound_connection = handle_inbound
    swarm.add_conn = gated_add_conn


def widen_accept_backlog(swarm: Any, backlog: int = ACCEPT_BACKLOG) -> None:
    """Raise the listen backlog of the swarm's TCP listeners (call once they listen)."""
    for listener in list(getattr(swarm, "listeners", {}).values()):
        for bound in getattr(listener, "listeners", ()):
            sock = getattr(bound, "socket", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.listen(backlog)


def _remote_ip(read_write_closer: Any) -> str:
    try:
        remote = read_write_closer.get_remote_address()
    except Exception:
        remote = None
    return str(remote[0]) if remote else "unknown"


def _elapsed(admission: InboundAdmission, ticket: Ticket) -> bool:
    return admission.clock() - ticket.accepted_at >= admission.limits.handshake_timeout_secs


async def _refuse(read_write_closer: Any) -> None:
    """Close at once with a reset (synchronously for a TCP socket: a refusal must cost as
    little as possible); trio's serve_listeners closes the stream again, harmlessly."""
    sock = getattr(getattr(read_write_closer, "stream", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()
            return
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_REFUSED_SECS):
        with contextlib.suppress(Exception):
            await read_write_closer.close()
