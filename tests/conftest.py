"""Shared fixtures: the Rust interop peer (built once per session) and our executor node.

Everything here cleans up in `finally`, so a failing test leaves no node
thread or subprocess behind.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

# Nothing a test starts may write into the real home (~/.lloom/executor is where
# an operator's keys, config and ledger live): point HOME at a throwaway directory,
# keeping the Rust toolchain (found through HOME by default) where it is.
os.environ.setdefault("CARGO_HOME", str(Path.home() / ".cargo"))
os.environ.setdefault("RUSTUP_HOME", str(Path.home() / ".rustup"))
os.environ["HOME"] = tempfile.mkdtemp(prefix="lloom-test-home-")

sys.path.insert(0, str(Path(__file__).parent))
import interop  # noqa: E402
from interop import INBOUND_PRICE_WEI, MODEL, OUTBOUND_PRICE_WEI  # noqa: E402


@pytest.fixture(scope="session")
def interop_peer() -> Path:
    """Path of the built Rust peer; cargo's output is shown if the build fails."""
    try:
        return interop.interop_peer_binary()
    except interop.InteropBuildError as exc:
        pytest.fail(f"could not build the Rust interop peer:\n{exc}", pytrace=False)


@pytest.fixture
def loop_thread() -> Iterator[interop.LoopThread]:
    loop = interop.LoopThread()
    try:
        yield loop
    finally:
        loop.close()


ExecutorFactory = Callable[..., interop.ExecutorNode]


@pytest.fixture
def executor_node(loop_thread: interop.LoopThread) -> Iterator[ExecutorFactory]:
    """Factory: start our P2PNode on 127.0.0.1:0 with RequestHandler + EchoBackend.

    Keyword arguments: `models` (names), `allow_unsigned`, `handling`
    (RequestHandlingConfig), `network` (NetworkConfig; its listen address is
    forced to loopback), `services` (NodeServices; default: bootstrap only) or
    `services_factory(network, handler) -> services` when they need the node's
    own config. Every node started is stopped at teardown.
    """
    from lloom_executor import _native
    from lloom_executor.backends import EchoBackend
    from lloom_executor.config import ModelConfig, NetworkConfig, RequestHandlingConfig
    from lloom_executor.p2p.bootstrap import BootstrapService
    from lloom_executor.p2p.node import P2PNode
    from lloom_executor.serving import build_request_handler

    started: list[interop.ExecutorNode] = []

    def start(
        *,
        models: Sequence[str] = (MODEL,),
        allow_unsigned: bool = False,
        handling: RequestHandlingConfig | None = None,
        network: NetworkConfig | None = None,
        services: Sequence[Any] | None = None,
        services_factory: Callable[[NetworkConfig, Any], Sequence[Any]] | None = None,
        key: Any = None,
    ) -> interop.ExecutorNode:
        key = key or _native.PrivateKey.generate()
        net = network or NetworkConfig()
        net = NetworkConfig(
            listen_address=("/ip4/127.0.0.1/tcp/0",),
            external_address=net.external_address,
            bootstrap_peers=net.bootstrap_peers,
            relay_addresses=net.relay_addresses,
            announce_interval_secs=net.announce_interval_secs,
            protocols=net.protocols,
        )
        configs = [ModelConfig(m, inbound_price_wei=INBOUND_PRICE_WEI, outbound_price_wei=OUTBOUND_PRICE_WEI) for m in models]
        handler = build_request_handler(key, configs, EchoBackend(list(models)), allow_unsigned=allow_unsigned)
        if services_factory is not None:
            chosen = list(services_factory(net, handler))
        elif services is not None:
            chosen = list(services)
        else:
            chosen = [BootstrapService()]
        node = P2PNode(key, net, handling or RequestHandlingConfig(), handler, chosen)
        addrs = loop_thread.run(node.start(), timeout=40)
        running = interop.ExecutorNode(node, handler, loop_thread, addrs)
        started.append(running)
        return running

    try:
        yield start
    finally:
        errors = []
        for running in reversed(started):
            try:
                running.stop()
            except Exception as exc:  # stop the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]
