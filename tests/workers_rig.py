"""A real N-worker node (`lloom-executor start --workers N` as a process) and ways to reach each worker.

The kernel spreads connections over the workers (SO_REUSEPORT); which worker
holds a connection is read from the workers' own sockets (psutil), so a test
can put one client on each worker instead of hoping the hash does.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from lloom_executor.client import LloomClient


class WorkersNode:
    """The supervisor process; its output is read on a thread into `lines`."""

    def __init__(self, config: Path, workers: int, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLOOM_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lloom_executor", "start", "--config", str(config), "--workers", str(workers), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0, start: int = 0) -> re.Match[str]:
        """The first output line from index `start` matching `pattern` (the line the test waits on)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            index = start
            while True:
                while index < len(self.lines):
                    line = self.lines[index]
                    if line == "":
                        raise AssertionError(f"output ended before {pattern!r}:\n{self.output}")
                    if match := re.search(pattern, line):
                        return match
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output}")
                self._changed.wait(left)

    def ready(self) -> str:
        """Waits until every worker serves; returns the node's address."""
        self.wait_for(r"node serving with \d+ workers", 90)
        return self.wait_for(r"listening on (/ip4/\S+/p2p/\S+)").group(1)

    def worker_pids(self) -> dict[int, int]:
        """index -> pid of the workers running now (the latest start of each index)."""
        pids: dict[int, int] = {}
        for line in self.lines:
            if m := re.search(r"worker (\d+) started \(pid (\d+)\)", line):
                pids[int(m.group(1))] = int(m.group(2))
        return pids

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def workers_node(config: Path, workers: int = 2) -> Iterator[WorkersNode]:
    node = WorkersNode(config, workers)
    try:
        yield node
    finally:
        node.kill()  # a test that did not stop it cleanly leaves nothing behind


def remote_ports(pid: int, port: int) -> set[int]:
    """Remote ports of the established connections worker `pid` accepted on the node's `port`."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return set()
    return {c.raddr.port for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port and c.raddr}


async def client_on_each_worker(address: str, pids: dict[int, int], *, tries: int = 40) -> dict[int, LloomClient]:
    """Started clients, one connected to each worker (clients landing on a worker that already has
    one are stopped); the caller stops the returned clients."""
    port = int(address.split("/tcp/")[1].split("/")[0])
    placed: dict[int, LloomClient] = {}
    for _ in range(tries):
        before = {i: remote_ports(pid, port) for i, pid in pids.items()}
        client = LloomClient(bootstrap=[], request_timeout=30)
        await client.start()
        await client.connect(address)
        landed = None
        deadline = time.monotonic() + 10
        while landed is None and time.monotonic() < deadline:
            for index, pid in pids.items():
                if remote_ports(pid, port) - before[index]:
                    landed = index
            if landed is None:
                await asyncio.sleep(0.01)
        if landed is not None and landed not in placed:
            placed[landed] = client
        else:
            await client.stop()
        if len(placed) == len(pids):
            return placed
    for client in placed.values():
        await client.stop()
    raise AssertionError(f"could not place a client on every worker in {tries} connections")
