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
import concurrent.futures
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class BridgeClosed(RuntimeError):
    """The other loop is not running (any more)."""


class TrioBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None

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
        """From trio: run `fn(*args)` on the asyncio loop and await its result.

        `fn` must return a coroutine (an `async def`), not just any awaitable:
        `asyncio.run_coroutine_threadsafe` accepts nothing else.
        """
        if self._loop.is_closed():
            raise BridgeClosed("asyncio loop is closed")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: concurrent.futures.Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()

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
