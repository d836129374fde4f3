"""Serving /metrics (`[metrics] endpoint`) on the node's asyncio loop.

A small ASGI wrapper around prometheus_client's exposition so that only
GET/HEAD /metrics answer (anything else is a plain 404/405, not a second copy
of the metrics under every path), run by the same embedded HTTP server as the
health API.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from prometheus_client.asgi import make_asgi_app

from ..httpserve import EmbeddedHttpServer

if TYPE_CHECKING:
    from .collector import Metrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def metrics_app(metrics: Metrics) -> AsgiApp:
    """ASGI app: GET /metrics in the Prometheus text format (OpenMetrics on request); 404 elsewhere."""
    prometheus = make_asgi_app(metrics.registry)

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

    def __init__(self, metrics: Metrics, endpoint: str) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.url: str | None = None
        self._http: EmbeddedHttpServer | None = None

    async def start(self) -> str:
        """Bind (an OSError surfaces here, e.g. the port is taken), then serve; returns the /metrics URL."""
        self._http = EmbeddedHttpServer(metrics_app(self.metrics), self.endpoint, name="metrics")
        self.url = await self._http.start() + "/metrics"
        log.info("metrics on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
