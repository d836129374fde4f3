"""`start --workers N`: N worker processes of one node, kept running, stopped together.

The supervisor imports neither py-libp2p nor the service: it resolves the
listen port (a `tcp/0` becomes one concrete port every worker binds, with
SO_REUSEPORT, so the kernel spreads inbound connections), checks that no other
process listens there (py-libp2p's listener sets SO_REUSEPORT, so a second
node of the same user would otherwise silently share the port), starts each
worker as `python -m lloom_executor start` with `LLOOM_WORKER=i/N`, and then:

- a worker that cannot start (before it reported ready) stops the node; the
  reason it reported is the node's error;
- a worker that dies after it served (kill -9, a crash) is restarted with the
  same index and logged; the requests it had in flight fail for their clients
  (their connections die with it), what it committed to the ledger stays;
- SIGTERM/SIGINT: every worker gets SIGTERM and drains; the node exits 0 when
  they all did.

Workers die with the supervisor (PR_SET_PDEATHSIG), so a supervisor killed
with -9 leaves no node behind that nobody manages.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .role import STATUS_FD_ENV, WORKER_ENV

log = logging.getLogger(__name__)

START_TIMEOUT_SECS = 120.0
STOP_GRACE_SECS = 30.0  # past the drain timeout, before a worker that does not stop is killed
_PR_SET_PDEATHSIG = 1


class WorkerStartError(RuntimeError):
    """A worker could not start: the node does not serve (the message is the worker's reason)."""


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    status: int  # read end of the status pipe
    ready: bool = False
    buffer: bytes = b""
    reason: str | None = None
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def tcp_endpoints(listen: Sequence[str]) -> list[tuple[int, str, int]]:
    """(family, host, port) of each `/ip4|ip6/<host>/tcp/<port>` listen address."""
    out: list[tuple[int, str, int]] = []
    for address in listen:
        parts = address.strip("/").split("/")
        if len(parts) >= 4 and parts[0] in ("ip4", "ip6") and parts[2] == "tcp":
            out.append((socket.AF_INET if parts[0] == "ip4" else socket.AF_INET6, parts[1], int(parts[3])))
    return out


def claim_port(listen: Sequence[str]) -> int | None:
    """The port the workers share: a free one when the addresses say tcp/0 (returned, for
    LLOOM_EXECUTOR_PORT), else None after checking the configured ones are free.
    Raises OSError naming an address another process already listens on."""
    endpoints = tcp_endpoints(listen)
    ports = {port for _, _, port in endpoints}
    if 0 in ports and len(ports) > 1:
        raise OSError("with several workers, tcp/0 needs every listen address on port 0 (or give one port)")
    chosen: int | None = None
    for family, host, port in endpoints:
        # no SO_REUSEPORT here: a bind that succeeds means nobody listens on it
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, chosen if chosen is not None else port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(f"{host} port {chosen or port} is in use by another process") from None
                raise
            if port == 0 and chosen is None:
                chosen = int(probe.getsockname()[1])
    return chosen


class Supervisor:
    """Runs `count` workers of the node started by `worker_argv` until a signal or a failed start."""

    def __init__(
        self,
        worker_argv: Sequence[str],
        count: int,
        *,
        env: Mapping[str, str] | None = None,
        listen: Sequence[str] = (),
        drain_timeout_secs: float = 30.0,
        start_timeout_secs: float = START_TIMEOUT_SECS,
    ) -> None:
        self.worker_argv = list(worker_argv)
        self.count = count
        self.env = dict(os.environ if env is None else env)
        self.listen = list(listen)
        self.stop_timeout = drain_timeout_secs + STOP_GRACE_SECS
        self.start_timeout = start_timeout_secs
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self._stopping = False
        self._selector = selectors.DefaultSelector()

    # -- lifecycle ----------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (then 0 when every worker drained cleanly, else 1).
        Raises WorkerStartError when a worker cannot start, OSError when the port is taken."""
        port = claim_port(self.listen)
        if port is not None:
            self.env["LLOOM_EXECUTOR_PORT"] = str(port)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(wake_w)
        self._selector.register(wake_r, selectors.EVENT_READ, None)
        try:
            for index in range(self.count):
                self._spawn(index)
            self._wait_ready()
            log.info(
                "node serving with %d workers (pids %s)", self.count, ", ".join(str(w.proc.pid) for w in self.workers.values())
            )
            while not self._stopping:
                self._step(timeout=None)
                self._restart_dead()
            return self._stop_all()
        except BaseException:
            self._kill_all()
            raise
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
            os.close(wake_r)
            os.close(wake_w)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True  # the wakeup fd ends the select

    def _spawn(self, index: int, restarts: int = 0) -> None:
        read_end, write_end = os.pipe()
        env = {**self.env, WORKER_ENV: f"{index}/{self.count}", STATUS_FD_ENV: str(write_end)}
        proc = subprocess.Popen(self.worker_argv, env=env, pass_fds=(write_end,), preexec_fn=_die_with_parent)
        os.close(write_end)
        os.set_blocking(read_end, False)
        worker = _Worker(index, proc, read_end, restarts=restarts)
        self.workers[index] = worker
        self._selector.register(read_end, selectors.EVENT_READ, worker)
        log.info("worker %d started (pid %d)", index, proc.pid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not all(w.ready for w in self.workers.values()):
            if self._stopping:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                slow = [w.index for w in self.workers.values() if not w.ready]
                raise WorkerStartError(f"worker(s) {slow} did not start within {self.start_timeout:.0f} s")
            self._step(timeout=left)
            for worker in self.workers.values():
                if not worker.ready and worker.proc.poll() is not None:
                    raise WorkerStartError(self._failure(worker))

    def _failure(self, worker: _Worker) -> str:
        self._read(worker)
        why = worker.reason or f"it exited with {_exit_text(worker.proc.returncode)} (see its log above)"
        return f"worker {worker.index} could not start: {why}"

    def _step(self, timeout: float | None) -> None:
        """Wait for a status line, a signal or a child's exit (SIGCHLD arrives on the wakeup fd)."""
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                try:
                    os.read(key.fd, 512)  # drain the wakeup bytes
                except BlockingIOError:
                    pass
            else:
                self._read(key.data)

    def _read(self, worker: _Worker) -> None:
        while True:
            try:
                chunk = os.read(worker.status, 4096)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            worker.buffer += chunk
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "ready" in message:
                worker.ready = True
            elif "failed" in message:
                worker.reason = str(message["failed"])

    def _forget(self, worker: _Worker) -> None:
        try:
            self._selector.unregister(worker.status)
        except (KeyError, ValueError):
            pass
        os.close(worker.status)

    def _restart_dead(self) -> None:
        for index, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is None or self._stopping:
                continue
            self._forget(worker)
            self.restarts += 1
            log.warning("worker %d (pid %d) died: %s; restarting it", index, worker.proc.pid, _exit_text(code))
            self._spawn(index, worker.restarts + 1)
            deadline = time.monotonic() + self.start_timeout
            fresh = self.workers[index]
            while not fresh.ready and not self._stopping:
                if fresh.proc.poll() is not None:
                    raise WorkerStartError(self._failure(fresh))
                if time.monotonic() >= deadline:
                    raise WorkerStartError(f"worker {index} did not restart within {self.start_timeout:.0f} s")
                self._step(timeout=deadline - time.monotonic())
            log.info("worker %d is back (pid %d)", index, fresh.proc.pid)

    def _stop_all(self) -> int:
        """SIGTERM to every worker, then wait for each to drain (killing one that overstays)."""
        log.info("stopping %d workers (they drain first)", len(self.workers))
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        clean = True
        for worker in self.workers.values():
            try:
                code = worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in %.0f s: killed", worker.index, self.stop_timeout)
                worker.proc.kill()
                code = worker.proc.wait()
            if code != 0:
                clean = False
                log.error("worker %d stopped with %s", worker.index, _exit_text(code))
            self._forget(worker)
        self.workers.clear()
        log.info("node stopped")
        return 0 if clean else 1

    def _kill_all(self) -> None:
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.kill()
            worker.proc.wait()
            self._forget(worker)
        self.workers.clear()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit yet"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def worker_argv(config_path: str | None, debug: bool) -> list[str]:
    """The command line of one worker: this interpreter, the ordinary `start`."""
    argv = [sys.executable, "-m", "lloom_executor", "start"]
    if config_path is not None:
        argv += ["--config", config_path]
    if debug:
        argv.append("--debug")
    return argv
