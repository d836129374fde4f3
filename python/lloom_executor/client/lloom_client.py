"""`LloomClient`: discover executors, send signed requests, verify signed answers.

The asyncio API runs on the caller's loop; the py-libp2p host runs on trio in
its own thread. The client is a `P2PNode` without a request handler (it serves
no `/lloom/llm/1.0.0`) and with client-side services only: bootstrap dialing,
Kademlia lookups, gossip listening, optionally mDNS. Each request crosses the
bridge once each way.

Nonces: reference clients send `nonce: 1` in every request, so two identical
requests in one second are byte-identical and a digest-keyed replay filter
refuses the second. This client puts a random 63-bit nonce in each payload
instead (no envelope nonce), which is valid for every executor and keeps
identical prompts distinct. A settleable request (`settle=True`, with
`commitments` given) carries the client's next on-chain nonce instead, and its
EIP-712 commitment signature in the envelope (`commitments.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio
from libp2p.peer.id import ID

from .. import _native
from ..bridge import BridgeClosed
from ..config import NetworkConfig, ProtocolsConfig, RequestHandlingConfig
from ..p2p.bootstrap import BootstrapService
from ..p2p.mdns import MdnsService
from ..p2p.node import NodeRuntime, P2PNode, dial
from .commitments import COMMITMENT_KEY, SETTLEABLE_DEADLINE_SECS, RequestCommitments
from .discovery import ExecutorBook, GossipWatchService, KadLookupService
from .exchange import Dialer, exchange
from .peer_identity import NotSecp256k1PeerId, evm_address_from_peer_id
from .receipts import check_receipt, envelope_receipt, wire_temperature
from .types import (
    VIA_DIRECT,
    Answer,
    ExecutorInfo,
    ExecutorUnreachable,
    InvalidResponse,
    LloomClientError,
    RequestTimeout,
)

log = logging.getLogger(__name__)

MAX_CLOCK_SKEW_SECS = 300
KAD_RETRY_SECS = 2.0
BRIDGE_GRACE_SECS = 5.0


class LloomClient:
    """A Lloom client node. Use as `async with LloomClient(...) as client:`."""

    def __init__(
        self,
        key: _native.PrivateKey | None = None,
        bootstrap: Sequence[str] = (),
        listen: str = "/ip4/127.0.0.1/tcp/0",
        request_timeout: float = 300.0,
        *,
        connect_timeout: float = 20.0,
        enable_kad: bool = True,
        enable_gossip: bool = True,
        enable_mdns: bool = False,
        mdns_fingerprint: str | None = None,
        eip712_domain: _native.Eip712Domain | None = None,
        commitments: RequestCommitments | None = None,
    ) -> None:
        """`commitments`: sign settleable requests' EIP-712 commitments (`request(settle=True)`)."""
        self.commitments = commitments
        self.key = key or _native.PrivateKey.generate()
        self.bootstrap = list(bootstrap)
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.eip712_domain = eip712_domain
        self.book = ExecutorBook()
        self.kad = KadLookupService(self.book) if enable_kad else None
        self.gossip = GossipWatchService(self.book) if enable_gossip else None
        services: list[Any] = [s for s in (self.gossip, self.kad) if s is not None]
        self.mdns = MdnsService(fingerprint=mdns_fingerprint) if enable_mdns else None
        if self.mdns is not None:
            services.append(self.mdns)
        services.append(BootstrapService(tuple(self.bootstrap)))  # last: the others see its connections
        network = NetworkConfig(
            listen_address=(listen,),
            bootstrap_peers=tuple(self.bootstrap),
            protocols=ProtocolsConfig(
                enable_mdns=enable_mdns,
                enable_kad=enable_kad,
                enable_gossipsub=enable_gossip,
                enable_autonat=False,
                enable_relay=False,
            ),
        )
        self.node = P2PNode(self.key, network, RequestHandlingConfig(), None, services)
        self._dialer: Dialer | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> None:
        await self.node.start(timeout)
        self._dialer = await self.node.call(_make_dialer)

    async def stop(self) -> None:
        await self.node.stop()

    async def __aenter__(self) -> LloomClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    @property
    def address(self) -> str:
        """Our EVM address (lowercase 0x…), the signer of our requests."""
        return "0x" + bytes(self.key.address_bytes).hex()

    @property
    def listen_addrs(self) -> list[str]:
        return list(self.node.listen_addrs)

    # -- discovery -------------------------------------------------------------------
    async def connect(self, address: str, timeout: float | None = None) -> str:
        """Dial a `/…/p2p/<PeerId>` multiaddr; returns the PeerId."""
        limit = timeout or self.connect_timeout

        async def run(rt: NodeRuntime) -> str:
            with trio.fail_after(limit):
                return await dial(rt.host, address)

        try:
            return await self.node.call(run)
        except trio.TooSlowError:
            raise RequestTimeout(f"connecting to {address} took more than {limit:g} s") from None
        except LloomClientError:
            raise
        except Exception as exc:
            raise ExecutorUnreachable(f"cannot connect to {address}: {exc}") from exc

    async def find_executors(
        self,
        timeout: float = 10.0,
        *,
        min_count: int = 1,
        until: Callable[[list[ExecutorInfo]], bool] | None = None,
        include_bootstrap: bool = True,
    ) -> list[ExecutorInfo]:
        """Discover executors for at most `timeout` seconds.

        Returns as soon as `until(found)` holds — by default: at least
        `min_count` executors found through a discovery channel (Kademlia,
        gossip, mDNS). Kademlia is asked again every few seconds meanwhile;
        gossip announcements arrive whenever the executors send them. When
        `include_bootstrap`, the bootstrap peers are listed too with
        `via={"direct"}` (the reference client's fallback). Never raises for
        finding nothing: an empty list is the answer.
        """
        if until is None:

            def until(found: list[ExecutorInfo]) -> bool:
                return sum(1 for e in found if e.via - {VIA_DIRECT}) >= min_count

        return await self.node.call(self._find, timeout, until, include_bootstrap)

    async def _find(
        self, rt: NodeRuntime, timeout: float, until: Callable[[list[ExecutorInfo]], bool], include_bootstrap: bool
    ) -> list[ExecutorInfo]:
        deadline = trio.current_time() + timeout
        if include_bootstrap:
            for address in self.bootstrap:
                self.book.note(address.rsplit("/p2p/", 1)[-1], VIA_DIRECT, [address.rsplit("/p2p/", 1)[0]])
        with trio.move_on_at(deadline):
            await _wait_for_any_connection(rt, [a.rsplit("/p2p/", 1)[-1] for a in self.bootstrap])
        while True:
            self._note_mdns()
            if self.kad is not None:
                with trio.move_on_at(deadline):
                    await self.kad.lookup(rt, max(0.1, deadline - trio.current_time()))
            if until(self.book.snapshot()) or trio.current_time() >= deadline:
                break
            with trio.move_on_at(min(deadline, trio.current_time() + KAD_RETRY_SECS)):
                while not until(self.book.snapshot()):
                    await self.book.changed.wait()
            if until(self.book.snapshot()) or trio.current_time() >= deadline:
                break
        self._note_mdns()
        found = self.book.snapshot()
        return found if include_bootstrap else [e for e in found if e.via - {VIA_DIRECT}]

    def _note_mdns(self) -> None:
        """Trio thread: peers the mDNS service saw mark the executors among them."""
        if self.mdns is not None:
            for peer_id in list(self.mdns.discovered):
                self.book.note_mdns_peer(peer_id)

    async def executors(self) -> list[ExecutorInfo]:
        """What discovery knows now, without waiting."""

        async def run(rt: NodeRuntime) -> list[ExecutorInfo]:
            self._note_mdns()
            return self.book.snapshot()

        return await self.node.call(run)

    # -- requests --------------------------------------------------------------------
    async def request(
        self,
        executor: str | ExecutorInfo,
        model: str,
        prompt: str,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        inbound_price: str = "0",
        outbound_price: str = "0",
        deadline_secs: int | None = None,
        executor_address: str | None = None,
        signed: bool = True,
        timeout: float | None = None,
        settle: bool = False,
    ) -> Answer:
        """Send one LLM request and return the executor's verified answer.

        Raises `ExecutorUnreachable`, `RequestTimeout` or `InvalidResponse`;
        a signed refusal (unknown model, bad price, ...) is an `Answer` with
        `.error` set. `executor_address` defaults to the executor's PeerId
        text, as reference clients send it. `settle`: sign the EIP-712 request
        commitment with our next on-chain nonce (needs `commitments` and an
        executor whose EVM address is known); `deadline_secs` then defaults to
        `SETTLEABLE_DEADLINE_SECS` instead of 300. A refused or failed settleable
        request gives its nonce back for the next one.
        """
        peer_id, addresses, expected_signer = _target(executor)
        now = int(time.time())
        default_deadline = SETTLEABLE_DEADLINE_SECS if settle else 300
        deadline = now + int(deadline_secs if deadline_secs is not None else default_deadline)
        commitments = self.commitments
        if settle and (commitments is None or expected_signer is None or not signed):
            raise LloomClientError("a settleable request needs `commitments`, a signed request and the executor's EVM address")
        nonce = commitments.nonces.take(deadline) if settle and commitments is not None else secrets.randbits(63) + 1
        try:
            answer = await self._request(
                peer_id, addresses, expected_signer, now, deadline, nonce, settle, executor_address,
                model, prompt, system_prompt, temperature, max_tokens, inbound_price, outbound_price, signed, timeout,
            )  # fmt: skip
        except BaseException:
            if settle and commitments is not None:
                commitments.nonces.release(nonce)
            raise
        if settle and commitments is not None and not answer.ok:
            commitments.nonces.release(nonce)
        return answer

    async def _request(
        self,
        peer_id: str,
        addresses: list[str],
        expected_signer: str | None,
        now: int,
        deadline: int,
        nonce: int,
        settle: bool,
        executor_address: str | None,
        model: str,
        prompt: str,
        system_prompt: str | None,
        temperature: float | None,
        max_tokens: int | None,
        inbound_price: str,
        outbound_price: str,
        signed: bool,
        timeout: float | None,
    ) -> Answer:
        executor_address = executor_address or peer_id
        args = (
            model,
            prompt,
            system_prompt,
            temperature,
            max_tokens,
            executor_address,
            str(inbound_price),
            str(outbound_price),
            nonce,
            deadline,
        )
        commitment_hash: bytes | None = None
        if signed and settle:
            assert self.commitments is not None and expected_signer is not None  # checked by `request`
            commitment_hash, extension = self.commitments.sign(
                self.key,
                bytes.fromhex(expected_signer.removeprefix("0x")),
                model=model,
                prompt=prompt,
                system_prompt=system_prompt,
                max_tokens=max_tokens,
                temperature=wire_temperature(temperature) if temperature is not None else None,
                inbound_price=str(inbound_price),
                outbound_price=str(outbound_price),
                nonce=nonce,
                deadline=deadline,
            )
            frame = bytes(_native.encode_signed_request(self.key, *args, now, None, extension))
            assert COMMITMENT_KEY.encode() in frame
        elif signed:
            frame = bytes(_native.encode_signed_request(self.key, *args, now))
        else:
            frame = bytes(_native.encode_unsigned_request(*args))
        if len(frame) > _native.MAX_REQUEST_BYTES:
            raise LloomClientError(f"request is {len(frame)} bytes; executors accept at most {_native.MAX_REQUEST_BYTES}")
        request_digest = bytes(_native.decode_request(frame).digest)
        started = time.monotonic()
        raw = await self.send_frame(peer_id, frame, addresses=addresses, timeout=timeout)
        latency = time.monotonic() - started
        answer = self._verify(raw, peer_id, expected_signer, started_wall=now)
        receipt_raw = envelope_receipt(raw)
        receipt = None
        if receipt_raw is not None and self.eip712_domain is not None and answer.signer:
            receipt = check_receipt(
                receipt_raw,
                self.eip712_domain,
                executor_address=answer.signer,
                client_address=self.address,
                model=model,
                prompt=prompt,
                system_prompt=system_prompt,
                max_tokens=max_tokens,
                temperature=temperature,
                inbound_price=str(inbound_price),
                outbound_price=str(outbound_price),
                nonce=nonce,
                deadline=deadline,
                content=answer.content,
                inbound_tokens=answer.inbound_tokens,
                outbound_tokens=answer.outbound_tokens,
            )
        return dataclasses.replace(
            answer,
            latency_s=latency,
            request_nonce=nonce,
            request_digest=request_digest,
            receipt=receipt,
            receipt_raw=receipt_raw,
            commitment_hash=commitment_hash,
        )

    async def send_frame(
        self,
        executor: str | ExecutorInfo,
        frame: bytes,
        *,
        addresses: Sequence[str] = (),
        timeout: float | None = None,
    ) -> bytes:
        """One raw `/lloom/llm/1.0.0` exchange: write `frame`, return the answer bytes unverified."""
        peer_id, extra, _ = _target(executor)
        limit = self.request_timeout if timeout is None else timeout
        try:
            peer = ID.from_base58(peer_id)
        except Exception as exc:
            raise ExecutorUnreachable(f"not a PeerId: {peer_id!r}") from exc
        known = list(addresses) + extra

        async def run(rt: NodeRuntime) -> bytes:
            entry = self.book.executors.get(peer_id)
            addrs = known + (entry.addresses if entry else [])
            assert self._dialer is not None
            return await exchange(rt.host, self._dialer, peer, addrs, frame, connect_timeout=self.connect_timeout, timeout=limit)

        try:
            return await asyncio.wait_for(self.node.call(run), limit + BRIDGE_GRACE_SECS)
        except TimeoutError:
            raise RequestTimeout(f"executor {peer_id} did not answer within {limit:g} s") from None
        except BridgeClosed as exc:
            raise LloomClientError(f"the client is not running: {exc}") from exc

    def _verify(self, raw: bytes, peer_id: str, expected_signer: str | None, started_wall: int) -> Answer:
        try:
            decoded = _native.decode_response(raw)
        except ValueError as exc:
            raise InvalidResponse(f"undecodable answer from {peer_id}: {exc}") from exc
        if decoded.variant != "SignedLlmResponse":
            raise InvalidResponse(f"expected a SignedLlmResponse from {peer_id}, got {decoded.variant}")
        if not decoded.signature_valid or decoded.signer is None or decoded.signature is None:
            raise InvalidResponse(f"answer from {peer_id} has an invalid signature")
        signer = "0x" + bytes(decoded.signer).hex()
        if expected_signer is not None and signer != expected_signer.lower():
            raise InvalidResponse(f"answer signed by {signer}, but executor {peer_id} is {expected_signer.lower()}")
        timestamp = int(decoded.timestamp or 0)
        now = int(time.time())
        if timestamp > now + MAX_CLOCK_SKEW_SECS or timestamp < started_wall - MAX_CLOCK_SKEW_SECS:
            raise InvalidResponse(
                f"answer timestamp {timestamp} is outside [{started_wall - MAX_CLOCK_SKEW_SECS}, "
                f"{now + MAX_CLOCK_SKEW_SECS}] (stale or replayed)"
            )
        response = decoded.response
        assert response is not None
        return Answer(
            content=response.content,
            inbound_tokens=response.inbound_tokens,
            outbound_tokens=response.outbound_tokens,
            total_cost=response.total_cost,
            model_used=response.model_used,
            error=response.error,
            signer=signer,
            signature_valid=True,
            timestamp=timestamp,
            executor=peer_id,
            latency_s=0.0,
            request_nonce=0,
            request_digest=b"",
        )


async def _make_dialer(rt: NodeRuntime) -> Dialer:
    return Dialer(rt.host)


async def _wait_for_any_connection(rt: NodeRuntime, peer_ids: list[str]) -> None:
    """Until one bootstrap peer is connected (BootstrapService dials them); at once if there are none."""
    while peer_ids and not any(p in rt.peers.peers for p in peer_ids):
        await trio.sleep(0.05)


def _target(executor: str | ExecutorInfo) -> tuple[str, list[str], str | None]:
    """(PeerId, known addresses, expected signer address) of what the caller named.

    A multiaddr ending in /p2p/<id> is accepted too. The expected signer is the
    announced EVM address when known, else the one embedded in a secp256k1 PeerId.
    """
    if isinstance(executor, ExecutorInfo):
        peer_id, addresses, evm = executor.peer_id, list(executor.addresses), executor.evm_address
    elif "/p2p/" in executor:
        base, peer_id = executor.rsplit("/p2p/", 1)
        addresses, evm = ([base] if base else []), None
    else:
        peer_id, addresses, evm = executor, [], None
    if evm is None:
        try:
            evm = evm_address_from_peer_id(peer_id)
        except NotSecp256k1PeerId:
            evm = None
    return peer_id, addresses, evm
