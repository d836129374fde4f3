"""Serving /metrics (`[metrics] endpoint`) on the node's asyncio loop.

A small ASGI wrapper around prometheus_client's exposition so that only
GET/HEAD /metrics answer (anything else is a plain 404/405, not a second copy
of the metrics under every path), run by the same embedded HTTP server as the
health API.

With several workers the lead serves the node's combined families instead of
its own registry: `source` computes them (reading the other workers is I/O, so
it is awaited on the loop, never done inside a blocking `collect`), and they
are encoded as prometheus_client's own app would (text or OpenMetrics, gzip
when asked for).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.asgi import make_asgi_app
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from ..httpserve import EmbeddedHttpServer
from .combine import FixedFamilies

if TYPE_CHECKING:
    from .collector import Metrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
FamilySource = Callable[[], Awaitable[Sequence[Metric]]]


def combined_app(source: FamilySource) -> AsgiApp:
    """ASGI app answering with the families `source` computes per request (the node's combined ones)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        encoder, content_type = choose_encoder(headers.get(b"accept", b"").decode("latin-1"))
        body = encoder(FixedFamilies(await source()))
        response_headers = [(b"content-type", content_type.encode())]
        if b"gzip" in headers.get(b"accept-encoding", b""):
            body = gzip.compress(body)
            response_headers.append((b"content-encoding", b"gzip"))
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})

    return app


def metrics_app(metrics: Metrics, source: FamilySource | None = None) -> AsgiApp:
    """ASGI app: GET /metrics in the Prometheus text format (OpenMetrics on request); 404 elsewhere.
    `source`: the families to serve instead of `metrics`' own (a lead of several workers)."""
    prometheus = make_asgi_app(metrics.registry) if source is None else combined_app(source)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            await prometheus(scope, receive, send)
            return
        status = 404 if scope["path"] != "/metrics" else 405
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"not found: GET /metrics\n" if status == 404 else b"GET only\n"})

    return app


class MetricsServer:
    """Serves /metrics at `endpoint` ("host:port", `[metrics] endpoint`) as a task on the running asyncio loop."""

    def __init__(self, metrics: Metrics, endpoint: str, *, source: FamilySource | None = None) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.source = source
        self.url: str | None = None
        self._http: EmbeddedHttpServer | None = None

    async def start(self) -> str:
        """Bind (an OSError surfaces here, e.g. the port is taken), then serve; returns the /metrics URL."""
        self._http = EmbeddedHttpServer(metrics_app(self.metrics, self.source), self.endpoint, name="metrics")
        self.url = await self._http.start() + "/metrics"
        log.info("metrics on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
