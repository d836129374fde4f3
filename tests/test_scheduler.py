"""Tests of the Cython scheduler core against an independent, deliberately naive model.

The model (RefScheduler) keeps one flat list of entries and recomputes every
decision from scratch (O(n) per call), straight from the rules: expire what
reached its deadline, then for the highest priority with a ready group
(>= its batch size of entries: max_batch_size, or the model's own cap when
grouping by model and smaller; or oldest entry waited >= timeout) take the group
whose oldest entry is oldest, FIFO, topped up from lower priorities of the
same model.  Times are multiples of 1/64 s and timeouts multiples of 1/64 s
so float arithmetic is exact on both sides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lloom_executor._fast.scheduler import (
    HIGH,
    LOW,
    NORMAL,
    DeadlinePassed,
    Handle,
    QueueFull,
    Scheduler,
    SchedulerRefusal,
    monotonic,
)

NAMES = ("low", "normal", "high")


@dataclass
class E:
    seq: int
    item: object
    model: str
    prio: int
    enq: float
    deadline: float | None
    state: str = "queued"


class RefScheduler:
    def __init__(self, max_batch, timeout_s, by_model, caps, fill=True, model_caps=None):
        self.max_batch = max_batch
        self.model_caps = model_caps or {}
        self.timeout = timeout_s
        self.by_model = by_model
        self.caps = caps  # indexed by priority
        self.fill = fill
        self.entries: list[E] = []
        self.seq = 0

    def queued(self):
        return [e for e in self.entries if e.state == "queued"]

    def expire(self, now):
        for e in self.queued():
            if e.deadline is not None and e.deadline <= now:
                e.state = "expired-pending"

    def push(self, item, model, prio, deadline, now):
        if deadline is not None and deadline <= now:
            return "deadline"
        if sum(1 for e in self.queued() if e.prio == prio) >= self.caps[prio]:
            self.expire(now)
            if sum(1 for e in self.queued() if e.prio == prio) >= self.caps[prio]:
                return "full"
        e = E(self.seq, item, model, prio, now, deadline)
        self.seq += 1
        self.entries.append(e)
        return e

    def key(self, e):
        return e.model if self.by_model else None

    def groups(self, prio):
        out: dict[object, list[E]] = {}
        for e in self.queued():  # seq order, so dict order = oldest head first
            if e.prio == prio:
                out.setdefault(self.key(e), []).append(e)
        return out

    def cap(self, key):
        if not self.by_model:
            return self.max_batch
        return min(self.max_batch, self.model_caps.get(key, self.max_batch))

    def is_ready(self, key, g, now):
        return len(g) >= self.cap(key) or g[0].enq + self.timeout <= now

    def pop_batch(self, now):
        self.expire(now)
        for p in (2, 1, 0):
            for key, g in self.groups(p).items():
                if self.is_ready(key, g, now):
                    cap = self.cap(key)
                    taken = g[:cap]
                    if self.fill:
                        for q in range(p - 1, -1, -1):
                            more = self.groups(q).get(key, [])
                            taken += more[: cap - len(taken)]
                    for e in taken:
                        e.state = "dispatched"
                    return key, [e.item for e in taken]
        return None

    def pop_expired(self, now):
        self.expire(now)
        out = [e for e in self.entries if e.state == "expired-pending"]
        out.sort(key=lambda e: (e.deadline, e.seq))
        for e in out:
            e.state = "expired"
        return [e.item for e in out]

    def next_ready_in(self, now):
        self.expire(now)
        best = None
        for p in (2, 1, 0):
            for key, g in self.groups(p).items():
                if self.is_ready(key, g, now):
                    return 0.0
                w = g[0].enq + self.timeout - now
                best = w if best is None else min(best, w)
        return best

    def remove(self, e):
        if e.state != "queued":
            return False
        e.state = "cancelled"
        return True

    def sizes(self):
        q = self.queued()
        return {NAMES[p]: sum(1 for e in q if e.prio == p) for p in (2, 1, 0)}


def make_pair(max_batch=4, timeout_ticks=8, by_model=True, caps=(6, 8, 5), fill=True, model_caps=None):
    sched = Scheduler(
        max_batch_size=max_batch,
        batch_timeout_ms=timeout_ticks * 1000 / 64,
        group_by_model=by_model,
        queue_sizes={"low": caps[0], "normal": caps[1], "high": caps[2]},
        fill_from_lower=fill,
        model_batch_sizes=model_caps,
    )
    ref = RefScheduler(max_batch, timeout_ticks / 64, by_model, list(caps), fill, model_caps)
    return sched, ref


# ---------------------------------------------------------- model-based test

op_push = st.tuples(
    st.just("push"),
    st.sampled_from(["m0", "m1", "m2"]),
    st.sampled_from([0, 1, 2, "low", "normal", "high"]),
    st.one_of(st.none(), st.integers(1, 64 * 2)),  # deadline offset in ticks
    st.integers(0, 6),  # dt in ticks
)
op_pop = st.tuples(st.just("pop"), st.integers(0, 12))
op_exp = st.tuples(st.just("expired"), st.integers(0, 12))
op_next = st.tuples(st.just("next"), st.integers(0, 4))
op_rm = st.tuples(st.just("remove"), st.integers(0, 10_000))
# [[models]] max_batch_size: none, or caps for some models (below, at and above the global size)
model_caps_st = st.one_of(st.none(), st.dictionaries(st.sampled_from(["m0", "m1", "m2"]), st.integers(1, 6), max_size=3))


@settings(max_examples=200, deadline=None)
@given(
    max_batch=st.integers(1, 5),
    timeout_ticks=st.integers(0, 16),
    by_model=st.booleans(),
    fill=st.booleans(),
    caps=st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 8)),
    ops=st.lists(st.one_of(op_push, op_push, op_push, op_pop, op_exp, op_next, op_rm), min_size=10, max_size=150),
    model_caps=model_caps_st,
)
def test_matches_reference_model(max_batch, timeout_ticks, by_model, fill, caps, ops, model_caps) -> None:
    sched, ref = make_pair(max_batch, timeout_ticks, by_model, caps, fill, model_caps)
    handles: list[tuple[Handle, E]] = []
    tick = 64 * 1000
    pushed = dispatched = expired = cancelled = 0
    for op in ops:
        kind = op[0]
        if kind == "push":
            _, model, prio, dl, dt = op
            tick += dt
            now = tick / 64
            deadline = None if dl is None else (tick + dl) / 64
            p = prio if isinstance(prio, int) else NAMES.index(prio)
            item = ("item", len(handles), pushed)
            expected = ref.push(item, model, p, deadline, now)
            if expected == "full":
                with pytest.raises(QueueFull) as info:
                    sched.push(item, model, prio, deadline, now=now)
                cap = caps[p]
                assert str(info.value) == f"{NAMES[p]} queue full ({cap}/{cap})"
            else:
                h = sched.push(item, model, prio, deadline, now=now)
                assert h.state == "queued" and h.priority == p and h.item is item
                handles.append((h, expected))
                pushed += 1
        elif kind == "pop":
            tick += op[1]
            got = sched.pop_batch(now=tick / 64)
            assert got == ref.pop_batch(tick / 64)
            if got:
                assert 1 <= len(got[1]) <= sched.batch_size_for(got[0]) <= max_batch
                dispatched += len(got[1])
        elif kind == "expired":
            tick += op[1]
            got = sched.pop_expired(now=tick / 64)
            assert got == ref.pop_expired(tick / 64)
            expired += len(got)
        elif kind == "next":
            tick += op[1]
            got = sched.next_ready_in(now=tick / 64)
            want = ref.next_ready_in(tick / 64)
            assert got == want
        elif kind == "remove" and handles:
            h, e = handles[op[1] % len(handles)]
            ok = sched.remove(h)
            assert ok == ref.remove(e)
            cancelled += ok
            if ok:
                assert h.state == "cancelled"
        assert sched.sizes() == ref.sizes()
    # Nothing is ever lost: every push is queued, dispatched, expired or cancelled.
    final = tick / 64 + 1000
    rest = []
    while (b := sched.pop_batch(now=final)) is not None:
        rest += b[1]
    late = sched.pop_expired(now=final)
    assert len(sched) == 0
    assert pushed == dispatched + expired + cancelled + len(rest) + len(late)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_matches_reference_model_random_walk(seed) -> None:
    """Long random walks (hypothesis' own op lists stay short and shrink-biased)."""
    rng = random.Random(seed)
    max_batch = rng.randint(1, 5)
    by_model = rng.random() < 0.5
    model_caps = None if rng.random() < 0.5 else {m: rng.randint(1, 6) for m in ("m0", "m1", "m2") if rng.random() < 0.6}
    sched, ref = make_pair(
        max_batch, rng.randint(0, 16), by_model, tuple(rng.randint(0, 10) for _ in range(3)), rng.random() < 0.5, model_caps
    )
    pairs = []
    tick = 64 * 500
    for i in range(rng.randint(50, 300)):
        tick += rng.randint(0, 6)
        now = tick / 64
        r = rng.random()
        if r < 0.55:
            model, p = rng.choice(["m0", "m1", "m2"]), rng.randrange(3)
            deadline = None if rng.random() < 0.5 else (tick + rng.randint(1, 128)) / 64
            e = ref.push(i, model, p, deadline, now)
            if e == "full":
                with pytest.raises(QueueFull):
                    sched.push(i, model, p, deadline, now=now)
            else:
                pairs.append((sched.push(i, model, p, deadline, now=now), e))
        elif r < 0.8:
            assert sched.pop_batch(now=now) == ref.pop_batch(now)
        elif r < 0.87:
            assert sched.pop_expired(now=now) == ref.pop_expired(now)
        elif r < 0.94:
            assert sched.next_ready_in(now=now) == ref.next_ready_in(now)
        elif pairs:
            h, e = rng.choice(pairs)
            assert sched.remove(h) == ref.remove(e)
        assert sched.sizes() == ref.sizes()


# ---------------------------------------------------------------- ordering


@settings(max_examples=60, deadline=None)
@given(
    prios=st.lists(st.sampled_from([LOW, NORMAL, HIGH]), min_size=1, max_size=60),
    max_batch=st.integers(1, 7),
)
def test_priority_then_fifo_order_single_model(prios, max_batch) -> None:
    sched = Scheduler(max_batch_size=max_batch, batch_timeout_ms=0, queue_sizes={"low": 100, "normal": 100, "high": 100})
    for i, p in enumerate(prios):
        sched.push((p, i), "m", p, now=0.0)
    out = []
    while (b := sched.pop_batch(now=1.0)) is not None:
        assert b[0] == "m"
        out += b[1]
    # Independent oracle: a stable sort by descending priority.
    assert out == sorted(((p, i) for i, p in enumerate(prios)), key=lambda x: -x[0])


def test_oldest_ready_group_first_across_models() -> None:
    sched = Scheduler(max_batch_size=2, batch_timeout_ms=10_000)
    sched.push("b1", "B", now=0.0)
    sched.push("c1", "C", now=0.5)
    sched.push("a1", "A", now=1.0)
    sched.push("a2", "A", now=1.0)  # A is full; B and C are older but not ready
    sched.push("c2", "C", now=2.0)  # C full now, and its head is older than A's
    assert sched.pop_batch(now=2.0) == ("C", ["c1", "c2"])
    assert sched.pop_batch(now=2.0) == ("A", ["a1", "a2"])
    assert sched.pop_batch(now=9.99) is None
    assert sched.pop_batch(now=10.0) == ("B", ["b1"])


def test_timed_out_older_group_beats_younger_full_group() -> None:
    sched = Scheduler(max_batch_size=2, batch_timeout_ms=1000)
    sched.push("b1", "B", now=0.0)
    sched.push("a1", "A", now=0.5)
    sched.push("a2", "A", now=0.5)  # A full, but B has waited its timeout by now=1
    assert sched.pop_batch(now=1.0) == ("B", ["b1"])
    assert sched.pop_batch(now=1.0) == ("A", ["a1", "a2"])


def test_cancelled_head_does_not_keep_its_group_age() -> None:
    sched = Scheduler(max_batch_size=2, batch_timeout_ms=60_000)
    sched.push("o1", "O", now=0.0)  # oldest, never ready in this test
    e1 = sched.push("g1", "G", now=1.0)
    sched.push("h1", "H", now=2.0)
    sched.push("h2", "H", now=2.0)  # H full, head at 2.0
    sched.push("g2", "G", now=3.0)
    sched.push("g3", "G", now=3.0)  # G full, head at 1.0
    assert sched.remove(e1)  # G still full, but its head is now 3.0
    assert sched.pop_batch(now=4.0) == ("H", ["h1", "h2"])
    assert sched.pop_batch(now=4.0) == ("G", ["g2", "g3"])
    assert sched.pop_batch(now=4.0) is None


def test_higher_priority_not_ready_does_not_block_lower_ready() -> None:
    sched = Scheduler(max_batch_size=4, batch_timeout_ms=100)
    sched.push("h", "m", "high", now=0.0)
    sched.push("l", "x", "low", now=-1.0)
    assert sched.pop_batch(now=0.05) == ("x", ["l"])
    assert sched.pop_batch(now=0.05) is None
    assert sched.pop_batch(now=0.1) == ("m", ["h"])


# ------------------------------------------------------------ capacities


@pytest.mark.parametrize("prio,cap", [("low", 3), ("normal", 5), ("high", 2), ("high", 0)])
def test_capacity_edges(prio, cap) -> None:
    sizes = {"low": 10, "normal": 10, "high": 10, prio: cap}
    sched = Scheduler(queue_sizes=sizes, max_batch_size=100)
    for i in range(cap - 1):
        sched.push(i, "m", prio, now=0.0)  # just under
    if cap:
        sched.push("at", "m", prio, now=0.0)  # at capacity
    assert sched.size(prio) == cap == sched.capacity(prio)
    with pytest.raises(QueueFull) as info:
        sched.push("over", "m", prio, now=0.0)
    assert str(info.value) == f"{prio} queue full ({cap}/{cap})"
    assert info.value.reason == str(info.value)
    assert (info.value.priority, info.value.size, info.value.capacity) == (prio, cap, cap)
    assert isinstance(info.value, SchedulerRefusal)
    assert sched.size(prio) == cap
    # other priorities are independent
    other = "low" if prio != "low" else "high"
    sched.push("other", "m", other, now=0.0)


def test_default_capacities_and_message() -> None:
    sched = Scheduler()
    assert [sched.capacity(p) for p in ("low", "normal", "high")] == [100, 200, 50]
    for i in range(200):
        sched.push(i, "m", "normal", now=0.0)
    with pytest.raises(QueueFull, match=r"^normal queue full \(200/200\)$"):
        sched.push(200, "m", "normal", now=0.0)


def test_reserved_places_count_against_the_capacity() -> None:
    """A popped entry that waits outside the queue (the dispatcher's throttled requests) keeps
    its place: one capacity check covers both, and sizes() counts queued entries only."""
    sched = Scheduler(queue_sizes={"normal": 3, "high": 1}, max_batch_size=1, batch_timeout_ms=0)
    for item in ("a", "b"):
        sched.push(item, "m", now=0.0)
    assert sched.pop_batch(now=0.0) == ("m", ["a"])
    sched.reserve("normal")  # "a" waits outside, still counted
    sched.push("c", "m", deadline=1.0, now=0.0)
    assert (sched.size("normal"), sched.reserved("normal"), len(sched)) == (2, 1, 2)
    assert sched.sizes() == {"high": 0, "normal": 2, "low": 0}
    with pytest.raises(QueueFull) as info:
        sched.push("d", "m", now=0.5)
    assert str(info.value) == "normal queue full (3/3: 1 waiting for their model's max_tokens_per_second)"
    assert (info.value.size, info.value.capacity, info.value.reserved) == (3, 3, 1)
    sched.push("d", "m", now=1.0)  # "c" expired: its place is reused, as without reservations
    sched.push("h", "m", "high", now=1.0)  # other priorities are independent
    with pytest.raises(QueueFull, match=r"^normal queue full \(3/3: 1 waiting"):
        sched.push("e", "m", now=1.0)
    sched.release("normal")
    assert sched.reserved("normal") == 0
    sched.push("e", "m", now=1.0)
    with pytest.raises(ValueError, match="no place reserved in the normal queue"):
        sched.release("normal")


def test_capacity_is_freed_by_dispatch_cancel_and_expiry() -> None:
    sched = Scheduler(queue_sizes={"normal": 2}, max_batch_size=1, batch_timeout_ms=0)
    h = sched.push("a", "m", now=0.0)
    sched.push("b", "m", deadline=5.0, now=0.0)
    with pytest.raises(QueueFull):
        sched.push("c", "m", now=0.0)
    assert sched.remove(h)
    sched.push("c", "m", now=0.0)
    assert sched.pop_batch(now=0.0) == ("m", ["b"])
    sched.push("d", "m", deadline=1.0, now=0.0)
    with pytest.raises(QueueFull):
        sched.push("e", "m", now=0.5)
    sched.push("e", "m", now=1.0)  # "d" expired: its slot is reused, and it is reported
    assert sched.pop_expired(now=1.0) == ["d"]


# ------------------------------------------------------------ batching


def test_batch_by_size() -> None:
    sched = Scheduler(max_batch_size=3, batch_timeout_ms=1000)
    sched.push(1, "m", now=0.0)
    sched.push(2, "m", now=0.0)
    assert sched.pop_batch(now=0.0) is None
    sched.push(3, "m", now=0.0)
    sched.push(4, "m", now=0.0)
    assert sched.pop_batch(now=0.0) == ("m", [1, 2, 3])
    assert sched.pop_batch(now=0.0) is None
    assert len(sched) == 1


def test_batch_by_timeout_and_next_ready_in() -> None:
    sched = Scheduler(max_batch_size=8, batch_timeout_ms=250)
    assert sched.next_ready_in(now=0.0) is None
    sched.push("a", "m", now=1.0)
    sched.push("b", "m", now=1.125)
    assert sched.next_ready_in(now=1.125) == 0.125
    assert sched.pop_batch(now=1.249) is None
    assert sched.next_ready_in(now=1.25) == 0.0
    assert sched.pop_batch(now=1.25) == ("m", ["a", "b"])
    assert sched.next_ready_in(now=1.25) is None


def test_next_ready_in_is_zero_when_full_and_min_over_priorities() -> None:
    sched = Scheduler(max_batch_size=2, batch_timeout_ms=500)
    sched.push("l", "m", "low", now=0.0)
    sched.push("h", "m", "high", now=0.25)
    assert sched.next_ready_in(now=0.25) == 0.25  # low group times out first
    sched.push("h2", "x", "high", now=0.25)
    sched.push("h3", "x", "high", now=0.25)
    assert sched.next_ready_in(now=0.25) == 0.0


def test_group_by_model_on_and_off() -> None:
    on = Scheduler(max_batch_size=3, batch_timeout_ms=0, group_by_model=True)
    off = Scheduler(max_batch_size=3, batch_timeout_ms=0, group_by_model=False)
    for s in (on, off):
        for i, m in enumerate(["a", "b", "a", "c", "b"]):
            s.push(f"{m}{i}", m, now=0.0)
    assert on.pop_batch(now=0.0) == ("a", ["a0", "a2"])
    assert on.pop_batch(now=0.0) == ("b", ["b1", "b4"])
    assert on.pop_batch(now=0.0) == ("c", ["c3"])
    assert off.pop_batch(now=0.0) == (None, ["a0", "b1", "a2"])
    assert off.pop_batch(now=0.0) == (None, ["c3", "b4"])
    assert off.group_by_model is False


def test_fill_from_lower_priorities_same_model_only() -> None:
    for fill in (True, False):
        s = Scheduler(max_batch_size=4, batch_timeout_ms=10, fill_from_lower=fill)
        s.push("l1", "m", "low", now=0.0)
        s.push("n1", "m", "normal", now=0.0)
        s.push("x1", "other", "normal", now=0.0)
        s.push("h1", "m", "high", now=0.0)
        s.push("l2", "m", "low", now=0.0)
        first = s.pop_batch(now=1.0)
        if fill:
            assert first == ("m", ["h1", "n1", "l1", "l2"])
            assert s.pop_batch(now=1.0) == ("other", ["x1"])
        else:
            assert first == ("m", ["h1"])
            assert s.pop_batch(now=1.0) == ("m", ["n1"])


# ------------------------------------------------- per-model batch sizes ([[models]] max_batch_size)


def test_model_batch_size_1_never_batches_that_model() -> None:
    sched = Scheduler(max_batch_size=4, batch_timeout_ms=60_000, model_batch_sizes={"solo": 1})
    sched.push("s1", "solo", now=0.0)  # a full batch of one at once: no waiting for the timeout
    sched.push("s2", "solo", now=0.0)
    for i in range(3):
        sched.push(f"o{i}", "other", now=0.0)
    assert sched.batch_size_for("solo") == 1 and sched.batch_size_for("other") == 4
    assert sched.next_ready_in(now=0.0) == 0.0
    assert sched.pop_batch(now=0.0) == ("solo", ["s1"])
    assert sched.pop_batch(now=0.0) == ("solo", ["s2"])
    assert sched.pop_batch(now=0.0) is None  # "other" holds 3 of 4: waits for size or timeout
    sched.push("o3", "other", now=0.0)
    assert sched.pop_batch(now=0.0) == ("other", ["o0", "o1", "o2", "o3"])


@pytest.mark.parametrize("cap, expected", [(2, 2), (3, 3), (4, 3), (100, 3)])
def test_model_batch_size_below_at_and_above_the_global(cap: int, expected: int) -> None:
    """The batch is min([batching] max_batch_size, the model's max_batch_size)."""
    sched = Scheduler(max_batch_size=3, batch_timeout_ms=60_000, model_batch_sizes={"m": cap})
    assert sched.batch_size_for("m") == expected and sched.model_batch_sizes == {"m": cap}
    for i in range(expected - 1):
        sched.push(i, "m", now=0.0)
    assert sched.pop_batch(now=0.0) is None  # one short of its size: not ready before the timeout
    for i in range(expected - 1, 7):
        sched.push(i, "m", now=0.0)
    assert sched.pop_batch(now=0.0) == ("m", list(range(expected)))
    assert sched.pop_batch(now=0.0) == ("m", list(range(expected, 2 * expected)))


def test_model_batch_size_applies_to_fill_from_lower() -> None:
    sched = Scheduler(max_batch_size=8, batch_timeout_ms=0, model_batch_sizes={"m": 2})
    sched.push("l1", "m", "low", now=0.0)
    sched.push("n1", "m", "normal", now=0.0)
    sched.push("h1", "m", "high", now=0.0)
    assert sched.pop_batch(now=0.0) == ("m", ["h1", "n1"])  # topped up to 2, not 8
    assert sched.pop_batch(now=0.0) == ("m", ["l1"])


def test_model_batch_sizes_without_group_by_model_use_the_global_size() -> None:
    sched = Scheduler(max_batch_size=3, batch_timeout_ms=60_000, group_by_model=False, model_batch_sizes={"a": 1})
    assert sched.batch_size_for("a") == 3
    sched.push("a1", "a", now=0.0)
    sched.push("a2", "a", now=0.0)
    assert sched.pop_batch(now=0.0) is None  # batches mix models: the model's cap cannot apply
    sched.push("b1", "b", now=0.0)
    assert sched.pop_batch(now=0.0) == (None, ["a1", "a2", "b1"])


@pytest.mark.parametrize("bad", [{"m": 0}, {"m": 2.0}, {"m": True}, {"m": None}])
def test_invalid_model_batch_sizes(bad) -> None:
    with pytest.raises(ValueError, match="batch size for model 'm' must be an integer >= 1"):
        Scheduler(model_batch_sizes=bad)


# ------------------------------------------------------------ deadlines


def test_expired_entries_are_reported_not_dispatched() -> None:
    sched = Scheduler(max_batch_size=2, batch_timeout_ms=100)
    sched.push("late", "m", deadline=0.05, now=0.0)
    sched.push("ok", "m", deadline=10.0, now=0.0)
    sched.push("late2", "n", "high", deadline=0.06, now=0.0)
    assert sched.next_expiry_in(now=0.0) == 0.05
    assert sched.pop_batch(now=0.1) == ("m", ["ok"])
    assert len(sched) == 0
    assert sched.next_expiry_in(now=0.1) == 0.0  # reports are waiting
    assert sched.pop_expired(now=0.1) == ["late", "late2"]
    assert sched.pop_expired(now=0.1) == []
    assert sched.next_expiry_in(now=0.1) is None


def test_push_with_passed_deadline_is_refused() -> None:
    sched = Scheduler()
    with pytest.raises(DeadlinePassed) as info:
        sched.push("x", "m", deadline=1.0, now=1.0)
    assert isinstance(info.value, SchedulerRefusal) and "deadline" in info.value.reason
    assert len(sched) == 0
    with pytest.raises(ValueError):
        sched.push("x", "m", deadline=float("nan"), now=0.0)


def test_expired_handle_state_and_remove() -> None:
    sched = Scheduler()
    h = sched.push("x", "m", deadline=1.0, now=0.0)
    assert sched.pop_expired(now=2.0) == ["x"]
    assert h.state == "expired"
    assert sched.remove(h) is False


# ------------------------------------------------------------ cancellation


def test_cancellation() -> None:
    sched = Scheduler(max_batch_size=3, batch_timeout_ms=0)
    hs = [sched.push(i, "m", now=0.0) for i in range(4)]
    assert sched.remove(hs[1]) is True
    assert sched.remove(hs[1]) is False
    assert sched.sizes() == {"high": 0, "normal": 3, "low": 0}
    assert sched.pop_batch(now=0.0) == ("m", [0, 2, 3])
    assert sched.remove(hs[0]) is False and hs[0].state == "dispatched"
    other = Scheduler()
    foreign = other.push("f", "m", now=0.0)
    assert sched.remove(foreign) is False
    assert other.remove(foreign) is True
    with pytest.raises(TypeError):
        sched.remove("not a handle")
    with pytest.raises(TypeError):
        Handle()


def test_mass_cancellation_and_compaction_keep_order() -> None:
    rng = random.Random(7)
    sched, ref = make_pair(max_batch=5, timeout_ticks=4, caps=(5000, 5000, 5000))
    pairs = []
    for i in range(3000):
        p = rng.randrange(3)
        m = rng.choice("abcd")
        dl = None if rng.random() < 0.5 else (64 * 10 + rng.randrange(64 * 5)) / 64
        e = ref.push(i, m, p, dl, 0.0)
        pairs.append((sched.push(i, m, p, dl, now=0.0), e))
    for h, e in rng.sample(pairs, 2500):
        assert sched.remove(h) == ref.remove(e)
    assert sched.sizes() == ref.sizes()
    for step in range(200):
        now = 11.0 + step / 16
        assert sched.pop_batch(now=now) == ref.pop_batch(now)
        assert sched.pop_expired(now=now) == ref.pop_expired(now)
    assert len(sched) == 0


# ------------------------------------------------------------ misc API


def test_priority_parsing_and_constants() -> None:
    sched = Scheduler()
    assert (LOW, NORMAL, HIGH) == (0, 1, 2)
    for p in (0, 1, 2, "low", "normal", "high"):
        h = sched.push("x", "m", p, now=0.0)
        assert h.priority == (p if isinstance(p, int) else NAMES.index(p))
    for bad in (3, -1, "urgent", 1.0, True, None):
        with pytest.raises(ValueError):
            sched.push("x", "m", bad, now=0.0)
        with pytest.raises(ValueError):
            sched.size(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_batch_size=0),
        dict(max_batch_size=2.5),
        dict(batch_timeout_ms=-1),
        dict(batch_timeout_ms=float("nan")),
        dict(queue_sizes={"normal": -1}),
        dict(queue_sizes={"urgent": 5}),
        dict(clock="soon"),
    ],
)
def test_invalid_parameters(kwargs) -> None:
    with pytest.raises(ValueError):
        Scheduler(**kwargs)


def test_injected_and_default_clock() -> None:
    t = [100.0]
    sched = Scheduler(max_batch_size=8, batch_timeout_ms=100, clock=lambda: t[0])
    h = sched.push("x", "m")
    assert h.enqueued_at == 100.0
    assert sched.pop_batch() is None
    t[0] = 100.1
    assert sched.pop_batch() == ("m", ["x"])
    real = Scheduler(batch_timeout_ms=0)
    before = monotonic()
    h = real.push("y", "m")
    assert before <= h.enqueued_at <= monotonic()
    assert real.pop_batch() == ("m", ["y"])


def test_len_bool_sizes() -> None:
    sched = Scheduler()
    assert not sched and len(sched) == 0
    sched.push(1, "m", "high", now=0.0)
    sched.push(2, "m", "low", now=0.0)
    assert sched and len(sched) == 2
    assert sched.sizes() == {"high": 1, "normal": 0, "low": 1}
