"""A real EVM for the settlement tests: py-evm (through eth-tester) behind an HTTP JSON-RPC endpoint.

eth-tester runs in-process, and the executor under test talks to a chain only
through `[blockchain] rpc_url`, so this rig serves the standard JSON-RPC methods
the settlement loop uses on a loopback port, translating each to an
`EthereumTester` call and its answer to the wire form (hex quantities, camelCase
keys, reverts as error code 3 with the ABI-encoded `Error(string)` in `data`, as
geth answers). The endpoint can be stopped and started again on the same port
while the chain keeps its state (an RPC node going down mid-batch), mining can be
switched to manual (a transaction sent but not yet in a block), and the chain's
clock can be moved (deadlines passing).

Only the test environment needs eth-tester[py-evm] and web3 (pyproject's [test]
extras, CPython 3.11); the package itself never imports them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import BlockNotFound, TransactionFailed, TransactionNotFound
from eth_utils import keccak

ARTIFACT = Path(__file__).resolve().parent.parent / "contracts" / "AccountingV2.json"
ERROR_SELECTOR = keccak(text="Error(string)")[:4]


def load_artifact() -> dict[str, Any]:
    return json.loads(ARTIFACT.read_text())


def _q(value: int | None) -> str | None:
    return None if value is None else hex(int(value))


def _hexdata(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    return str(value) if value else "0x"


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _revert_error(exc: TransactionFailed) -> RpcError:
    """eth-tester's TransactionFailed as geth's answer: code 3, `execution reverted: <reason>`."""
    raw = exc.args[0] if exc.args else ""
    if isinstance(raw, (bytes, bytearray)) or (isinstance(raw, str) and raw.startswith(("0x", "b'"))):
        text = raw if isinstance(raw, str) else "0x" + bytes(raw).hex()
        if text.startswith("b'"):
            text = "0x"
        data = bytes.fromhex(text[2:]) if text.startswith("0x") else b""
        reason = abi_decode(["string"], data[4:])[0] if data[:4] == ERROR_SELECTOR else ""
    else:
        reason = str(raw).removeprefix("execution reverted: ")
        data = ERROR_SELECTOR + abi_encode(["string"], [reason])
    message = f"execution reverted: {reason}" if reason else "execution reverted"
    return RpcError(3, message, "0x" + data.hex())


class EvmRig:
    """One chain and its JSON-RPC endpoint. `url` stays the same across stop/start."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.tester = EthereumTester(PyEVMBackend())
        self.chain_id = int(self.tester.backend.chain.chain_id)
        self.funder = self.tester.get_accounts()[0]
        self.host = host
        self.port = 0
        self.calls: list[str] = []  # methods served, in order (tests read what the executor asked)
        self.unavailable: set[str] = set()  # methods whose requests get no answer (a node failing mid-batch)
        self._lock = threading.Lock()  # eth-tester is not thread-safe
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.start_rpc()

    # -- the endpoint -------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start_rpc(self) -> None:
        rig = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    answer = json.dumps(rig.handle(json.loads(body))).encode()
                except ConnectionAbortedError:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="evm-rig-rpc", daemon=True)
        self._thread.start()

    def stop_rpc(self) -> None:
        """The RPC node goes away (connections refused); the chain keeps its state."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.stop_rpc()

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        method, params = request.get("method", ""), request.get("params") or []
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": request.get("id")}
        handler: Callable[..., Any] | None = getattr(self, "rpc_" + method, None)
        if method in self.unavailable:
            raise ConnectionAbortedError(method)  # the HTTP handler drops the connection: no answer
        with self._lock:
            self.calls.append(method)
            try:
                if handler is None:
                    raise RpcError(-32601, f"the method {method} does not exist/is not available")
                answer["result"] = handler(*params)
            except RpcError as exc:
                answer["error"] = {"code": exc.code, "message": exc.message, **({"data": exc.data} if exc.data else {})}
            except TransactionFailed as exc:
                err = _revert_error(exc)
                answer["error"] = {"code": err.code, "message": err.message, "data": err.data}
            except Exception as exc:  # what a node answers for input it cannot use
                answer["error"] = {"code": -32000, "message": str(exc)}
        return answer

    # -- JSON-RPC methods -----------------------------------------------------------------
    def rpc_eth_chainId(self) -> str:  # noqa: N802
        return hex(self.chain_id)

    def rpc_net_version(self) -> str:
        return str(self.chain_id)

    def rpc_eth_blockNumber(self) -> str:  # noqa: N802
        return hex(self.tester.get_block_by_number("latest")["number"])

    def rpc_eth_getBlockByNumber(self, number: str, full: bool = False) -> dict[str, Any] | None:  # noqa: N802
        block_id: Any = number if number in ("latest", "pending", "earliest", "safe", "finalized") else int(number, 16)
        try:
            b = self.tester.get_block_by_number(block_id)
        except BlockNotFound:
            return None
        return {
            "number": _q(b["number"]),
            "hash": b["hash"],
            "timestamp": _q(b["timestamp"]),
            "gasLimit": _q(b["gas_limit"]),
            "gasUsed": _q(b["gas_used"]),
            "baseFeePerGas": _q(b.get("base_fee_per_gas")),
        }

    def rpc_eth_getCode(self, address: str, block: str = "latest") -> str:  # noqa: N802
        return _hexdata(self.tester.get_code(address))

    def rpc_eth_getBalance(self, address: str, block: str = "latest") -> str:  # noqa: N802
        return hex(self.tester.get_balance(address))

    def rpc_eth_getTransactionCount(self, address: str, block: str = "latest") -> str:  # noqa: N802
        if block == "pending":
            return hex(self.tester.get_nonce(address, "pending"))
        return hex(self.tester.get_nonce(address))

    def rpc_eth_gasPrice(self) -> str:  # noqa: N802
        return hex(int(self.tester.get_block_by_number("latest")["base_fee_per_gas"]) + 10**9)

    def rpc_eth_maxPriorityFeePerGas(self) -> str:  # noqa: N802
        return hex(10**9)

    def _tx(self, tx: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "from": tx.get("from") or self.funder,
            "to": tx["to"],
            "data": tx.get("data") or tx.get("input", "0x"),
        }
        if "gas" in tx:
            out["gas"] = int(tx["gas"], 16)
        return out

    def rpc_eth_call(self, tx: dict[str, Any], block: str = "latest") -> str:  # noqa: N802
        at: Any = int(block, 16) if block.startswith("0x") else block
        return _hexdata(self.tester.call(self._tx(tx), at))

    def rpc_eth_estimateGas(self, tx: dict[str, Any], block: str = "latest") -> str:  # noqa: N802
        return hex(self.tester.estimate_gas(self._tx(tx), block))

    def rpc_eth_sendRawTransaction(self, raw: str) -> str:  # noqa: N802
        return str(self.tester.send_raw_transaction(raw))

    def rpc_eth_getTransactionByHash(self, tx_hash: str) -> dict[str, Any] | None:  # noqa: N802
        try:
            tx = self.tester.get_transaction_by_hash(tx_hash)
        except TransactionNotFound:
            return None
        return {
            "hash": tx["hash"],
            "nonce": _q(tx["nonce"]),
            "from": tx["from"],
            "to": tx["to"],
            "blockNumber": _q(tx.get("block_number")),
        }

    def rpc_eth_getTransactionReceipt(self, tx_hash: str) -> dict[str, Any] | None:  # noqa: N802
        try:
            r = self.tester.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None
        if r is None or r.get("block_number") is None:
            return None
        return {
            "transactionHash": r["transaction_hash"],
            "blockNumber": _q(r["block_number"]),
            "blockHash": r["block_hash"],
            "status": _q(r["status"]),
            "gasUsed": _q(r["gas_used"]),
            "effectiveGasPrice": _q(r["effective_gas_price"]),
            "contractAddress": r.get("contract_address") or None,
        }

    # -- what tests do to the chain ----------------------------------------------------------
    def deploy(self, artifact: dict[str, Any] | None = None) -> str:
        """Deploy (AccountingV2 by default); returns the contract's checksummed address."""
        artifact = artifact or load_artifact()
        with self._lock:
            tx_hash = self.tester.send_transaction({"from": self.funder, "data": artifact["bytecode"], "gas": 5_000_000})
            if not self.tester.auto_mine_transactions:
                self.tester.mine_blocks(1)
            return str(self.tester.get_transaction_receipt(tx_hash)["contract_address"])

    def fund(self, address: str, wei: int) -> None:
        with self._lock:
            self.tester.send_transaction({"from": self.funder, "to": address, "value": wei, "gas": 21_000})
            if not self.tester.auto_mine_transactions:
                self.tester.mine_blocks(1)

    def balance(self, address: str) -> int:
        with self._lock:
            return int(self.tester.get_balance(address))

    def set_auto_mine(self, on: bool) -> None:
        with self._lock:
            if on:
                self.tester.enable_auto_mine_transactions()
            else:
                self.tester.disable_auto_mine_transactions()

    def mine(self, blocks: int = 1) -> None:
        with self._lock:
            self.tester.mine_blocks(blocks)

    def time_travel(self, timestamp: int) -> None:
        """The next block has this timestamp (eth-tester mines one block to get there)."""
        with self._lock:
            self.tester.time_travel(int(timestamp))

    def latest_timestamp(self) -> int:
        with self._lock:
            return int(self.tester.get_block_by_number("latest")["timestamp"])

    def call(self, to: str, signature: str, args: list[Any], returns: list[str]) -> tuple[Any, ...]:
        """Read the contract: `signature` as Solidity writes it, e.g. `getCurrentNonce(address)`."""
        types = signature[signature.index("(") + 1 : -1]
        data = keccak(text=signature)[:4] + abi_encode(_split_types(types), args)
        with self._lock:
            out = self.tester.call({"from": self.funder, "to": to, "data": "0x" + data.hex()})
        raw = bytes.fromhex(out[2:]) if isinstance(out, str) else bytes(out)
        return tuple(abi_decode(returns, raw))


def _split_types(types: str) -> list[str]:
    """Top-level comma split of an ABI parameter list (tuples stay whole)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(types):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(types[start:i])
            start = i + 1
    if types[start:]:
        out.append(types[start:])
    return out
