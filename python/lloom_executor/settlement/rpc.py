"""A small async Ethereum JSON-RPC client over HTTP (httpx): only the calls settlement makes.

Failures come in two kinds the loop treats differently: `RpcUnavailable` (the
node cannot be reached, timed out, or answered something that is not JSON-RPC:
try again later, nothing is known) and `RpcError` (the node answered with an
error; `revert` holds the decoded revert reason when it was an execution revert).
Every call has the configured timeout, so a slow node costs the settlement loop
time, never the request path.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from .abi import revert_reason


class RpcUnavailable(Exception):
    """The node could not be asked (connection, timeout, HTTP error, not JSON-RPC)."""


class RpcError(Exception):
    """The node answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    @property
    def revert(self) -> str | None:
        """The revert reason of a failed execution (eth_call, eth_estimateGas), else None."""
        if isinstance(self.data, str) and self.data.startswith("0x"):
            try:
                reason = revert_reason(bytes.fromhex(self.data[2:]))
            except ValueError:
                reason = None
            if reason is not None:
                return reason
        if "revert" in self.message:
            return self.message.split("reverted:", 1)[-1].strip() if "reverted:" in self.message else self.message
        return None


def quantity(text: Any) -> int:
    return int(str(text), 16)


class EthRpc:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=timeout)
        self._ids = itertools.count(1)

    async def close(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, params: list[Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        try:
            response = await self._client.post(self.url, json=body)
            response.raise_for_status()
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise RpcUnavailable(f"{method}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(answer, dict):
            raise RpcUnavailable(f"{method}: not a JSON-RPC answer")
        if "error" in answer and answer["error"] is not None:
            error = answer["error"]
            raise RpcError(int(error.get("code", 0)), str(error.get("message", "")), error.get("data"))
        return answer.get("result")

    # -- the calls ----------------------------------------------------------------------------
    async def chain_id(self) -> int:
        return quantity(await self.request("eth_chainId", []))

    async def code(self, address: str) -> bytes:
        return bytes.fromhex(str(await self.request("eth_getCode", [address, "latest"]))[2:])

    async def latest_block(self) -> dict[str, Any]:
        block = await self.request("eth_getBlockByNumber", ["latest", False])
        if not isinstance(block, dict):
            raise RpcUnavailable("eth_getBlockByNumber: no latest block")
        return block

    async def block_number(self) -> int:
        return quantity(await self.request("eth_blockNumber", []))

    async def max_priority_fee(self) -> int:
        return quantity(await self.request("eth_maxPriorityFeePerGas", []))

    async def gas_price(self) -> int:
        return quantity(await self.request("eth_gasPrice", []))

    async def account_nonce(self, address: str, block: str = "pending") -> int:
        return quantity(await self.request("eth_getTransactionCount", [address, block]))

    async def call(self, sender: str, to: str, data: bytes) -> bytes:
        result = await self.request("eth_call", [{"from": sender, "to": to, "data": "0x" + data.hex()}, "latest"])
        return bytes.fromhex(str(result)[2:])

    async def estimate_gas(self, sender: str, to: str, data: bytes) -> int:
        return quantity(await self.request("eth_estimateGas", [{"from": sender, "to": to, "data": "0x" + data.hex()}]))

    async def send_raw(self, raw: bytes) -> str:
        return str(await self.request("eth_sendRawTransaction", ["0x" + raw.hex()]))

    async def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        result = await self.request("eth_getTransactionReceipt", [tx_hash])
        return result if isinstance(result, dict) else None

    async def transaction(self, tx_hash: str) -> dict[str, Any] | None:
        result = await self.request("eth_getTransactionByHash", [tx_hash])
        return result if isinstance(result, dict) else None
