"""Replay protection: a signed request is served once per signer.

What identifies a request (docs/PROTOCOL.md, "Replay protection").  Reference
clients send `nonce: 1` in every `LlmRequest` and no envelope nonce, so
(signer, nonce) would refuse every second request of an honest client; and the
signing digest alone covers only the payload, which names no client, so two
users of the reference client asking the same thing in the same second would
collide.  A replay is the *same signer* resending the *same signed payload*:
the key is (recovered signer address, signing digest) — `replay_key`, 20 + 32
bytes.  Unsigned requests (served only with `allow_unsigned`) have no signer
and are keyed on the digest alone (32 bytes, so the two kinds never collide).
A frame whose signature was replaced by another signer's over the same payload
is that other signer's request: served once for each.

How long a digest is remembered.  The freshness check accepts an envelope
timestamp up to 300 s old and up to 300 s in the future, so a digest must be
remembered for `window_secs` = 300 + 300 s after it arrives.  But the envelope
timestamp is *not* covered by the signature (the digest is over the payload
only, docs/PROTOCOL.md §4): anyone holding a captured request can resend it later
with a fresh timestamp.  The signed part that bounds a request's life is its
`deadline`; so a digest is kept until the later of `now + window_secs` and
the request's deadline (capped at `now + max_hold_secs`, so that a deadline in
the year 3000 cannot pin memory).  After that, only a request *without* a
deadline (or one beyond the cap) could be replayed, by someone who captured it
and rewrote its timestamp: clients that care set a deadline.

Memory bound and what happens when full.  At most `max_entries` keys are
held (about 320 bytes each in CPython, the 52-byte key included).  The
executor sizes it from `[request_handling] replay_rate_per_sec` (ours):
`capacity_for(rate)` = rate x `window_secs` entries, so the default 1000/s
holds 600,000 (~190 MB when all are live; memory is used only as traffic
fills it).  Expired entries go first, always.  When the store is full of live entries, the entry
whose protection ends *soonest* (with the plain window: the oldest) is
forgotten to make room, counted in `forced_evictions` and logged as a warning
(at most once a minute): from then on, a replay of that one request would be
served again.  We never refuse new requests because the store is full (that
would let anyone stop the executor by sending unique requests); the metrics
show entries, capacity and `lloom_executor_replay_forced_evictions_total`.

Cost: lookup O(1); remembering a new digest O(log n) (a heap orders expiries,
which differ once deadlines count); expiry amortised O(log n) per entry.

Several worker processes (one executor on every core) need one
shared store: `ReplayStore` is the interface.  `check_and_remember` is a
single atomic operation on purpose, so a shared implementation maps it to one
`INSERT ... ON CONFLICT DO NOTHING` (SQLite WAL) or `SET key 1 NX EXAT t`
(Redis) and two workers cannot both admit the same digest.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .. import _native

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_HOLD_SECS",
    "DEFAULT_WINDOW_SECS",
    "ReplayGuard",
    "ReplayStore",
    "capacity_for",
    "replay_key",
]

DEFAULT_WINDOW_SECS = 300 + 300  # MAX_MESSAGE_AGE_SECS + MAX_CLOCK_SKEW_SECS
DEFAULT_MAX_ENTRIES = 262_144
DEFAULT_MAX_HOLD_SECS = 24 * 3600
_FULL_WARNING_EVERY_SECS = 60.0


def capacity_for(rate_per_sec: int, window_secs: float = DEFAULT_WINDOW_SECS) -> int:
    """Entries that hold a full window of requests arriving at `rate_per_sec`."""
    return max(1, int(rate_per_sec * window_secs))


def replay_key(decoded: _native.DecodedRequest) -> bytes:
    """signer (20 bytes) + signing digest (32) for a validly signed request; the digest alone otherwise."""
    digest = bytes(decoded.digest)
    if decoded.is_signed and decoded.signature_valid and decoded.signer is not None:
        return bytes(decoded.signer) + digest
    return digest


@runtime_checkable
class ReplayStore(Protocol):
    """Digests of requests already admitted; one implementation per process or shared."""

    max_entries: int  # the capacity the metrics report (0: bounded elsewhere, e.g. on disk)
    forced_evictions: int  # live digests forgotten for room

    def check_and_remember(self, digest: bytes, now: float | None = None, deadline: int = 0) -> bool:
        """True (and remembered) when `digest` is new; False when it is a replay."""

    def seen(self, digest: bytes, now: float | None = None) -> bool:
        """Whether `digest` is remembered now (read only: an early, cheap refusal)."""

    def forget(self, digest: bytes) -> bool:
        """Drop `digest` (the request was refused before it was served, so a verbatim retry is fine)."""

    def __len__(self) -> int: ...


class ReplayGuard:
    """In-process `ReplayStore`: a dict of digest -> entry plus a heap of expiries.

    Times are wall-clock Unix seconds (`now`, default `clock()` = `time.time`),
    the scale of a request's `deadline`.  A clock stepping backwards only makes
    entries live longer.  Not thread-safe: call from the event loop only.
    """

    def __init__(
        self,
        window_secs: float = DEFAULT_WINDOW_SECS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        max_hold_secs: float = DEFAULT_MAX_HOLD_SECS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not window_secs > 0:
            raise ValueError(f"window_secs must be > 0, got {window_secs!r}")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        if not max_hold_secs >= window_secs:
            raise ValueError(f"max_hold_secs ({max_hold_secs!r}) must be >= window_secs ({window_secs!r})")
        self.window_secs = float(window_secs)
        self.max_entries = max_entries
        self.max_hold_secs = float(max_hold_secs)
        self._clock = clock
        self._entries: dict[bytes, tuple[float, int]] = {}  # digest -> (expires_at, seq)
        self._heap: list[tuple[float, int, bytes]] = []  # (expires_at, seq, digest); stale rows skipped
        self._seq = itertools.count()
        self._warned_at = -float("inf")
        # counters (for metrics and tests)
        self.replays = 0  # check_and_remember calls refused
        self.expired = 0  # entries dropped because their time was up
        self.forced_evictions = 0  # live entries dropped because the store was full

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, digest: object) -> bool:
        return digest in self._entries

    def expires_at(self, digest: bytes) -> float | None:
        """When `digest` will be forgotten (None when not held)."""
        entry = self._entries.get(digest)
        return None if entry is None else entry[0]

    def seen(self, digest: bytes, now: float | None = None) -> bool:
        now = self._clock() if now is None else now
        entry = self._entries.get(digest)
        return entry is not None and entry[0] > now

    def check_and_remember(self, digest: bytes, now: float | None = None, deadline: int = 0) -> bool:
        """True when `digest` was not seen within its retention (and it is now remembered).

        `deadline`: the request's signed deadline (Unix seconds, 0 = none); the
        digest is kept until max(now + window_secs, min(deadline, now + max_hold_secs)).
        """
        now = self._clock() if now is None else now
        self._expire(now)
        entry = self._entries.get(digest)
        if entry is not None and entry[0] > now:
            self.replays += 1
            return False
        keep_until = now + self.window_secs
        if deadline:
            keep_until = max(keep_until, min(float(deadline), now + self.max_hold_secs))
        if entry is None and len(self._entries) >= self.max_entries:
            self._evict_one(now)
        seq = next(self._seq)
        self._entries[digest] = (keep_until, seq)
        heapq.heappush(self._heap, (keep_until, seq, digest))
        self._compact()
        return True

    def forget(self, digest: bytes) -> bool:
        return self._entries.pop(digest, None) is not None  # its heap row goes stale

    def clear(self) -> None:
        self._entries.clear()
        self._heap.clear()

    # -- internals -------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        heap, entries = self._heap, self._entries
        while heap and heap[0][0] <= now:
            _, seq, digest = heapq.heappop(heap)
            entry = entries.get(digest)
            if entry is not None and entry[1] == seq:
                del entries[digest]
                self.expired += 1

    def _evict_one(self, now: float) -> None:
        """Full of live entries: forget the one whose protection ends soonest."""
        heap, entries = self._heap, self._entries
        while heap:
            _, seq, digest = heapq.heappop(heap)
            entry = entries.get(digest)
            if entry is not None and entry[1] == seq:
                del entries[digest]
                self.forced_evictions += 1
                if now - self._warned_at >= _FULL_WARNING_EVERY_SECS:
                    self._warned_at = now
                    log.warning(
                        "replay store full (%d digests): forgetting live entries early, so their replays "
                        "would be served (%d so far); raise max_entries",
                        self.max_entries,
                        self.forced_evictions,
                    )
                return

    def _compact(self) -> None:
        """Rebuild the heap when stale rows (forgotten digests) outnumber live ones."""
        if len(self._heap) > 2 * len(self._entries) + 1024:
            self._heap = [(exp, seq, d) for d, (exp, seq) in self._entries.items()]
            heapq.heapify(self._heap)
