# cython: language_level=3
"""Scheduler core: three bounded priority queues with per-model batch assembly.

Why Cython: every admitted request goes through ``push`` and leaves through
``pop_batch``; with thousands queued, a plain-Python structure spends most of
its time in interpreter overhead.  Here all bookkeeping is typed C attribute
access on small extension objects, and every operation is O(1) or O(log n)
amortised.

Semantics
---------
* Priorities: ``HIGH`` (2) > ``NORMAL`` (1) > ``LOW`` (0), also accepted as
  the strings ``"high"``, ``"normal"``, ``"low"``.  Each has its own capacity
  (``queue_sizes``); a push into a full queue raises :class:`QueueFull` whose
  message names the queue and its fill, e.g. ``"normal queue full
  (200/200)"``.  Capacity 0 disables a priority.
* Reservations: ``reserve(priority)`` keeps a place in a queue for an entry
  that has left it but must still count against its size -- the dispatcher's
  requests that were popped and then wait for their model's
  ``max_tokens_per_second``.  They cannot run yet, so they wait outside the
  queue (one throttled model must not stall the batches of the others), yet
  without their places the queues would no longer bound what waits.  ``push``
  counts them in its capacity check, so one check refuses for both: ``"normal
  queue full (200/200: 12 waiting for their model's max_tokens_per_second)"``.
  ``release(priority)`` gives the place back.  ``size``, ``sizes`` and
  ``len`` count queued entries only; ``reserved(priority)`` the others.
* Groups: entries are grouped per (priority, model) when ``group_by_model`` is
  true, per priority alone otherwise (batches then mix models and carry
  ``model=None``).
* Batch size per group: ``max_batch_size``, or, when grouping by model and
  ``model_batch_sizes`` names the model, ``min(max_batch_size, that entry)``
  (a model whose server batches less, down to 1: no batching for it).
  Without ``group_by_model`` a batch mixes models and the global size applies.
  The size is fixed when a group is created (a C field of the group), so
  every check below reads it in O(1).
* A group is *ready* when it holds its batch size of live entries or its
  oldest entry has waited ``batch_timeout_ms``.  ``pop_batch`` serves the
  highest priority that has a ready group; within a priority the ready group
  with the oldest head goes first; within a group, FIFO.
* ``fill_from_lower`` (default on): a ready batch that is short of
  its batch size is topped up with the *same* model's entries from lower
  priorities (higher first, FIFO).  A GPU batch slot costs about the same
  whether it is used or not, so this only ever serves lower-priority work
  earlier, never higher-priority work later.
* Deadlines: an entry whose deadline has been reached (``deadline <= now``) is
  never dispatched.  Expired entries are moved aside whenever the scheduler
  looks at the clock and are handed back by ``pop_expired`` -- never silently
  dropped -- so the caller can answer the requester with an error.  Pushing an
  already-expired entry raises :class:`DeadlinePassed`.
* Cancellation: ``remove(handle)`` is O(1) (lazy deletion).

Data structures (n = queued entries)
-----------------------------------
* per priority: a FIFO of all its entries in arrival order; its first live
  entry is the oldest of that priority, hence the head of the oldest group --
  so the "timed out" check is O(1);
* per (priority, group key): a FIFO of entries plus a live count;
* per priority: a heap of the heads of groups that are full (by arrival
  order), to find the oldest full group in O(log n);
* one heap of finite deadlines.
Dead entries (dispatched, cancelled, expired) are skipped lazily; every
structure is compacted when dead entries outnumber live ones, so memory stays
O(live entries) and the amortised cost O(log n).

Not thread-safe: use one instance from one thread (the event loop), as
the C-level state is updated without locks.

Time is monotonic seconds (float).  Every method takes an optional ``now``;
the default clock reads CLOCK_MONOTONIC from C (``time.monotonic()`` on Linux)
or calls the injected ``clock``.
"""
from libc.math cimport INFINITY
from cpython.long cimport PyLong_AsLong
from lloom_executor._fast._clock cimport mono as _mono

cimport cython

__all__ = [
    "Scheduler", "Handle", "SchedulerRefusal", "QueueFull", "DeadlinePassed",
    "LOW", "NORMAL", "HIGH", "PRIORITY_NAMES", "monotonic",
]

LOW = 0
NORMAL = 1
HIGH = 2
PRIORITY_NAMES = ("low", "normal", "high")
_PRIO_BY_NAME = {"low": 0, "normal": 1, "high": 2}
_DEFAULT_SIZES = {"low": 100, "normal": 200, "high": 50}

cdef enum:
    QUEUED = 0
    DISPATCHED = 1
    CANCELLED = 2
    EXPIRED = 3
_STATE_NAMES = ("queued", "dispatched", "cancelled", "expired")

# Compaction slack: a structure is rebuilt when its dead entries exceed its
# live ones by this much, so tiny queues are not rebuilt on every removal.
cdef enum:
    SLACK = 64



def monotonic() -> float:
    """The scheduler's default clock: CLOCK_MONOTONIC seconds, read from C."""
    return _mono()


class SchedulerRefusal(Exception):
    """A push the scheduler refused; ``reason`` is a human-readable sentence."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class QueueFull(SchedulerRefusal):
    """The target priority queue is at capacity: ``size`` (queued and reserved
    entries) of ``capacity``, ``reserved`` of them waiting outside the queue."""

    def __init__(self, priority, size, capacity, reserved=0):
        why = f": {reserved} waiting for their model's max_tokens_per_second" if reserved else ""
        super().__init__(f"{priority} queue full ({size}/{capacity}{why})")
        self.priority = priority
        self.size = size
        self.capacity = capacity
        self.reserved = reserved


class DeadlinePassed(SchedulerRefusal):
    """The entry's deadline was already reached when it was pushed."""

    def __init__(self, deadline, now):
        super().__init__(f"deadline already passed ({deadline!r} <= now {now!r})")
        self.deadline = deadline
        self.now = now


cdef int _priority(object p) except -1:
    """Accepts 0/1/2 or 'low'/'normal'/'high'; anything else -> ValueError."""
    cdef long v
    if type(p) is int:
        v = PyLong_AsLong(p)
        if 0 <= v <= 2:
            return <int>v
    elif isinstance(p, str):
        r = _PRIO_BY_NAME.get(p)
        if r is not None:
            return <int>r
    raise ValueError(f"priority must be 0/1/2 or 'low'/'normal'/'high', got {p!r}")


cdef class _Group


@cython.final
@cython.freelist(64)
cdef class Handle:
    """One queued entry; returned by ``push`` and accepted by ``remove``.

    Read-only view: ``item``, ``model``, ``priority`` (int), ``deadline``
    (``inf`` = none), ``enqueued_at``, ``seq`` (arrival order), ``state``
    (``"queued"``, ``"dispatched"``, ``"cancelled"``, ``"expired"``).
    """

    cdef readonly object item
    cdef readonly object model
    cdef readonly int priority
    cdef readonly double deadline
    cdef readonly double enqueued_at
    cdef readonly long long seq
    cdef int _state
    cdef _Group group

    def __init__(self):
        raise TypeError("Handle objects are created by Scheduler.push")

    @property
    def state(self) -> str:
        return _STATE_NAMES[self._state]

    def __repr__(self) -> str:
        return (f"<Handle seq={self.seq} model={self.model!r} "
                f"priority={PRIORITY_NAMES[self.priority]} state={self.state}>")


cdef class _Fifo:
    """A list with a moving head: O(1) append/popleft, compacted lazily."""

    cdef list items
    cdef Py_ssize_t head

    def __cinit__(self):
        self.items = []
        self.head = 0

    cdef inline Handle front_live(self):
        """First queued entry, discarding dead ones in front; None if none."""
        cdef Handle h
        cdef list items = self.items
        while self.head < len(items):
            h = <Handle>items[self.head]
            if h._state == QUEUED:
                return h
            items[self.head] = None
            self.head += 1
        if self.head:
            del items[:]
            self.head = 0
        return None

    cdef inline Handle pop_live(self):
        cdef Handle h = self.front_live()
        if h is not None:
            self.items[self.head] = None
            self.head += 1
            if self.head >= SLACK and self.head * 2 >= len(self.items):
                del self.items[:self.head]
                self.head = 0
        return h

    cdef int compact(self) except -1:
        """Drop every dead entry (O(len)); called when dead ones dominate."""
        cdef Handle h
        cdef list keep = []
        cdef Py_ssize_t i
        for i in range(self.head, len(self.items)):
            h = <Handle>self.items[i]
            if h._state == QUEUED:
                keep.append(h)
        self.items = keep
        self.head = 0
        return 0

    cdef inline Py_ssize_t held(self) noexcept:
        return len(self.items) - self.head


@cython.final
cdef class _Group(_Fifo):
    cdef object key           # model, or None when not grouping by model
    cdef int priority
    cdef Py_ssize_t live
    cdef Py_ssize_t cap       # its batch size: max_batch_size, or the model's if smaller
    cdef Handle full_mark     # the head pushed on the full-group heap, if any


# ---------------------------------------------------------------- heaps
# Binary heaps over lists of Handle, ordered by (deadline, seq) or by seq.

cdef inline bint _lt(Handle a, Handle b, bint by_dl) noexcept:
    if by_dl and a.deadline != b.deadline:
        return a.deadline < b.deadline
    return a.seq < b.seq


cdef int _siftdown(list heap, Py_ssize_t start, Py_ssize_t pos, bint by_dl) except -1:
    cdef Handle item = <Handle>heap[pos]
    cdef Handle parent
    cdef Py_ssize_t pp
    while pos > start:
        pp = (pos - 1) >> 1
        parent = <Handle>heap[pp]
        if _lt(item, parent, by_dl):
            heap[pos] = parent
            pos = pp
        else:
            break
    heap[pos] = item
    return 0


cdef int _siftup(list heap, Py_ssize_t pos, bint by_dl) except -1:
    cdef Py_ssize_t end = len(heap), start = pos, child, right
    cdef Handle item = <Handle>heap[pos]
    child = 2 * pos + 1
    while child < end:
        right = child + 1
        if right < end and not _lt(<Handle>heap[child], <Handle>heap[right], by_dl):
            child = right
        heap[pos] = heap[child]
        pos = child
        child = 2 * pos + 1
    heap[pos] = item
    return _siftdown(heap, start, pos, by_dl)


cdef inline int _hpush(list heap, Handle h, bint by_dl) except -1:
    heap.append(h)
    return _siftdown(heap, 0, len(heap) - 1, by_dl)


cdef inline int _hpop(list heap, bint by_dl) except -1:
    """Remove the top (the caller already read heap[0])."""
    last = heap.pop()
    if len(heap):
        heap[0] = last
        _siftup(heap, 0, by_dl)
    return 0


cdef int _heapify(list heap, bint by_dl) except -1:
    cdef Py_ssize_t i
    for i in reversed(range(len(heap) // 2)):
        _siftup(heap, i, by_dl)
    return 0


# ------------------------------------------------------------ scheduler

@cython.final
cdef class Scheduler:
    """Bounded priority queues with per-model batch assembly.

    ``Scheduler(max_batch_size=8, batch_timeout_ms=100, group_by_model=True,
    queue_sizes={"low": 100, "normal": 200, "high": 50},
    fill_from_lower=True, clock=None, model_batch_sizes=None)``

    ``queue_sizes`` keys are priority names or numbers; missing ones keep the
    defaults.  ``model_batch_sizes`` maps a model to its own batch cap (an
    integer >= 1; the effective size is the smaller of it and
    ``max_batch_size``), used only with ``group_by_model``.  See the module
    docstring for the rules.
    """

    cdef Py_ssize_t _max_batch
    cdef double _timeout
    cdef double _timeout_ms
    cdef bint _by_model
    cdef bint _fill
    cdef object _clock
    cdef Py_ssize_t _live[3]
    cdef Py_ssize_t _cap[3]
    cdef Py_ssize_t _reserved[3]  # places kept for entries waiting outside (``reserve``)
    cdef list _groups          # [dict key -> _Group] per priority
    cdef list _fifos           # [_Fifo] per priority, arrival order
    cdef list _full            # [heap of full-group heads] per priority
    cdef list _deadlines       # heap of handles with a finite deadline
    cdef Py_ssize_t _dl_live   # queued entries with a finite deadline
    cdef list _expired         # expired items not yet reported
    cdef long long _seq
    cdef dict _model_caps      # model -> its batch cap (as given), or None

    def __init__(self, max_batch_size=8, batch_timeout_ms=100.0, group_by_model=True,
                 queue_sizes=None, fill_from_lower=True, clock=None, model_batch_sizes=None):
        cdef int p
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) \
                or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
        try:
            timeout_ms = float(batch_timeout_ms)
        except (TypeError, ValueError):
            raise ValueError(f"batch_timeout_ms must be a number, got {batch_timeout_ms!r}") from None
        if not (timeout_ms >= 0.0) or timeout_ms == INFINITY:
            raise ValueError(f"batch_timeout_ms must be finite and >= 0, got {batch_timeout_ms!r}")
        if clock is not None and not callable(clock):
            raise ValueError("clock must be a callable returning monotonic seconds")
        sizes = dict(_DEFAULT_SIZES)
        if queue_sizes is not None:
            for k, v in dict(queue_sizes).items():
                name = PRIORITY_NAMES[_priority(k)]
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"queue size for {name!r} must be an integer >= 0, got {v!r}")
                sizes[name] = v
        caps = None
        if model_batch_sizes is not None:
            caps = {}
            for model, v in dict(model_batch_sizes).items():
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"batch size for model {model!r} must be an integer >= 1, got {v!r}")
                caps[model] = v
        self._model_caps = caps or None
        self._max_batch = max_batch_size
        self._timeout_ms = timeout_ms
        self._timeout = timeout_ms / 1000.0
        self._by_model = bool(group_by_model)
        self._fill = bool(fill_from_lower)
        self._clock = clock
        for p in range(3):
            self._live[p] = 0
            self._cap[p] = sizes[PRIORITY_NAMES[p]]
            self._reserved[p] = 0
        self._groups = [{}, {}, {}]
        self._fifos = [_Fifo(), _Fifo(), _Fifo()]
        self._full = [[], [], []]
        self._deadlines = []
        self._dl_live = 0
        self._expired = []
        self._seq = 0

    cdef inline double _now(self, object now) except? -1.0:
        if now is not None:
            return <double>now
        if self._clock is None:
            return _mono()
        return <double>self._clock()

    # ------------------------------------------------------- bookkeeping

    cdef int _retire(self, Handle h, int state) except -1:
        """Take a queued entry out of every count; structures drop it lazily."""
        cdef _Group g = h.group
        cdef int p = h.priority
        cdef _Fifo f
        h._state = state
        g.live -= 1
        self._live[p] -= 1
        if h.deadline != INFINITY:
            self._dl_live -= 1
            if len(self._deadlines) > 2 * self._dl_live + SLACK:
                self._compact_deadlines()
        if g.live == 0:
            d = <dict>self._groups[p]
            if d.get(g.key) is g:
                del d[g.key]
            g.items = []
            g.head = 0
        elif g.held() > 2 * g.live + SLACK:
            g.compact()
        f = <_Fifo>self._fifos[p]
        if f.held() > 2 * self._live[p] + SLACK:
            f.compact()
        return 0

    cdef int _compact_deadlines(self) except -1:
        cdef Handle h
        cdef list keep = []
        for h in self._deadlines:
            if h._state == QUEUED:
                keep.append(h)
        _heapify(keep, True)
        self._deadlines = keep
        return 0

    cdef int _mark_full(self, _Group g) except -1:
        """Put ``g``'s head on the full-group heap of its priority."""
        cdef list heap = <list>self._full[g.priority]
        cdef dict groups
        cdef _Group other
        if len(heap) > 2 * len(<dict>self._groups[g.priority]) + SLACK:
            # Stale marks (of drained or deleted groups) pile up: rebuild.
            groups = <dict>self._groups[g.priority]
            del heap[:]
            for other in groups.values():
                other.full_mark = None
            for other in groups.values():
                if other.live >= other.cap:
                    other.full_mark = other.front_live()
                    heap.append(other.full_mark)
            _heapify(heap, False)
            return 0
        g.full_mark = g.front_live()
        return _hpush(heap, g.full_mark, False)

    cdef _Group _full_top(self, int p):
        """Oldest-headed group of priority ``p`` holding a full batch, or None."""
        cdef list heap = <list>self._full[p]
        cdef Handle e
        cdef _Group g
        while len(heap):
            e = <Handle>heap[0]
            g = e.group
            if g.full_mark is not e:
                _hpop(heap, False)
                continue
            if e._state == QUEUED and g.live >= g.cap:
                return g  # a live mark is always its group's head
            _hpop(heap, False)
            g.full_mark = None
            if g.live >= g.cap:
                self._mark_full(g)
        return None

    cdef int _sweep(self, double now) except -1:
        """Move entries whose deadline is reached to the expired list."""
        cdef list heap = self._deadlines
        cdef Handle h
        while len(heap):
            h = <Handle>heap[0]
            if h._state == QUEUED:
                if h.deadline > now:
                    break
                _hpop(heap, True)
                self._expired.append(h.item)
                self._retire(h, EXPIRED)
                heap = self._deadlines  # _retire may have compacted it
            else:
                _hpop(heap, True)
        return 0

    cdef _Group _ready(self, int p, double now):
        cdef Handle h = (<_Fifo>self._fifos[p]).front_live()
        if h is None:
            return None
        if h.enqueued_at + self._timeout <= now or h.group.live >= h.group.cap:
            return h.group
        return self._full_top(p)

    cdef int _take(self, _Group g, Py_ssize_t n, list out) except -1:
        cdef Handle h
        while n > 0 and g.live > 0:
            h = g.pop_live()
            if h is None:
                break
            out.append(h.item)
            self._retire(h, DISPATCHED)
            n -= 1
        return 0

    cdef inline Py_ssize_t _cap_for(self, object model) except? -1:
        """A group of ``model``'s batch size: ``min(max_batch_size, its cap)`` when
        grouping by model, else ``max_batch_size`` (caps are ints >= 1)."""
        cdef object cap
        if self._model_caps is None or not self._by_model:
            return self._max_batch
        cap = self._model_caps.get(model)
        if cap is not None and <Py_ssize_t>cap < self._max_batch:
            return <Py_ssize_t>cap
        return self._max_batch

    # ------------------------------------------------------------ public

    def push(self, item, model, priority=NORMAL, deadline=None, now=None) -> Handle:
        """Queue ``item`` for ``model``; returns a :class:`Handle` for ``remove``.

        ``deadline`` is monotonic seconds (``None`` = none).  Raises
        :class:`QueueFull` when the priority's queued and reserved entries
        reach its capacity (after first moving out any expired queued
        entries) and :class:`DeadlinePassed` when ``deadline <= now``.
        """
        cdef int p = _priority(priority)
        cdef double t = self._now(now)
        cdef double dl = INFINITY
        cdef _Group g
        cdef Handle h
        cdef dict groups
        if deadline is not None:
            dl = <double>deadline
            if dl != dl:
                raise ValueError("deadline must not be NaN")
            if dl <= t:
                raise DeadlinePassed(deadline, t)
        if self._live[p] + self._reserved[p] >= self._cap[p]:
            self._sweep(t)
            if self._live[p] + self._reserved[p] >= self._cap[p]:
                raise QueueFull(PRIORITY_NAMES[p], self._live[p] + self._reserved[p], self._cap[p],
                                self._reserved[p])
        key = model if self._by_model else None
        groups = <dict>self._groups[p]
        g = <_Group>groups.get(key)
        if g is None:
            g = _Group.__new__(_Group)
            g.key = key
            g.priority = p
            g.live = 0
            g.cap = self._cap_for(key)
            groups[key] = g
        h = Handle.__new__(Handle)
        h.item = item
        h.model = model
        h.priority = p
        h.deadline = dl
        h.enqueued_at = t
        h.seq = self._seq
        self._seq += 1
        h._state = QUEUED
        h.group = g
        g.items.append(h)
        g.live += 1
        (<_Fifo>self._fifos[p]).items.append(h)
        self._live[p] += 1
        if dl != INFINITY:
            _hpush(self._deadlines, h, True)
            self._dl_live += 1
        if g.live >= g.cap and g.full_mark is None:
            self._mark_full(g)
        return h

    def pop_batch(self, now=None):
        """The next ready batch as ``(model, [items])``, or None if none is ready.

        ``model`` is None when not grouping by model.  Expired entries met on
        the way are kept for :meth:`pop_expired`.
        """
        cdef double t = self._now(now)
        cdef int p, q
        cdef Py_ssize_t cap
        cdef _Group g, low
        cdef list out
        self._sweep(t)
        for p in range(2, -1, -1):
            if self._live[p] == 0:
                continue
            g = self._ready(p, t)
            if g is None:
                continue
            key = g.key
            cap = g.cap  # lower priorities' groups of this key have the same size
            out = []
            self._take(g, cap, out)
            if self._fill:
                q = p - 1
                while q >= 0 and len(out) < cap:
                    low = <_Group>(<dict>self._groups[q]).get(key)
                    if low is not None:
                        self._take(low, cap - len(out), out)
                    q -= 1
            return (key, out)
        return None

    def pop_expired(self, now=None) -> list:
        """Items whose deadline was reached and that were not dispatched (oldest deadline first)."""
        cdef double t = self._now(now)
        self._sweep(t)
        out = self._expired
        self._expired = []
        return out

    def next_ready_in(self, now=None):
        """Seconds until ``pop_batch`` would return a batch: 0.0 if one is ready
        now, None if nothing is queued.  For the dispatcher's sleep; it does not
        account for deadlines (see :meth:`next_expiry_in`)."""
        cdef double t = self._now(now)
        cdef double best = INFINITY, w
        cdef int p
        cdef Handle h
        self._sweep(t)
        for p in range(2, -1, -1):
            h = (<_Fifo>self._fifos[p]).front_live()
            if h is None:
                continue
            if h.group.live >= h.group.cap:
                return 0.0
            w = h.enqueued_at + self._timeout - t
            if w <= 0.0 or self._full_top(p) is not None:
                return 0.0
            if w < best:
                best = w
        return None if best == INFINITY else best

    def next_expiry_in(self, now=None):
        """Seconds until the earliest queued deadline (0.0 if expired entries
        wait in :meth:`pop_expired`), None if no queued entry has a deadline."""
        cdef double t = self._now(now)
        cdef Handle h
        self._sweep(t)
        if self._expired:
            return 0.0
        heap = self._deadlines
        while len(heap):
            h = <Handle>heap[0]
            if h._state == QUEUED:
                return h.deadline - t
            _hpop(heap, True)
        return None

    def remove(self, handle) -> bool:
        """Cancel a queued entry in O(1).  False if it already left the queue
        (dispatched, expired, cancelled) or belongs to another scheduler."""
        cdef Handle h
        if not isinstance(handle, Handle):
            raise TypeError(f"remove() expects a Handle from push(), got {type(handle).__name__}")
        h = <Handle>handle
        if h._state != QUEUED:
            return False
        if (<dict>self._groups[h.priority]).get(h.group.key) is not h.group:
            return False
        self._retire(h, CANCELLED)
        return True

    def size(self, priority) -> int:
        """Queued entries of one priority (expired ones not yet swept included;
        reserved places not)."""
        return self._live[_priority(priority)]

    def sizes(self) -> dict:
        """``{"high": n, "normal": n, "low": n}`` queued entries (reserved places
        not included) for the queue-size metric."""
        return {"high": self._live[2], "normal": self._live[1], "low": self._live[0]}

    def reserve(self, priority) -> None:
        """Keep a place in ``priority``'s queue for an entry waiting outside it
        (module docstring, Reservations); O(1), never refused: the entry held a
        place when it was popped."""
        self._reserved[_priority(priority)] += 1

    def release(self, priority) -> None:
        """Give back a place kept by :meth:`reserve`; O(1)."""
        cdef int p = _priority(priority)
        if self._reserved[p] == 0:
            raise ValueError(f"no place reserved in the {PRIORITY_NAMES[p]} queue")
        self._reserved[p] -= 1

    def reserved(self, priority) -> int:
        """Places kept by :meth:`reserve` in one priority's queue."""
        return self._reserved[_priority(priority)]

    def capacity(self, priority) -> int:
        return self._cap[_priority(priority)]

    def __len__(self) -> int:
        return self._live[0] + self._live[1] + self._live[2]

    def __bool__(self) -> bool:
        return (self._live[0] + self._live[1] + self._live[2]) > 0

    @property
    def max_batch_size(self) -> int:
        return self._max_batch

    @property
    def model_batch_sizes(self) -> dict:
        """The per-model caps as given (``{}`` when none)."""
        return dict(self._model_caps) if self._model_caps is not None else {}

    def batch_size_for(self, model) -> int:
        """The batch size a group of ``model`` gets: ``min(max_batch_size, its cap)``
        when grouping by model, else ``max_batch_size``."""
        return self._cap_for(model)

    @property
    def batch_timeout_ms(self) -> float:
        return self._timeout_ms

    @property
    def group_by_model(self) -> bool:
        return self._by_model

    @property
    def fill_from_lower(self) -> bool:
        return self._fill

    def __repr__(self) -> str:
        return (f"Scheduler(max_batch_size={self._max_batch}, "
                f"batch_timeout_ms={self._timeout_ms!r}, group_by_model={self._by_model}, "
                f"sizes={self.sizes()!r})")
