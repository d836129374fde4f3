"""Settlement end to end on a real EVM: our client (EIP-712 signatures) -> our executor over libp2p
-> the settlement loop -> AccountingV2 (contracts/AccountingV2.vy on py-evm, tests/evm_rig.py).

The contract's `getUsageRecord`, `executorStats` and `clientStats` are read with
eth-abi and compared with the executor's ledger; the start-up checks refuse a wrong
chain, a contract address without code and the example config's zero address.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from evm_rig import EvmRig
from lloom_executor import _native
from lloom_executor.client import ChainNonces, LloomClient, RequestCommitments
from lloom_executor.config import BlockchainConfig, Config, ConfigError
from lloom_executor.identity import load_identity
from lloom_executor.ledger import Ledger
from lloom_executor.ledger.settlements import DUPLICATE_HASH, NO_COMMITMENT, SettlementBook
from lloom_executor.service import ExecutorService
from lloom_executor.settlement import SettlementError, check_static
from service_rig import echo_service_config, samples, until

USAGE_RECORD = "(bytes32,address,address,string,uint256,uint256,uint256,uint256,uint256,uint64,uint64,bool,uint256)"


@pytest.fixture(scope="module")
def chain() -> Any:
    rig = EvmRig()
    contract = rig.deploy()
    try:
        yield rig, contract
    finally:
        rig.close()


def settling_config(tmp_path: Path, rig: EvmRig, contract: str, *, with_key: bool = True, **blockchain: Any) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    key = _native.PrivateKey.generate()
    (tmp_path / "settlement_key").write_text(key.to_hex())
    (tmp_path / "settlement_key").chmod(0o600)
    rig.fund(key.address, 10**20)
    section: dict[str, Any] = {
        "enabled": True,
        "rpc_url": rig.url,
        "chain_id": rig.chain_id,
        "contract_address": contract,
        "gas_price_gwei": 50,
        "settlement_key_file": str(tmp_path / "settlement_key"),
        "confirmations": 1,
        "poll_interval_secs": 0.05,
        **blockchain,
    }
    if not with_key:
        del section["settlement_key_file"]
    return echo_service_config(tmp_path, blockchain=section, api={"enabled": True, "listen_address": "127.0.0.1:0"})


def test_settled_requests_follow_from_the_client_call_to_the_contract_record(tmp_path: Path, chain: Any) -> None:
    rig, contract = chain
    config = settling_config(tmp_path, rig, contract)
    domain = _native.Eip712Domain(rig.chain_id, contract)

    async def scenario() -> dict[str, Any]:
        service = ExecutorService(config, load_identity(config.identity, environ={}))
        addrs = await service.start()
        peer = next(a for a in addrs if "127.0.0.1" in a)
        clients = [
            LloomClient(
                enable_gossip=False, enable_kad=False, eip712_domain=domain, commitments=RequestCommitments(domain, ChainNonces())
            )
            for _ in range(2)
        ]
        try:
            for c in clients:
                await c.start()
            answers = []
            for round_ in range(2):  # interleaved: a, b, a, b
                for i, c in enumerate(clients):
                    answers.append(
                        await c.request(
                            peer,
                            "m",
                            f"prompt {i}/{round_}",
                            max_tokens=16,
                            inbound_price="1000000000000",
                            outbound_price="2000000000000",
                            settle=True,
                        )
                    )
            reference = await clients[0].request(
                peer, "m", "no EIP-712 here", inbound_price="1000000000000", outbound_price="2000000000000"
            )
            book = SettlementBook(service.ledger.path)
            try:
                await until(
                    lambda: book.counts()["confirmed"] == 4 and book.counts()["unsettleable"] == 1, "four settled", timeout=30
                )
            finally:
                book.close()
            await until(
                lambda: (service.settlement_status() or {}).get("states", {}).get("confirmed") == 4, "health refreshed", timeout=5
            )
            assert service.api is not None
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{service.api.url}/health/detailed")).json()
            scrape = samples(generate_latest(service.metrics.registry).decode())
            return {
                "answers": answers,
                "reference": reference,
                "clients": [c.address for c in clients],
                "rows": service.ledger.entries(with_commitment=True),
                "executor": service.identity.address,
                "health": health,
                "scrape": scrape,
            }
        finally:
            for c in clients:
                await c.stop()
            await service.stop()

    r = asyncio.run(scenario())
    assert all(a.ok and a.receipt is not None and a.receipt.valid for a in r["answers"])
    assert [a.request_nonce for a in r["answers"]] == [1, 1, 2, 2]
    assert r["reference"].ok and r["reference"].commitment_hash is None
    rows = {row["request_hash"]: row for row in r["rows"]}
    for answer in r["answers"]:  # the contract's record equals the ledger row, request by request
        row = rows["0x" + answer.commitment_hash.hex()]
        (record,) = rig.call(contract, "getUsageRecord(bytes32)", [answer.commitment_hash], [USAGE_RECORD])
        assert record[0] == answer.commitment_hash
        assert (record[1].lower(), record[2].lower()) == (r["executor"].lower(), row["client_address"])
        assert (record[3], record[4], record[5]) == ("m", row["inbound_tokens"], row["outbound_tokens"])
        assert (record[6], record[7], record[8]) == (
            int(row["inbound_price"]),
            int(row["outbound_price"]),
            int(row["total_cost"]),
        )
        assert record[9] == answer.request_nonce and record[10] == row["receipt_timestamp"]
    settled_rows = [row for row in r["rows"] if row["client_commitment"]]
    expected = (
        4,
        sum(row["inbound_tokens"] for row in settled_rows),
        sum(row["outbound_tokens"] for row in settled_rows),
        sum(int(row["total_cost"]) for row in settled_rows),
    )
    assert rig.call(contract, "executorStats(address)", [r["executor"]], ["uint256"] * 4) == expected
    for client in r["clients"]:
        mine = [row for row in settled_rows if row["client_address"] == client]
        assert rig.call(contract, "getCurrentNonce(address)", [client], ["uint256"]) == (2,)
        stats = rig.call(contract, "clientStats(address)", [client], ["uint256"] * 4)
        assert stats == (
            2,
            sum(x["inbound_tokens"] for x in mine),
            sum(x["outbound_tokens"] for x in mine),
            sum(int(x["total_cost"]) for x in mine),
        )
    settlement = r["health"]["settlement"]
    assert settlement["rpc_up"] is True and settlement["chain_checked"] is True
    assert settlement["states"]["confirmed"] == 4 and settlement["states"]["unsettleable"] == 1
    assert settlement["gas_spent_wei"] > 0
    assert r["scrape"][("lloom_executor_settlement_requests", frozenset({("state", "confirmed")}))] == 4
    assert r["scrape"][("lloom_executor_settlement_rpc_up", frozenset())] == 1


def test_start_refuses_wrong_chain_missing_code_and_zero_address(tmp_path: Path, chain: Any) -> None:
    rig, contract = chain
    before = len(rig.calls)

    async def start(config: Config) -> None:
        service = ExecutorService(config, load_identity(config.identity, environ={}))
        try:
            await service.start()
        finally:
            if service.started_at is not None:
                await service.stop()

    with pytest.raises(SettlementError, match="not \\[blockchain\\] chain_id"):
        asyncio.run(start(settling_config(tmp_path / "a", rig, contract, chain_id=rig.chain_id + 1)))
    with pytest.raises(SettlementError, match="no contract code"):
        asyncio.run(start(settling_config(tmp_path / "b", rig, "0x" + "77" * 20)))
    # the example config's defaults (chain 1, zero address): refused by the config rules, and by
    # the settlement itself for a config built without them
    with pytest.raises(ConfigError, match="zero address"):
        settling_config(tmp_path / "c", rig, "0x" + "00" * 20)
    with pytest.raises(SettlementError, match="zero address"):
        check_static(BlockchainConfig(enabled=True))
    assert "eth_sendRawTransaction" not in rig.calls[before:]  # nothing was ever sent


def test_a_key_is_needed_and_must_not_be_the_identity(tmp_path: Path, chain: Any) -> None:
    rig, contract = chain
    without = settling_config(tmp_path / "none", rig, contract, with_key=False)
    with pytest.raises(SettlementError, match="settlement key"):
        ExecutorService(without, load_identity(without.identity, environ={}))
    config = settling_config(tmp_path, rig, contract)
    identity_key = (tmp_path / "eth_key").read_text()
    (tmp_path / "settlement_key").write_text(identity_key)
    with pytest.raises(SettlementError, match="must not be the node's identity key"):
        ExecutorService(config, load_identity(config.identity, environ={}))


def test_ledger_rows_without_commitment_say_why(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        from lloom_executor.ledger import LedgerEntry

        ledger.record(LedgerEntry(status="served", model="m", request_hash=b"\1" * 32))
        book = SettlementBook(ledger.path)
        try:
            assert book.scan() == 1
            assert book.counts()["unsettleable"] == 1
            assert book.rows()[0]["reason"] == NO_COMMITMENT
            assert book.retry() == 0  # nothing can settle it: it stays
            # two clients' identical requests share one commitment hash (it names no client):
            # the contract keeps one record per hash, so only the first can be settled
            commitment = json.dumps({"nonce": 1, "deadline": 2**40})
            for client in ("0x" + "aa" * 20, "0x" + "bb" * 20):
                ledger.record(
                    LedgerEntry(
                        status="served", model="m", client_address=client, request_hash=b"\2" * 32, client_commitment=commitment
                    )
                )
            assert book.scan() == 2
            states = {row["client_address"]: (row["state"], row["reason"]) for row in book.rows(limit=2)}
            assert states["0x" + "aa" * 20] == ("pending", None)
            assert states["0x" + "bb" * 20] == ("unsettleable", DUPLICATE_HASH)
        finally:
            book.close()
