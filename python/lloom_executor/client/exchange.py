"""One request/response on `/lloom/llm/1.0.0`, trio side (docs/PROTOCOL.md §3).

Open a stream, write the CBOR frame, half-close our side (py-libp2p 0.8.1:
`close_write()` sends the yamux FIN and keeps reading possible), read the
answer to EOF within the reference response limit (10 MiB), done. Every step
has its own deadline; on any failure the stream is reset so the executor
stops working for us. Dialing is serialized per peer so that many concurrent
requests share one connection instead of racing to open several.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.network.stream.net_stream import NetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from .._native import MAX_RESPONSE_BYTES
from ..p2p.llm_protocol import LLM_PROTOCOL
from ..p2p.node import allow_redial
from ..p2p.streams import FrameTooLarge, read_to_eof, reset_quietly
from .types import ExecutorUnreachable, InvalidResponse, RequestTimeout

log = logging.getLogger(__name__)

ADDRESS_TTL_SECS = 3600


def peerstore_addrs(host: IHost, peer: ID) -> list[multiaddr.Multiaddr]:
    """The peerstore's addresses of `peer` ([] for an unknown peer, where py-libp2p raises)."""
    try:
        return list(host.get_peerstore().addrs(peer))
    except Exception:
        return []


class Dialer:
    """Connections to executors, one dial at a time per peer."""

    def __init__(self, host: IHost) -> None:
        self._host = host
        self._locks: dict[ID, trio.Lock] = {}

    def connected(self, peer: ID) -> bool:
        return bool(self._host.get_network().connections.get(peer))

    async def ensure_connected(self, peer: ID, addresses: Sequence[str], timeout: float) -> None:
        if self.connected(peer):
            return
        lock = self._locks.setdefault(peer, trio.Lock())
        async with lock:
            if self.connected(peer):
                return
            addrs = [multiaddr.Multiaddr(a) for a in addresses]
            if addrs:
                self._host.get_peerstore().add_addrs(peer, addrs, ADDRESS_TTL_SECS)
            known = peerstore_addrs(self._host, peer)
            if not known:
                raise ExecutorUnreachable(f"no address known for executor {peer}; discover it or pass its multiaddr")
            allow_redial(self._host, peer)
            with trio.move_on_after(timeout) as scope:
                try:
                    await self._host.connect(PeerInfo(peer, known))
                except Exception as exc:
                    raise ExecutorUnreachable(f"cannot connect to executor {peer}: {exc}") from exc
            if scope.cancelled_caught:
                raise RequestTimeout(f"connecting to executor {peer} took more than {timeout:g} s")


async def exchange(
    host: IHost,
    dialer: Dialer,
    peer: ID,
    addresses: Sequence[str],
    frame: bytes,
    *,
    connect_timeout: float,
    timeout: float,
    limit: int = MAX_RESPONSE_BYTES,
) -> bytes:
    """Send `frame`, return the raw answer. The whole exchange is bounded by `timeout`."""
    with trio.move_on_after(timeout) as overall:
        await dialer.ensure_connected(peer, addresses, min(connect_timeout, timeout))
        try:
            stream = await host.new_stream(peer, [LLM_PROTOCOL])
        except Exception as exc:
            raise ExecutorUnreachable(f"executor {peer} refused a {LLM_PROTOCOL} stream: {exc}") from exc
        try:
            await stream.write(frame)
            # close_write is NetStream's (what the host's new_stream returns), not part of INetStream
            await cast(NetStream, stream).close_write()
            answer = await _read_answer(stream, limit)
        except BaseException:
            await reset_quietly(stream, timeout=2)
            raise
        return answer
    assert overall.cancelled_caught
    raise RequestTimeout(f"executor {peer} did not answer within {timeout:g} s")


async def _read_answer(stream: INetStream, limit: int) -> bytes:
    try:
        answer = await read_to_eof(stream, limit)
    except FrameTooLarge:
        raise InvalidResponse(f"answer exceeds {limit} bytes") from None
    except Exception as exc:  # reset by the executor, connection lost
        raise InvalidResponse(f"the stream ended without a complete answer: {type(exc).__name__} {exc}") from exc
    if not answer:
        raise InvalidResponse("the executor closed the stream without answering")
    return answer
