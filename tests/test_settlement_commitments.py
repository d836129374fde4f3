"""The client's EIP-712 request commitment in the envelope: reference peers ignore it, our executor
checks it at admission (a bad one is a signed refusal) and keeps it in the ledger row.

Oracles: eth-account recovers the client's signature from eth-account's own EIP-712
digest (encode_typed_data); the rust reference-style executor (rust-libp2p, serde
structs of the reference) decodes the frames.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

import interop
from interop import INBOUND_PRICE_WEI, MODEL, OUTBOUND_PRICE_WEI
from lloom_executor import _native
from lloom_executor.backends import EchoBackend
from lloom_executor.client import ChainNonces, LloomClient, RequestCommitments
from lloom_executor.config import ModelConfig, NetworkConfig, RequestHandlingConfig
from lloom_executor.ledger import Ledger
from lloom_executor.p2p.bootstrap import BootstrapService
from lloom_executor.p2p.node import P2PNode
from lloom_executor.serving import build_request_handler

CONTRACT = "0x" + "5e" * 20
CHAIN_ID = 31337
DOMAIN = _native.Eip712Domain(CHAIN_ID, CONTRACT)


@contextlib.contextmanager
def ledger_executor(loop_thread: interop.LoopThread, tmp_path: Path) -> Iterator[tuple[interop.ExecutorNode, Ledger]]:
    key = _native.PrivateKey.generate()
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    configs = [ModelConfig(MODEL, inbound_price_wei=INBOUND_PRICE_WEI, outbound_price_wei=OUTBOUND_PRICE_WEI)]
    handler = build_request_handler(key, configs, EchoBackend([MODEL]), receipt_domain=DOMAIN, ledger=ledger)
    node = P2PNode(
        key, NetworkConfig(listen_address=("/ip4/127.0.0.1/tcp/0",)), RequestHandlingConfig(), handler, [BootstrapService()]
    )
    addrs = loop_thread.run(node.start(), timeout=40)
    running = interop.ExecutorNode(node, handler, loop_thread, addrs)
    try:
        yield running, ledger
    finally:
        running.stop()
        ledger.close()


def oracle_request_hash(executor: str, request: Any, nonce: int, deadline: int) -> bytes:
    """EIP-712 digest of the request commitment by eth-account (docs/PROTOCOL.md §7's oracle)."""
    from eth_utils import keccak

    fields = [
        ("executor", "address"),
        ("model", "string"),
        ("promptHash", "bytes32"),
        ("systemPromptHash", "bytes32"),
        ("maxTokens", "uint32"),
        ("temperature", "uint32"),
        ("inboundPrice", "uint256"),
        ("outboundPrice", "uint256"),
        ("nonce", "uint64"),
        ("deadline", "uint64"),
    ]
    message = {
        "executor": executor,
        "model": request["model"],
        "promptHash": keccak(text=request["prompt"]),
        "systemPromptHash": b"\0" * 32,
        "maxTokens": request["max_tokens"],
        "temperature": 0,
        "inboundPrice": int(request["inbound_price"]),
        "outboundPrice": int(request["outbound_price"]),
        "nonce": nonce,
        "deadline": deadline,
    }
    signable = encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "LlmRequestCommitment": [{"name": n, "type": t} for n, t in fields],
            },
            "primaryType": "LlmRequestCommitment",
            "domain": {"name": "Lloom Network", "version": "1.0.0", "chainId": CHAIN_ID, "verifyingContract": CONTRACT},
            "message": message,
        }
    )
    return keccak(b"\x19\x01" + signable.header + signable.body)


def test_settleable_request_is_verified_served_and_kept(loop_thread: interop.LoopThread, tmp_path: Path) -> None:
    client_key = _native.PrivateKey.generate()
    commitments = RequestCommitments(DOMAIN, ChainNonces(settled=4))
    with ledger_executor(loop_thread, tmp_path) as (node, ledger):

        async def ask() -> Any:
            async with LloomClient(
                client_key, enable_gossip=False, enable_kad=False, eip712_domain=DOMAIN, commitments=commitments
            ) as c:
                return await c.request(
                    node.addr, MODEL, "settle me", max_tokens=16, inbound_price="11", outbound_price="13", settle=True
                )

        answer = loop_thread.run(ask(), timeout=60)
        assert answer.ok, answer.error
        assert answer.request_nonce == 5  # the chain's next nonce, not a random one
        assert answer.receipt is not None and answer.receipt.valid, answer.receipt
        assert answer.receipt.request_hash == answer.commitment_hash  # the contract's requestHash check
        request = {"model": MODEL, "prompt": "settle me", "max_tokens": 16, "inbound_price": "11", "outbound_price": "13"}
        deadline = json.loads(ledger.entries(with_commitment=True)[-1]["client_commitment"])["deadline"]
        assert answer.commitment_hash == oracle_request_hash(node.evm_address, request, 5, deadline)
        row = ledger.entries(with_commitment=True)[-1]
        stored = json.loads(row["client_commitment"])
        signature = bytes.fromhex(stored["client_signature"][2:])
        assert Account._recover_hash(answer.commitment_hash, signature=signature).lower() == "0x" + client_key.address_bytes.hex()
        assert (stored["nonce"], stored["success"], stored["timestamp"]) == (5, True, row["receipt_timestamp"])
        assert commitments.nonces.held() == [5]  # served: held until settled or past its deadline


def test_bad_commitment_is_a_signed_refusal_and_frees_the_nonce(loop_thread: interop.LoopThread, tmp_path: Path) -> None:
    client_key = _native.PrivateKey.generate()
    with ledger_executor(loop_thread, tmp_path) as (node, ledger):
        ours = bytes.fromhex(node.evm_address[2:].lower())

        async def send(commitment: Any) -> Any:
            async with LloomClient(client_key, enable_gossip=False, enable_kad=False) as c:
                frame = _native.encode_signed_request(
                    client_key,
                    MODEL,
                    "p",
                    None,
                    None,
                    8,
                    node.peer_id,
                    "11",
                    "13",
                    1,
                    2**40,
                    __import__("time").time().__int__(),
                    None,
                    commitment,
                )
                raw = await c.send_frame(node.addr, bytes(frame))
                return _native.decode_response(raw)

        someone = _native.PrivateKey.generate()
        digest = bytes(DOMAIN.request_commitment_digest(ours, MODEL, "p", None, 8, 0.0, "11", "13", 1, 2**40))
        for commitment, problem in [
            ({"executor": ours, "signature": bytes(someone.sign_digest(digest))}, "does not recover"),
            ({"executor": b"\1" * 20, "signature": bytes(client_key.sign_digest(digest))}, "not this executor"),
            ({"executor": ours, "signature": b"\0" * 10}, "65 bytes"),
            ("junk", "must be a map"),
        ]:
            answer = loop_thread.run(send(commitment), timeout=60)
            assert answer.signature_valid and answer.error is not None and problem in answer.error, answer.error
            assert answer.error.startswith("invalid EIP-712 request commitment")
        good = loop_thread.run(send({"executor": ours, "signature": bytes(client_key.sign_digest(digest))}), timeout=60)
        assert good.error is None and good.content == "echo: p"
        assert ledger.entries(with_commitment=True)[-1]["client_commitment"] is not None

    nonces = ChainNonces(settled=7)
    first = nonces.take(deadline=2**40)
    nonces.release(first)  # refused: its nonce goes to the next request
    assert nonces.take(deadline=2**40) == first == 8
    assert nonces.take(deadline=1) == 9  # held only until its deadline ...
    assert nonces.take(deadline=2**40) == 9  # ... which has passed: 9 is free again (never settled)
    nonces.sync(9)
    assert nonces.held() == [] and nonces.take(deadline=2**40) == 10


def test_reference_executor_accepts_frames_with_a_commitment() -> None:
    """The rust reference-style executor's serde structs ignore the unknown envelope key."""
    try:
        binary = interop.interop_peer_binary()
    except interop.InteropBuildError as exc:
        pytest.fail(f"could not build the Rust interop peer:\n{exc}", pytrace=False)
    executor = interop.RustExecutor(binary)
    loop = interop.LoopThread()
    try:
        executor_evm = executor.listening["address"]
        commitments = RequestCommitments(DOMAIN)

        async def ask() -> Any:
            async with LloomClient(enable_gossip=False, enable_kad=False, commitments=commitments) as c:
                info_addr = executor.listening["addr"]
                from lloom_executor.client import ExecutorInfo

                peer = info_addr.rsplit("/p2p/", 1)
                target = ExecutorInfo(peer[1], [peer[0]], evm_address=executor_evm.lower())
                return await c.request(target, MODEL, "hello reference", inbound_price="1", outbound_price="1", settle=True)

        answer = loop.run(ask(), timeout=60)
        assert answer.ok and answer.content == "echo: hello reference", answer
        assert answer.commitment_hash is not None
        assert any(line.get("event") == "request" for line in executor.lines)
    finally:
        loop.close()
        executor.stop()
