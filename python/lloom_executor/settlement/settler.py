"""The settlement loop: served requests with both EIP-712 signatures -> `processRequestSigned`.

One asyncio task, every `poll_interval_secs`:
1. take on new served rows (`SettlementBook.scan`: pending, or unsettleable with the reason);
2. follow what was sent: a receipt `confirmations` blocks deep makes the row confirmed
   (status 1) or reverted (status 0, with the reason the node gives when the call is
   replayed); a transaction the node does not know is resent from its recorded bytes;
3. send what is pending, per client in client-nonce order and one transaction in flight per
   client: the row's deadline (expired), its value (`min_settle_value_wei`), the stored
   commitment against its request hash, the client's on-chain nonce (a gap waits until an
   earlier nonce settles or the row's deadline passes), then an `eth_call` simulation (a
   predictable revert costs no gas), gas estimate, fees (EIP-1559 under the
   `gas_price_gwei` cap, legacy where blocks have no base fee), the hourly gas budget,
   and the account nonce. The row is recorded as submitted with the signed bytes *before*
   they are sent.

Restart safety follows from that order: after a crash a submitted row's transaction is
found (receipt), or resent byte for byte (same hash, same account nonce: it can be mined
once at most), or found replaced (the account nonce went to another transaction: back to
pending). The contract itself refuses a second settlement of one client nonce.

Nothing here runs on the request path: the RPC node being down, slow or wrong only
makes this loop wait (`rpc_up` false in health and metrics, one warning per outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .. import _native
from ..config import BlockchainConfig
from ..ledger.settlements import PENDING, SUBMITTED, Settlement, SettlementBook
from . import abi
from .keys import SettlementError, check_chain, check_static
from .rpc import EthRpc, RpcError, RpcUnavailable, quantity
from .tx import Transaction

log = logging.getLogger(__name__)

GWEI = 10**9
GAS_HEADROOM = 1.25  # estimateGas is exact for the state it ran on; leave room for small changes
INVALID_NONCE = "Invalid nonce"


class Settler:
    """Settles one ledger's served requests on one AccountingV2 contract."""

    def __init__(
        self,
        config: BlockchainConfig,
        ledger_path: str | Path,
        executor_address: bytes,
        settlement_key: _native.PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
        fence: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """`fence`: on a clustered member, the Coordinator's leadership check, asked right before
        each transaction is signed or resent (None: a node that is not clustered always sends)."""
        check_static(config)
        self.config = config
        self.book = SettlementBook(ledger_path)
        self.rpc = EthRpc(config.rpc_url, config.rpc_timeout_secs)
        self.domain = _native.Eip712Domain(config.chain_id, config.contract_address)
        self.executor = executor_address
        self.key = settlement_key
        self.sender = settlement_key.address
        self.clock = clock
        self.fence = fence
        self.fenced = 0  # sends held back because this member was not (or no longer) the leader
        self.chain_checked = False
        self.rpc_up: bool | None = None  # None: not asked yet
        self.last_error: str | None = None
        self.sent = 0
        self.ticks = 0
        self._spent: deque[tuple[float, int]] = deque()  # (time, max fee x gas) of transactions sent
        self._next_account_nonce: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._snapshot: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the chain (a wrong chain id or no code at the contract refuses to start; an
        unreachable node is waited for: nothing is sent before the check passed), then run."""
        try:
            await self.check()
        except RpcUnavailable as exc:
            self._rpc_down(exc)
        await asyncio.to_thread(self.refresh)
        self._task = asyncio.create_task(self._run(), name="lloom-settlement")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.rpc.close()
        await asyncio.to_thread(self.book.close)

    async def check(self) -> None:
        await check_chain(self.rpc, self.config)
        self.chain_checked = True
        self._rpc_ok()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except RpcUnavailable as exc:
                self._rpc_down(exc)
            except SettlementError as exc:  # the chain changed under us (node switched chains)
                self.last_error = str(exc)
                log.error("settlement stopped sending: %s", exc)
            except Exception as exc:  # never let the loop die; say what failed
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("settlement tick failed")
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.refresh)
            await asyncio.sleep(self.config.poll_interval_secs)

    async def tick(self) -> None:
        """One pass: take on, follow, send. Public so tests and `settlement retry` can drive it."""
        if not self.chain_checked:
            await self.check()
        await asyncio.to_thread(self.book.scan)
        await self._follow()
        await self._send_pending()
        self._rpc_ok()
        self.ticks += 1

    def _rpc_ok(self) -> None:
        if self.rpc_up is False:
            log.info("settlement: the RPC node %s answers again", self.config.rpc_url)
        self.rpc_up = True

    def _rpc_down(self, exc: Exception) -> None:
        if self.rpc_up is not False:
            log.warning("settlement: the RPC node %s is unreachable (%s); waiting for it", self.config.rpc_url, exc)
        self.rpc_up = False
        self.last_error = f"RPC node unreachable: {exc}"

    # -- following sent transactions ----------------------------------------------------------
    async def _follow(self) -> None:
        rows = await asyncio.to_thread(self.book.in_state, SUBMITTED)
        if not rows:
            return
        head = await self.rpc.block_number()
        for row in rows:
            assert row.tx_hash is not None
            receipt = await self.rpc.receipt(row.tx_hash)
            if receipt is None:
                await self._not_mined(row)
                continue
            block = quantity(receipt["blockNumber"])
            if head - block + 1 < self.config.confirmations:
                continue
            gas_used = quantity(receipt.get("gasUsed", "0x0"))
            gas_cost = gas_used * quantity(receipt.get("effectiveGasPrice") or "0x0")
            if quantity(receipt.get("status", "0x0")) == 1:
                await asyncio.to_thread(self.book.confirmed, row.request_id, gas_used, gas_cost, block)
                log.info(
                    "settled request %d (client nonce %d) in block %d: %s", row.request_id, row.client_nonce, block, row.tx_hash
                )
            else:
                reason = await self._revert_reason(row, block)
                await asyncio.to_thread(self.book.reverted, row.request_id, reason, gas_used, gas_cost, block)
                self.last_error = f"request {row.request_id} reverted: {reason}"
                log.warning("settlement of request %d reverted in block %d: %s", row.request_id, block, reason)

    async def _not_mined(self, row: Settlement) -> None:
        """No receipt: still in the pool, or unknown to the node (sent before a crash and lost, or
        never sent): resend the recorded bytes, unless the account nonce went to another one."""
        if await self.rpc.transaction(row.tx_hash or "") is not None:
            return
        assert row.raw_tx is not None and row.account_nonce is not None
        mined_nonce = await self.rpc.account_nonce(self.sender, "latest")
        if mined_nonce > row.account_nonce:
            await asyncio.to_thread(self.book.back_to_pending, row.request_id, "its transaction was replaced; sending again")
            self._next_account_nonce = None
            return
        if not await self._may_send():
            return
        try:
            await self.rpc.send_raw(bytes.fromhex(row.raw_tx.removeprefix("0x")))
            log.info("resent the settlement transaction of request %d: %s", row.request_id, row.tx_hash)
        except RpcError as exc:
            if "known" not in exc.message.lower():
                await asyncio.to_thread(self.book.back_to_pending, row.request_id, f"resending failed: {exc.message}")
                self._next_account_nonce = None

    async def _revert_reason(self, row: Settlement, block: int) -> str:
        """The node's reason, by replaying the call on the state the transaction ran on."""
        data = self._calldata(row)
        try:
            await self.rpc.request(
                "eth_call", [{"from": self.sender, "to": self.config.contract_address, "data": "0x" + data.hex()}, hex(block - 1)]
            )
        except RpcError as exc:
            return exc.revert or exc.message
        except RpcUnavailable:
            pass
        return "reverted (no reason given)"

    # -- sending ----------------------------------------------------------------------------------
    def _calldata(self, row: Settlement) -> bytes:
        request, response = abi.commitments_of(row.commitment, self.executor, _addr(row.client_address), _addr(row.request_hash))
        return abi.process_request_signed(
            request, response, _addr(row.commitment["client_signature"]), _addr(row.receipt_signature)
        )

    async def _may_send(self) -> bool:
        """The epoch fence: a deposed leader must not sign or resend (docs/clustering.md)."""
        if self.fence is None or await self.fence():
            return True
        self.fenced += 1
        return False

    async def _send_pending(self) -> None:
        if not await self._may_send():
            return
        in_flight = {row.client_address for row in await asyncio.to_thread(self.book.in_state, SUBMITTED)}
        seen: set[str] = set()
        for row in await asyncio.to_thread(self.book.in_state, PENDING):
            now = self.clock()
            if now + self.config.deadline_margin_secs > row.deadline:
                await asyncio.to_thread(
                    self.book.expired, row.request_id, f"deadline {row.deadline} passed before it could be settled"
                )
                continue
            if row.client_address in seen or row.client_address in in_flight:
                continue  # one transaction per client at a time, lowest nonce first
            seen.add(row.client_address)
            await self._try_send(row)

    async def _try_send(self, row: Settlement) -> None:
        book = self.book
        if row.attempts >= self.config.max_attempts:
            await asyncio.to_thread(book.unsettleable, row.request_id, f"gave up after {row.attempts} transactions")
            return
        if row.total_cost < self.config.min_settle_value_wei:
            await asyncio.to_thread(book.unsettleable, row.request_id, "worth less than [blockchain] min_settle_value_wei")
            return
        try:
            request, _ = abi.commitments_of(row.commitment, self.executor, _addr(row.client_address), _addr(row.request_hash))
            data = self._calldata(row)
        except (KeyError, ValueError, TypeError) as exc:
            await asyncio.to_thread(book.unsettleable, row.request_id, f"stored commitment unusable: {exc}")
            return
        if abi.request_hash(self.domain, request) != _addr(row.request_hash):
            await asyncio.to_thread(
                book.unsettleable, row.request_id, "the stored commitment does not reproduce its request hash"
            )
            return
        on_chain = int.from_bytes(
            await self.rpc.call(self.sender, self.config.contract_address, abi.get_current_nonce(_addr(row.client_address))),
            "big",
        )
        if row.client_nonce <= on_chain:
            await asyncio.to_thread(
                book.unsettleable, row.request_id, f"client nonce {row.client_nonce} was already used on chain"
            )
            return
        if row.client_nonce > on_chain + 1:
            await asyncio.to_thread(book.note, row.request_id, f"waiting for client nonce {on_chain + 1} to be settled first")
            return
        try:
            gas = int(await self.rpc.estimate_gas(self.sender, self.config.contract_address, data) * GAS_HEADROOM)
        except RpcError as exc:  # the simulation: a revert here costs nothing
            await self._refused_in_simulation(row, exc)
            return
        fees = await self._fees()
        if fees is None:
            await asyncio.to_thread(book.note, row.request_id, "the base fee is above [blockchain] gas_price_gwei; waiting")
            return
        max_fee, tip = fees
        if not self._within_budget(gas * max_fee):
            await asyncio.to_thread(book.note, row.request_id, "this hour's gas budget is spent; waiting")
            return
        await self._submit(row, data, gas, max_fee, tip)

    async def _refused_in_simulation(self, row: Settlement, exc: RpcError) -> None:
        reason = exc.revert or exc.message
        if INVALID_NONCE in reason:
            await asyncio.to_thread(
                self.book.note, row.request_id, f"simulation: {reason}; waiting for the client's earlier nonce"
            )
        elif "expired" in reason.lower():
            await asyncio.to_thread(self.book.expired, row.request_id, f"the contract says: {reason}")
        else:
            await asyncio.to_thread(self.book.unsettleable, row.request_id, f"the contract refuses it: {reason}")

    async def _fees(self) -> tuple[int, int | None] | None:
        """(max fee per gas, priority fee; None: legacy) under the cap, or None: wait."""
        cap = int(self.config.gas_price_gwei * GWEI)
        block = await self.rpc.latest_block()
        base = block.get("baseFeePerGas")
        if base is None:
            price = min(await self.rpc.gas_price(), cap)
            return price, None
        base_fee = quantity(base)
        if base_fee >= cap:
            return None
        tip = min(await self.rpc.max_priority_fee(), cap - base_fee)
        return min(cap, 2 * base_fee + tip), tip

    def _within_budget(self, cost: int) -> bool:
        budget = self.config.gas_budget_gwei_per_hour * GWEI
        now = self.clock()
        while self._spent and self._spent[0][0] < now - 3600:
            self._spent.popleft()
        return not budget or sum(c for _, c in self._spent) + cost <= budget

    async def _submit(self, row: Settlement, data: bytes, gas: int, max_fee: int, tip: int | None) -> None:
        pending_nonce = await self.rpc.account_nonce(self.sender, "pending")
        nonce = max(pending_nonce, self._next_account_nonce or 0)
        if not await self._may_send():  # checked last, right before the transaction is signed and sent
            return
        raw, tx_hash = Transaction(
            self.config.chain_id, nonce, gas, _addr(self.config.contract_address), data, max_fee, tip
        ).sign(self.key)
        tx_hex = "0x" + tx_hash.hex()
        if not await asyncio.to_thread(self.book.submitted, row.request_id, tx_hex, "0x" + raw.hex(), nonce):
            return  # the row moved meanwhile (a `settlement retry` from another process)
        self._next_account_nonce = nonce + 1
        self._spent.append((self.clock(), gas * max_fee))
        self.sent += 1
        try:
            await self.rpc.send_raw(raw)
        except RpcUnavailable:
            raise  # recorded as submitted: the next pass resends the same bytes
        except RpcError as exc:
            if "known" not in exc.message.lower():
                self._next_account_nonce = None
                await asyncio.to_thread(self.book.back_to_pending, row.request_id, f"sending failed: {exc.message}")
                self.last_error = f"sending request {row.request_id} failed: {exc.message}"
                return
        log.info("sent the settlement of request %d (client nonce %d): %s", row.request_id, row.client_nonce, tx_hex)

    # -- what health and metrics read -------------------------------------------------------------
    def refresh(self) -> None:
        """Worker thread: the counts from the ledger, cached for cheap reads."""
        oldest = self.book.oldest_pending()
        self._snapshot = {
            "states": self.book.counts(),
            "oldest_pending_secs": round(self.clock() - oldest, 1) if oldest is not None else None,
            "gas_spent_wei": self.book.gas_spent(),
        }

    def snapshot(self) -> dict[str, Any]:
        """What /health/detailed shows (no I/O)."""
        return {
            "enabled": True,
            "contract": self.config.contract_address,
            "chain_id": self.config.chain_id,
            "sender": self.sender,
            "rpc_up": self.rpc_up,
            "chain_checked": self.chain_checked,
            "transactions_sent": self.sent,
            **({"fenced": self.fenced} if self.fence is not None else {}),
            "last_error": self.last_error,
            **self._snapshot,
        }


def _addr(text: str) -> bytes:
    return bytes.fromhex(text.removeprefix("0x"))
