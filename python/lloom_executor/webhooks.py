"""`[webhooks]`: signed JSON events POSTed to the operator's endpoints, off the request path.

Events (each `[[webhooks.endpoints]]` entry gets only those in its `events`;
default `["request_completed", "error"]`):

  request_completed  a request was answered with content, after its ledger row was committed
  error              a request was answered with a signed error (refused: price, replay, rate
                     limit, unknown model, backend failure, draining ...; `code` says which),
                     malformed frames were answered with errors (code `malformed`; rate
                     limited, see below), or the node hit an operational
                     problem worth an alert: model discovery lost the backend (`backend_unreachable`)
  model_loaded       a model became served: each served model when the node starts, then every
                     model `[model_discovery]` adds
  model_unloaded     `[model_discovery]` stopped serving a model (the backend no longer offers it)
  started / stopped  the node is up and listening / has drained and stopped

Refusals are errors of the *request*, most of them the client's doing (price too
low, replay, rate limit). They are sent because the manual's `error` event is
about answered requests; receivers that only want operator faults filter on
`data.code` (e.g. alert on `refused` with a `backend error:` reason, on
`ledger_error` and on `backend_unreachable`, not on `price_too_low`).

Payload: one event per POST, `Content-Type: application/json` (orjson):

    {"event": "request_completed",
     "id": "6f1c...-...",                  # uuid4, the same on every retry: dedup on it
     "timestamp": 1718000000,              # unix seconds when the event happened
     "executor": {"peer_id": "16Uiu2...", "evm_address": "0xAbC..."},
     "data": {...}}

  request_completed data: model (the served name), requested_model (as sent,
  maybe an alias), client (EIP-55 address of the request's signer; null when
  unsigned), peer_id (the client's PeerId), inbound_tokens, outbound_tokens,
  total_cost_wei (decimal string: wei do not fit a JSON double), latency_ms
  (receipt to answer), queued_ms, backend_ms (null when not reached; both null
  on a cache hit), cached, request_digest (0x hex of the signed request's
  digest, the ledger's key), receipt_digest (0x hex of the EIP-712 receipt
  digest, null without a receipt).
  error data (requests): model (served name or null), requested_model, client,
  peer_id, code (the refusal's label, as in lloom_executor_requests_total's
  `status`), reason (the sentence the client got), request_digest.
  error data (malformed frames): peer_id, code "malformed", reason (of this frame),
  suppressed (malformed frames, from any peer, answered but not reported since the
  previous malformed event), model, requested_model and client null. A junk flood is
  cheap to send; reporting every frame would push the real events out of the bounded
  queues, so `serving.py` reports at most one per `serving.MALFORMED_REPORT_INTERVAL_SECS`
  (10 s) for the whole node, with the count of those it held back.
  error data (operational): code, reason, model and client null.
  model_loaded / model_unloaded data: model, source ("config" at start,
  "discovery" later), context_length, inbound_price_wei, outbound_price_wei.
  started data: version, listen_addresses, models. stopped data: uptime_secs,
  cut_off (requests still in flight when the drain timeout ended).
  Never: prompts, answers, keys, the auth header.

The request events' data is built by `request_event` / `malformed_event`, once
per request and only when an endpoint subscribes to the event (`Webhooks.wants`)
or a plugin observes (`PluginHost.observes`); `[[plugins]]` with an
`on_request_finished` hook get the same data (`plugins.py`), with or without [webhooks].

Headers: `Authorization: <auth_header>` verbatim when configured (never
logged: log lines name an endpoint as `webhooks.endpoints[i] (scheme://host:port)`,
without path, query or user info, which may be secrets too), `X-Lloom-Event`,
`X-Lloom-Event-Id`, `X-Lloom-Attempt` (1, 2, ...; not signed), and the signature:

    X-Lloom-Signer:    0x<EIP-55 address of the executor's Ethereum key>
    X-Lloom-Signature: 0x<r || s || v>, 65 bytes, v = 27 or 28

The signature is EIP-191 `personal_sign` over the 32-byte keccak256 of the exact
body bytes: digest = keccak256("\\x19Ethereum Signed Message:\\n32" ||
keccak256(body)). Why the prefix and not the bare keccak256(body): the same key
signs answers and EIP-712 receipts, and a personal_sign signature can never be
mistaken for either (or for a transaction); and every Ethereum library verifies
it as it is. To verify, recover the address from the signature and compare it
with the executor's EVM address you expect (the one in its announcements and
receipts; `X-Lloom-Signer` is a hint, not proof):

    # Python (eth-account)
    from eth_account import Account
    from eth_account.messages import encode_defunct
    from eth_utils import keccak
    signer = Account.recover_message(encode_defunct(primitive=keccak(body)), signature=sig_hex)

    // JavaScript (ethers v6)
    const signer = ethers.verifyMessage(ethers.getBytes(ethers.keccak256(body)), sigHex)

(`verify_signature` below does the same with the native code.) Verify over the
raw body bytes before parsing; then reject events whose `timestamp` is too
old for you (the body is signed, so a replayed POST carries its old timestamp)
and drop duplicate `id`s (a retry after a lost 2xx sends the same event again).

Delivery: `emit` never blocks and never fails the caller: it appends to one
bounded queue per endpoint (`event_queue.EventQueue`; `queue_size`, default
1000; when full the oldest event is dropped and counted: during a long outage
the newest events are the useful ones). One worker task per endpoint sends its events in order, one at
a time, with one shared `httpx.AsyncClient` (`timeout_secs` per attempt,
default 10 s). A 2xx answer is delivery. Connection errors, timeouts, 429 and
5xx are retried up to `retry_attempts` times (so `retry_attempts + 1` POSTs at
most) after exponential backoff with jitter (`backoff_base_secs` * 2^(n-1),
at most `backoff_max_secs`, then between half and all of it); a `Retry-After`
(seconds or HTTP date) on 429/5xx is waited instead, up to
`max_retry_after_secs` (300 s: a receiver asking for an hour must not freeze
the queue that long). Other 4xx (a wrong token, a wrong path) and 3xx are not
retried: sending the same bytes again cannot succeed, and redirects are not
followed (a POST redirect may become a GET, or carry the auth header
elsewhere; configure the final URL). A request httpx refuses to send
(LocalProtocolError) is logged as "invalid request header", without the
exception's text, which may quote the header, and is not retried; an auth header
with surrounding whitespace or a control character is not even handed to httpx
(its debug traces quote it): the config check rejects it at load time, and an
endpoint built in code with one fails each event the same way. A failed event is counted and the worker
moves on. HTTP(S) proxies and CA bundles come from the environment
(HTTPS_PROXY, NO_PROXY, SSL_CERT_FILE), as for any outbound client; nothing
else (no .netrc).

Logging: the first failure of an endpoint is one warning, saying what failed;
further failures of that outage are at debug level, and the recovery is one
info line with the number of events lost meanwhile. A queue overflow is one
warning per overflow episode. Metrics: `lloom_executor_webhook_events_total
{endpoint,host,event,result}` with result delivered, failed or dropped
(`metrics.py`).

Stopping (`stop()`, called last by `ExecutorService.stop`, after the `stopped`
event): new events are ignored, the workers get `flush_timeout_secs` (default
5 s) to send what is queued (retries included); whatever is left is given up,
counted as dropped and logged with its number.

asyncio only; `emit` may also be called from another thread once `start()` ran.
"""
from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import orjson

from . import __version__, _native
from .backends.openai_compat import parse_retry_after
from .config.rules import header_value_problem
from .config.schema import WEBHOOK_EVENTS, ModelConfig, WebhookEndpoint, WebhooksConfig
from .event_queue import EventQueue
from .records import signer

if TYPE_CHECKING:
    from .metrics import Metrics
    from .p2p.llm_protocol import RequestContext
    from .serving import Reply, Timings

log = logging.getLogger(__name__)

EVENTS = WEBHOOK_EVENTS
SIGNATURE_HEADER = "X-Lloom-Signature"
SIGNER_HEADER = "X-Lloom-Signer"
EVENT_HEADER = "X-Lloom-Event"
EVENT_ID_HEADER = "X-Lloom-Event-Id"
ATTEMPT_HEADER = "X-Lloom-Attempt"
QUEUE_SIZE = 1000
TIMEOUT_SECS = 10.0
FLUSH_TIMEOUT_SECS = 5.0
BACKOFF_BASE_SECS = 1.0
BACKOFF_MAX_SECS = 60.0
MAX_RETRY_AFTER_SECS = 300.0
MAX_RESPONSE_READ = 64 * 1024  # read this much of an answer (so the connection is reused), ignore the rest
_PERSONAL_SIGN_PREFIX = b"\x19Ethereum Signed Message:\n32"


# -- signatures ------------------------------------------------------------------------


def signing_digest(body: bytes) -> bytes:
    """What `X-Lloom-Signature` signs: EIP-191 personal_sign of the 32-byte keccak256(body)."""
    return _native.keccak256(_PERSONAL_SIGN_PREFIX + _native.keccak256(body))


def sign_body(key: _native.PrivateKey, body: bytes) -> str:
    """The `X-Lloom-Signature` value: 0x r||s||v hex, v = 27/28 as Ethereum tools write it."""
    signature = bytearray(key.sign_digest(signing_digest(body)))
    if signature[64] < 27:
        signature[64] += 27
    return "0x" + signature.hex()


def verify_signature(body: bytes, signature: str) -> str:
    """The EIP-55 address that signed `body` (compare it with the executor you expect);
    ValueError when the signature is malformed or does not recover."""
    text = signature[2:] if signature[:2] in ("0x", "0X") else signature
    raw = bytes.fromhex(text)
    if len(raw) != 65:
        raise ValueError(f"expected a 65-byte signature, got {len(raw)} bytes")
    return _native.checksum_address(_native.recover_address(signing_digest(body), raw))


# -- events ----------------------------------------------------------------------------


class _Event:
    """One event; its body and signature are made once, on first send, and reused on retries
    and for every endpoint (the caller on the request path only builds a dict)."""

    __slots__ = ("name", "id", "timestamp", "data", "_encoded")

    def __init__(self, name: str, data: Mapping[str, Any]) -> None:
        self.name = name
        self.id = str(uuid.uuid4())
        self.timestamp = int(time.time())
        self.data = data
        self._encoded: tuple[bytes, str] | None = None

    def encoded(self, executor: dict[str, str], key: _native.PrivateKey) -> tuple[bytes, str]:
        if self._encoded is None:
            body = orjson.dumps(
                {"event": self.name, "id": self.id, "timestamp": self.timestamp, "executor": executor, "data": self.data}
            )
            self._encoded = (body, sign_body(key, body))
        return self._encoded


def _hex(value: bytes | None) -> str | None:
    return "0x" + bytes(value).hex() if value is not None else None


def client_address(decoded: _native.DecodedRequest) -> str | None:
    """EIP-55 address of the request's signer; None for an unsigned (or badly signed) request."""
    address = signer(decoded)
    return _native.checksum_address(address) if address is not None else None


def digest_hex(decoded: _native.DecodedRequest) -> str:
    """0x hex of the signed request's digest: the ledger's key, `request_digest` in events."""
    return "0x" + bytes(decoded.digest).hex()


def _round_ms(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def request_event_name(reply: Reply) -> str:
    """The event of an answered request: `request_completed` with content, `error` for a signed error."""
    return "request_completed" if reply.error is None else "error"


_UNKNOWN: Any = object()


def request_event(
    decoded: _native.DecodedRequest,
    ctx: RequestContext,
    served: ModelConfig | None,
    reply: Reply,
    receipt: dict | None,
    timings: Timings,
    code: str,
    *,
    client: str | None = _UNKNOWN,
    request_digest: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """(event name, data) of an answered request: `request_completed` for an answer with content,
    `error` for a signed error answer (`code`: the refusal's label). The one builder of this
    payload: webhooks send it, plugins' `on_request_finished` receive it (`plugins.py`).
    `client` and `request_digest`, when the caller has them already (a plugins' RequestView),
    are not computed again. Build it only when someone receives it (`Webhooks.wants`,
    `PluginHost.observes`): the request path does not pay for unsent events."""
    request = decoded.request
    data: dict[str, Any] = {
        "model": served.name if served is not None else None,
        "requested_model": request.model,
        "client": client_address(decoded) if client is _UNKNOWN else client,
        "peer_id": ctx.peer_id,
    }
    request_digest = request_digest or digest_hex(decoded)
    if reply.error is None:
        data.update(
            inbound_tokens=reply.inbound_tokens,
            outbound_tokens=reply.outbound_tokens,
            total_cost_wei=reply.total_cost,
            latency_ms=_round_ms(timings.total_ms()),
            queued_ms=_round_ms(timings.queued_ms),
            backend_ms=_round_ms(timings.backend_ms),
            cached=bool(getattr(timings, "cached", False)),
            request_digest=request_digest,
            receipt_digest=_hex(receipt["digest"]) if receipt else None,
        )
        return "request_completed", data
    data.update(code=code, reason=reply.error, request_digest=request_digest)
    return "error", data


def malformed_event(peer_id: str, reason: str, suppressed: int = 0) -> tuple[str, dict[str, Any]]:
    """(event name, data) of a frame that did not decode (answered with a signed error).
    `suppressed`: malformed frames not reported since the previous such event (the request
    path reports at most one per `serving.MALFORMED_REPORT_INTERVAL_SECS`)."""
    return "error", {
        "model": None, "requested_model": None, "client": None, "peer_id": peer_id, "code": "malformed",
        "reason": reason, "suppressed": suppressed,
    }


def model_data(model: ModelConfig, source: str) -> dict[str, Any]:
    return {
        "model": model.name,
        "source": source,
        "context_length": model.context_length,
        "inbound_price_wei": str(model.inbound_price_wei),
        "outbound_price_wei": str(model.outbound_price_wei),
    }


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


# -- per-endpoint state ------------------------------------------------------------------


@dataclass
class EndpointStats:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0


class _Endpoint:
    def __init__(self, index: int, config: WebhookEndpoint, queue_size: int, on_drop: Any) -> None:
        self.index = index
        self.config = config
        self.label = str(index)
        self.host = urlsplit(config.url).hostname or ""
        self.where = f"webhooks.endpoints[{index}] ({describe_url(config.url)})"
        self.events = frozenset(config.events)
        self.queue: EventQueue[_Event] = EventQueue(
            queue_size, lambda event, first: on_drop(self, event, first), name=f"webhook-{index}"
        )
        # an auth header httpx would refuse (the config check rejects it; an endpoint built in
        # code may carry one): never handed to httpx, whose errors and debug traces quote it
        problem = header_value_problem(config.auth_header) if config.auth_header else None
        self.header_problem = f"invalid request header (auth_header {problem})" if problem else None
        self.stats = EndpointStats()
        self.failing = False  # an outage is going on (its first failure was logged)
        self.failed_in_outage = 0


class Webhooks:
    """Delivers events to the `[[webhooks.endpoints]]`; see the module docstring.

    `key` signs every body (the executor's Ethereum key); `peer_id` and the key's
    address name the executor in each payload. Timings are keyword arguments so
    tests can shorten them; the defaults are the documented ones.
    """

    def __init__(
        self,
        endpoints: Iterable[WebhookEndpoint],
        key: _native.PrivateKey,
        *,
        peer_id: str | None = None,
        metrics: Metrics | None = None,
        queue_size: int = QUEUE_SIZE,
        timeout_secs: float = TIMEOUT_SECS,
        flush_timeout_secs: float = FLUSH_TIMEOUT_SECS,
        backoff_base_secs: float = BACKOFF_BASE_SECS,
        backoff_max_secs: float = BACKOFF_MAX_SECS,
        max_retry_after_secs: float = MAX_RETRY_AFTER_SECS,
    ) -> None:
        if queue_size < 1 or timeout_secs <= 0 or flush_timeout_secs < 0 or backoff_base_secs < 0 or backoff_max_secs < 0:
            raise ValueError("queue_size >= 1, timeout_secs > 0 and non-negative flush and backoff times, please")
        self.key = key
        self.executor = {"peer_id": peer_id or key.peer_id, "evm_address": key.address}
        self.metrics = metrics
        self.timeout_secs = float(timeout_secs)
        self.flush_timeout_secs = float(flush_timeout_secs)
        self.backoff_base_secs = float(backoff_base_secs)
        self.backoff_max_secs = float(backoff_max_secs)
        self.max_retry_after_secs = float(max_retry_after_secs)
        self.endpoints = [_Endpoint(i, ep, queue_size, self._dropped) for i, ep in enumerate(endpoints)]
        self._subscribed = frozenset(name for ep in self.endpoints for name in ep.events)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: WebhooksConfig, key: _native.PrivateKey, **options: Any) -> Webhooks | None:
        """None unless `[webhooks]` is enabled with at least one endpoint."""
        if not config.enabled or not config.endpoints:
            return None
        return cls(config.endpoints, key, **options)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start one worker per endpoint on the running loop (events emitted before are kept)."""
        if self._client is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._client = httpx.AsyncClient(
            headers={"User-Agent": f"lloom-executor/{__version__}", "Content-Type": "application/json"},
            timeout=httpx.Timeout(self.timeout_secs),
            follow_redirects=False,
        )
        for ep in self.endpoints:
            ep.queue.start(lambda event, ep=ep: self._send(ep, event))
        log.info("webhooks: %s", "; ".join(f"{ep.where}: {', '.join(sorted(ep.events)) or 'no events'}" for ep in self.endpoints))

    async def stop(self, flush_timeout_secs: float | None = None) -> int:
        """Ignore new events, send what is queued for up to `flush_timeout_secs`, then give up on
        the rest (counted as dropped, logged). Returns how many events were given up."""
        if self._closed:
            return 0
        self._closed = True
        timeout = self.flush_timeout_secs if flush_timeout_secs is None else flush_timeout_secs
        deadline = time.monotonic() + timeout  # one flush time for all endpoints (they drain together)
        lost = 0
        for ep in self.endpoints:
            left = await ep.queue.drain(deadline - time.monotonic())
            for event in left:
                self._count(ep, event, "dropped")
            if left:
                log.warning(
                    "webhooks: %s: %d event(s) not delivered within %g s of stopping; given up", ep.where, len(left), timeout
                )
            lost += len(left)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        return lost

    # -- emitting ----------------------------------------------------------------------

    def wants(self, event: str) -> bool:
        """Whether `emit(event, ...)` would queue anything: a cheap test before building its data."""
        return event in self._subscribed and not self._closed

    def emit(self, event: str, data: Mapping[str, Any]) -> None:
        """Queue `event` for every endpoint that wants it; never blocks, never raises for
        delivery reasons (an unknown event name is a programming error: ValueError)."""
        if event not in EVENTS:
            raise ValueError(f"unknown webhook event {event!r}; expected one of {', '.join(EVENTS)}")
        if self._closed:
            log.debug("webhooks: %s after stop, not sent", event)
            return
        targets = [ep for ep in self.endpoints if event in ep.events]
        if not targets:
            return
        item = _Event(event, data)
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._enqueue_all, targets, item)
        else:
            self._enqueue_all(targets, item)

    def _enqueue_all(self, targets: list[_Endpoint], item: _Event) -> None:
        if self._closed:
            return
        for ep in targets:
            ep.queue.put(item)

    def _dropped(self, ep: _Endpoint, event: _Event, first: bool) -> None:
        self._count(ep, event, "dropped")
        if first:
            log.warning(
                "webhooks: %s: queue full (%d events); dropping the oldest until it drains", ep.where, ep.queue.size
            )

    # -- what the node reports ---------------------------------------------------------

    def operational_error(self, code: str, reason: str, **extra: Any) -> None:
        self.emit("error", {"model": None, "client": None, "code": code, "reason": reason, **extra})

    def models_changed(self, before: Iterable[ModelConfig], after: Iterable[ModelConfig], source: str) -> None:
        """`model_unloaded` for each model no longer served, `model_loaded` for each new one."""
        old = {m.name: m for m in before if m.enabled}
        new = {m.name: m for m in after if m.enabled}
        for name in sorted(old.keys() - new.keys()):
            self.emit("model_unloaded", model_data(old[name], source))
        for name in sorted(new.keys() - old.keys()):
            self.emit("model_loaded", model_data(new[name], source))

    # -- delivery ----------------------------------------------------------------------

    @property
    def stats(self) -> list[EndpointStats]:
        return [ep.stats for ep in self.endpoints]

    def _count(self, ep: _Endpoint, event: _Event, result: str) -> None:
        setattr(ep.stats, result, getattr(ep.stats, result) + 1)
        if self.metrics is not None:
            self.metrics.webhook_event(ep.label, ep.host, event.name, result)

    async def _send(self, ep: _Endpoint, event: _Event) -> None:
        """The endpoint's queue worker: one event, retries included, counted once."""
        try:
            delivered = await self._deliver(ep, event)
        except asyncio.CancelledError:
            raise  # stop() counts the event being sent as given up
        except Exception:  # a bug must not end the worker and silently stop all delivery
            log.exception("webhooks: %s: unexpected error delivering %s", ep.where, event.name)
            delivered = False
        self._count(ep, event, "delivered" if delivered else "failed")

    async def _deliver(self, ep: _Endpoint, event: _Event) -> bool:
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
        for attempt in range(1, attempts + 1):
            headers[ATTEMPT_HEADER] = str(attempt)
            if ep.header_problem is not None:
                problem, retryable, retry_after = ep.header_problem, False, None
            else:
                problem, retryable, retry_after = await self._post(ep.config.url, body, headers)
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
                    ep.where, problem, event.name, then,
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
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_secs)
        delay = min(self.backoff_max_secs, self.backoff_base_secs * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[str | None, bool, float | None]:
        """One attempt: (None, _, _) on 2xx, else (what went wrong, retryable, Retry-After seconds)."""
        assert self._client is not None
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
