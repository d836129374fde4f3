"""Every settlement state on a real EVM, with the loop driven one pass at a time (`Settler.tick`).

The ledger rows come from the real request path (our client -> our executor over
libp2p -> ledger); the settlement loop runs against the py-evm chain behind
tests/evm_rig.py, which can stop answering (the RPC node down), stop mining (a
transaction sent but not mined: the executor killed before its receipt) and move
its clock (a deadline passing between simulation and mining: a reverted
transaction). The settlement loop's own clock is injected where a deadline has to
pass (`clock=`), so no test sleeps for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import interop
from evm_rig import EvmRig
from interop import INBOUND_PRICE_WEI, MODEL, OUTBOUND_PRICE_WEI
from lloom_executor import _native
from lloom_executor.backends import EchoBackend
from lloom_executor.client import Answer, ChainNonces, LloomClient, RequestCommitments
from lloom_executor.config import BlockchainConfig, ModelConfig, NetworkConfig, RequestHandlingConfig
from lloom_executor.ledger import Ledger
from lloom_executor.ledger.settlements import SettlementBook
from lloom_executor.p2p.bootstrap import BootstrapService
from lloom_executor.p2p.node import P2PNode
from lloom_executor.serving import build_request_handler
from lloom_executor.settlement import RpcUnavailable, Settler


class Bench:
    """One chain + contract, one executor (handler + ledger over libp2p), a funded settlement key."""

    def __init__(self, loop_thread: interop.LoopThread, tmp_path: Path) -> None:
        self.rig = EvmRig()
        self.contract = self.rig.deploy()
        self.domain = _native.Eip712Domain(self.rig.chain_id, self.contract)
        self.loop = loop_thread
        self.key = _native.PrivateKey.generate()
        self.ledger = Ledger(tmp_path / "ledger.sqlite3")
        configs = [ModelConfig(MODEL, inbound_price_wei=INBOUND_PRICE_WEI, outbound_price_wei=OUTBOUND_PRICE_WEI)]
        handler = build_request_handler(self.key, configs, EchoBackend([MODEL]), receipt_domain=self.domain, ledger=self.ledger)
        self.node_p2p = P2PNode(
            self.key,
            NetworkConfig(listen_address=("/ip4/127.0.0.1/tcp/0",)),
            RequestHandlingConfig(),
            handler,
            [BootstrapService()],
        )
        self.node = interop.ExecutorNode(self.node_p2p, handler, loop_thread, loop_thread.run(self.node_p2p.start(), timeout=40))
        self.settlement_key = _native.PrivateKey.generate()
        self.rig.fund(self.settlement_key.address, 10**20)
        self.now = time.time()
        self._keys: dict[int, _native.PrivateKey] = {}  # one client key per RequestCommitments

    def config(self, **over: Any) -> BlockchainConfig:
        values: dict[str, Any] = {
            "enabled": True,
            "rpc_url": self.rig.url,
            "chain_id": self.rig.chain_id,
            "contract_address": self.contract,
            "gas_price_gwei": 50.0,
            "confirmations": 1,
            "deadline_margin_secs": 5,
            **over,
        }
        return BlockchainConfig(**values)

    def settler(self, **over: Any) -> Settler:
        return Settler(
            self.config(**over), self.ledger.path, bytes(self.key.address_bytes), self.settlement_key, clock=lambda: self.now
        )

    def client(self, nonces: ChainNonces | None = None) -> RequestCommitments:
        return RequestCommitments(self.domain, nonces or ChainNonces())

    def ask(
        self, commitments: RequestCommitments, prompt: str, *, settle: bool = True, deadline_secs: int | None = None
    ) -> Answer:
        async def run() -> Answer:
            async with LloomClient(
                self.client_key(commitments), enable_gossip=False, enable_kad=False, commitments=commitments
            ) as c:
                return await c.request(
                    self.node.addr,
                    MODEL,
                    prompt,
                    max_tokens=8,
                    inbound_price="7",
                    outbound_price="9",
                    settle=settle,
                    deadline_secs=deadline_secs,
                )

        answer = self.loop.run(run(), timeout=60)
        assert answer.ok, answer.error
        return answer

    def client_key(self, commitments: RequestCommitments) -> _native.PrivateKey:
        return self._keys.setdefault(id(commitments), _native.PrivateKey.generate())

    def address_of(self, commitments: RequestCommitments) -> str:
        return self.client_key(commitments).address

    def tick(self, settler: Settler, times: int = 1) -> None:
        for _ in range(times):
            self.loop.run(settler.tick(), timeout=30)

    def stop(self, settler: Settler) -> None:
        self.loop.run(settler.stop(), timeout=30)

    def states(self) -> dict[int, str]:
        book = SettlementBook(self.ledger.path)
        try:
            return {row["request_id"]: row["state"] for row in book.rows(limit=1000)}
        finally:
            book.close()

    def rows(self) -> list[dict[str, Any]]:
        book = SettlementBook(self.ledger.path)
        try:
            return book.rows(limit=1000)
        finally:
            book.close()

    def chain_nonce(self, commitments: RequestCommitments) -> int:
        return int(self.rig.call(self.contract, "getCurrentNonce(address)", [self.address_of(commitments)], ["uint256"])[0])

    def close(self) -> None:
        self.node.stop()
        self.ledger.close()
        self.rig.close()


@pytest.fixture
def bench(loop_thread: interop.LoopThread, tmp_path: Path) -> Iterator[Bench]:
    b = Bench(loop_thread, tmp_path)
    try:
        yield b
    finally:
        b.close()


@contextlib.contextmanager
def running(bench: Bench, **over: Any) -> Iterator[Settler]:
    settler = bench.settler(**over)
    try:
        yield settler
    finally:
        bench.stop(settler)


def test_a_nonce_gap_waits_and_closes_later(bench: Bench) -> None:
    nonces = ChainNonces()
    alice = bench.client(nonces)
    held = nonces.take(deadline=int(time.time()) + 3600)  # nonce 1 is held by a request sent elsewhere
    second = bench.ask(alice, "second")
    assert (held, second.request_nonce) == (1, 2)
    with running(bench) as settler:
        bench.tick(settler, 3)
        (row,) = bench.rows()
        assert row["state"] == "pending" and "waiting for client nonce 1" in row["reason"]
        nonces.release(held)  # that request never happened: nonce 1 goes to the next one
        first = bench.ask(alice, "first")
        assert first.request_nonce == 1
        bench.tick(settler, 4)
    assert sorted(bench.states().values()) == ["confirmed", "confirmed"]
    assert bench.chain_nonce(alice) == 2


def test_a_gap_that_never_closes_expires_at_the_deadline(bench: Bench) -> None:
    nonces = ChainNonces()
    alice = bench.client(nonces)
    nonces.take(deadline=int(time.time()) + 3600)
    answer = bench.ask(alice, "stuck", deadline_secs=120)
    with running(bench) as settler:
        bench.tick(settler)
        assert bench.rows()[0]["state"] == "pending"
        bench.now = time.time() + 120  # the deadline (minus the 5 s margin) has passed
        bench.tick(settler)
    (row,) = bench.rows()
    assert row["state"] == "expired" and "deadline" in row["reason"], row
    assert answer.request_nonce == 2 and bench.chain_nonce(alice) == 0


def test_rpc_node_stopped_and_restarted_mid_batch(bench: Bench) -> None:
    clients = [bench.client() for _ in range(3)]
    for i, c in enumerate(clients):  # distinct prompts: identical requests would share one commitment hash
        bench.ask(c, f"batch {i}")
    with running(bench) as settler:
        bench.rig.unavailable.add("eth_sendRawTransaction")  # the node fails while the batch is sent
        with pytest.raises(RpcUnavailable):
            bench.loop.run(settler.tick(), timeout=30)
        assert sorted(bench.states().values()) == ["pending", "pending", "submitted"], [
            r["reason"] for r in bench.rows()
        ]  # recorded before sending
        bench.rig.stop_rpc()  # ... and then goes away entirely
        with pytest.raises(RpcUnavailable):
            bench.loop.run(settler.tick(), timeout=30)
        bench.rig.unavailable.clear()
        bench.rig.start_rpc()  # back on the same port
        bench.tick(settler, 4)
        assert settler.rpc_up is True
    assert sorted(bench.states().values()) == ["confirmed"] * 3
    assert [bench.chain_nonce(c) for c in clients] == [1, 1, 1]
    assert all(row["attempts"] == 1 for row in bench.rows())  # the unsent one went out with its recorded bytes


def test_executor_killed_between_send_and_receipt(bench: Bench) -> None:
    alice = bench.client()
    bench.ask(alice, "one")
    bench.rig.set_auto_mine(False)
    first = bench.settler()
    bench.tick(first)
    ((request_id, state),) = bench.states().items()
    assert state == "submitted"
    bench.stop(first)  # the process is gone before the receipt: only the ledger remembers
    bench.rig.mine()
    bench.rig.set_auto_mine(True)
    with running(bench) as second:
        bench.tick(second, 2)
    (row,) = bench.rows()
    assert row["state"] == "confirmed" and row["attempts"] == 1
    assert bench.chain_nonce(alice) == 1
    assert bench.rig.calls.count("eth_sendRawTransaction") == 1  # settled once, never sent twice


def test_a_transaction_that_reverts_on_chain(bench: Bench) -> None:
    alice = bench.client()
    answer = bench.ask(alice, "late", deadline_secs=600)
    bench.rig.set_auto_mine(False)
    with running(bench) as settler:
        bench.tick(settler)  # simulation passed, transaction sent
        assert list(bench.states().values()) == ["submitted"]
        deadline = int(json.loads(bench.ledger.entries(with_commitment=True)[-1]["client_commitment"])["deadline"])
        bench.rig.time_travel(deadline + 10)  # the chain's clock passes the deadline before it is mined
        bench.rig.mine()
        bench.rig.set_auto_mine(True)
        bench.tick(settler, 2)
        snapshot = settler.snapshot()
    (row,) = bench.rows()
    assert row["state"] == "reverted" and "Request expired" in row["reason"], row
    assert answer.request_nonce == 1 and bench.chain_nonce(alice) == 0
    assert "reverted" in (snapshot["last_error"] or "")


def test_reference_style_request_stays_unsettleable(bench: Bench) -> None:
    alice = bench.client()
    bench.ask(alice, "plain", settle=False)
    with running(bench) as settler:
        bench.tick(settler, 2)
    (row,) = bench.rows()
    assert row["state"] == "unsettleable" and "no client EIP-712 signature" in row["reason"]
    assert "eth_sendRawTransaction" not in bench.rig.calls


def settlement_cli(bench: Bench, *args: str) -> Any:
    """`lloom-executor settlement ...` on the bench's ledger (in-process, click's runner)."""
    from click.testing import CliRunner

    from lloom_executor.cli import main

    config = bench.ledger.path.parent / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{bench.ledger.path.parent}"\n')
    result = CliRunner().invoke(main, ["settlement", *args, "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.output


def test_retry_puts_an_expired_row_back(bench: Bench) -> None:
    nonces = ChainNonces()
    alice = bench.client(nonces)
    nonces.take(deadline=int(time.time()) + 3600)
    bench.ask(alice, "gap")
    with running(bench) as settler:
        bench.now = time.time() + 10**6
        bench.tick(settler)
        assert list(bench.states().values()) == ["expired"]
        status = json.loads(settlement_cli(bench, "status", "--json"))
        assert status["states"]["expired"] == 1 and status["last_problem"]["state"] == "expired"
        assert "1 row back to pending" in settlement_cli(bench, "retry", "--state", "expired")
        assert list(bench.states().values()) == ["pending"]
        assert "pending       1" in settlement_cli(bench, "status")
        bench.tick(settler)
    assert list(bench.states().values()) == ["expired"]  # checked again: still past its deadline
    assert asyncio.iscoroutinefunction(Settler.tick)


def test_recheck_settles_for_a_stopped_executor(bench: Bench) -> None:
    """`settlement recheck`: one pass from the command line, with the node's key files and the
    settlement key from LLOOM_SETTLEMENT_KEY."""
    from click.testing import CliRunner

    from lloom_executor.cli import main

    bench.ask(bench.client(), "later")
    home = bench.ledger.path.parent
    for name in ("identity_key", "eth_key"):
        (home / name).write_text(bench.key.to_hex())
        (home / name).chmod(0o600)
    config = home / "recheck.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{home}"\n'
        f'[identity]\nprivate_key_path = "{home / "identity_key"}"\nethereum_private_key_path = "{home / "eth_key"}"\n'
        f'[blockchain]\nenabled = true\nrpc_url = "{bench.rig.url}"\nchain_id = {bench.rig.chain_id}\n'
        f'contract_address = "{bench.contract}"\ngas_price_gwei = 50\nconfirmations = 1\n'
    )
    env = {"LLOOM_SETTLEMENT_KEY": bench.settlement_key.to_hex()}
    for _ in range(2):  # send, then see it confirmed
        result = CliRunner().invoke(main, ["settlement", "recheck", "--config", str(config)], env=env)
        assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["states"]["confirmed"] == 1
    assert list(bench.states().values()) == ["confirmed"]


def test_rpc_down_at_start_is_waited_for_and_shows_in_health(bench: Bench) -> None:
    bench.ask(bench.client(), "wait for the node")
    bench.rig.stop_rpc()
    settler = bench.settler(poll_interval_secs=0.05)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        await settler.start()  # the node is down: start goes on, nothing is sent
        down = settler.snapshot()
        bench.rig.start_rpc()
        deadline = time.monotonic() + 20
        while settler.snapshot().get("states", {}).get("confirmed") != 1:
            assert time.monotonic() < deadline, settler.snapshot()
            await asyncio.sleep(0.02)
        return down, settler.snapshot()

    try:
        down, up = bench.loop.run(scenario(), timeout=40)
    finally:
        bench.stop(settler)
    assert down["rpc_up"] is False and down["chain_checked"] is False and "unreachable" in down["last_error"]
    assert down["states"]["pending"] == 0 and down["states"]["submitted"] == 0  # not even taken on yet
    assert up["rpc_up"] is True and up["chain_checked"] is True and up["transactions_sent"] == 1


def test_value_floor_fee_cap_and_gas_budget_hold_rows_back(bench: Bench) -> None:
    alice, bob = bench.client(), bench.client()
    bench.ask(alice, "cheap")  # 7 wei in, 9 wei out per token: worth far less than the floor below
    with running(bench, min_settle_value_wei=10**18) as settler:
        bench.tick(settler)
    assert bench.rows()[0]["reason"] == "worth less than [blockchain] min_settle_value_wei"
    bench.ask(bob, "capped")
    with running(bench, gas_price_gwei=0.5) as settler:  # the base fee (1 gwei here) is above the cap
        bench.tick(settler)
    waiting = next(row for row in bench.rows() if row["state"] == "pending")
    assert "base fee is above" in waiting["reason"]
    with running(bench, gas_budget_gwei_per_hour=1000) as settler:  # far below one settlement's gas x max fee
        bench.tick(settler)
    waiting = next(row for row in bench.rows() if row["state"] == "pending")
    assert "gas budget" in waiting["reason"]
    with running(bench) as settler:
        bench.tick(settler, 2)
    assert sorted(bench.states().values()) == ["confirmed", "unsettleable"]
    assert "eth_sendRawTransaction" in bench.rig.calls and bench.rig.calls.count("eth_sendRawTransaction") == 1
