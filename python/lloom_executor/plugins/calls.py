"""Calling one hook: in which thread, within what time, and what counts as its failure.

Plain hooks run in daemon threads of the plugin's own, so a blocking hook (file,
database, HTTP) stalls neither the event loop, nor the shared default executor (the
ledger's), nor the other plugins, and a hung one cannot keep the process from
exiting. `async` hooks run on the loop. Either way each call is bounded in time
(queueing for a thread included), and whatever goes wrong comes back as one
`HookFailed` for the host to count, log and turn into a refusal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

FailureKind = Literal["exception", "timeout", "bad_result", "dropped"]  # the `kind` label of plugin_errors_total
_Job = tuple["concurrent.futures.Future[Any]", Callable[..., Any], Sequence[Any]]


class HookFailed(Exception):
    """A hook call that raised, ran over its time bound, returned nonsense, or (for
    on_request_finished) an event that never reached it."""

    def __init__(self, kind: FailureKind, detail: str, error: BaseException | None = None) -> None:
        super().__init__(detail)
        self.kind: FailureKind = kind
        self.detail = detail
        self.error = error


class WorkerThreads:
    """Daemon threads for a plugin's plain hooks, started on demand up to `size`."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = max(1, size)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], args: Sequence[Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        if len(self._threads) < self.size:
            with self._lock:
                if len(self._threads) < self.size:
                    thread = threading.Thread(
                        target=self._run, name=f"lloom-plugin-{self.name}-{len(self._threads)}", daemon=True
                    )
                    self._threads.append(thread)
                    thread.start()
        return future

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # its caller stopped waiting before it started
            try:
                result = fn(*args)
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; its caller gets it
                future.set_exception(exc)
            except BaseException as exc:  # noqa: BLE001 - SystemExit & co. must not travel to the event loop as such
                future.set_exception(RuntimeError(f"hook raised {type(exc).__name__}: {exc}"))
            else:
                future.set_result(result)

    def close(self) -> None:
        """Let idle threads end; a thread still inside a hook ends when the hook returns."""
        for _ in self._threads:
            self._jobs.put(None)


def is_async(fn: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose __call__ is one (anything else runs in a worker thread)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


async def call_bounded(
    fn: Callable[..., Any], run_on_loop: bool, threads: WorkerThreads, args: Sequence[Any], timeout: float
) -> Any:
    """`fn(*args)` within `timeout` seconds: on the loop when `run_on_loop`, else in `threads`.
    HookFailed when it raised or ran over; cancellation passes through."""
    bound = asyncio.timeout(timeout)
    try:
        async with bound:
            if run_on_loop:
                result = await fn(*args)
            else:
                result = await asyncio.wrap_future(threads.submit(fn, args))
            if inspect.isawaitable(result):  # a coroutine function we did not recognise (e.g. compiled)
                result = await result
    except TimeoutError as exc:
        if bound.expired():
            raise HookFailed("timeout", f"no result within {timeout:g} s") from None
        raise HookFailed("exception", f"TimeoutError: {exc}", exc) from None
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a hook raises is its failure, never the node's
        raise HookFailed("exception", f"{type(exc).__name__}: {exc}", exc) from None
    return result
