"""`[network] bootstrap_peers`: dialed at start, retried with backoff until they appear, re-dialed after loss."""
from __future__ import annotations

import asyncio
import socket
import time

from lloom_executor import _native
from lloom_executor.backends import EchoBackend
from lloom_executor.config import NetworkConfig, RequestHandlingConfig
from lloom_executor.p2p.bootstrap import BootstrapService
from lloom_executor.p2p.node import P2PNode
from lloom_executor.serving import BasicRequestHandler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(key: _native.PrivateKey, listen: str, bootstrap: tuple[str, ...] = ()) -> P2PNode:
    handler = BasicRequestHandler(key, [], EchoBackend([]))
    network = NetworkConfig(listen_address=(listen,), bootstrap_peers=bootstrap)
    return P2PNode(key, network, RequestHandlingConfig(), handler, [BootstrapService()])


async def peers_of(n: P2PNode) -> set[str]:
    async def read(rt) -> set[str]:
        return set(rt.peers.peers)

    return await n.call(read)


async def until(predicate, what: str, timeout: float) -> float:
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s: {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def test_bootstrap_peer_dialed_when_it_appears_and_redialed_after_loss() -> None:
    async def scenario() -> None:
        port = free_port()
        b_key = _native.PrivateKey.generate()
        b_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{b_key.peer_id}"
        a = node(_native.PrivateKey.generate(), "/ip4/127.0.0.1/tcp/0", (b_addr,))
        await a.start()
        try:
            await asyncio.sleep(1.5)  # the first dials failed: nothing listens yet
            assert b_key.peer_id not in await peers_of(a)
            b = node(b_key, f"/ip4/127.0.0.1/tcp/{port}")
            await b.start()
            try:
                await until(lambda: _has(a, b_key.peer_id), "A dials B once B listens", 20)
            finally:
                await b.stop()
            await until(lambda: _lacks(a, b_key.peer_id), "A notices B is gone", 20)
            b_again = node(b_key, f"/ip4/127.0.0.1/tcp/{port}")
            await b_again.start()
            try:
                await until(lambda: _has(a, b_key.peer_id), "A re-dials B after the loss", 20)
            finally:
                await b_again.stop()
        finally:
            await a.stop()

    asyncio.run(scenario())


async def _has(n: P2PNode, peer: str) -> bool:
    return peer in await peers_of(n)


async def _lacks(n: P2PNode, peer: str) -> bool:
    return peer not in await peers_of(n)
