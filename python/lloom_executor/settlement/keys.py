"""The settlement key and the checks made before anything is sent.

Why a key of its own: `processRequestSigned` checks the two EIP-712 signatures,
not the sender, so any funded account may send it. The node's identity key is
shared by every machine that runs the same node and is its libp2p identity;
keeping gas money on it, or nonces of it in use by several senders, would mix
the two jobs. The settlement key lives only where settlement runs: a key file
(`[blockchain] settlement_key_file`, mode 0600 as every key file) or
`LLOOM_SETTLEMENT_KEY` (hex).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .. import _native
from ..config import BlockchainConfig
from ..identity import IdentityError, read_key_file
from .rpc import EthRpc

ENV_SETTLEMENT_KEY = "LLOOM_SETTLEMENT_KEY"
ZERO_ADDRESS = "0x" + "0" * 40


class SettlementError(Exception):
    """Settlement cannot run with this configuration or against this chain (start refuses)."""


def load_settlement_key(
    config: BlockchainConfig, identity_address: str, environ: Mapping[str, str] | None = None
) -> _native.PrivateKey:
    environ = os.environ if environ is None else environ
    try:
        if config.settlement_key_file:
            key = read_key_file(config.settlement_key_file)
        elif environ.get(ENV_SETTLEMENT_KEY):
            key = _native.PrivateKey.from_hex(environ[ENV_SETTLEMENT_KEY].strip())
        else:
            raise SettlementError(
                f"[blockchain] enabled needs a funded settlement key: settlement_key_file or {ENV_SETTLEMENT_KEY}"
            )
    except (IdentityError, ValueError) as exc:
        raise SettlementError(f"settlement key: {exc}") from None
    if key.address.lower() == identity_address.lower():
        raise SettlementError("the settlement key must not be the node's identity key (see docs/settlement.md)")
    return key


def check_static(config: BlockchainConfig) -> None:
    """What needs no chain: the example config's zero address must never send anything."""
    if config.contract_address.lower() == ZERO_ADDRESS:
        raise SettlementError("[blockchain] contract_address is the zero address: nothing would be settled")


async def check_chain(rpc: EthRpc, config: BlockchainConfig) -> None:
    """The node's chain id is the configured one and the contract address holds code.
    RpcUnavailable passes through: the caller decides whether to wait for the node."""
    chain_id = await rpc.chain_id()
    if chain_id != config.chain_id:
        raise SettlementError(
            f"the RPC node at {config.rpc_url} is on chain {chain_id}, not [blockchain] chain_id {config.chain_id}"
        )
    if not await rpc.code(config.contract_address):
        raise SettlementError(f"no contract code at {config.contract_address} on chain {chain_id}")
