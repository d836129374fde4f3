"""The trio <-> asyncio bridge: results, errors and cancellation cross in both directions."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from lloom_executor.bridge import BridgeClosed, TrioBridge


class TrioThread:
    """A real trio loop in a thread, attached to the bridge, as the P2P node runs it."""

    def __init__(self, bridge: TrioBridge) -> None:
        self.bridge = bridge
        self.ready = threading.Event()
        self.stop_event: trio.Event | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self.stop_event = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.bridge.attach_trio(nursery)
            self.ready.set()
            await self.stop_event.wait()
            self.bridge.detach_trio()
            nursery.cancel_scope.cancel()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10)

    def stop(self) -> None:
        if self.token is not None and self.stop_event is not None:
            try:
                trio.from_thread.run_sync(self.stop_event.set, trio_token=self.token)
            except trio.RunFinishedError:
                pass
        self.thread.join(10)
        assert not self.thread.is_alive()

    def run(self, afn, *args):
        return trio.from_thread.run(afn, *args, trio_token=self.token)


@pytest.fixture
def loops():
    """An asyncio loop in this thread's helper thread, and a trio loop in another."""
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    bridge = TrioBridge(loop)
    trio_thread = TrioThread(bridge)
    trio_thread.start()
    try:
        yield loop, bridge, trio_thread
    finally:
        trio_thread.stop()
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(10)
        loop.close()


def on_asyncio(loop: asyncio.AbstractEventLoop, coro):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(10)


def test_trio_to_asyncio_result_and_thread(loops) -> None:
    loop, bridge, trio_thread = loops
    asyncio_thread: list[int] = []

    async def work(x: int) -> int:
        asyncio_thread.append(threading.get_ident())
        await asyncio.sleep(0.01)
        return x * 2

    async def from_trio() -> int:
        return await bridge.call_asyncio(work, 21)

    assert trio_thread.run(from_trio) == 42
    assert asyncio_thread and asyncio_thread[0] != trio_thread.thread.ident


def test_trio_to_asyncio_exception_propagates(loops) -> None:
    loop, bridge, trio_thread = loops

    async def boom() -> None:
        raise KeyError("from asyncio")

    async def from_trio() -> str:
        try:
            await bridge.call_asyncio(boom)
        except KeyError as exc:
            return str(exc)
        return "no error"

    assert trio_thread.run(from_trio) == "'from asyncio'"


def test_trio_cancellation_cancels_asyncio_work(loops) -> None:
    loop, bridge, trio_thread = loops
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def from_trio() -> bool:
        with trio.move_on_after(0.1) as scope:
            await bridge.call_asyncio(slow)
        return scope.cancelled_caught

    assert trio_thread.run(from_trio) is True
    assert cancelled.wait(5), "the asyncio task was not cancelled"


def test_asyncio_to_trio_result_exception_and_cancel(loops) -> None:
    loop, bridge, trio_thread = loops
    trio_cancelled = threading.Event()

    async def add(a: int, b: int) -> int:
        await trio.sleep(0.01)
        return a + b

    async def fail() -> None:
        raise ValueError("from trio")

    async def slow() -> None:
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            trio_cancelled.set()
            raise

    async def scenario() -> tuple[int, str, bool]:
        total = await bridge.call_trio(add, 2, 3)
        try:
            await bridge.call_trio(fail)
            message = "no error"
        except ValueError as exc:
            message = str(exc)
        task = asyncio.ensure_future(bridge.call_trio(slow))
        await asyncio.sleep(0.1)
        task.cancel()
        try:
            await task
            was_cancelled = False
        except asyncio.CancelledError:
            was_cancelled = True
        return total, message, was_cancelled

    assert on_asyncio(loop, scenario()) == (5, "from trio", True)
    assert trio_cancelled.wait(5), "the trio task was not cancelled"


def test_call_trio_after_stop_is_refused(loops) -> None:
    loop, bridge, trio_thread = loops
    trio_thread.stop()

    async def nothing() -> None:
        return None

    with pytest.raises(BridgeClosed):
        on_asyncio(loop, bridge.call_trio(nothing))


def test_many_concurrent_crossings(loops) -> None:
    """Requests from trio run concurrently on asyncio: none waits for another (no head-of-line)."""
    loop, bridge, trio_thread = loops
    running = 0
    peak = 0
    release = asyncio.Event()

    async def echo(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if peak == 200:
            release.set()
        await asyncio.wait_for(release.wait(), 10)
        running -= 1
        return i

    async def from_trio() -> list[int]:
        results: list[int] = []

        async def one(i: int) -> None:
            results.append(await bridge.call_asyncio(echo, i))

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
        return sorted(results)

    assert trio_thread.run(from_trio) == list(range(200))
    assert peak == 200
