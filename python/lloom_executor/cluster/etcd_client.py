"""A small client for etcd's v3 API through its JSON gRPC gateway (`POST /v3/...` on the client URL).

Why not a Python etcd library: the maintained gRPC clients pull in grpcio and generated
protobufs (a large native dependency for six calls), and the older `etcd3` package is
unmaintained and pins an old protobuf.  etcd 3.4 and newer serve the same calls as JSON at
`/v3/` on every client URL, so httpx (a dependency already) is enough: keys and values are
base64, 64-bit numbers are JSON strings.

Endpoints: the client tries them in order, starting from the last one that answered, so one
etcd member that is down costs one refused connection, not a timeout.  An endpoint that
answers but cannot reach a quorum makes the call time out (`timeout`): the caller treats
that as "etcd is not available" (`EtcdUnavailable`).  `https://` endpoints use TLS with the
system CA store, or `ca_file` when given.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx


class EtcdError(Exception):
    """etcd answered, but not as expected (an error status or a malformed body)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time (down, partitioned, or without a quorum)."""


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with `prefix` (etcd's `--prefix`)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # prefixes here end in "/", never in 0xff
    return b64(bytes(raw))


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


def key_values(body: dict[str, Any]) -> list[KeyValue]:
    return [
        KeyValue(
            unb64(kv["key"]),
            unb64(kv.get("value", "")),
            int(kv.get("create_revision", 0)),
            int(kv.get("mod_revision", 0)),
            int(kv.get("lease", 0)),
        )
        for kv in body.get("kvs", [])
    ]


class EtcdClient:
    """The calls the coordinator needs: put, range, txn, and lease grant, keep-alive and revoke."""

    def __init__(self, endpoints: list[str] | tuple[str, ...], *, timeout: float = 1.0, ca_file: str | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0
        self._http = httpx.AsyncClient(timeout=timeout, verify=ca_file if ca_file else True)

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `/v3/<path>` on the first endpoint that answers."""
        last: Exception | None = None
        for step in range(len(self.endpoints)):
            index = (self._current + step) % len(self.endpoints)
            try:
                response = await self._http.post(f"{self.endpoints[index]}/v3/{path}", json=body)
            except httpx.TimeoutException as exc:  # answers nothing (no quorum, or stopped): next endpoint
                last = exc
                continue
            except httpx.HTTPError as exc:
                last = exc
                continue
            if response.status_code >= 500:  # e.g. 503 from a member that lost its leader
                last = EtcdUnavailable(f"{path}: HTTP {response.status_code}")
                continue
            self._current = index
            if response.status_code != 200:
                raise EtcdError(f"{path}: HTTP {response.status_code}: {response.text[:200]}")
            try:
                data: dict[str, Any] = response.json()
            except ValueError as exc:
                raise EtcdError(f"{path}: not JSON") from exc
            return data
        raise EtcdUnavailable(f"{path}: no etcd endpoint answered ({type(last).__name__})") from last

    async def grant(self, ttl: int) -> int:
        body = await self.call("lease/grant", {"TTL": str(ttl)})
        if "ID" not in body:
            raise EtcdError(f"lease grant refused: {body.get('error', body)}")
        return int(body["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew the lease; its TTL in seconds, 0 when etcd no longer has it (it expired)."""
        body = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(body.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self.call("lease/revoke", {"ID": str(lease)})

    async def put(self, key: str, value: str, lease: int = 0) -> None:
        await self.call("kv/put", {"key": b64(key), "value": b64(value), "lease": str(lease)})

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        return key_values(await self.call("kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix)}))

    async def get(self, key: str) -> KeyValue | None:
        found = key_values(await self.call("kv/range", {"key": b64(key)}))
        return found[0] if found else None

    async def txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return await self.call("kv/txn", {"compare": compare, "success": success, "failure": failure})

    async def healthy(self) -> dict[str, bool]:
        """Each endpoint's `/health` (true: the member is part of a cluster with a leader)."""
        out: dict[str, bool] = {}
        for endpoint in self.endpoints:
            try:
                response = await self._http.get(f"{endpoint}/health")
                out[endpoint] = response.status_code == 200 and response.json().get("health") == "true"
            except (httpx.HTTPError, ValueError):
                out[endpoint] = False
        return out


__all__ = ["EtcdClient", "EtcdError", "EtcdUnavailable", "KeyValue", "b64", "prefix_end", "unb64"]
