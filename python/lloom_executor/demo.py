"""`lloom-executor demo`: a whole round trip on one machine with nothing configured.

An executor with the built-in echo backend (not a model) listens on loopback
in a temporary directory; a client finds it through Kademlia and gossip, sends
signed requests over real libp2p, and verifies every signed answer.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import _native
from .client import LloomClient
from .config import Config
from .identity import create_identity, load_identity

DEMO_MODEL = "echo-demo"
INBOUND_WEI = 10_000_000_000_000  # 0.00001 ETH per token
OUTBOUND_WEI = 20_000_000_000_000
DEMO_PROMPTS = [
    (DEMO_MODEL, "What is the Lloom network?"),
    (DEMO_MODEL, "Count tokens exactly and charge what was agreed, in wei."),
    ("no-such-model", "This model is not served, so the answer is a signed error."),
]


@dataclass(frozen=True)
class DemoRow:
    model: str
    prompt: str
    content: str
    inbound_tokens: int
    outbound_tokens: int
    total_cost_wei: str
    expected_cost_wei: str
    signature_ok: bool
    signer: str
    error: str | None
    latency_ms: float
    receipt: str  # "valid", "none" (refusals during admission carry none) or the problem


@dataclass(frozen=True)
class DemoResult:
    executor_peer_id: str
    executor_address: str
    listen: list[str]
    discovered_via: list[str]
    rows: list[DemoRow]

    @property
    def ok(self) -> bool:
        served = [r for r in self.rows if r.model == DEMO_MODEL]
        refused = [r for r in self.rows if r.model != DEMO_MODEL]
        return (
            all(r.signature_ok and r.signer == self.executor_address.lower() for r in self.rows)
            and all(r.error is None and r.total_cost_wei == r.expected_cost_wei and r.receipt == "valid" for r in served)
            and all(r.error is not None for r in refused)
        )


async def run_demo(workdir: Path | None = None) -> DemoResult:
    from .service import ExecutorService

    with tempfile.TemporaryDirectory(prefix="lloom-demo-") as tmp:
        base = Path(workdir or tmp)
        config = Config.from_dict(
            {
                "network": {
                    "listen_address": "/ip4/127.0.0.1/tcp/0",
                    "protocols": {"enable_mdns": False, "enable_autonat": False, "enable_relay": False},
                },
                "identity": {"private_key_path": str(base / "identity_key"), "ethereum_private_key_path": str(base / "eth_key")},
                "llm_client": {"backend": "echo"},
                "models": [{"name": DEMO_MODEL, "inbound_price": "0.00001", "outbound_price": "0.00002"}],
                "metrics": {"enabled": False},
                "api": {"enabled": False},
                "storage": {"data_dir": str(base / "data")},
            }
        )
        create_identity(config.identity)
        executor = ExecutorService(config, load_identity(config.identity, environ={}))
        listen = await executor.start()
        try:
            chain = config.blockchain
            domain = _native.Eip712Domain(chain.chain_id, chain.contract_address)
            async with LloomClient(bootstrap=[listen[0]], request_timeout=30, eip712_domain=domain) as client:
                found = await client.find_executors(timeout=15)
                target = next((e for e in found if e.peer_id == executor.identity.peer_id), None)
                via = sorted(target.via) if target else []
                rows = []
                for model, prompt in DEMO_PROMPTS:
                    answer = await client.request(
                        target or executor.identity.peer_id,
                        model,
                        prompt,
                        inbound_price=str(INBOUND_WEI),
                        outbound_price=str(OUTBOUND_WEI),
                    )
                    expected = answer.inbound_tokens * INBOUND_WEI + answer.outbound_tokens * OUTBOUND_WEI
                    rows.append(
                        DemoRow(
                            model,
                            prompt,
                            answer.content,
                            answer.inbound_tokens,
                            answer.outbound_tokens,
                            answer.total_cost,
                            str(expected),
                            answer.signature_valid,
                            answer.signer,
                            answer.error,
                            answer.latency_s * 1000,
                            "none"
                            if answer.receipt is None
                            else ("valid" if answer.receipt.valid else answer.receipt.problem or "INVALID"),
                        )
                    )
        finally:
            await executor.stop()
    return DemoResult(executor.identity.peer_id, executor.identity.address, listen, via, rows)
