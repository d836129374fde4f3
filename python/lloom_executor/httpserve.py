"""One way to serve an ASGI app (the admin API, /metrics) inside the executor's asyncio loop.

uvicorn runs as a task of the running (uvloop) loop; the socket is bound
before the task starts, so a taken port or a bad TLS cert/key fails in
`start()` where the caller can report it, and signals stay with the executor
(which drains on SIGINT/SIGTERM).

An address `unix:<path>` binds a Unix socket instead (the workers' private
endpoint, workers/peer_endpoint.py): a stale file at the path (a worker killed
with -9 leaves its socket behind) is replaced, and the socket is made 0600, so
only the node's own user reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


UNIX_PREFIX = "unix:"


def _bind_unix(path: str) -> socket.socket:
    """A listening Unix socket at `path` (mode 0600), replacing a socket file left there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_tcp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class EmbeddedHttpServer:
    def __init__(self, app: Any, address: str, *, name: str, tls_cert: str | None = None, tls_key: str | None = None) -> None:
        self.app = app
        self.address = address
        self.name = name
        self.tls = bool(tls_cert and tls_key)
        self._tls_cert, self._tls_key = (tls_cert, tls_key) if self.tls else (None, None)
        self.base_url: str | None = None  # scheme://host:bound-port once started
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        unix_path = self.address[len(UNIX_PREFIX) :] if self.address.startswith(UNIX_PREFIX) else None
        host, port = ("localhost", 0) if unix_path is not None else split_host_port(self.address)
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            loop="none",
            lifespan="off",
            access_log=False,
            log_config=None,  # uvicorn's loggers propagate to ours ([logging])
            log_level="warning",
            ssl_certfile=self._tls_cert,
            ssl_keyfile=self._tls_key,
            timeout_graceful_shutdown=5,
        )
        config.load()  # the TLS context: a bad cert/key fails now, not in the task
        sock = _bind_unix(unix_path) if unix_path is not None else _bind_tcp(host, port)
        try:
            self._server = _EmbeddedServer(config)
            self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"lloom-{self.name}")
            deadline = time.monotonic() + 10
            while not self._server.started and not self._task.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if not self._server.started:
                if self._task.done():
                    await self._task  # raises what stopped it
                raise RuntimeError(f"the {self.name} server did not start")
        except BaseException:
            sock.close()
            await self.stop()
            raise
        if unix_path is not None:
            self.base_url = self.address
            return self.base_url
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"{'https' if self.tls else 'http'}://{shown}:{sock.getsockname()[1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        except Exception as exc:
            log.warning("%s server stopped with %s: %s", self.name, type(exc).__name__, exc)
        self._server = self._task = None
