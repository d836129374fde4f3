"""[blockchain] settlement: served requests that carry both EIP-712 signatures are settled on an
AccountingV2 contract with `processRequestSigned` (docs/settlement.md).

`settler.py` the loop, `keys.py` the settlement key and the start-up checks, `abi.py` the
calldata and EIP-712 digests, `tx.py` signed transactions, `rpc.py` the JSON-RPC client,
`metrics.py` the Prometheus view. The states live in the ledger (`ledger/settlements.py`).
"""

from .keys import ENV_SETTLEMENT_KEY, SettlementError, check_chain, check_static, load_settlement_key
from .metrics import SettlementCollector
from .rpc import EthRpc, RpcError, RpcUnavailable
from .settler import Settler

__all__ = [
    "ENV_SETTLEMENT_KEY",
    "EthRpc",
    "RpcError",
    "RpcUnavailable",
    "SettlementCollector",
    "SettlementError",
    "Settler",
    "check_chain",
    "check_static",
    "load_settlement_key",
]
