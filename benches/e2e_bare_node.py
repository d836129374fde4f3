"""The bare P2P handler in a process of its own: `python benches/e2e_bare_node.py MODEL`.

Why it exists: `bench_e2e.py` compares the product path (`lloom-executor start`) with the
node and request handler alone, and the comparison is fair only if both run the same way:
each in its own process, on uvloop, measured by the same process counters. This builds the
node exactly as the test suite's `executor_node` fixture does (tests/conftest.py): a fresh
key, `build_request_handler(key, models, EchoBackend(...))` with nothing else (no ledger,
receipts, rate limits, metrics), a `P2PNode` on 127.0.0.1 with the bootstrap service only.
It prints `listening on ADDR` when it serves and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from lloom_executor import _native
from lloom_executor.backends import EchoBackend
from lloom_executor.config import ModelConfig, NetworkConfig, RequestHandlingConfig
from lloom_executor.p2p.bootstrap import BootstrapService
from lloom_executor.p2p.node import P2PNode
from lloom_executor.serving import build_request_handler

# The prices of the test fixture, wei per token.
INBOUND_PRICE_WEI, OUTBOUND_PRICE_WEI = 1, 2


async def serve(model: str) -> None:
    key = _native.PrivateKey.generate()
    handler = build_request_handler(
        key,
        [ModelConfig(model, inbound_price_wei=INBOUND_PRICE_WEI, outbound_price_wei=OUTBOUND_PRICE_WEI)],
        EchoBackend([model]),
    )
    node = P2PNode(
        key, NetworkConfig(listen_address=("/ip4/127.0.0.1/tcp/0",)), RequestHandlingConfig(), handler, [BootstrapService()]
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    addrs = await node.start(timeout=40)
    try:
        for addr in addrs:
            print(f"listening on {addr}", flush=True)
        await stop.wait()
    finally:
        await node.stop(timeout=40)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    uvloop.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
