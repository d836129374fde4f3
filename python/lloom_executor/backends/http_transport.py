"""httpx's client API over aiohttp's connection pool: the OpenAI-compatible backend's transport.

Why: with 32 calls in flight, httpx's own transport (httpcore) cost about 3-4 ms of CPU per
call on the serving loop -- as much as the whole rest of a request -- because its pool scans
every pooled connection, polling each socket for readability, on every request. Measured
side by side in one process against the same local server (2000 calls, 32 in flight):
httpcore 3.0-3.8 ms/call, httpx over this transport 0.6-0.7 ms/call, bare aiohttp 0.2 ms/call
(`benches/bench_http_transport.py`). aiohttp's pool learns that a server closed an idle
connection from the event loop, so reuse needs no polling.

Only the transport changes: requests are built, timed out, redirected (not followed) and
decoded by httpx exactly as before, so the backend's error classification stays as it is.
aiohttp's exceptions are mapped to the httpx exceptions that say the same thing, carefully:
`ConnectError`/`ConnectTimeout` only when no connection was made (the request never left),
`RemoteProtocolError`/`ReadError` when a connection broke (before or after the response's
head: the backend tells those apart by whether it holds a response), `ReadTimeout` for a
read that timed out. Responses are not decompressed by aiohttp (httpx decodes them, as it
did with its own transport).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx

# A connection the server closed on us mid-exchange is a "protocol" failure in httpx's terms.
_DISCONNECTED = (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError)


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    """Raise aiohttp's failures as the httpx exception that means the same."""
    try:
        yield
    except httpx.HTTPError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:  # connecting (or waiting for the pool) timed out
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except aiohttp.SocketTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except aiohttp.ServerTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
    except aiohttp.ClientConnectorError as exc:  # no connection: the request was never sent
        raise httpx.ConnectError(str(exc) or "cannot connect", request=request) from exc
    except _DISCONNECTED as exc:
        raise httpx.RemoteProtocolError(str(exc) or "server disconnected", request=request) from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.RemoteProtocolError(str(exc) or "incomplete body", request=request) from exc
    except aiohttp.ClientResponseError as exc:  # malformed status line or headers
        raise httpx.RemoteProtocolError(str(exc) or "malformed response", request=request) from exc
    except (aiohttp.ClientOSError, aiohttp.ClientConnectionError, OSError) as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
    except TimeoutError as exc:
        raise httpx.ReadTimeout("timed out", request=request) from exc


class _ResponseBody(httpx.AsyncByteStream):
    """The body as aiohttp receives it; closing hands the connection back to the pool."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` whose connections are an `aiohttp` pool.

    The session is made on first use (aiohttp binds it to the running loop) and closed by
    `aclose`. `limits` as httpx's: max_connections is the pool size, keepalive_expiry how long
    an idle connection is kept."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        self._limits = limits
        self._ssl: ssl.SSLContext | bool = httpx.create_ssl_context(verify=verify) if verify is not False else False
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                limit_per_host=0,
                keepalive_timeout=self._limits.keepalive_expiry if self._limits.keepalive_expiry is not None else 5.0,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes, as with its own transport
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("pool"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        body = request.content if request.method not in ("GET", "HEAD") or request.content else None
        with _httpx_errors(request):
            response = await session.request(
                request.method,
                # httpx already turned credentials in the URL into the Authorization header;
                # aiohttp refuses both at once
                str(request.url.copy_with(userinfo=b"")) if request.url.userinfo else str(request.url),
                headers=list(request.headers.multi_items()),
                data=body,
                allow_redirects=False,
                timeout=timeout,
                compress=None,
                auto_decompress=False,
            )
        return httpx.Response(
            status_code=response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            stream=_ResponseBody(response, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode("latin-1")},
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
