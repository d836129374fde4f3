"""`lloom_executor.client` against real executors over loopback.

Two kinds of executor, so the client is proven against both stacks:
- the Rust interop peer in `executor` mode (rust-libp2p 0.56, reference-style):
  request/answer, Kademlia and gossip discovery, 50 concurrent requests;
- our own node (P2PNode + RequestHandler + EchoBackend): exact cost,
  signed refusals, signer checks, a stalled executor.
No mocks: real connections, real signatures; the Rust peer's own log lines
confirm that it verified our signed requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from eth_account import Account

import interop
from lloom_executor import _native
from lloom_executor.backends import Completion, CompletionRequest, EchoBackend
from lloom_executor.client import (
    Answer,
    ExecutorInfo,
    ExecutorUnreachable,
    InvalidResponse,
    LloomClient,
    NotSecp256k1PeerId,
    RequestTimeout,
    evm_address_from_peer_id,
)
from lloom_executor.client.receipts import check_receipt
from lloom_executor.config import ModelConfig, NetworkConfig, RequestHandlingConfig
from lloom_executor.p2p.node import P2PNode
from lloom_executor.serving import build_request_handler
from service_rig import until

T = TypeVar("T")
MODEL = "gpt-3.5-turbo"
BIG_IN = str(3 * 10**30 + 7)  # beyond u64 and f64 precision: the cost must be integer arithmetic
BIG_OUT = str(10**31 + 1)
RUST_KEY = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"


# -- the Rust executor ------------------------------------------------------------------
def interop_binary() -> Path:
    """The Rust peer: $LLOOM_INTEROP_PEER, else the suite's cached build; skip when unavailable."""
    configured = os.environ.get("LLOOM_INTEROP_PEER")
    if configured:
        if not Path(configured).is_file():
            pytest.skip(f"LLOOM_INTEROP_PEER={configured} does not exist")
        return Path(configured)
    try:
        return interop.interop_peer_binary()
    except interop.InteropBuildError as exc:
        pytest.skip(f"Rust interop peer unavailable (set LLOOM_INTEROP_PEER to a built binary): {exc}")


class RustExecutor:
    """`interop-peer executor` as a subprocess; its JSON lines are collected by a reader thread."""

    def __init__(self, binary: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [str(binary), "executor", "--listen", "/ip4/127.0.0.1/tcp/0", "--timeout-secs", "120", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ, LLOOM_PRIVATE_KEY=RUST_KEY),
            start_new_session=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.listening = self._first_line(timeout=20)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _first_line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise RuntimeError("interop-peer executor printed nothing")
        finally:
            sel.close()
        line = json.loads(self.proc.stdout.readline())
        if line.get("event") != "listening":
            raise RuntimeError(f"interop-peer executor did not start: {line}")
        return line

    def _read(self) -> None:  # keeps the pipe drained: a full pipe would stall the executor
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.lines.append(json.loads(raw))

    @property
    def addr(self) -> str:
        return self.listening["addr"]

    @property
    def peer_id(self) -> str:
        return self.listening["peer_id"]

    @property
    def address(self) -> str:
        return self.listening["address"]

    def requests(self) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("event") == "request"]

    def stop(self) -> None:
        interop._kill(self.proc)  # type: ignore[arg-type]
        self._reader.join(5)


@pytest.fixture(scope="module")
def rust_executor() -> Iterator[RustExecutor]:
    executor = RustExecutor(interop_binary())
    try:
        yield executor
    finally:
        executor.stop()


# -- running clients (and our executors) on the test's asyncio loop -----------------------
@pytest.fixture
def run(loop_thread: interop.LoopThread) -> Callable[..., Any]:
    """`run(coro, timeout)`: await a coroutine on the test's asyncio loop (uvloop)."""

    def runner(coro: Awaitable[T], timeout: float = 40.0) -> T:
        return loop_thread.run(coro, timeout)

    return runner


@contextlib.asynccontextmanager
async def our_executor(
    backend: Any = None,
    *,
    models: tuple[str, ...] = (MODEL,),
    signing_key: _native.PrivateKey | None = None,
    discovery: dict[str, Any] | None = None,
):
    """Our P2PNode + RequestHandler; `signing_key` other than the node key makes a lying executor.

    `discovery`: run the executor's own discovery services (kad, gossip, mDNS with
    the given `mdns_fingerprint`) as `p2p.services.default_services` builds them.
    """
    key = _native.PrivateKey.generate()
    # free models: these tests offer no price unless they check costs (the price check has its own tests)
    configs = [ModelConfig(m) for m in models]
    handler = build_request_handler(signing_key or key, configs, backend or EchoBackend(list(models)))
    network = NetworkConfig(listen_address=("/ip4/127.0.0.1/tcp/0",))
    services: list[Any] = []
    if discovery is not None:
        from lloom_executor.config import ProtocolsConfig
        from lloom_executor.p2p import services as services_mod
        from lloom_executor.p2p.announcements import ModelCatalog

        protocols = ProtocolsConfig(
            enable_mdns=bool(discovery.get("mdns_fingerprint")),
            enable_kad=True,
            enable_gossipsub=True,
            enable_autonat=False,
            enable_relay=False,
        )
        network = NetworkConfig(listen_address=network.listen_address, protocols=protocols)
        services = services_mod.default_services(network, ModelCatalog(configs, backend_type="echo"), **discovery)
    node = P2PNode(key, network, RequestHandlingConfig(), handler, services)
    addrs = await node.start()
    try:
        yield node, addrs[0]
    finally:
        await node.stop()


@contextlib.asynccontextmanager
async def client(**kwargs: Any):
    kwargs.setdefault("enable_gossip", False)
    kwargs.setdefault("enable_kad", False)
    c = LloomClient(**kwargs)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


class StallingEcho(EchoBackend):
    """Echo that holds the prompt "stall" until released: an executor stuck on one request."""

    def __init__(self, models: list[str]) -> None:
        super().__init__(models)
        self.release = asyncio.Event()
        self.stalled = 0

    async def complete(self, request: CompletionRequest) -> Completion:
        if request.prompt == "stall":
            self.stalled += 1
            await self.release.wait()
        return await super().complete(request)


def words(text: str) -> int:
    return len(text.split())


# -- identity -------------------------------------------------------------------------------
def test_evm_address_from_peer_id_matches_eth_account() -> None:
    for _ in range(20):
        key = _native.PrivateKey.generate()
        expected = Account.from_key(key.to_bytes()).address.lower()  # independent oracle
        assert evm_address_from_peer_id(key.peer_id) == expected


def test_evm_address_from_non_secp256k1_peer_id_is_refused() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    ed25519 = str(ID.from_pubkey(create_new_key_pair().public_key))
    for bad in (ed25519, "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "not-a-peer-id"):
        with pytest.raises(NotSecp256k1PeerId):
            evm_address_from_peer_id(bad)


# -- our client -> the Rust executor ----------------------------------------------------------
def test_rust_executor_request_answer_verified(rust_executor: RustExecutor, run) -> None:
    prompt = "What is the capital of France?"
    assert evm_address_from_peer_id(rust_executor.peer_id) == rust_executor.address

    async def body() -> Answer:
        async with client() as c:
            return await c.request(rust_executor.addr, MODEL, prompt, inbound_price=BIG_IN, outbound_price=BIG_OUT)

    answer = run(body())
    assert answer.error is None and answer.signature_valid
    assert answer.content == f"echo: {prompt}"
    assert answer.signer == rust_executor.address
    # the Rust executor counts whitespace-separated words of the prompt and of its answer
    assert (answer.inbound_tokens, answer.outbound_tokens) == (words(prompt), words(answer.content))
    assert answer.total_cost == str(words(prompt) * int(BIG_IN) + words(answer.content) * int(BIG_OUT))
    assert answer.model_used == MODEL and answer.latency_s > 0

    # the Rust peer logs the request it verified; its stdout line may trail the answer a little
    def seen() -> list[dict[str, Any]]:
        return [r for r in rust_executor.requests() if r.get("model") == MODEL and r["variant"] == "SignedLlmRequest"]

    assert interop.wait_until(lambda: bool(seen()), 5), rust_executor.requests()
    assert all(r["signature_valid"] is True and r["error"] is None for r in seen())


def test_rust_executor_signed_error_is_an_answer(rust_executor: RustExecutor, run) -> None:
    """A refusal (here: addressed to another executor) is a verified Answer with .error, not an exception."""
    other = _native.PrivateKey.generate().peer_id

    async def body() -> Answer:
        async with client() as c:
            return await c.request(rust_executor.addr, MODEL, "hi", executor_address=other)

    answer = run(body())
    assert answer.signature_valid and answer.signer == rust_executor.address
    assert answer.error and other in answer.error
    assert (answer.content, answer.inbound_tokens, answer.outbound_tokens, answer.total_cost) == ("", 0, 0, "0")


@pytest.mark.parametrize("channel", ["kad", "gossip"])
def test_rust_executor_discovered(rust_executor: RustExecutor, run, channel: str) -> None:
    """Each channel alone finds the executor; the found entry is then usable for a request."""
    wanted = {"kad": {"kad_providers", "kad_record"}, "gossip": {"gossip"}}[channel]

    async def body() -> tuple[list[ExecutorInfo], Answer]:
        async with client(bootstrap=[rust_executor.addr], enable_kad=channel == "kad", enable_gossip=channel == "gossip") as c:
            # over gossip, EXECUTOR_AVAILABLE may come before the (verified) model announcement: wait for both
            found = await c.find_executors(
                timeout=15,
                until=lambda f: any(
                    e.peer_id == rust_executor.peer_id and wanted <= e.via and (channel != "gossip" or e.models) for e in f
                ),
            )
            target = next(e for e in found if e.peer_id == rust_executor.peer_id)
            return found, await c.request(target, MODEL, "discovered", inbound_price="2", outbound_price="3")

    found, answer = run(body())
    info = next(e for e in found if e.peer_id == rust_executor.peer_id)
    assert wanted <= info.via, found
    assert info.evm_address == rust_executor.address
    assert info.addresses and all("/tcp/" in a for a in info.addresses)
    if channel == "gossip":  # a verified ModelAnnouncement came with it
        assert info.models == (MODEL,)
        assert info.announcement and info.announcement["executor_peer_id"] == rust_executor.peer_id
    assert answer.error is None and answer.content == "echo: discovered"


def test_rust_executor_fifty_concurrent_requests_one_connection(rust_executor: RustExecutor, run) -> None:
    async def body() -> tuple[list[Answer], int]:
        async with client() as c:
            answers = await asyncio.gather(
                *(
                    c.request(rust_executor.addr, MODEL, f"request number {i}", inbound_price="1", outbound_price="1")
                    for i in range(50)
                )
            )

            async def conns(rt: Any) -> int:
                return len(rt.host.get_network().connections.get(_peer(rust_executor.peer_id), []))

            return list(answers), await c.node.call(conns)

    answers, connections = run(body(), timeout=60)
    assert [a.content for a in answers] == [f"echo: request number {i}" for i in range(50)]
    assert all(a.signature_valid and a.signer == rust_executor.address and a.error is None for a in answers)
    assert len({a.request_nonce for a in answers}) == 50
    assert connections == 1


def _peer(peer_id: str):
    from libp2p.peer.id import ID

    return ID.from_base58(peer_id)


# -- our client -> our executor -----------------------------------------------------------------
def test_our_executor_answer_with_exact_cost(run) -> None:
    prompt = "Tell me about the Lloom network, briefly."

    async def body() -> tuple[Answer, str]:
        async with our_executor() as (node, addr), client() as c:
            return await c.request(
                addr,
                MODEL,
                prompt,
                system_prompt="be short",
                temperature=0.7,
                max_tokens=64,
                inbound_price=BIG_IN,
                outbound_price=BIG_OUT,
            ), node.key.address.lower()

    answer, address = run(body())
    assert answer.error is None and answer.signature_valid and answer.signer == address
    assert answer.content == f"echo: {prompt}"
    assert answer.inbound_tokens > 0 and answer.outbound_tokens > 0
    assert answer.total_cost == str(answer.inbound_tokens * int(BIG_IN) + answer.outbound_tokens * int(BIG_OUT))
    assert abs(answer.timestamp - time.time()) < 60


def test_our_executor_unknown_model_is_a_signed_error(run) -> None:
    async def body() -> tuple[Answer, str]:
        async with our_executor() as (node, addr), client() as c:
            return await c.request(addr, "no-such-model", "hi"), node.key.address.lower()

    answer, address = run(body())
    assert answer.signature_valid and answer.signer == address
    assert answer.error and "no-such-model" in answer.error
    assert (answer.content, answer.total_cost, answer.model_used) == ("", "0", "no-such-model")


def test_our_executor_refuses_unsigned_request(run) -> None:
    async def body() -> Answer:
        async with our_executor() as (_, addr), client() as c:
            return await c.request(addr, MODEL, "hi", signed=False)

    answer = run(body())
    assert answer.signature_valid and answer.error and "unsigned" in answer.error.lower()


def test_answer_signed_by_another_key_is_invalid(run) -> None:
    """The PeerId's key and the signer must be one: a node that signs with another key is not trusted."""

    async def body() -> None:
        async with our_executor(signing_key=_native.PrivateKey.generate()) as (_, addr), client() as c:
            with pytest.raises(InvalidResponse, match="signed by"):
                await c.request(addr, MODEL, "hi")

    run(body())


def test_announced_address_must_match_signer(run) -> None:
    """An ExecutorInfo that names another EVM address (e.g. from an announcement) makes the check strict."""

    async def body() -> Answer:
        async with our_executor() as (node, addr), client() as c:
            base = addr.rsplit("/p2p/", 1)[0]
            impostor = ExecutorInfo(node.peer_id, [base], evm_address=_native.PrivateKey.generate().address.lower())
            with pytest.raises(InvalidResponse, match="signed by"):
                await c.request(impostor, MODEL, "hi")
            honest = ExecutorInfo(node.peer_id, [base], evm_address=node.key.address.lower())
            return await c.request(honest, MODEL, "hi")

    assert run(body()).content == "echo: hi"


def test_stalled_executor_times_out_and_keeps_serving(run) -> None:
    backend = StallingEcho([MODEL])

    async def body() -> tuple[float, list[Answer], Any]:
        async with our_executor(backend) as (node, addr), client() as c, client() as other:
            started = time.monotonic()
            with pytest.raises(RequestTimeout):
                await c.request(addr, MODEL, "stall", timeout=0.5)
            waited = time.monotonic() - started
            answers = [await c.request(addr, MODEL, "still there"), await other.request(addr, MODEL, "me too")]
            backend.release.set()
            await until(lambda: node.stream_handler.stats.inflight == 0, "the abandoned request finished", 10)
            return waited, answers, node.stream_handler.stats

    waited, answers, stats = run(body())
    assert 0.4 < waited < 3
    assert [a.content for a in answers] == ["echo: still there", "echo: me too"]
    assert backend.stalled == 1
    assert stats.inflight == 0  # the abandoned request finished (its answer hit a reset stream)


def test_our_executor_discovered_via_kad_and_gossip(run) -> None:
    async def body() -> tuple[list[ExecutorInfo], str, Answer]:
        async with our_executor(discovery={}) as (node, addr), client(bootstrap=[addr], enable_kad=True, enable_gossip=True) as c:
            found = await c.find_executors(
                timeout=20,
                until=lambda f: any({"kad_providers", "kad_record", "gossip"} <= e.via and e.models for e in f),
            )
            target = next(e for e in found if e.peer_id == node.peer_id)
            return found, node.key.address.lower(), await c.request(target, MODEL, "found you")

    found, address, answer = run(body(), timeout=60)
    info = next(e for e in found if e.via - {"direct"})
    assert {"kad_providers", "kad_record", "gossip", "direct"} <= info.via, found
    assert info.evm_address == address and info.models == (MODEL,)
    assert answer.content == "echo: found you" and answer.signer == address


def test_our_executor_discovered_via_mdns(run) -> None:
    """No bootstrap at all: mDNS finds the executor's host, Kademlia then confirms it is an executor."""
    fingerprint = os.urandom(4).hex()  # a private mDNS service name: only this test's nodes see each other

    async def body() -> list[ExecutorInfo]:
        async with (
            our_executor(discovery={"mdns_fingerprint": fingerprint}) as (node, _),
            client(enable_kad=True, enable_mdns=True, mdns_fingerprint=fingerprint) as c,
        ):
            found = await c.find_executors(timeout=20, until=lambda f: any({"mdns", "kad_providers"} <= e.via for e in f))
            assert any(e.peer_id == node.peer_id for e in found), found
            return found

    found = run(body(), timeout=60)
    assert any({"mdns", "kad_providers"} <= e.via for e in found), found


def test_unreachable_executor(run) -> None:
    async def body() -> None:
        async with client(connect_timeout=3) as c:
            lonely = _native.PrivateKey.generate().peer_id
            with pytest.raises(ExecutorUnreachable, match="no address"):
                await c.request(lonely, MODEL, "hi")
            with pytest.raises(ExecutorUnreachable):  # nothing listens on port 1
                await c.request(f"/ip4/127.0.0.1/tcp/1/p2p/{lonely}", MODEL, "hi", timeout=5)

    run(body())


# -- receipts ---------------------------------------------------------------------------------------
def test_receipt_check() -> None:
    """A receipt verifies only for the exact request and answer, and only under the executor's key."""
    domain = _native.Eip712Domain(31337, "0x" + "11" * 20)
    executor, client_key = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    ex_addr, cl_addr = executor.address.lower(), client_key.address.lower()
    req = dict(
        model=MODEL,
        prompt="p",
        system_prompt=None,
        max_tokens=16,
        temperature=0.5,
        inbound_price="5",
        outbound_price="7",
        nonce=9,
        deadline=2_000_000_000,
    )
    request_hash = bytes(domain.request_commitment_digest(ex_addr, MODEL, "p", None, 16, 0.5, "5", "7", 9, 2_000_000_000))

    def receipt(key: _native.PrivateKey, content: str) -> dict[str, Any]:
        digest, sig = domain.sign_response_receipt(
            key, request_hash, cl_addr, MODEL, content, 1, 2, "5", "7", 1_700_000_000, True
        )
        return {
            "request_hash": request_hash,
            "digest": bytes(digest),
            "signature": bytes(sig),
            "timestamp": 1_700_000_000,
            "success": True,
        }

    def check(raw: Any, content: str = "echo: p") -> Any:
        return check_receipt(
            raw,
            domain,
            executor_address=ex_addr,
            client_address=cl_addr,
            content=content,
            inbound_tokens=1,
            outbound_tokens=2,
            **req,
        )

    good = receipt(executor, "echo: p")
    assert check(good).valid
    assert not check(good, content="something else").valid
    assert not check(receipt(_native.PrivateKey.generate(), "echo: p")).valid
    assert not check({"digest": b"x"}).valid
