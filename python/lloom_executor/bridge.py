"""The one meeting point of the two event loops.

py-libp2p runs on trio in the P2P thread; everything else runs on asyncio
(uvloop) in the main thread. A request crosses from trio to asyncio once
(`TrioBridge.call_asyncio`) and its answer crosses back once; commands from
the main thread into the P2P side (publish, peer listings, shutdown) go the
other way (`TrioBridge.call_trio`). Nothing else shares state across threads.
Cancellation follows the call: cancelling the waiting side cancels the work.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

import trio

T = TypeVar("T")


class BridgeClosed(RuntimeError):
    """The other loop is not running (any more)."""


class _Crossing:
    """One trio -> asyncio call: what to run, the asyncio task running it, its outcome."""

    __slots__ = ("fn", "args", "token", "done", "task", "cancelled")

    def __init__(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...], token: trio.lowlevel.TrioToken
    ) -> None:
        self.fn = fn
        self.args = args
        self.token = token
        self.done = trio.Event()
        self.task: asyncio.Task[Any] | None = None
        self.cancelled = False

    def outcome(self) -> Any:
        """The task's result, or its exception raised here (cancelled: CancelledError, as a
        concurrent future reports it)."""
        task = self.task
        assert task is not None and task.done()
        if task.cancelled():
            raise concurrent.futures.CancelledError()
        return task.result()


class TrioBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        # Batched trio -> asyncio crossings (see `call_asyncio`); each flag says a wake-up
        # of the other loop is queued, so a new item needs none.
        self._to_asyncio: collections.deque[_Crossing] = collections.deque()
        self._asyncio_wakeup_pending = False
        self._to_trio: collections.deque[_Crossing] = collections.deque()
        self._trio_wakeup_pending = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def attach_trio(self, nursery: trio.Nursery) -> None:
        """Called once from inside the trio thread when its nursery is open."""
        self._token = trio.lowlevel.current_trio_token()
        self._nursery = nursery

    def detach_trio(self) -> None:
        self._token = None
        self._nursery = None

    # -- trio -> asyncio ---------------------------------------------------------
    async def call_asyncio(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """From trio: run `fn(*args)` as an asyncio task and await its outcome.

        Crossings travel in batches: a call queues itself and wakes the asyncio loop only if
        no wake-up is pending yet; each finished task queues its outcome and wakes the trio
        loop the same way. Under load that is one cross-thread wake-up per batch each way
        instead of two per request (`run_coroutine_threadsafe` + `run_sync_soon`), and the
        GIL changes hands correspondingly less often (measured with strace: futex calls and
        wake-up sends per request; benches/bench_e2e.py).
        """
        if self._loop.is_closed():
            raise BridgeClosed("asyncio loop is closed")
        crossing = _Crossing(fn, args, trio.lowlevel.current_trio_token())
        self._post_to_asyncio(crossing)
        try:
            await crossing.done.wait()
        except trio.Cancelled:
            crossing.cancelled = True
            task = crossing.task
            if task is not None:  # running: cancel it there (the asyncio side checks the flag too)
                try:
                    self._loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:  # loop closed: the task is gone with it
                    pass
            raise
        return cast(T, crossing.outcome())

    def _post_to_asyncio(self, crossing: _Crossing) -> None:
        """Queue a call; wake the asyncio loop unless a wake-up is already on its way."""
        self._to_asyncio.append(crossing)
        if self._asyncio_wakeup_pending:
            return
        self._asyncio_wakeup_pending = True
        try:
            self._loop.call_soon_threadsafe(self._start_queued)
        except RuntimeError:  # the loop is closed
            self._asyncio_wakeup_pending = False
            self._to_asyncio.clear()
            raise BridgeClosed("asyncio loop is closed") from None

    def _start_queued(self) -> None:
        """asyncio side: start every queued call as a task (the flag first: see `_post_to_asyncio`)."""
        self._asyncio_wakeup_pending = False
        queue, loop = self._to_asyncio, self._loop
        while queue:
            crossing = queue.popleft()
            if crossing.cancelled:
                continue
            task = loop.create_task(crossing.fn(*crossing.args))
            crossing.task = task
            if crossing.cancelled:  # cancelled between the check and `crossing.task` being set
                task.cancel()
            task.add_done_callback(functools.partial(self._post_to_trio, crossing))

    def _post_to_trio(self, crossing: _Crossing, _task: asyncio.Task[Any]) -> None:
        """asyncio side (the task's done callback): queue a finished call; wake the trio loop
        unless a wake-up is already on its way."""
        self._to_trio.append(crossing)
        if self._trio_wakeup_pending:
            return
        self._trio_wakeup_pending = True
        try:
            crossing.token.run_sync_soon(self._settle_queued)
        except trio.RunFinishedError:  # the trio run ended: nobody waits any more
            self._trio_wakeup_pending = False
            self._to_trio.clear()

    def _settle_queued(self) -> None:
        """trio side: wake every caller whose task finished (the flag first, as above)."""
        self._trio_wakeup_pending = False
        queue = self._to_trio
        while queue:
            queue.popleft().done.set()

    # -- asyncio -> trio ---------------------------------------------------------
    async def call_trio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """From asyncio: run `fn(*args)` in the trio thread's nursery and await it."""
        token, nursery = self._token, self._nursery
        if token is None or nursery is None:
            raise BridgeClosed("P2P thread is not running")
        loop = self._loop
        result: asyncio.Future[T] = loop.create_future()
        scope = trio.CancelScope()

        def settle(setter: Callable[[Any], None], value: Any) -> None:
            if not result.done():
                setter(value)

        async def runner() -> None:
            with scope:
                try:
                    value = await fn(*args)
                except trio.Cancelled:
                    loop.call_soon_threadsafe(settle, result.set_exception, BridgeClosed("cancelled in P2P thread"))
                    raise
                except BaseException as exc:  # handed over to the awaiting side
                    loop.call_soon_threadsafe(settle, result.set_exception, exc)
                    return
                loop.call_soon_threadsafe(settle, result.set_result, value)
            if scope.cancelled_caught:
                loop.call_soon_threadsafe(settle, result.set_exception, BridgeClosed("cancelled in P2P thread"))

        try:
            token.run_sync_soon(nursery.start_soon, runner)
        except trio.RunFinishedError:
            raise BridgeClosed("P2P thread has stopped") from None
        try:
            return await result
        except asyncio.CancelledError:
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass
            raise
