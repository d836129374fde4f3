"""Inbound connection admission: per-source caps and a handshake deadline (the rules, no I/O).

Why: py-libp2p 0.8.1 bounds inbound connections with one `CapacityLimiter` of
250 slots shared by every source (`Swarm._inbound_limiter`), and a slot is held
from accept until the handshake ends. Measured: 400 TCP connections from one
address that send junk, or stop after the multistream header, locked out every
other client until they timed out. rust-libp2p answers this with an upgrade
timeout and pending/established limits (`connection_limits`); this module is
that policy, and `inbound_gate.py` installs it on a py-libp2p swarm.

A connection is *pending* from accept until its noise and muxer negotiation
finished and the swarm registered it, then *established*. The caps:

- pending per source address, per /24 (IPv4) or /64 (IPv6) prefix, and in total:
  what one address, one network neighbourhood and everyone together may keep
  in the (cheap to start, costly to finish) handshake phase;
- pending + established per source address (`max_connections_per_ip`), checked
  at accept, so an address at its cap is refused before any crypto work;
- established per PeerId (`max_connections_per_peer`), checked once noise told us
  who it is. Relayed clients all arrive from their relay's address and never
  through our TCP accept, so they are counted by PeerId only.

Every check is synchronous (no await between check and count), so concurrent
accepts cannot overshoot a cap. Counters are read by the metrics thread without
a lock: they are plain ints and dicts whose key sets never change there.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ..config import NetworkConfig

log = logging.getLogger(__name__)
K = TypeVar("K")

# Why a connection was refused: the `reason` label of lloom_executor_connections_refused_total
PENDING_PER_IP = "pending_per_ip"
PENDING_PER_PREFIX = "pending_per_prefix"
PENDING_TOTAL = "pending_total"
CONNECTIONS_PER_IP = "connections_per_ip"
CONNECTIONS_PER_PEER = "connections_per_peer"
REFUSAL_REASONS = (PENDING_PER_IP, PENDING_PER_PREFIX, PENDING_TOTAL, CONNECTIONS_PER_IP, CONNECTIONS_PER_PEER)

LOG_INTERVAL_SECS = 10.0


@dataclass(frozen=True)
class AdmissionLimits:
    """The caps (defaults: see `NetworkConfig`, where the operator sets them)."""

    max_pending_per_ip: int = 32
    max_pending_per_prefix: int = 128
    max_pending_total: int = 1024
    max_connections_per_ip: int = 64
    max_connections_per_peer: int = 8
    handshake_timeout_secs: float = 10.0

    def __post_init__(self) -> None:
        counts = (
            self.max_pending_per_ip,
            self.max_pending_per_prefix,
            self.max_pending_total,
            self.max_connections_per_ip,
            self.max_connections_per_peer,
        )
        if min(counts) < 1 or not self.handshake_timeout_secs > 0:
            raise ValueError("connection caps must be >= 1 and the handshake timeout > 0")

    @classmethod
    def from_network(cls, network: NetworkConfig) -> AdmissionLimits:
        return cls(
            max_pending_per_ip=network.max_pending_per_ip,
            max_pending_per_prefix=network.max_pending_per_prefix,
            max_pending_total=network.max_pending_total,
            max_connections_per_ip=network.max_connections_per_ip,
            max_connections_per_peer=network.max_connections_per_peer,
            handshake_timeout_secs=network.handshake_timeout_secs,
        )


@dataclass(frozen=True)
class ConnectionCounts:
    """A snapshot for metrics and tests."""

    refused: dict[str, int]  # by reason, every reason present
    handshake_timeouts: int
    pending: int  # inbound TCP connections in their handshake now
    established: int  # inbound TCP connections registered with the swarm now


def source_keys(ip: str) -> tuple[str, tuple[int, int]]:
    """(address key, prefix key) of a remote address: IPv4-mapped IPv6 counts as its IPv4
    address, the prefix is the /24 (IPv4) or /64 (IPv6) the address belongs to."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip, (0, 0)  # not an IP (a test double, a unix socket): one bucket of its own
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        return str(addr), (4, int(addr) >> 8)
    return str(addr), (6, int(addr) >> 64)


@dataclass(eq=False)
class Ticket:
    """One admitted inbound TCP connection; released exactly once, by whoever admitted it."""

    ip: str
    prefix: tuple[int, int]
    accepted_at: float
    established: bool = False
    released: bool = False
    owner: object = field(default=None, repr=False)  # the task that handles it (see inbound_gate)


class InboundAdmission:
    """Counts pending and established inbound connections and decides who may come in."""

    def __init__(
        self,
        limits: AdmissionLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = LOG_INTERVAL_SECS,
    ) -> None:
        self.limits = limits or AdmissionLimits()
        self.clock = clock
        self._log_interval = log_interval
        self._pending_ip: dict[str, int] = {}
        self._pending_prefix: dict[tuple[int, int], int] = {}
        self._established_ip: dict[str, int] = {}
        self._upgrading_peer: dict[str, int] = {}
        self.pending = 0
        self.established = 0
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self.handshake_timeouts = 0
        self._unlogged: dict[str, int] = dict.fromkeys((*REFUSAL_REASONS, "handshake_timeout"), 0)
        self._last_log = -math.inf

    # -- at accept (before any byte is read) --------------------------------------------
    def admit(self, ip: str) -> Ticket | None:
        """A ticket for a new inbound TCP connection from `ip`, or None (counted) if over a cap."""
        limits = self.limits
        key, prefix = source_keys(ip)
        pending_ip = self._pending_ip.get(key, 0)
        reason = None
        if pending_ip >= limits.max_pending_per_ip:
            reason = PENDING_PER_IP
        elif pending_ip + self._established_ip.get(key, 0) >= limits.max_connections_per_ip:
            reason = CONNECTIONS_PER_IP
        elif self._pending_prefix.get(prefix, 0) >= limits.max_pending_per_prefix:
            reason = PENDING_PER_PREFIX
        elif self.pending >= limits.max_pending_total:
            reason = PENDING_TOTAL
        if reason is not None:
            self._refuse(reason)
            return None
        self._pending_ip[key] = pending_ip + 1
        self._pending_prefix[prefix] = self._pending_prefix.get(prefix, 0) + 1
        self.pending += 1
        return Ticket(key, prefix, self.clock())

    def mark_established(self, ticket: Ticket) -> None:
        """Its handshake finished and the swarm registered it: pending -> established."""
        if ticket.established or ticket.released:
            return
        self._drop_pending(ticket)
        ticket.established = True
        self._established_ip[ticket.ip] = self._established_ip.get(ticket.ip, 0) + 1
        self.established += 1

    def release(self, ticket: Ticket) -> None:
        """The connection is gone (refused later, failed, timed out or closed); idempotent."""
        if ticket.released:
            return
        if ticket.established:
            _decrement(self._established_ip, ticket.ip)
            self.established -= 1
        else:
            self._drop_pending(ticket)
        ticket.released = True

    def handshake_timed_out(self) -> None:
        self.handshake_timeouts += 1
        self._unlogged["handshake_timeout"] += 1
        self._maybe_log()

    # -- once the remote PeerId is known ------------------------------------------------
    def begin_peer(self, peer: str, registered: int) -> bool:
        """May another inbound connection of `peer` (which has `registered` connections now) be
        registered? If so it counts as upgrading until `end_peer`, so concurrent ones cannot all pass."""
        upgrading = self._upgrading_peer.get(peer, 0)
        if registered + upgrading >= self.limits.max_connections_per_peer:
            self._refuse(CONNECTIONS_PER_PEER)
            return False
        self._upgrading_peer[peer] = upgrading + 1
        return True

    def end_peer(self, peer: str) -> None:
        _decrement(self._upgrading_peer, peer)

    # -- reading -------------------------------------------------------------------------
    def counts(self) -> ConnectionCounts:
        return ConnectionCounts(dict(self.refused), self.handshake_timeouts, self.pending, self.established)

    def pending_from(self, ip: str) -> int:
        return self._pending_ip.get(source_keys(ip)[0], 0)

    def established_from(self, ip: str) -> int:
        return self._established_ip.get(source_keys(ip)[0], 0)

    # -- internals -----------------------------------------------------------------------
    def _drop_pending(self, ticket: Ticket) -> None:
        _decrement(self._pending_ip, ticket.ip)
        _decrement(self._pending_prefix, ticket.prefix)
        self.pending -= 1

    def _refuse(self, reason: str) -> None:
        self.refused[reason] += 1
        self._unlogged[reason] += 1
        self._maybe_log()

    def _maybe_log(self) -> None:
        """One line per interval with what happened since the last one: a flood of junk
        connections must not become a flood of log lines."""
        now = self.clock()
        if now - self._last_log < self._log_interval:
            return
        self._last_log = now
        seen = {k: v for k, v in self._unlogged.items() if v}
        for k in self._unlogged:
            self._unlogged[k] = 0
        text = ", ".join(f"{k} {v}" for k, v in seen.items())
        log.warning(
            "inbound connections refused or timed out since the last report: %s (now %d pending, %d established)",
            text,
            self.pending,
            self.established,
        )


def _decrement(counts: dict[K, int], key: K) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
