"""The P2P node: a trio thread that owns the py-libp2p host and its services.

The main (asyncio) thread starts and stops it; requests reach the asyncio
side through the bridge only. Each subsystem is a `NodeService` started in
the node's nursery, so one that fails is logged once and the rest go on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from .._native import PrivateKey
from ..bridge import TrioBridge
from ..config import NetworkConfig, RequestHandlingConfig
from .admission import AdmissionLimits, ConnectionCounts, InboundAdmission
from .host import build_host, listen_multiaddrs
from .inbound_gate import widen_accept_backlog
from .llm_protocol import LLM_PROTOCOL, LlmStreamHandler, RequestHandler, StreamStats
from .peers import PeerBook
from .task_status import TaskStatus

log = logging.getLogger(__name__)
T = TypeVar("T")

STOP_GRACE_SECS = 5.0


@dataclass
class NodeRuntime:
    """What services get to work with, inside the trio thread."""

    host: IHost
    key: PrivateKey
    network: NetworkConfig
    nursery: trio.Nursery
    peers: PeerBook
    bridge: TrioBridge
    services: dict[str, NodeService] = field(default_factory=dict)


class NodeService(Protocol):
    """A subsystem of the node (Kademlia, gossipsub, mDNS, ...)."""

    name: str

    async def run(self, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start, call `task_status.started()` once usable, then run until cancelled."""

    async def shutdown(self, rt: NodeRuntime) -> None:
        """Last words before the host stops (e.g. a Removal announcement)."""


class P2PNode:
    """Lifecycle of the trio thread; every public method is for the asyncio side."""

    def __init__(
        self,
        key: PrivateKey,
        network: NetworkConfig,
        handling: RequestHandlingConfig,
        handler: RequestHandler | None,
        services: Sequence[NodeService] = (),
    ) -> None:
        self.key = key
        self.network = network
        self.handling = handling
        self._handler = handler
        self._services = list(services)
        # per-source caps on inbound connections (p2p/admission.py); counted for metrics from here
        self.admission = InboundAdmission(AdmissionLimits.from_network(network))
        self.bridge: TrioBridge | None = None
        self.runtime: NodeRuntime | None = None
        self.stream_handler: LlmStreamHandler | None = None
        self.listen_addrs: list[str] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None

    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    @property
    def running(self) -> bool:
        """The P2P thread is up (started and not stopped or crashed)."""
        return self._thread is not None and self._thread.is_alive()

    def connection_counts(self) -> ConnectionCounts:
        """Inbound connections refused, timed out, pending and established (any thread may read)."""
        return self.admission.counts()

    def stream_stats(self) -> StreamStats | None:
        """The `/lloom/llm/1.0.0` stream counters (None before the node started)."""
        return self.stream_handler.stats if self.stream_handler is not None else None

    async def start(self, timeout: float = 30.0) -> list[str]:
        """Start the trio thread; returns the bound listen addresses (with /p2p/)."""
        if self._thread is not None:
            raise RuntimeError("node already started")
        self.bridge = TrioBridge(asyncio.get_running_loop())
        self._thread = threading.Thread(target=self._thread_main, name="lloom-p2p", daemon=True)
        self._thread.start()
        ok = await asyncio.get_running_loop().run_in_executor(None, self._ready.wait, timeout)
        if self._error is not None:
            raise RuntimeError(f"P2P node failed to start: {self._error}") from self._error
        if not ok:
            raise TimeoutError("P2P node did not start in time")
        if self.network.listen_address and not self.listen_addrs:
            # py-libp2p logs a listener that failed to bind (port taken, address not ours) and runs on
            # without it; an executor that nobody can reach must not look started
            await self.stop()
            raise OSError(f"could not listen on {', '.join(self.network.listen_address)} (see the log above)")
        return self.listen_addrs

    async def stop(self, timeout: float = 30.0) -> None:
        """Services say goodbye, the host closes, the thread ends."""
        if self._thread is None or self.bridge is None:
            return
        try:
            await self.bridge.call_trio(self._trio_stop)
        except Exception as exc:  # the thread may already be gone
            log.debug("stop: %s", exc)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        if self._thread.is_alive():
            raise TimeoutError("P2P thread did not stop")
        self._thread = None

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(runtime, *args)` in the trio thread (peer listings, publishing, ...)."""
        assert self.bridge is not None

        async def run() -> T:
            return await fn(self.runtime, *args)

        return await self.bridge.call_trio(run)

    # -- trio thread -------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            trio.run(self._trio_main)
        except BaseException as exc:  # reported to start() or logged
            self._error = exc
            if self._ready.is_set():
                log.exception("P2P thread crashed")
        finally:
            self._ready.set()

    async def _trio_main(self) -> None:
        assert self.bridge is not None
        self._stop = trio.Event()
        host = build_host(
            self.key,
            announce_addrs=self.network.external_address,
            enable_mdns=False,  # mDNS runs as its own service (p2p/mdns.py) when enabled
            admission=self.admission,
        )
        listen = [multiaddr.Multiaddr(a) for a in self.network.listen_address]
        async with host.run(listen_addrs=listen):
            widen_accept_backlog(host.get_network())
            peers = PeerBook()
            host.get_network().register_notifee(peers)
            if self._handler is not None:  # None: a client node, it serves no requests
                self.stream_handler = LlmStreamHandler(
                    self.bridge,
                    self._handler,
                    max_request_bytes=self.handling.max_request_size_bytes,
                    read_timeout=self.handling.stream_read_timeout_secs,
                    max_inflight=self.handling.max_inflight_streams,
                    max_inflight_per_peer=self.handling.max_inflight_streams_per_peer,
                )
                host.set_stream_handler(LLM_PROTOCOL, self.stream_handler)
            async with trio.open_nursery() as nursery:
                self.bridge.attach_trio(nursery)
                rt = NodeRuntime(host, self.key, self.network, nursery, peers, self.bridge)
                self.runtime = rt
                for service in self._services:
                    rt.services[service.name] = service
                    try:
                        await nursery.start(_supervised, service, rt)
                    except RuntimeError:  # failed before it started; already logged
                        pass
                self.listen_addrs = listen_multiaddrs(host)
                self._ready.set()
                await self._stop.wait()
                for service in reversed(self._services):
                    with trio.move_on_after(STOP_GRACE_SECS):
                        try:
                            await service.shutdown(rt)
                        except Exception as exc:
                            log.warning("P2P subsystem %s shutdown: %s", service.name, exc)
                self.bridge.detach_trio()
                nursery.cancel_scope.cancel()

    async def _trio_stop(self) -> None:
        assert self._stop is not None
        self._stop.set()


async def _supervised(service: NodeService, rt: NodeRuntime, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A subsystem that fails is logged once; it does not take the node down."""
    try:
        await service.run(rt, task_status=task_status)
    except Exception as exc:
        log.error("P2P subsystem %s stopped: %s", service.name, exc, exc_info=log.isEnabledFor(logging.DEBUG))


async def dial(host: IHost, address: str) -> str:
    """Connect to a `/…/p2p/<id>` address now (see `allow_redial`); returns the peer id."""
    info = info_from_p2p_addr(multiaddr.Multiaddr(address))
    allow_redial(host, info.peer_id)
    await host.connect(info)
    return str(info.peer_id)


def allow_redial(host: IHost, peer_id: ID) -> None:
    """py-libp2p 0.8.1 refuses to dial a peer for 60 s after a dial to it failed (its
    "negative cache"); a deliberate dial (bootstrap backoff, a client's request) decides
    its own retries, so lift that block first."""
    unblock = getattr(host.get_network(), "unblock_peer", None)
    if unblock is not None:
        unblock(peer_id)
