"""Getting one event to one endpoint: its queue, the POST, retries with backoff, outage logging.

Why the rules are what they are (the receiver's view is in docs/webhooks.md):
connection errors, timeouts, 429 and 5xx may pass, so they are retried, after a
jittered exponential backoff or the receiver's `Retry-After` (capped: a receiver
asking for an hour must not freeze the queue that long); other 4xx and 3xx cannot
succeed by sending the same bytes again, and redirects are not followed (a POST
redirect may become a GET, or carry the auth header elsewhere). An auth header
httpx would refuse is never handed to it, and httpx's LocalProtocolError is never
logged with its text: both quote the header. One outage is one warning, not one
line per failed event.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
import orjson

from .. import __version__, _native
from ..config.rules import header_value_problem
from ..config.schema import WebhookEndpoint
from ..event_queue import EventQueue
from ..retry_after import parse_retry_after
from .signing import SIGNATURE_HEADER, SIGNER_HEADER, sign_body

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("lloom_executor.webhooks")

EVENT_HEADER = "X-Lloom-Event"
EVENT_ID_HEADER = "X-Lloom-Event-Id"
ATTEMPT_HEADER = "X-Lloom-Attempt"
MAX_RESPONSE_READ = 64 * 1024  # read this much of an answer (so the connection is reused), ignore the rest

Result = Literal["delivered", "failed", "dropped"]
Attempt = tuple[str | None, bool, float | None]  # (what went wrong or None, retryable, Retry-After seconds)


def describe_url(url: str) -> str:
    """scheme://host[:port] of an endpoint: what logs may show (paths and user info may be secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


class Event:
    """One event; its body and signature are made once, on first send, and reused on retries
    and for every endpoint (the caller on the request path only builds a dict)."""

    __slots__ = ("_encoded", "data", "id", "name", "timestamp")

    def __init__(self, name: str, data: Mapping[str, Any]) -> None:
        self.name = name
        self.id = str(uuid.uuid4())  # the same on every retry: receivers deduplicate on it
        self.timestamp = int(time.time())
        self.data = data
        self._encoded: tuple[bytes, str] | None = None

    def encoded(self, executor: Mapping[str, str], key: _native.PrivateKey) -> tuple[bytes, str]:
        """(body, X-Lloom-Signature value)."""
        if self._encoded is None:
            body = orjson.dumps(
                {"event": self.name, "id": self.id, "timestamp": self.timestamp, "executor": executor, "data": self.data}
            )
            self._encoded = (body, sign_body(key, body))
        return self._encoded


@dataclass
class EndpointStats:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0


class Endpoint:
    """One `[[webhooks.endpoints]]` entry: its events, its queue, its counts and its outage state."""

    def __init__(
        self, index: int, config: WebhookEndpoint, queue_size: int, on_drop: Callable[[Endpoint, Event, bool], None]
    ) -> None:
        self.index = index
        self.config = config
        self.label = str(index)  # the `endpoint` label of the metric: never the URL, which may hold a secret
        self.host = urlsplit(config.url).hostname or ""
        self.where = f"webhooks.endpoints[{index}] ({describe_url(config.url)})"
        self.events = frozenset(config.events)
        self.queue: EventQueue[Event] = EventQueue(queue_size, self._dropped, name=f"webhook-{index}")
        self._on_drop = on_drop
        # an auth header httpx would refuse (the config check rejects it; an endpoint built in
        # code may carry one): never handed to httpx, whose errors and debug traces quote it
        problem = header_value_problem(config.auth_header) if config.auth_header else None
        self.header_problem = f"invalid request header (auth_header {problem})" if problem else None
        self.stats = EndpointStats()
        self.failing = False  # an outage is going on (its first failure was logged)
        self.failed_in_outage = 0

    def _dropped(self, event: Event, first: bool) -> None:
        self._on_drop(self, event, first)


class Delivery:
    """Sends events to endpoints, one POST at a time per endpoint, with one shared client.

    `key` signs every body; `executor` names the executor in each payload. Created by
    `Webhooks`; `open()` on the event loop before the first `send`, `aclose()` last.
    """

    def __init__(
        self,
        key: _native.PrivateKey,
        executor: Mapping[str, str],
        metrics: Metrics | None,
        *,
        timeout_secs: float,
        backoff_base_secs: float,
        backoff_max_secs: float,
        max_retry_after_secs: float,
    ) -> None:
        self.key = key
        self.executor = dict(executor)
        self.metrics = metrics
        self.timeout_secs = float(timeout_secs)
        self.backoff_base_secs = float(backoff_base_secs)
        self.backoff_max_secs = float(backoff_max_secs)
        self.max_retry_after_secs = float(max_retry_after_secs)
        self._client: httpx.AsyncClient | None = None

    @property
    def is_open(self) -> bool:
        return self._client is not None

    def open(self) -> None:
        """The shared client. Proxies and CA bundles come from the environment (HTTPS_PROXY,
        NO_PROXY, SSL_CERT_FILE) as for any outbound client; redirects are not followed."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers={"User-Agent": f"lloom-executor/{__version__}", "Content-Type": "application/json"},
                timeout=httpx.Timeout(self.timeout_secs),
                follow_redirects=False,
            )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def count(self, ep: Endpoint, event: Event, result: Result) -> None:
        """One event's fate, in the endpoint's stats and lloom_executor_webhook_events_total."""
        setattr(ep.stats, result, getattr(ep.stats, result) + 1)
        if self.metrics is not None:
            self.metrics.webhook_event(ep.label, ep.host, event.name, result)

    async def send(self, ep: Endpoint, event: Event) -> None:
        """The endpoint's queue worker: one event, retries included, counted once."""
        try:
            delivered = await self._deliver(ep, event)
        except asyncio.CancelledError:
            raise  # stop() counts the event being sent as given up
        except Exception:  # a bug must not end the worker and silently stop all delivery
            log.exception("webhooks: %s: unexpected error delivering %s", ep.where, event.name)
            delivered = False
        self.count(ep, event, "delivered" if delivered else "failed")

    async def _deliver(self, ep: Endpoint, event: Event) -> bool:
        body, signature = event.encoded(self.executor, self.key)
        headers = {
            EVENT_HEADER: event.name,
            EVENT_ID_HEADER: event.id,
            SIGNER_HEADER: self.executor["evm_address"],
            SIGNATURE_HEADER: signature,
        }
        if ep.config.auth_header:
            headers["Authorization"] = ep.config.auth_header
        attempts = 1 + ep.config.retry_attempts
        problem: str | None
        retry_after: float | None
        for attempt in range(1, attempts + 1):
            headers[ATTEMPT_HEADER] = str(attempt)
            if ep.header_problem is not None:
                problem, retryable, retry_after = ep.header_problem, False, None
            else:
                problem, retryable, retry_after = await self.post(ep.config.url, body, headers)
            if problem is None:
                if ep.failing:
                    lost = f" ({ep.failed_in_outage} event(s) failed during the outage)" if ep.failed_in_outage else ""
                    log.info("webhooks: %s: delivering again%s", ep.where, lost)
                ep.failing = False
                ep.failed_in_outage = 0
                return True
            will_retry = retryable and attempt < attempts
            if not ep.failing:
                ep.failing = True
                if will_retry:
                    then = f"retrying up to {attempts - attempt} more time(s)"
                else:
                    then = "no retries left" if retryable else "not retried"
                log.warning(
                    "webhooks: %s: %s (sending %s); %s; further failures are not logged until it works again",
                    ep.where,
                    problem,
                    event.name,
                    then,
                )
            else:
                log.debug("webhooks: %s: attempt %d of %s %s: %s", ep.where, attempt, event.name, event.id, problem)
            if not will_retry:
                break
            await asyncio.sleep(self._delay(attempt, retry_after))
        ep.failed_in_outage += 1
        log.debug("webhooks: %s: gave up on %s %s", ep.where, event.name, event.id)
        return False

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Before retry `attempt` + 1: the receiver's Retry-After (capped), else exponential
        backoff with jitter, so endpoints that failed together do not retry in lockstep."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_secs)
        delay = min(self.backoff_max_secs, self.backoff_base_secs * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Attempt:
        """One attempt: (None, _, _) on 2xx, else (what went wrong, retryable, Retry-After seconds)."""
        if self._client is None:
            raise RuntimeError("webhooks: post() before open()")
        try:
            async with asyncio.timeout(self.timeout_secs):
                async with self._client.stream("POST", url, content=body, headers=headers) as resp:
                    read = 0
                    async for chunk in resp.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_RESPONSE_READ:
                            break
        except (TimeoutError, httpx.TimeoutException):
            return f"no answer within {self.timeout_secs:g} s", True, None
        except httpx.LocalProtocolError:
            # Raised before anything is sent, e.g. for a header value h11 refuses; its text
            # quotes the value, which may be the auth header: never log it. Sending the same
            # headers again cannot succeed.
            return "invalid request header", False, None
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.UnsupportedProtocol):
                return f"unsupported URL ({exc})", False, None
            return f"connection failed ({type(exc).__name__}: {exc or 'no detail'})", True, None
        except httpx.HTTPError as exc:
            return f"request failed ({type(exc).__name__}: {exc or 'no detail'})", False, None
        status = resp.status_code
        if 200 <= status < 300:
            return None, False, None
        if status == 429 or status >= 500:
            return f"answered HTTP {status}", True, parse_retry_after(resp.headers.get("retry-after"))
        if 300 <= status < 400:
            return f"answered HTTP {status} (redirects are not followed; configure the final URL)", False, None
        return f"answered HTTP {status}", False, None
