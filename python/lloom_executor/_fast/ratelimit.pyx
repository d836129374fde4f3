# cython: language_level=3, binding=False, embedsignature=True, embedsignature.format=clinic
"""Token-bucket rate limiting keyed by an identifier (peer id or IP address).

Why Cython: admission runs ``try_acquire`` for every incoming request, once per
configured rule, before any expensive check.  The per-call cost has to stay in
the tens of nanoseconds so that a flood of junk requests is refused cheaply; a
dict of Python lists spends most of its time in the interpreter.

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

Memory is bounded, and nothing is ever O(n) per call:

* Keys live in our own open-addressing hash table (linear probing, deletion by
  backward shift) over a C array of 64-byte, cache-line-aligned slots, not in
  a dict.  The dict was the largest cost: a dict mapping key -> slot number
  needs a Python int per slot, and under a flood of new keys every eviction
  leaves a deleted-entry marker that lengthens later probes until the next
  resize.  Our table keeps no markers, stores 32 bits of the (re-mixed) hash
  next to each slot number so a probe rarely touches a slot that is not the
  answer, and compares keys by identity first (the caller usually passes the
  same string object), then by hash and ``==``.  It is kept at most a quarter
  full: a flood of new keys costs four probe loops per call (miss, find the
  evicted entry, shift its run back, insert), and each loop's exit is a
  mispredicted branch per extra step; half full made the flood ~40% slower.
  That is 32-64 bytes of table per key held, next to the 64-byte slot.  The
  slots own a reference to their key.
* Recency is CLOCK / second chance rather than an exact LRU list: a hit only
  sets the slot's reference bit, instead of relinking the slot at the tail of
  a doubly linked list (three slots written on every hit).  Slots are kept on
  a list in the order they were (re)placed.  Evicting for room takes the head:
  if its bit is set it is cleared and the slot goes to the tail (a second
  chance), otherwise it is evicted.  Every bit cleared was set by an earlier
  hit, so this is O(1) amortised per call; a key used since it was placed is
  never evicted before a key that was not.
* Every call looks at the head: when it was placed ``idle_seconds`` ago, up to
  two head slots are examined -- evicted if the key was idle (no use) for
  ``idle_seconds``, else moved to the tail.  ``idle_seconds`` is never less
  than the time an empty bucket needs to refill completely, so an evicted
  bucket was full and recreating it later as a fresh, full bucket changes
  nothing.  A key is never forgotten before it has been idle that long (it
  may linger up to about twice that); the only exception is below.
* A new key arriving while ``max_keys`` are held evicts one (see above).  New
  keys are never refused because the table is full.  The cost: under a flood
  of more than ``max_keys`` distinct keys inside one idle window, live keys
  get evicted and come back as fresh (full) buckets, i.e. such a flood can
  reset a bucket that was partly spent (never beyond a fresh bucket's
  allowance).  Size ``max_keys`` above the number of identifiers legitimately
  active within ``idle_seconds``; the per-IP rule plus the cost of minting peer
  ids bound what an attacker gains.  (At most 2**30 keys are held whatever
  ``max_keys`` says: that is already 64 GiB of slots.)

Call overhead matters as much as the work at this size, so: the module is
compiled with ``binding=False`` (``lim.try_acquire`` is then a builtin method,
which CPython calls ~5 ns faster than a bound method wrapping a cyfunction --
a fifth of the whole call); ``requests`` /
``tokens`` / ``now`` are taken as objects and converted with a fast path for
exact ints and floats (a typed ``double`` parameter converts an int through
``int.__float__``, which allocates a float); a refusal hands back the same
float object while the wait it reports does not change (a peer hammering
within one clock tick gets one answer), and an allowance the shared ``0.0``.

Not thread-safe and not re-entrant beyond what ``==`` on exotic keys needs:
use one instance from one thread (the event loop), as the C-level state is
updated without locks.  Keys are held by the C table, which the garbage
collector cannot see: a key object that refers back to its limiter forms a
cycle that is never collected (keys are strings, bytes or ints in practice).

Time is monotonic seconds as a float.  The default clock reads
``clock_gettime(CLOCK_MONOTONIC_COARSE)`` from C without a Python call: the
epoch of :func:`time.monotonic`, one kernel tick (1-4 ms) of resolution, which
is plenty for per-minute limits and half the cost of the precise clock (the
clock read was a third of a check); tests inject ``clock``
or pass ``now`` explicitly.  A ``now`` earlier than a bucket's last update is
treated as "no time passed" (never refills backwards or forwards).
"""
from libc.math cimport INFINITY
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.string cimport memset, memcpy
from libc.stdlib cimport free
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.object cimport PyObject, PyObject_RichCompareBool, Py_EQ
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.long cimport PyLong_AsDouble, PyLong_CheckExact
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact, PyFloat_AsDouble
from cpython.unicode cimport PyUnicode_CheckExact
from lloom_executor._fast._clock cimport mono_coarse as _mono

cimport cython

cdef extern from "Python.h":
    ctypedef struct PyASCIIObject:
        Py_hash_t hash          # cached str hash, -1 until first computed
    Py_hash_t _PyObject_Hash "PyObject_Hash"(object o) except -1
    void _decref "Py_DECREF"(PyObject* o)

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)

cdef extern from *:
    """
    #define LLOOM_RL_GOLDEN 0x9E3779B97F4A7C15ULL
    """
    uint64_t LLOOM_RL_GOLDEN

__all__ = ["RateLimiter", "monotonic"]

# A call whose wait is below this many seconds is allowed and the tiny deficit
# forgiven.  Without it, retrying at exactly ``now + wait`` can fail by one
# rounding error (``now`` is ~1e6 s, so the elapsed time loses ~1e-10 s).
cdef double TIME_EPS = 1e-6

cdef int32_t _INITIAL_SLOTS = 64
cdef int _INITIAL_TABLE_BITS = 8        # 256 entries: room for 64 keys at load 1/4
cdef Py_ssize_t _MAX_HELD = 1 << 30     # int32 slot numbers; 2**30 slots = 64 GiB

cdef object _ZERO = 0.0
cdef object _INF = INFINITY


def monotonic() -> float:
    """The limiter's default clock: CLOCK_MONOTONIC_COARSE seconds, read from C."""
    return _mono()


cdef inline double _amount(object v) except? -1.0:
    """The value of the number ``v`` as a C double, as a ``double`` parameter would
    convert it (TypeError for a str or None), but without allocating a float for
    an exact int."""
    if PyLong_CheckExact(v):
        return PyLong_AsDouble(v)
    if PyFloat_CheckExact(v):
        return PyFloat_AS_DOUBLE(v)
    return PyFloat_AsDouble(v)  # bool, int/float subclasses, __float__/__index__


cdef inline Py_hash_t _hash(object key) except -1:
    cdef Py_hash_t h
    if PyUnicode_CheckExact(key):
        h = (<PyASCIIObject*>key).hash
        if h != -1:
            return h
    return _PyObject_Hash(key)


cdef inline uint32_t _tag(Py_hash_t h) noexcept nogil:
    """Top 32 bits of the Fibonacci-mixed hash: the table keeps them next to the
    slot number, and their top bits pick the home bucket (so ints hashing to
    themselves, or any hash regular in its low bits, still spread out)."""
    return <uint32_t>((<uint64_t>h * LLOOM_RL_GOLDEN) >> 32)


cdef struct Slot:
    double req       # request allowance currently in the bucket
    double tok       # token allowance currently in the bucket
    double last      # time of the last refill (= last access)
    double placed    # when the slot was (re)placed at the tail of the list
    PyObject* key    # owned reference; NULL when free
    Py_hash_t hash
    int32_t prev     # placement-order neighbours; -1 = none.  Free slots chain via ``next``.
    int32_t next
    int32_t ref      # used since placed (the CLOCK second-chance bit)


cdef struct Entry:
    int32_t slot     # -1 = empty
    uint32_t tag     # _tag(hash) of that slot's key


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
      CLOCK_MONOTONIC_COARSE.
    """

    cdef double _rpm, _tpm
    cdef double _req_rate, _tok_rate      # per second; 0 = unlimited
    cdef double _req_cap, _tok_cap
    cdef bint _req_lim, _tok_lim
    cdef double _idle
    cdef Py_ssize_t _max_keys             # as given
    cdef int32_t _limit                   # keys actually held at most
    cdef object _clock
    cdef Slot* _slots
    cdef int32_t _cap                     # slots allocated
    cdef int32_t _used                    # slots ever handed out (<= _cap)
    cdef int32_t _count                   # keys held
    cdef int32_t _head, _tail             # placement order: head = placed longest ago
    cdef int32_t _free                    # free-slot chain
    cdef Entry* _table
    cdef size_t _tmask                    # table size - 1 (size is a power of two)
    cdef int _tshift                      # 32 - log2(table size)
    cdef size_t _version                  # bumped by every change of the key set
    cdef double _wait_val                 # last refusal wait returned, and its object
    cdef object _wait_obj

    def __cinit__(self):
        self._slots = NULL
        self._table = NULL
        self._cap = self._used = self._count = 0
        self._head = self._tail = self._free = -1
        self._wait_val = -1.0
        self._wait_obj = None
        self._new_table(_INITIAL_TABLE_BITS)   # never NULL: lookups need no check

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
        self._limit = <int32_t>min(max_keys, _MAX_HELD)
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
        self._drop_all()
        self._new_table(_INITIAL_TABLE_BITS)

    def __dealloc__(self):
        cdef int32_t i
        if self._slots != NULL:
            for i in range(self._used):
                if self._slots[i].key != NULL:
                    _decref(self._slots[i].key)
                    self._slots[i].key = NULL
            free(self._slots)
            self._slots = NULL
        PyMem_Free(self._table)
        self._table = NULL

    # ------------------------------------------------------------ hash table

    cdef int _new_table(self, int bits) except -1:
        """Replace the table by an empty one of 2**bits entries and re-enter every key."""
        cdef size_t size = (<size_t>1) << bits
        cdef Entry* t = <Entry*>PyMem_Malloc(size * sizeof(Entry))
        cdef int32_t i
        if t == NULL:
            raise MemoryError()
        memset(t, 0xFF, size * sizeof(Entry))      # slot = -1 everywhere
        PyMem_Free(self._table)
        self._table = t
        self._tmask = size - 1
        self._tshift = 32 - bits
        for i in range(self._used):
            if self._slots[i].key != NULL:
                self._put(i, self._slots[i].hash)
        return 0

    cdef inline void _put(self, int32_t i, Py_hash_t h) noexcept:
        cdef uint32_t tag = _tag(h)
        cdef size_t idx = tag >> self._tshift
        while self._table[idx].slot >= 0:
            idx = (idx + 1) & self._tmask
        self._table[idx].slot = i
        self._table[idx].tag = tag

    cdef inline void _remove(self, int32_t i, Py_hash_t h) noexcept:
        """Take slot ``i`` out of the table; later entries of its run move back
        into the hole (backward shift), so no deleted-entry markers exist."""
        cdef uint32_t tag = _tag(h)
        cdef size_t mask = self._tmask
        cdef size_t hole = tag >> self._tshift, idx, home
        cdef Entry* tab = self._table
        while tab[hole].slot != i:
            hole = (hole + 1) & mask
        idx = hole
        while True:
            idx = (idx + 1) & mask
            if tab[idx].slot < 0:
                break
            home = tab[idx].tag >> self._tshift
            # The entry may move back to the hole unless its home lies in (hole, idx].
            if ((idx - home) & mask) >= ((idx - hole) & mask):
                tab[hole] = tab[idx]
                hole = idx
        tab[hole].slot = -1

    cdef inline int32_t _find(self, object key, Py_hash_t h) except -2:
        """Slot holding ``key``, or -1."""
        cdef uint32_t tag = _tag(h)
        cdef size_t idx = tag >> self._tshift
        cdef Entry* e
        cdef Slot* s
        while True:
            e = &self._table[idx]
            if e.slot < 0:
                return -1
            if e.tag == tag:
                s = &self._slots[e.slot]
                if s.key == <PyObject*>key:
                    return e.slot
                if s.hash == h:
                    return self._find_eq(key, h)
            idx = (idx + 1) & self._tmask

    cdef int32_t _find_eq(self, object key, Py_hash_t h) except -2:
        """``_find`` for a key equal to, but not the same object as, a stored one.

        ``==`` may run Python code (a user-defined ``__eq__``) that changes this
        limiter, so the probe restarts whenever the key set changed meanwhile.
        """
        cdef uint32_t tag = _tag(h)
        cdef size_t idx, version
        cdef int32_t j
        cdef Slot* s
        cdef object other
        cdef bint same
        while True:
            version = self._version
            idx = tag >> self._tshift
            while True:
                j = self._table[idx].slot
                if j < 0:
                    return -1
                if self._table[idx].tag == tag:
                    s = &self._slots[j]
                    if s.key == <PyObject*>key:
                        return j
                    if s.hash == h:
                        other = <object>s.key      # keep it alive through __eq__
                        same = PyObject_RichCompareBool(other, key, Py_EQ)
                        if self._version != version:
                            break                  # restart the probe
                        if same:
                            return j
                idx = (idx + 1) & self._tmask

    # ------------------------------------------------------ slots and order

    cdef inline void _unlink(self, int32_t i) noexcept:
        cdef Slot* s = &self._slots[i]
        if s.prev >= 0:
            self._slots[s.prev].next = s.next
        else:
            self._head = s.next
        if s.next >= 0:
            self._slots[s.next].prev = s.prev
        else:
            self._tail = s.prev

    cdef inline void _append(self, int32_t i) noexcept:
        cdef Slot* s = &self._slots[i]
        s.prev = self._tail
        s.next = -1
        if self._tail >= 0:
            self._slots[self._tail].next = i
        else:
            self._head = i
        self._tail = i

    cdef inline void _replace(self, int32_t i, double t) noexcept:
        """Second chance: clear the reference bit and move ``i`` to the tail."""
        cdef Slot* s = &self._slots[i]
        s.ref = 0
        s.placed = t
        if i != self._tail:
            self._unlink(i)
            self._append(i)

    cdef object _evict(self, int32_t i):
        """Forget slot ``i``.  Returns its key: the caller drops that reference
        once the limiter is consistent, so a key's ``__del__`` sees a sane state."""
        cdef Slot* s = &self._slots[i]
        cdef object key = <object>s.key            # our reference moves to ``key``
        Py_DECREF(key)
        self._remove(i, s.hash)
        self._unlink(i)
        s.key = NULL
        s.next = self._free
        self._free = i
        self._count -= 1
        self._version += 1
        return key

    cdef int32_t _new_slot(self) except -1:
        cdef int32_t i, ncap
        cdef Slot* p
        if self._free >= 0:
            i = self._free
            self._free = self._slots[i].next
            return i
        if self._used == self._cap:
            ncap = self._cap * 2 if self._cap else _INITIAL_SLOTS
            if ncap > self._limit:
                ncap = self._limit
            # One slot = one cache line, so the array is 64-byte aligned.
            if posix_memalign(<void**>&p, 64, ncap * sizeof(Slot)) != 0:
                raise MemoryError()
            if self._slots != NULL:
                memcpy(p, self._slots, self._cap * sizeof(Slot))
                free(self._slots)
            self._slots = p
            self._cap = ncap
        i = self._used
        self._used += 1
        return i

    cdef int32_t _insert(self, object key, Py_hash_t h, double t) except -1:
        """Hold ``key`` with full buckets (the caller made room)."""
        cdef int32_t i
        cdef Slot* s
        cdef int bits
        if <size_t>(self._count + 1) * 4 > self._tmask + 1:
            bits = 32 - self._tshift + 1
            self._new_table(bits)
        i = self._new_slot()
        s = &self._slots[i]
        Py_INCREF(key)
        s.key = <PyObject*>key
        s.hash = h
        s.req = self._req_cap
        s.tok = self._tok_cap
        s.last = t
        s.placed = t
        s.ref = 0
        self._put(i, h)
        self._append(i)
        self._count += 1
        self._version += 1
        return i

    cdef object _evict_for_room(self, double t):
        """CLOCK: evict the first head slot not used since it was placed."""
        cdef int32_t i
        while True:
            i = self._head
            if not self._slots[i].ref:
                return self._evict(i)
            self._replace(i, t)

    cdef int _sweep(self, double t) except -1:
        """The head was placed ``idle_seconds`` ago: look at up to two head
        slots, forgetting idle keys and giving used ones a new place."""
        cdef int n
        cdef int32_t i
        cdef object dead0 = None, dead1 = None
        for n in range(2):
            i = self._head
            if i < 0 or t - self._slots[i].placed < self._idle:
                break
            if t - self._slots[i].last >= self._idle:
                if n == 0:
                    dead0 = self._evict(i)
                else:
                    dead1 = self._evict(i)
            else:
                self._replace(i, t)
        return 0

    cdef int _drop_all(self) except -1:
        cdef int32_t i
        cdef list dead = []
        if self._slots != NULL:
            for i in range(self._used):
                if self._slots[i].key != NULL:
                    dead.append(<object>self._slots[i].key)
                    _decref(self._slots[i].key)
                    self._slots[i].key = NULL
            free(self._slots)
            self._slots = NULL
        self._cap = self._used = self._count = 0
        self._head = self._tail = self._free = -1
        self._version += 1
        return 0                                   # ``dead`` is released here

    # ---------------------------------------------------------------- checks

    cdef inline double _time(self, object now) except? -1.0:
        if now is not None:
            return _amount(now)
        if self._clock is None:
            return _mono()
        return _amount(self._clock())

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

    cdef inline object _wait_object(self, double w):
        if w == self._wait_val and self._wait_obj is not None:  # (None after a GC clear)
            return self._wait_obj
        self._wait_obj = w
        self._wait_val = w
        return self._wait_obj

    cdef int _bad_amounts(self, object requests, object tokens) except -1:
        raise ValueError(f"requests and tokens must be >= 0, got {requests!r}, {tokens!r}")

    cdef int _peek(self, object key, double t, Slot* out) except -1:
        """The buckets ``key`` would have at ``t``, without touching state."""
        cdef int32_t i
        cdef double el
        out.req = self._req_cap
        out.tok = self._tok_cap
        i = self._find(key, _hash(key))
        if i >= 0:
            out[0] = self._slots[i]
            el = t - out.last
            if el > 0.0:
                out.req = min(self._req_cap, out.req + el * self._req_rate)
                out.tok = min(self._tok_cap, out.tok + el * self._tok_rate)
        return 0

    # -------------------------------------------------------------- public API

    def try_acquire(self, key, requests=1, tokens=0, now=None):
        """Take ``requests`` and ``tokens`` from ``key``'s buckets if both hold enough.

        Returns 0.0 when allowed (and debited).  Otherwise debits nothing and
        returns the seconds to wait before the same call would be allowed, or
        ``math.inf`` when it asks more than a bucket's capacity (it can never
        pass, so retrying is pointless).
        """
        cdef double req = _amount(requests), tok = _amount(tokens), t, el, w
        cdef int32_t i
        cdef Slot* s
        cdef Py_hash_t h
        cdef object dead
        if not (req >= 0.0) or not (tok >= 0.0):
            self._bad_amounts(requests, tokens)
        if not self._req_lim and not self._tok_lim:
            return _ZERO
        t = self._time(now)
        if self._head >= 0 and t - self._slots[self._head].placed >= self._idle:
            self._sweep(t)
        h = _hash(key)
        i = self._find(key, h)
        if i >= 0:
            s = &self._slots[i]
            s.ref = 1
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
            if (self._req_lim and req > self._req_cap) or \
                    (self._tok_lim and tok > self._tok_cap):
                return _INF  # never passes: don't spend a slot on it
            if self._count >= self._limit:
                dead = self._evict_for_room(t)     # released on return
            i = self._insert(key, h, t)
            s = &self._slots[i]
        w = self._wait(s, req, tok)
        if w > 0.0:
            return self._wait_object(w)
        if self._req_lim:
            s.req -= req
            if s.req < 0.0:
                s.req = 0.0
        if self._tok_lim:
            s.tok -= tok
            if s.tok < 0.0:
                s.tok = 0.0
        return _ZERO

    def retry_after(self, key, requests=1, tokens=0, now=None):
        """What ``try_acquire`` would return now, without debiting or touching state.

        Useful for a ``Retry-After`` hint on a refusal produced elsewhere.
        """
        cdef Slot tmp
        cdef double req = _amount(requests), tok = _amount(tokens), w
        if not (req >= 0.0) or not (tok >= 0.0):
            self._bad_amounts(requests, tokens)
        if not self._req_lim and not self._tok_lim:
            return _ZERO
        self._peek(key, self._time(now), &tmp)
        w = self._wait(&tmp, req, tok)
        return self._wait_object(w) if w > 0.0 else _ZERO

    def available(self, key, now=None):
        """``(requests, tokens)`` allowance ``key`` could spend now (``inf`` = unlimited).

        For ``X-RateLimit-Remaining``-style reporting; does not touch state.
        """
        cdef Slot tmp
        self._peek(key, self._time(now), &tmp)
        return (tmp.req if self._req_lim else INFINITY,
                tmp.tok if self._tok_lim else INFINITY)

    def reset(self, key):
        """Forget ``key`` (its next call sees a fresh, full bucket).  True if it was held."""
        cdef int32_t i = self._find(key, _hash(key))
        cdef object dead
        if i < 0:
            return False
        dead = self._evict(i)
        return True

    def clear(self):
        """Forget every key (and give back the memory they took)."""
        self._drop_all()
        self._new_table(_INITIAL_TABLE_BITS)

    def __len__(self):
        return self._count

    def __contains__(self, key):
        return self._find(key, _hash(key)) >= 0

    def __repr__(self):
        return (f"RateLimiter(requests_per_minute={self._rpm!r}, "
                f"tokens_per_minute={self._tpm!r}, burst={self._req_cap!r}, "
                f"max_keys={self._max_keys}, keys={self._count})")

    @property
    def requests_per_minute(self):
        return self._rpm if self._req_lim else None

    @property
    def tokens_per_minute(self):
        return self._tpm if self._tok_lim else None

    @property
    def burst(self):
        """Request-bucket capacity (None when requests are unlimited)."""
        return self._req_cap if self._req_lim else None

    @property
    def token_capacity(self):
        """Token-bucket capacity = tokens_per_minute (None when unlimited)."""
        return self._tok_cap if self._tok_lim else None

    @property
    def max_keys(self):
        return self._max_keys

    @property
    def idle_seconds(self):
        """Effective idle time before a key may be forgotten (>= full-refill time)."""
        return self._idle
