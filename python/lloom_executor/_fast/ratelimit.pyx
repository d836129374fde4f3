# cython: language_level=3
"""Token-bucket rate limiting keyed by an identifier (peer id or IP address).

Why Cython: admission runs ``try_acquire`` for every incoming request, once per
configured rule, before any expensive check.  The per-call cost has to stay in
the ~100 ns range so that a flood of junk requests is refused cheaply; a dict of
Python lists spends most of its time in the interpreter.

Model (one :class:`RateLimiter` per ``[[rate_limiting.rules]]`` entry):

* Request bucket: capacity ``burst`` (default: ``requests_per_minute``, i.e. a
  client may spend one minute's worth of requests at once), refilled
  continuously at ``requests_per_minute / 60`` per second.
* Token bucket: capacity ``tokens_per_minute`` (the config has no separate
  token burst, and one minute's worth is the natural window of a
  "per minute" rule), refilled at ``tokens_per_minute / 60`` per second.
* Either dimension may be ``None`` or ``0``, meaning unlimited.  A limiter with
  both unlimited allows everything and stores nothing.

A call is allowed only when *both* buckets hold enough; then both are debited.
A refused call debits nothing and returns how long to wait.  A request that
asks for more than a bucket's capacity can never pass, and ``math.inf`` is
returned so the caller can refuse it outright instead of telling the client to
retry.

Memory is bounded.  Keys live in a hash table (a dict mapping key -> slot) plus
C arrays of slots threaded on an LRU list:

* every call looks at (at most two) least-recently-used slots and evicts those
  idle for ``idle_seconds`` -- which is never less than the time an empty
  bucket needs to refill completely, so an evicted bucket was full and
  recreating it later as a fresh, full bucket changes nothing;
* a new key arriving while ``max_keys`` are held evicts the least recently
  used key.  New keys are never refused because the table is full.  The cost:
  under a flood of more than ``max_keys`` distinct keys inside one idle window,
  live keys get evicted and come back as fresh (full) buckets, i.e. such a
  flood can reset a bucket that was partly spent (never beyond a fresh
  bucket's allowance).  Size ``max_keys`` above the number of identifiers
  legitimately active within ``idle_seconds``; the per-IP rule plus the cost
  of minting peer ids bound what an attacker gains.

Both are O(1) per call; there is no periodic O(n) sweep.

Not thread-safe: use one instance from one thread (the event loop), as
the C-level state is updated without locks.

Time is monotonic seconds as a float.  The default clock reads
``clock_gettime(CLOCK_MONOTONIC_COARSE)`` from C without a Python call: the
epoch of :func:`time.monotonic`, one kernel tick (1-4 ms) of resolution, which
is plenty for per-minute limits and half the cost of the precise clock (the
clock read was a third of a check); tests inject ``clock``
or pass ``now`` explicitly.  A ``now`` earlier than a bucket's last update is
treated as "no time passed" (never refills backwards or forwards).
"""
from libc.math cimport INFINITY
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.long cimport PyLong_AsSsize_t
from lloom_executor._fast._clock cimport mono_coarse as _mono

cimport cython

__all__ = ["RateLimiter", "monotonic"]

# A call whose wait is below this many seconds is allowed and the tiny deficit
# forgiven.  Without it, retrying at exactly ``now + wait`` can fail by one
# rounding error (``now`` is ~1e6 s, so the elapsed time loses ~1e-10 s).
cdef double TIME_EPS = 1e-6

cdef Py_ssize_t _INITIAL_SLOTS = 64



def monotonic() -> float:
    """The limiter's default clock: CLOCK_MONOTONIC_COARSE seconds, read from C."""
    return _mono()


cdef struct Slot:
    double req      # request allowance currently in the bucket
    double tok      # token allowance currently in the bucket
    double last     # time of the last refill (= last access)
    Py_ssize_t prev # LRU neighbours; -1 = none.  Free slots chain via ``next``.
    Py_ssize_t next


cdef double _rate_arg(object value, str name) except -2.0:
    """None/0 -> 0.0 (unlimited); negatives and NaN -> ValueError."""
    cdef double v
    if value is None:
        return 0.0
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (v >= 0.0) or v == INFINITY:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


@cython.final
cdef class RateLimiter:
    """Token buckets for one rate-limit rule, keyed by identifier.

    ``RateLimiter(requests_per_minute, tokens_per_minute=None, burst=None,
    max_keys=100_000, idle_seconds=None, clock=None)``

    * ``requests_per_minute`` / ``tokens_per_minute``: refill rates; ``None``
      or ``0`` = that dimension is unlimited.
    * ``burst``: request-bucket capacity (default ``requests_per_minute``).
      Needs a request limit.
    * ``max_keys``: most identifiers held at once (>= 1).
    * ``idle_seconds``: inactivity after which a key may be forgotten; raised
      to the full-refill time if smaller (forgetting earlier would hand out
      free allowance).  Default: the full-refill time.
    * ``clock``: callable returning monotonic seconds; default is a C read of
      CLOCK_MONOTONIC.
    """

    cdef double _rpm, _tpm
    cdef double _req_rate, _tok_rate      # per second; 0 = unlimited
    cdef double _req_cap, _tok_cap
    cdef bint _req_lim, _tok_lim
    cdef double _idle
    cdef Py_ssize_t _max_keys
    cdef object _clock
    cdef dict _index                      # key -> slot number
    cdef list _keys                       # slot number -> key (None if free)
    cdef Slot* _slots
    cdef Py_ssize_t _cap                  # slots allocated
    cdef Py_ssize_t _used                 # slots ever handed out (<= _cap)
    cdef Py_ssize_t _count                # keys held
    cdef Py_ssize_t _head, _tail          # LRU: head = least recently used
    cdef Py_ssize_t _free                 # free-slot chain

    def __cinit__(self):
        self._slots = NULL
        self._head = self._tail = self._free = -1

    def __init__(self, requests_per_minute, tokens_per_minute=None, burst=None,
                 max_keys=100_000, idle_seconds=None, clock=None):
        cdef double refill = 0.0
        self._rpm = _rate_arg(requests_per_minute, "requests_per_minute")
        self._tpm = _rate_arg(tokens_per_minute, "tokens_per_minute")
        self._req_lim = self._rpm > 0.0
        self._tok_lim = self._tpm > 0.0
        self._req_rate = self._rpm / 60.0
        self._tok_rate = self._tpm / 60.0
        if burst is None:
            self._req_cap = self._rpm
        else:
            if not self._req_lim:
                raise ValueError("burst needs a requests_per_minute limit")
            self._req_cap = _rate_arg(burst, "burst")
            if self._req_cap < 1.0:
                raise ValueError(f"burst must be >= 1, got {burst!r}")
        self._tok_cap = self._tpm
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be an integer >= 1, got {max_keys!r}")
        self._max_keys = max_keys
        if self._req_lim:
            refill = self._req_cap / self._req_rate
        if self._tok_lim and self._tok_cap / self._tok_rate > refill:
            refill = self._tok_cap / self._tok_rate
        if idle_seconds is None:
            self._idle = refill
        else:
            self._idle = _rate_arg(idle_seconds, "idle_seconds")
            if self._idle < refill:
                self._idle = refill
        if clock is not None and not callable(clock):
            raise ValueError("clock must be a callable returning monotonic seconds")
        self._clock = clock
        self._index = {}
        self._keys = []
        self._cap = 0
        self._used = 0
        self._count = 0

    def __dealloc__(self):
        if self._slots != NULL:
            PyMem_Free(self._slots)
            self._slots = NULL

    # ----------------------------------------------------------------- helpers

    cdef inline double _now(self, object now) except? -1.0:
        if now is not None:
            return <double>now
        if self._clock is None:
            return _mono()
        return <double>self._clock()

    cdef inline void _unlink(self, Py_ssize_t i) noexcept:
        cdef Slot* s = &self._slots[i]
        if s.prev >= 0:
            self._slots[s.prev].next = s.next
        else:
            self._head = s.next
        if s.next >= 0:
            self._slots[s.next].prev = s.prev
        else:
            self._tail = s.prev

    cdef inline void _append(self, Py_ssize_t i) noexcept:
        cdef Slot* s = &self._slots[i]
        s.prev = self._tail
        s.next = -1
        if self._tail >= 0:
            self._slots[self._tail].next = i
        else:
            self._head = i
        self._tail = i

    cdef int _evict(self, Py_ssize_t i) except -1:
        key = self._keys[i]
        del self._index[key]
        self._keys[i] = None
        self._unlink(i)
        self._slots[i].next = self._free
        self._free = i
        self._count -= 1
        return 0

    cdef Py_ssize_t _new_slot(self) except -1:
        cdef Py_ssize_t i, ncap
        cdef Slot* p
        if self._free >= 0:
            i = self._free
            self._free = self._slots[i].next
            return i
        if self._used == self._cap:
            ncap = self._cap * 2 if self._cap else _INITIAL_SLOTS
            if ncap > self._max_keys:
                ncap = self._max_keys
            p = <Slot*>PyMem_Realloc(self._slots, ncap * sizeof(Slot))
            if p == NULL:
                raise MemoryError()
            self._slots = p
            self._keys.extend([None] * (ncap - self._cap))
            self._cap = ncap
        i = self._used
        self._used += 1
        return i

    cdef inline int _sweep(self, double now) except -1:
        """Forget up to two idle least-recently-used keys (amortised O(1))."""
        cdef int n
        for n in range(2):
            if self._head < 0 or now - self._slots[self._head].last < self._idle:
                break
            self._evict(self._head)
        return 0

    cdef inline double _wait(self, Slot* s, double requests, double tokens) noexcept:
        """Seconds until ``s`` holds ``requests``/``tokens``; 0.0 if it does now."""
        cdef double w = 0.0, d
        if self._req_lim:
            if requests > self._req_cap:
                return INFINITY
            d = requests - s.req
            if d > 0.0:
                w = d / self._req_rate
        if self._tok_lim:
            if tokens > self._tok_cap:
                return INFINITY
            d = tokens - s.tok
            if d > 0.0 and d / self._tok_rate > w:
                w = d / self._tok_rate
        return w if w > TIME_EPS else 0.0

    cdef inline int _check_amounts(self, double requests, double tokens) except -1:
        if not (requests >= 0.0) or not (tokens >= 0.0):
            raise ValueError(f"requests and tokens must be >= 0, got {requests!r}, {tokens!r}")
        return 0

    # -------------------------------------------------------------- public API

    def try_acquire(self, key, double requests=1, double tokens=0, now=None) -> float:
        """Take ``requests`` and ``tokens`` from ``key``'s buckets if both hold enough.

        Returns 0.0 when allowed (and debited).  Otherwise debits nothing and
        returns the seconds to wait before the same call would be allowed, or
        ``math.inf`` when it asks more than a bucket's capacity (it can never
        pass, so retrying is pointless).
        """
        cdef double t, el, w
        cdef Py_ssize_t i
        cdef Slot* s
        cdef void* found
        if not (requests >= 0.0) or not (tokens >= 0.0):
            self._check_amounts(requests, tokens)
        if not self._req_lim and not self._tok_lim:
            return 0.0
        t = self._now(now)
        if self._head >= 0 and t - self._slots[self._head].last >= self._idle:
            self._sweep(t)
        found = <void*>PyDict_GetItem(self._index, key)
        if found != NULL:
            i = PyLong_AsSsize_t(<object>found)
            s = &self._slots[i]
            if i != self._tail:
                self._unlink(i)
                self._append(i)
            el = t - s.last
            if el > 0.0:
                if self._req_lim:
                    s.req += el * self._req_rate
                    if s.req > self._req_cap:
                        s.req = self._req_cap
                if self._tok_lim:
                    s.tok += el * self._tok_rate
                    if s.tok > self._tok_cap:
                        s.tok = self._tok_cap
                s.last = t
        else:
            if (self._req_lim and requests > self._req_cap) or \
                    (self._tok_lim and tokens > self._tok_cap):
                return INFINITY  # never passes: don't spend a slot on it
            if self._count >= self._max_keys:
                self._evict(self._head)
            i = self._new_slot()
            self._keys[i] = key
            self._index[key] = i
            self._count += 1
            s = &self._slots[i]
            s.req = self._req_cap
            s.tok = self._tok_cap
            s.last = t
            self._append(i)
        w = self._wait(s, requests, tokens)
        if w > 0.0:
            return w
        if self._req_lim:
            s.req -= requests
            if s.req < 0.0:
                s.req = 0.0
        if self._tok_lim:
            s.tok -= tokens
            if s.tok < 0.0:
                s.tok = 0.0
        return 0.0

    def retry_after(self, key, double requests=1, double tokens=0, now=None) -> float:
        """What ``try_acquire`` would return now, without debiting or touching state.

        Useful for a ``Retry-After`` hint on a refusal produced elsewhere.
        """
        cdef Slot tmp
        cdef double t, el
        cdef void* found
        self._check_amounts(requests, tokens)
        if not self._req_lim and not self._tok_lim:
            return 0.0
        t = self._now(now)
        tmp.req = self._req_cap
        tmp.tok = self._tok_cap
        found = <void*>PyDict_GetItem(self._index, key)
        if found != NULL:
            tmp = self._slots[PyLong_AsSsize_t(<object>found)]
            el = t - tmp.last
            if el > 0.0:
                tmp.req = min(self._req_cap, tmp.req + el * self._req_rate)
                tmp.tok = min(self._tok_cap, tmp.tok + el * self._tok_rate)
        return self._wait(&tmp, requests, tokens)

    def available(self, key, now=None) -> tuple:
        """``(requests, tokens)`` allowance ``key`` could spend now (``inf`` = unlimited).

        For ``X-RateLimit-Remaining``-style reporting; does not touch state.
        """
        cdef Slot tmp
        cdef double t, el
        cdef void* found
        t = self._now(now)
        tmp.req = self._req_cap
        tmp.tok = self._tok_cap
        found = <void*>PyDict_GetItem(self._index, key)
        if found != NULL:
            tmp = self._slots[PyLong_AsSsize_t(<object>found)]
            el = t - tmp.last
            if el > 0.0:
                tmp.req = min(self._req_cap, tmp.req + el * self._req_rate)
                tmp.tok = min(self._tok_cap, tmp.tok + el * self._tok_rate)
        return (tmp.req if self._req_lim else INFINITY,
                tmp.tok if self._tok_lim else INFINITY)

    def reset(self, key) -> bool:
        """Forget ``key`` (its next call sees a fresh, full bucket).  True if it was held."""
        cdef void* found = <void*>PyDict_GetItem(self._index, key)
        if found == NULL:
            return False
        self._evict(PyLong_AsSsize_t(<object>found))
        return True

    def clear(self) -> None:
        """Forget every key."""
        while self._head >= 0:
            self._evict(self._head)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key) -> bool:
        return PyDict_GetItem(self._index, key) != NULL

    def __repr__(self) -> str:
        return (f"RateLimiter(requests_per_minute={self._rpm!r}, "
                f"tokens_per_minute={self._tpm!r}, burst={self._req_cap!r}, "
                f"max_keys={self._max_keys}, keys={self._count})")

    @property
    def requests_per_minute(self) -> float | None:
        return self._rpm if self._req_lim else None

    @property
    def tokens_per_minute(self) -> float | None:
        return self._tpm if self._tok_lim else None

    @property
    def burst(self) -> float | None:
        """Request-bucket capacity (None when requests are unlimited)."""
        return self._req_cap if self._req_lim else None

    @property
    def token_capacity(self) -> float | None:
        """Token-bucket capacity = tokens_per_minute (None when unlimited)."""
        return self._tok_cap if self._tok_lim else None

    @property
    def max_keys(self) -> int:
        return self._max_keys

    @property
    def idle_seconds(self) -> float:
        """Effective idle time before a key may be forgotten (>= full-refill time)."""
        return self._idle
