"""The local health and admin HTTP API (`[api]`): Starlette served by uvicorn on the executor's loop.

Endpoints (JSON):

  GET /health            {"status": "healthy"|"degraded"|"unhealthy"}; 200, or 503 when unhealthy;
                         and "ledger": "not writable" while the ledger cannot write.
                         Always open, even with an auth_token: load balancers and the
                         manual's `curl http://localhost:8080/health` send no token, and
                         it tells nothing beyond up/down and why.
  GET /health/detailed   the manual's fields: status, uptime_seconds, models_loaded,
                         active_requests, total_requests, backend_status, p2p_peers;
                         and throttled_models: {model: {resume_in_seconds,
                         waiting_requests}} for each model over its [[models]]
                         max_tokens_per_second now (empty when none is); while the
                         ledger cannot write also "ledger": "not writable",
                         "ledger_error" (SQLite's message) and "ledger_write_errors";
                         backends: {name: {kind, strategy, models, max_concurrent_requests,
                         instances: [{instance, up, in_flight, calls, failures,
                         retried_elsewhere, last_error, down_for_secs}], instances_up}}
                         ([llm_client] is "llm_client"; `up` is null where there is no pool);
                         with [blockchain] enabled, settlement: {rpc_up, chain_checked, states:
                         {pending, submitted, confirmed, reverted, expired, unsettleable},
                         oldest_pending_secs, gas_spent_wei, transactions_sent, last_error, ...}.
  GET /admin/peers       connected peers (PeerBook snapshot: peer_id, addresses, direction,
                         connected_since, protocols, latency_ms, roles).
  GET /admin/models      configured models with prices (wei per token), aliases, enabled and
                         the backend's state of each, plus the verified network view of the
                         other executors (gossip).

Auth: with `auth_token` set, every path except `/health` needs
`Authorization: Bearer <token>` (compared in constant time), else 401.
TLS: with `tls_cert`/`tls_key` set the server speaks HTTPS only.

Status: "unhealthy" while the P2P node is not running, the executor is
draining (shutting down: route elsewhere) or the ledger cannot write (a full
disk: every request that would be served is refused, since nothing is served
without its row; it turns healthy by itself once a write succeeds again, which
the ledger retries every second); "degraded" while the backend is unreachable,
no model is enabled or a backend pool has an instance taken out; else "healthy".

The backend is never contacted per HTTP request: `BackendProbe` lists its
models every `probe_interval_secs` (and once before the API starts), and every
endpoint reads that cached result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .backends.base import BackendError, BackendTimeout, LlmBackend, ModelInfo
from .config import ApiConfig, Config
from .diagnostics import model_rows
from .httpserve import EmbeddedHttpServer, split_host_port
from .ledger import LedgerStatus

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})


def json_response(data: Any, status: int = 200) -> Response:
    """stdlib json: wei amounts may pass 2**64; sets (if any) become sorted lists."""
    body = json.dumps(data, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o))
    return Response(body, status_code=status, media_type="application/json")


class BackendProbe:
    """Cached answer to "can we reach the backend, and what does it list?"."""

    def __init__(self, backend: LlmBackend, *, interval_secs: float = 15.0, timeout_secs: float = 5.0) -> None:
        self.backend = backend
        self.interval_secs = interval_secs
        self.timeout_secs = timeout_secs
        self.details: list[ModelInfo] = []
        self.error: BackendError | None = None
        self.checked_at: float | None = None  # wall clock of the last probe
        self._task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self.checked_at is not None and self.error is None

    @property
    def status(self) -> str:
        return "connected" if self.connected else "disconnected"

    async def probe_once(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_secs):
                details = await self.backend.model_details()
        except BackendError as exc:
            self.error = exc
        except TimeoutError:
            self.error = BackendTimeout(f"no model listing within {self.timeout_secs:g} s")
        except Exception as exc:  # a backend bug must not stop the probe
            self.error = BackendError(f"{type(exc).__name__}: {exc}")
        else:
            self.details, self.error = list(details), None
        if self.error is not None and (self.checked_at is None or self.connected):
            log.warning("backend probe: disconnected (%s: %s)", type(self.error).__name__, self.error)
        self.checked_at = time.time()

    async def start(self) -> None:
        """First probe now (so the API answers from a known state), then periodically."""
        await self.probe_once()
        self._task = asyncio.create_task(self._loop(), name="lloom-backend-probe")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_secs)
            await self.probe_once()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def model_details(self) -> list[ModelInfo]:
        """The cached listing, shaped like `LlmBackend.model_details` (for `model_rows`)."""
        if self.error is not None:
            raise self.error
        return self.details


class BearerAuth:
    """ASGI middleware: 401 for every path outside OPEN_PATHS without the right bearer token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is not None and scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = json_response({"error": "unauthorized: send Authorization: Bearer <api auth_token>"}, 401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="lloom-executor"'
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class NodeView(Protocol):
    """What the admin API may read of a running node (`ExecutorService` implements it)."""

    @property
    def running(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    def uptime_seconds(self) -> int: ...

    async def request_counts(self) -> tuple[int, int]:
        """(requests in flight, requests served) of the node: every worker's, with several."""
        ...

    async def peers(self) -> list[dict[str, Any]]: ...

    async def network(self) -> dict[str, Any]: ...

    def served_models(self) -> list[str]: ...

    def prices(self) -> dict[str, tuple[int, int]]: ...

    def throttled_models(self) -> dict[str, dict[str, Any]]: ...

    def ledger_status(self) -> LedgerStatus: ...

    def backend_health(self) -> dict[str, dict[str, Any]]: ...

    def settlement_status(self) -> dict[str, Any] | None: ...

    def shared_state_status(self) -> dict[str, Any] | None: ...

    def cluster_status(self) -> dict[str, Any] | None: ...


NOT_WRITABLE = "not writable"


class ApiState:
    """What the endpoints read: the node's view, the config and the cached backend probe."""

    def __init__(self, node: NodeView, config: Config, probe: BackendProbe) -> None:
        self.node = node
        self.config = config
        self.probe = probe

    def status(self) -> str:
        if not self.node.running or self.node.draining or not self.node.ledger_status().writable:
            return "unhealthy"
        if (self.node.shared_state_status() or {}).get("reachable") is False:  # every request is refused
            return "unhealthy"
        if not self.probe.connected or not self.node.served_models() or self._instance_down():
            return "degraded"
        return "healthy"

    def _instance_down(self) -> bool:
        return any(i.get("up") is False for b in self.node.backend_health().values() for i in b.get("instances", ()))

    def health(self) -> dict[str, Any]:
        """`/health`: the status, and the reason when it is the ledger (no detail: the path is open)."""
        body: dict[str, Any] = {"status": self.status()}
        if not self.node.ledger_status().writable:
            body["ledger"] = NOT_WRITABLE
        return body

    async def peers(self) -> list[dict[str, Any]]:
        return await self.node.peers()

    async def detailed(self) -> dict[str, Any]:
        active, total = await self.node.request_counts()
        return {
            "status": self.status(),
            "uptime_seconds": self.node.uptime_seconds(),
            "models_loaded": self.node.served_models(),
            "active_requests": active,
            "total_requests": total,
            "backend_status": self.probe.status,
            "p2p_peers": len(await self.node.peers()),
            "throttled_models": self.node.throttled_models(),
            "backends": self.node.backend_health(),
            **self._ledger_problem(),
            **self._settlement(),
            **self._shared_state(),
            **self._cluster(),
        }

    def _cluster(self) -> dict[str, Any]:
        status = self.node.cluster_status()
        return {"cluster": status} if status is not None else {}

    def _shared_state(self) -> dict[str, Any]:
        status = self.node.shared_state_status()
        return {"shared_state": status} if status is not None else {}

    def _settlement(self) -> dict[str, Any]:
        status = self.node.settlement_status()
        return {"settlement": status} if status is not None else {}

    def _ledger_problem(self) -> dict[str, Any]:
        ledger = self.node.ledger_status()
        if ledger.writable:
            return {}
        return {"ledger": NOT_WRITABLE, "ledger_error": ledger.last_error, "ledger_write_errors": ledger.write_errors}

    async def models(self) -> dict[str, Any]:
        rows, status = await model_rows(self.config, self.probe, self.node.prices())
        llm = self.config.llm_client
        return {
            "backend_status": status,
            "backend": {
                "type": llm.backend,
                "base_url": None if llm.backend == "echo" else llm.base_url,
                "status": self.probe.status,
                "checked_at": self.probe.checked_at,
            },
            "models": [dataclasses.asdict(r) for r in rows],
            "network": await self.node.network(),
        }


def build_app(state: ApiState, auth_token: str | None) -> Starlette:
    async def health(request: Request) -> Response:
        body = state.health()
        return json_response(body, 503 if body["status"] == "unhealthy" else 200)

    async def health_detailed(request: Request) -> Response:
        data = await state.detailed()
        return json_response(data, 503 if data["status"] == "unhealthy" else 200)

    async def admin_peers(request: Request) -> Response:
        return json_response(await state.peers())

    async def admin_models(request: Request) -> Response:
        return json_response(await state.models())

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/health/detailed", health_detailed, methods=["GET"]),
            Route("/admin/peers", admin_peers, methods=["GET"]),
            Route("/admin/models", admin_models, methods=["GET"]),
        ]
    )
    app.add_middleware(BearerAuth, token=auth_token)
    return app


class ApiServer:
    """Starts/stops the HTTP API as a task on the running asyncio loop."""

    probe_interval_secs = 15.0
    probe_timeout_secs = 5.0

    def __init__(self, node: NodeView, config: Config, backend: LlmBackend) -> None:
        self.config: ApiConfig = config.api
        self.probe = BackendProbe(backend, interval_secs=self.probe_interval_secs, timeout_secs=self.probe_timeout_secs)
        self.app = build_app(ApiState(node, config, self.probe), self.config.auth_token)
        self.url: str | None = None
        self._http: EmbeddedHttpServer | None = None

    @property
    def tls(self) -> bool:
        return bool(self.config.tls_cert and self.config.tls_key)

    async def start(self) -> str:
        """Bind (errors surface here as OSError/ssl errors), probe the backend once, serve."""
        self._http = EmbeddedHttpServer(
            self.app, self.config.listen_address, name="api", tls_cert=self.config.tls_cert, tls_key=self.config.tls_key
        )
        await self.probe.start()
        try:
            self.url = await self._http.start()
        except BaseException:
            await self.probe.stop()
            raise
        log.info("api listening on %s (auth %s)", self.url, "required except /health" if self.config.auth_token else "off")
        return self.url

    async def stop(self) -> None:
        await self.probe.stop()
        if self._http is not None:
            await self._http.stop()


# -- the CLI's side: read a running node's API --------------------------------------


class ApiUnreachable(Exception):
    """Nothing answers at the configured [api] address (no executor running there)."""


class ApiRequestError(Exception):
    """The API answered, but not with 200 (e.g. 401 for a missing or wrong token)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def api_base_url(api_config: ApiConfig) -> str:
    """Where a local client reaches the API: a wildcard listen address means loopback."""
    host, port = split_host_port(api_config.listen_address)
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    scheme = "https" if api_config.tls_cert and api_config.tls_key else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def api_get(api_config: ApiConfig, path: str, *, insecure: bool = False, timeout: float = 5.0) -> Any:
    """GET a JSON endpoint of the running node, with its token; TLS trusts `tls_cert` as CA unless `insecure`."""
    import ssl

    import httpx

    base = api_base_url(api_config)
    verify: bool | ssl.SSLContext = True
    if base.startswith("https"):
        verify = False if insecure else ssl.create_default_context(cafile=api_config.tls_cert)
    headers = {"Authorization": f"Bearer {api_config.auth_token}"} if api_config.auth_token else {}
    try:
        with httpx.Client(verify=verify, timeout=timeout, trust_env=False) as http:
            response = http.get(base + path, headers=headers)
    except httpx.ConnectError as exc:
        if isinstance(exc.__cause__, ssl.SSLError) or "SSL" in str(exc) or "certificate" in str(exc).lower():
            raise ApiRequestError(f"TLS handshake with {base} failed: {exc} (use --insecure for a self-signed cert)", 0) from None
        raise ApiUnreachable(base) from None
    except httpx.TimeoutException:
        raise ApiRequestError(f"no answer from {base}{path} within {timeout:g} s", 0) from None
    if response.status_code == 401:
        raise ApiRequestError(f"{base}{path}: 401 unauthorized (check [api] auth_token)", 401)
    if response.status_code != 200:
        raise ApiRequestError(f"{base}{path}: HTTP {response.status_code}: {response.text[:200]}", response.status_code)
    return response.json()
