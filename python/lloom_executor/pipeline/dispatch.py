"""`[priority]` and `[batching]`: admitted requests wait in the Cython scheduler's
queues and are let through to the backend in priority order, in per-model batches.

How a request moves (`Dispatcher.slot`, used by the serving path):

1. `push` into the scheduler at its priority with its signed deadline; a full
   queue refuses at once (a `Refusal`, code "queue_full", the scheduler's
   "normal queue full (200/200)"); nothing waits unbounded.
2. `pump` (run after every push, every finished call and on a timer) pops ready
   batches while fewer than `max_concurrent_requests` calls are running or
   popped-but-not-started, and grants each popped request its turn: all
   requests of a batch start in the same pass, concurrently. The rest stay in
   the scheduler, so when the backend is saturated whatever frees a slot goes to
   the highest priority waiting (high, then normal, then low; FIFO within one).
3. A popped request starts only within its model's `max_concurrent_requests`
   and the budgets of `resources.py` (memory, GPU memory, CPU cores); until
   then it is *held* (still counted, still expiring). New batches are not
   popped while the process CPU is above `max_cpu_percent`.
4. A popped request whose model is over its `max_tokens_per_second` is
   *throttled* instead: it waits aside until the model's token bucket is out of
   debt, then goes to the front of the held requests (high priority first, FIFO
   within one). Throttled requests do not count against
   `max_concurrent_requests` when popping (they could not use a slot, and
   counting them would let one throttled model stall every other model behind
   it); they keep their place in their priority's queue (the scheduler's
   `reserve`), so the queues stay bounded and the scheduler's one capacity
   check refuses ("normal queue full (200/200: 12 waiting for their model's
   max_tokens_per_second)"). Like the held requests they are a plain list,
   scanned on each pump: the queue sizes bound it.
5. A request whose deadline passes while queued, held or throttled is answered
   with a signed error ("expired while queued ...", with what it was waiting
   for when it was held or throttled), never dropped; the serving path's
   `request_timeout_secs` bounds the wait as well.

Batching here means *formation*: up to `max_batch_size` requests of one model
gathered within `batch_timeout_ms` and released together; with `group_by_model`
a model's own `[[models]] max_batch_size` caps its batches lower (1: that model
is never batched). Each still makes its
own backend call (one `/v1/chat/completions` each, run concurrently): the
OpenAI chat API takes one conversation per call, there is no multi-prompt chat
request, so the batch reaches the GPU through the model server's own
continuous batching, which concurrent calls feed.

Priorities: *high* when the offer is at least `high_priority_price_multiplier`
× our current price on both sides (`PricingEngine.is_high_priority`; a free
model has no high priority); *low* for unsigned requests (served only with
`allow_unsigned`; no accountable client); *normal* otherwise. Size is not a
criterion: demoting large `max_tokens` would punish clients that send none (the
reference client's default) or reward leaving it out, and size is already paid
for. Without `[priority]` every request is normal and its queue size applies.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._fast.scheduler import (
    HIGH,
    LOW,
    NORMAL,
    DeadlinePassed,
    Handle,
    QueueFull,
    Scheduler,
    monotonic,
)
from ..config import PriorityConfig
from ..outcome import Refusal, RefusalCode

if TYPE_CHECKING:
    from ..config import Config, ModelConfig
    from .model_registry import ModelRegistry
    from .resources import ResourceGovernor

log = logging.getLogger(__name__)

CPU_RECHECK_SECS = 0.25  # how often held-back work looks at the CPU again
RECENT_BATCHES = 256

QUEUED, HELD, THROTTLED, RUNNING, DONE, EXPIRED, WITHDRAWN = (
    "queued",
    "held",
    "throttled",
    "running",
    "done",
    "expired",
    "withdrawn",
)


@dataclass(eq=False)
class Job:
    """One request's place in line; `granted` resolves when it may call the backend."""

    model: str
    limit: int | None  # the model's max_concurrent_requests
    granted: asyncio.Future
    state: str = QUEUED
    handle: Handle | None = None
    enqueued_at: float = 0.0
    started_at: float | None = None
    waiting_for: str | None = None  # why it was last held or throttled (for its expiry answer)

    @property
    def deadline(self) -> float:
        return self.handle.deadline if self.handle is not None else float("inf")

    @property
    def place(self) -> Handle:
        """Its entry in the scheduler (every job is pushed as soon as it is made)."""
        assert self.handle is not None
        return self.handle


@dataclass
class _Counts:
    running: int = 0
    by_model: dict[str, int] = field(default_factory=dict)


class Dispatcher:
    """The queue between admission and the backend; one per executor, on its event loop.

    `clock` is monotonic seconds (the scheduler's clock too): tests inject one
    and call `pump()` after moving it, instead of sleeping. `on_sizes` gets the
    queue sizes and `on_throttled` the throttled requests by model whenever
    they change (the metrics' gauges).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        max_concurrent_requests: int,
        *,
        priority_multiplier: float | None = None,
        resources: ResourceGovernor | None = None,
        on_sizes: Callable[[Mapping[str, int]], None] | None = None,
        on_throttled: Callable[[Mapping[str, int]], None] | None = None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.scheduler = scheduler
        self.max_concurrent_requests = max_concurrent_requests
        self.priority_multiplier = priority_multiplier  # None: [priority] off, all normal
        self.resources = resources
        self._on_sizes = on_sizes
        self._on_throttled = on_throttled
        self.clock = clock
        self._counts = _Counts()
        self._held: deque[Job] = deque()
        self._throttled: list[Job] = []  # each keeps its place in its queue (scheduler.reserve)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._last_sizes: dict[str, int] | None = None
        self._last_throttled: dict[str, int] = {}
        self.recent_batches: deque[tuple[str | None, int]] = deque(maxlen=RECENT_BATCHES)
        self.batches = 0

    # -- policy ------------------------------------------------------------------------
    def priority_of(
        self,
        model: ModelConfig,
        offered_in: int,
        offered_out: int,
        *,
        signed: bool,
        registry: ModelRegistry,
    ) -> int:
        """HIGH / NORMAL / LOW for one admitted request (module doc: who gets which)."""
        if self.priority_multiplier is None:
            return NORMAL
        if not signed:
            return LOW
        return HIGH if registry.is_high_priority(model, offered_in, offered_out, self.priority_multiplier) else NORMAL

    # -- the request's side --------------------------------------------------------------
    @asynccontextmanager
    async def slot(
        self,
        model: str,
        *,
        priority: int = NORMAL,
        deadline: float | None = None,
        limit: int | None = None,
        on_enqueue: Callable[[Job], None] | None = None,
    ) -> AsyncIterator[Job]:
        """Wait for this request's turn; inside the block it holds a backend slot.

        `deadline`: monotonic seconds (None: none). Raises `Refusal` for a
        full queue or a deadline reached before the turn came. Cancelling the
        waiter (the request timeout) takes the request out of line.
        `on_enqueue(job)` is called once the request is in line, so a caller
        whose wait is cut short can still read `job.waiting_for`.
        """
        job = self._enqueue(model, priority, deadline, limit)
        if on_enqueue is not None:
            on_enqueue(job)
        try:
            await job.granted
        except BaseException:
            if job.state == RUNNING:  # granted in the same instant as cancelled
                self._release(job)
            else:
                self._withdraw(job)
            raise
        try:
            yield job
        finally:
            self._release(job)

    def _enqueue(self, model: str, priority: int, deadline: float | None, limit: int | None) -> Job:
        if self.resources is not None and (reason := self.resources.refusal(model)):
            raise Refusal(reason, RefusalCode.RESOURCES)  # can never run here: not queued at all
        now = self.clock()
        job = Job(model, limit, asyncio.get_running_loop().create_future(), enqueued_at=now)
        try:
            job.handle = self.scheduler.push(job, model, priority, deadline, now)
        except QueueFull as exc:
            # throttled requests past their deadline make room first, as the scheduler's queued ones do
            if exc.reserved and self._expire_throttled(now):
                return self._enqueue(model, priority, deadline, limit)
            log.info("refused: %s", exc.reason)
            raise Refusal(f"{exc.reason}; try again later", RefusalCode.QUEUE_FULL) from None
        except DeadlinePassed:
            raise Refusal("expired while queued: the request's deadline has passed", RefusalCode.EXPIRED) from None
        self.pump()
        return job

    def _withdraw(self, job: Job) -> None:
        if job.state == QUEUED and job.handle is not None:
            self.scheduler.remove(job.handle)
        elif job.state == HELD:
            self._held.remove(job)
        elif job.state == THROTTLED:
            self._throttled.remove(job)
            self.scheduler.release(job.place.priority)
        job.state = WITHDRAWN
        self.pump()

    def _release(self, job: Job) -> None:
        if job.state != RUNNING:
            return
        job.state = DONE
        counts = self._counts
        counts.running -= 1
        left = counts.by_model[job.model] - 1
        if left:
            counts.by_model[job.model] = left
        else:
            del counts.by_model[job.model]
        if self.resources is not None:
            self.resources.finished(job.model)
        self.pump()

    def metered(self, model: str) -> bool:
        """Whether `model`'s output tokens are paced ([[models]] max_tokens_per_second)."""
        return self.resources is not None and self.resources.metered(model)

    def charge(self, model: str, tokens: int) -> None:
        """A call of `model` produced `tokens` output tokens (charged before its slot is freed)."""
        if self.resources is not None:
            self.resources.produced(model, tokens)

    # -- the dispatcher's side ------------------------------------------------------------
    @property
    def running(self) -> int:
        """Backend calls in flight through this dispatcher."""
        return self._counts.running

    @property
    def held(self) -> int:
        """Requests popped from the queues that wait for a model slot, memory, GPU memory or cores."""
        return len(self._held)

    @property
    def throttled(self) -> int:
        """Popped requests that wait for their model's max_tokens_per_second."""
        return len(self._throttled)

    def throttled_by_model(self) -> dict[str, int]:
        """{model: its throttled requests}, for models that have some."""
        return dict(Counter(job.model for job in self._throttled))

    def sizes(self) -> dict[str, int]:
        return self.scheduler.sizes()

    def pump(self) -> None:
        """Expire, start and pop what the clock and the free slots allow; then set the timer."""
        now = self.clock()
        for job in self.scheduler.pop_expired(now):
            self._expire(job)
        if self._throttled:
            self._release_throttled(now)
        if self._held:
            waiting, self._held = self._held, deque()
            for job in self._unexpired(waiting, now):
                self._place(job, now)
        cpu_blocked = False
        while self._counts.running + len(self._held) < self.max_concurrent_requests:
            if self.resources is not None and self.scheduler and self.resources.cpu_busy():
                cpu_blocked = True
                break
            batch = self.scheduler.pop_batch(now)
            if batch is None:
                break
            model, jobs = batch
            self.batches += 1
            self.recent_batches.append((str(model) if model is not None else None, len(jobs)))
            log.debug("batch %d: %d request(s) for %s", self.batches, len(jobs), model)
            for job in jobs:
                self._place(job, now)
        self._publish()
        self._arm_timer(now, cpu_blocked)

    def _wait_reason(self, job: Job) -> str | None:
        """Why `job` cannot start now (None: it can)."""
        counts = self._counts
        if counts.running >= self.max_concurrent_requests:
            return f"all {self.max_concurrent_requests} backend slots (max_concurrent_requests) are busy"
        if job.limit is not None and counts.by_model.get(job.model, 0) >= job.limit:
            return f"model {job.model!r} is at its max_concurrent_requests ({job.limit})"
        return None if self.resources is None else self.resources.wait_reason(job.model)

    def _place(self, job: Job, now: float) -> None:
        """Start a popped job, or hold it, or throttle it when its model is over its token rate."""
        reason = self._wait_reason(job)
        if reason is None:
            self._start(job, now)
            return
        job.waiting_for = reason
        if self.resources is not None and self.resources.ready_in(job.model) > 0:
            self._throttle(job)
        else:
            job.state = HELD
            self._held.append(job)

    def _throttle(self, job: Job) -> None:
        job.state = THROTTLED
        self._throttled.append(job)
        self.scheduler.reserve(job.place.priority)  # it just left its queue: the place it had

    def _release_throttled(self, now: float) -> None:
        """Jobs whose model's token rate allows a start again go to the front of the held line,
        high priority first, FIFO within one (they were popped before anything held now)."""
        waiting = self._unexpired(self._throttled, now)
        resources = self.resources
        assert resources is not None  # only the governor throttles
        ready_models = {m for m in {job.model for job in waiting} if resources.ready_in(m) <= 0}
        self._throttled = [job for job in waiting if job.model not in ready_models]
        if not ready_models:
            return
        ready = sorted(
            (job for job in waiting if job.model in ready_models), key=lambda job: (-job.place.priority, job.place.seq)
        )
        for job in ready:
            self.scheduler.release(job.place.priority)
            job.state = HELD
        self._held.extendleft(reversed(ready))

    def _expire_throttled(self, now: float) -> bool:
        """Expire the throttled jobs whose deadline passed; whether there were any."""
        before = len(self._throttled)
        self._throttled = self._unexpired(self._throttled, now)
        return len(self._throttled) < before

    def _unexpired(self, jobs: Iterable[Job], now: float) -> list[Job]:
        """`jobs` (held or throttled) less those whose deadline passed, which are answered."""
        keep = []
        for job in jobs:
            if job.deadline <= now:
                self._expire(job)
            else:
                keep.append(job)
        return keep

    def _start(self, job: Job, now: float) -> None:
        if job.granted.done():  # the waiter is gone (cancelled): nothing to start
            job.state = WITHDRAWN
            return
        job.state = RUNNING
        job.started_at = now
        counts = self._counts
        counts.running += 1
        counts.by_model[job.model] = counts.by_model.get(job.model, 0) + 1
        if self.resources is not None:
            self.resources.started(job.model)
        job.granted.set_result(None)

    def _expire(self, job: Job) -> None:
        if job.state == THROTTLED:
            self.scheduler.release(job.place.priority)
        job.state = EXPIRED
        if not job.granted.done():
            waited = self.clock() - job.enqueued_at
            why = f" ({job.waiting_for})" if job.waiting_for else " before a backend slot was free"
            job.granted.set_exception(
                Refusal(
                    f"expired while queued: the request's deadline passed after {waited:.1f} s in the queue{why}",
                    RefusalCode.EXPIRED,
                )
            )

    def _publish(self) -> None:
        """Queue sizes and throttled requests to the metrics, when they changed."""
        if self._on_sizes is not None:
            sizes = self.scheduler.sizes()
            if sizes != self._last_sizes:
                self._last_sizes = sizes
                self._on_sizes(sizes)
        if self._on_throttled is not None and (self._throttled or self._last_throttled):
            by_model = self.throttled_by_model()
            if by_model != self._last_throttled:
                self._last_throttled = by_model
                self._on_throttled(by_model)

    def _arm_timer(self, now: float, cpu_blocked: bool) -> None:
        """One loop timer for the next moment something can change without an event."""
        waits: list[float] = []
        room = self._counts.running + len(self._held) < self.max_concurrent_requests
        if cpu_blocked:
            waits.append(CPU_RECHECK_SECS)
        elif room and (ready := self.scheduler.next_ready_in(now)) is not None:
            waits.append(ready)
        if (expiry := self.scheduler.next_expiry_in(now)) is not None:
            waits.append(expiry)
        for job in itertools.chain(self._held, self._throttled):
            if job.deadline != float("inf"):
                waits.append(job.deadline - now)
        if self._throttled and self.resources is not None:
            waits.extend(self.resources.ready_in(m) for m in {job.model for job in self._throttled})
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waits:
            delay = max(0.0, min(waits))
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.pump()


def scheduler_from_config(config: Config, clock: Callable[[], float] | None = None) -> Scheduler:
    """[batching] forms batches (off: every request is a batch of one, ready at once), each
    model's at most min([batching] max_batch_size, its [[models]] max_batch_size) with
    group_by_model; [priority] queue_sizes bound the queues either way."""
    batching = config.batching
    if batching.enabled:
        caps = {m.name: m.max_batch_size for m in config.models if m.max_batch_size is not None}
        if caps and not batching.group_by_model:
            log.warning(
                "[[models]] max_batch_size of %s: not applied, [batching] group_by_model = false forms batches "
                "across models (of up to [batching] max_batch_size = %d)",
                ", ".join(caps),
                batching.max_batch_size,
            )
        return Scheduler(
            batching.max_batch_size,
            batching.batch_timeout_ms,
            batching.group_by_model,
            config.priority.queue_sizes,
            clock=clock,
            model_batch_sizes=caps,
        )
    return Scheduler(1, 0, True, config.priority.queue_sizes, clock=clock)


def direct_dispatcher(max_concurrent_requests: int, *, resources: ResourceGovernor | None = None) -> Dispatcher:
    """The dispatcher of an executor without [priority] and [batching]: batches of one, one
    priority, the default queue size (what `dispatcher_from_config` builds from such a config)."""
    return Dispatcher(Scheduler(1, 0, True, PriorityConfig().queue_sizes), max_concurrent_requests, resources=resources)


def dispatcher_from_config(
    config: Config,
    *,
    resources: ResourceGovernor | None = None,
    on_sizes: Callable[[Mapping[str, int]], None] | None = None,
    on_throttled: Callable[[Mapping[str, int]], None] | None = None,
) -> Dispatcher:
    """The one path to a backend slot. Without [priority] and [batching] it is the direct
    path: every request is a batch of one, at one priority, bounded by `max_concurrent_requests`
    (and each model's own), waiting in line up to the normal queue's size."""
    return Dispatcher(
        scheduler_from_config(config),
        config.request_handling.max_concurrent_requests,
        priority_multiplier=config.priority.high_priority_price_multiplier if config.priority.enabled else None,
        resources=resources,
        on_sizes=on_sizes,
        on_throttled=on_throttled,
    )
