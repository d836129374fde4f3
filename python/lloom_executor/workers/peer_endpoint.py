"""Each worker's private endpoint: its own metrics and its view of the network, for the lead.

With `start --workers N` (N > 1) only the lead serves `/metrics` and the admin
API, but each worker counts what it serves and holds its own connections. So
every worker (the lead too) serves, on a Unix socket only the node's user can
reach, two read-only paths:

  GET /metrics   this worker's exposition (Prometheus text format), with its
                 incarnation (pid and start time) in the `x-lloom-incarnation`
                 header, so the lead can tell a restarted worker from one whose
                 counters went backwards
  GET /node      {"worker": i, "incarnation": ..., "peers": [...], "network": {...}}:
                 the peers connected to this worker and the executors it heard of

Why a Unix socket rather than a port: nothing outside the machine may read a
worker's view, a port would need configuring (and could be taken), and a file
is guarded by its mode: the directory is 0700, the socket 0600. The socket is
`<data_dir>/workers/w<i>.sock`; where that path is too long for a socket
address (108 bytes on Linux) it is `<tmp>/lloom-<uid>-<hash of data_dir>/w<i>.sock`.
A node of one worker has no socket (nothing to combine).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..httpserve import UNIX_PREFIX, EmbeddedHttpServer

log = logging.getLogger(__name__)

INCARNATION_HEADER = "x-lloom-incarnation"
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux (104 on BSDs); leave room

ViewSource = Callable[[], Awaitable[dict[str, Any]]]


def socket_dir(data_dir: Path) -> Path:
    """The directory of the node's worker sockets (created 0700; see the module doc for where)."""
    preferred = data_dir / "workers"
    if len(str(preferred / "w999.sock").encode()) <= MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"lloom-{os.getuid()}-{digest}"


def socket_path(data_dir: Path, index: int) -> Path:
    return socket_dir(data_dir) / f"w{index}.sock"


def _private_dir(path: Path) -> None:
    """Create `path` 0700, or check that the existing one is a directory of ours (not a link
    someone else planted in a shared temp directory) and make it 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory owned by this user: refusing to put worker sockets there")
    path.chmod(0o700)


class WorkerEndpoint:
    """One worker's private HTTP server on its Unix socket (started by the service when N > 1)."""

    def __init__(self, path: Path, index: int, registry: CollectorRegistry, view: ViewSource) -> None:
        self.path = path
        self.index = index
        self.registry = registry
        self.view = view
        self.incarnation = f"{os.getpid()}-{time.time_ns()}"
        self._http: EmbeddedHttpServer | None = None

    def exposition(self) -> bytes:
        """This worker's own metrics (what the lead reads of itself without a socket round trip)."""
        return generate_latest(self.registry)

    async def node_view(self) -> dict[str, Any]:
        return {"worker": self.index, "incarnation": self.incarnation, **await self.view()}

    def _app(self) -> Starlette:
        async def metrics(request: Request) -> Response:
            return Response(
                self.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4, headers={INCARNATION_HEADER: self.incarnation}
            )

        async def node(request: Request) -> Response:
            return JSONResponse(await self.node_view())

        return Starlette(routes=[Route("/metrics", metrics, methods=["GET"]), Route("/node", node, methods=["GET"])])

    async def start(self) -> None:
        """Bind the socket (replacing one a killed worker of this index left) and serve."""
        _private_dir(self.path.parent)
        self._http = EmbeddedHttpServer(self._app(), UNIX_PREFIX + str(self.path), name=f"worker {self.index} endpoint")
        await self._http.start()
        log.debug("worker %d: private endpoint on %s", self.index, self.path)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
            self._http = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _client(path: Path, timeout_secs: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://worker", timeout=timeout_secs, trust_env=False
    )


async def fetch_metrics(path: Path, timeout_secs: float) -> tuple[str, str]:
    """(incarnation, exposition text) of the worker at `path`; httpx errors when it does not answer."""
    async with _client(path, timeout_secs) as http:
        response = await http.get("/metrics")
        response.raise_for_status()
        return response.headers.get(INCARNATION_HEADER, ""), response.text


async def fetch_view(path: Path, timeout_secs: float) -> dict[str, Any]:
    """The `/node` view of the worker at `path`; httpx errors when it does not answer."""
    async with _client(path, timeout_secs) as http:
        response = await http.get("/node")
        response.raise_for_status()
        view: dict[str, Any] = response.json()
        return view
