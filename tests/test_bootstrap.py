"""`[network] bootstrap_peers`: dialed at start, retried with backoff until they appear, re-dialed after loss."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from lloom_executor import _native
from lloom_executor.backends import EchoBackend
from lloom_executor.config import NetworkConfig, RequestHandlingConfig
from lloom_executor.p2p.bootstrap import BootstrapService
from lloom_executor.p2p.node import P2PNode
from lloom_executor.serving import build_request_handler
from service_rig import until

BOOTSTRAP_LOGGER = "lloom_executor.p2p.bootstrap"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(key: _native.PrivateKey, listen: str, bootstrap: tuple[str, ...] = ()) -> P2PNode:
    handler = build_request_handler(key, [], EchoBackend([]))
    network = NetworkConfig(listen_address=(listen,), bootstrap_peers=bootstrap)
    return P2PNode(key, network, RequestHandlingConfig(), handler, [BootstrapService()])


def connected(n: P2PNode, peer: str) -> bool:
    """Whether `peer` is in the node's peer book: a read-only peek at a dict the trio thread
    keeps (a membership test is atomic), so it can be polled from the asyncio side."""
    assert n.runtime is not None, "node not started"
    return peer in n.runtime.peers.peers


def test_bootstrap_peer_dialed_when_it_appears_and_redialed_after_loss(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=BOOTSTRAP_LOGGER)

    def dial_failed(address: str) -> bool:
        """The service reports the first failed dial of an address (its retries stay quiet)."""
        return any(
            r.name == BOOTSTRAP_LOGGER and "unreachable" in r.getMessage() and address in r.getMessage() for r in caplog.records
        )

    async def scenario() -> None:
        port = free_port()
        b_key = _native.PrivateKey.generate()
        b_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{b_key.peer_id}"
        a = node(_native.PrivateKey.generate(), "/ip4/127.0.0.1/tcp/0", (b_addr,))
        await a.start()
        try:
            await until(lambda: dial_failed(b_addr), "A's first dial of B fails: nothing listens yet", 20)
            assert not connected(a, b_key.peer_id)
            b = node(b_key, f"/ip4/127.0.0.1/tcp/{port}")
            await b.start()
            try:
                await until(lambda: connected(a, b_key.peer_id), "A dials B again once B listens", 20)
            finally:
                await b.stop()
            await until(lambda: not connected(a, b_key.peer_id), "A notices B is gone", 20)
            b_again = node(b_key, f"/ip4/127.0.0.1/tcp/{port}")
            await b_again.start()
            try:
                await until(lambda: connected(a, b_key.peer_id), "A re-dials B after the loss", 20)
            finally:
                await b_again.stop()
        finally:
            await a.stop()

    asyncio.run(scenario())
