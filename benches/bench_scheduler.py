"""Scheduler core: Cython Scheduler vs a plain-Python heapq/deque implementation.

Steady state with ~10,000 entries queued: each benchmark round pushes 1000
requests (4 models, mixed priorities, each with a deadline) and pops batches
of 8 as it goes (one pop per 8 pushes), so the queue length stays constant.
Divide the reported times by 1000 for the cost per request (one enqueue plus
its share of a dequeue).  Target: <= 2 us per request.

The plain-Python reference runs the same algorithm with the standard library
(per-group deques, per-priority arrival deques, heapq for full groups and
deadlines, lazy deletion and the same compaction rule), and is checked to
produce the same batches as the Cython scheduler before being timed.

    PYTHONPATH=python pytest benches/bench_scheduler.py --benchmark-only -q
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

import pytest

from lloom_executor._fast.scheduler import Scheduler

QUEUED, DISPATCHED, EXPIRED = 0, 1, 3
PREFILL = 10_000
ROUND = 1000
MODELS = ("llama-3-8b", "mistral-7b", "qwen-2-7b", "phi-3-mini")
PRIOS = (1, 0, 2, 1, 0, 1, 2, 0, 1, 1, 0)  # a fixed mix, cycled


class _Entry:
    __slots__ = ("item", "model", "prio", "deadline", "enq", "seq", "state", "group")


class _Group:
    __slots__ = ("key", "prio", "q", "live", "mark")

    def __init__(self, key, prio):
        self.key, self.prio, self.q, self.live, self.mark = key, prio, deque(), 0, None


class PyScheduler:
    """Plain-Python reference: same rules and the same data-structure plan."""

    def __init__(self, max_batch_size=8, batch_timeout_ms=100.0, queue_sizes=None):
        sizes = {"low": 100, "normal": 200, "high": 50, **(queue_sizes or {})}
        self.caps = [sizes["low"], sizes["normal"], sizes["high"]]
        self.max_batch = max_batch_size
        self.timeout = batch_timeout_ms / 1000.0
        self.groups = [{}, {}, {}]
        self.fifos = [deque(), deque(), deque()]
        self.full = [[], [], []]
        self.deadlines = []
        self.dl_live = 0
        self.live = [0, 0, 0]
        self.expired = []
        self.seq = itertools.count()

    def _retire(self, e, state):
        e.state = state
        g = e.group
        g.live -= 1
        self.live[e.prio] -= 1
        if e.deadline is not None:
            self.dl_live -= 1
            if len(self.deadlines) > 2 * self.dl_live + 64:
                self.deadlines = [x for x in self.deadlines if x[2].state == QUEUED]
                heapq.heapify(self.deadlines)
        if g.live == 0:
            if self.groups[e.prio].get(g.key) is g:
                del self.groups[e.prio][g.key]

    def _sweep(self, now):
        dl = self.deadlines
        while dl:
            d, _, e = dl[0]
            if e.state == QUEUED:
                if d > now:
                    break
                heapq.heappop(dl)
                self.expired.append(e.item)
                self._retire(e, EXPIRED)
                dl = self.deadlines
            else:
                heapq.heappop(dl)

    def _mark(self, g):
        q = g.q
        while q[0].state != QUEUED:
            q.popleft()
        g.mark = q[0]
        heapq.heappush(self.full[g.prio], (q[0].seq, q[0]))

    def _full_top(self, p):
        heap = self.full[p]
        while heap:
            e = heap[0][1]
            g = e.group
            if g.mark is not e:
                heapq.heappop(heap)
                continue
            if e.state == QUEUED and g.live >= self.max_batch:
                return g
            heapq.heappop(heap)
            g.mark = None
            if g.live >= self.max_batch:
                self._mark(g)
        return None

    def push(self, item, model, priority=1, deadline=None, now=0.0):
        p = priority
        if self.live[p] >= self.caps[p]:
            self._sweep(now)
            if self.live[p] >= self.caps[p]:
                raise OverflowError("queue full")
        g = self.groups[p].get(model)
        if g is None:
            g = self.groups[p][model] = _Group(model, p)
        e = _Entry()
        e.item, e.model, e.prio, e.deadline, e.enq = item, model, p, deadline, now
        e.seq, e.state, e.group = next(self.seq), QUEUED, g
        g.q.append(e)
        g.live += 1
        self.fifos[p].append(e)
        self.live[p] += 1
        if deadline is not None:
            heapq.heappush(self.deadlines, (deadline, e.seq, e))
            self.dl_live += 1
        if g.live >= self.max_batch and g.mark is None:
            self._mark(g)
        return e

    def _take(self, g, n, out):
        q = g.q
        while n > 0 and g.live > 0:
            e = q.popleft()
            if e.state != QUEUED:
                continue
            out.append(e.item)
            self._retire(e, DISPATCHED)
            n -= 1

    def pop_batch(self, now):
        self._sweep(now)
        for p in (2, 1, 0):
            if not self.live[p]:
                continue
            f = self.fifos[p]
            while f and f[0].state != QUEUED:
                f.popleft()
            if not f:
                continue
            h = f[0]
            g = h.group
            if not (h.enq + self.timeout <= now or g.live >= self.max_batch):
                g = self._full_top(p)
                if g is None:
                    continue
            out = []
            self._take(g, self.max_batch, out)
            for q in range(p - 1, -1, -1):
                if len(out) >= self.max_batch:
                    break
                low = self.groups[q].get(g.key)
                if low is not None:
                    self._take(low, self.max_batch - len(out), out)
            return g.key, out
        return None


BIG = {"low": 100_000, "normal": 100_000, "high": 100_000}


def _workload(sched):
    """Pre-fill PREFILL entries, then return a closure pushing ROUND more and
    popping one batch per 8 pushes; time advances 1 ms per push."""
    state = {"now": 0.0, "n": 0}
    models, prios = MODELS, PRIOS
    push, pop = sched.push, sched.pop_batch

    def one_round(count=ROUND):
        now, n = state["now"], state["n"]
        for _ in range(count):
            now += 0.001
            push(n, models[n & 3], prios[n % 11], now + 3600.0, now)
            n += 1
            if n & 7 == 0:
                pop(now)
        state["now"], state["n"] = now, n

    # pre-fill without popping
    now = 0.0
    for i in range(PREFILL):
        now += 0.001
        push(-i - 1, models[i & 3], prios[i % 11], now + 3600.0, now)
    state["now"] = now
    return one_round


def test_reference_matches_cython():
    """Not a timing check: the two implementations must do the same work."""
    a = Scheduler(8, 100.0, queue_sizes=BIG)
    b = PyScheduler(8, 100.0, queue_sizes=BIG)
    now = 0.0
    for i in range(20_000):
        now += 0.001
        a.push(i, MODELS[i & 3], PRIOS[i % 11], now + 3600.0, now)
        b.push(i, MODELS[i & 3], PRIOS[i % 11], now + 3600.0, now)
        if i > PREFILL and i & 7 == 0:
            assert a.pop_batch(now) == b.pop_batch(now)
    assert len(a) == sum(b.live)


@pytest.mark.parametrize("name,cls", [("cython", Scheduler), ("python", PyScheduler)])
def test_steady_state_10k_queued(benchmark, name, cls):
    benchmark.group = "scheduler: 1000 requests (push + 1/8 pop_batch), 10k queued"
    sched = cls(8, 100.0, queue_sizes=BIG)
    one_round = _workload(sched)
    benchmark(one_round)
    assert 9_000 <= (len(sched) if name == "cython" else sum(sched.live)) <= 11_000
