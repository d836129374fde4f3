"""Rust peer (rust-libp2p 0.56, reference-style client) -> our executor, over loopback.

Each test starts our real node, runs the real Rust peer against it and
asserts on the JSON lines the peer prints: what a reference client would
see and verify, with nothing of ours on the client side.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import interop
from conftest import ExecutorFactory
from interop import MODEL
from lloom_executor.p2p.announcements import ModelCatalog
from lloom_executor.p2p.services import default_services

IN_PRICE = "500000000000000"
OUT_PRICE = "1000000000000000"
PROMPT = "Hello from interop-peer"


def discovery_services(network: Any, handler: Any) -> Sequence[Any]:
    """Kademlia + gossipsub as the executor runs them."""
    catalog = ModelCatalog(list(handler.registry.models.values()), backend_type="echo")
    return default_services(network, catalog)


def discovery_network(**overrides: Any) -> Any:
    """Only Kademlia and gossipsub: no mDNS/AutoNAT/relay noise on a shared test machine."""
    from lloom_executor.config import NetworkConfig, ProtocolsConfig

    protocols = ProtocolsConfig(
        enable_mdns=False, enable_kad=True, enable_gossipsub=True, enable_autonat=False, enable_relay=False
    )
    return NetworkConfig(protocols=protocols, **overrides)


def run_client(peer: Path, node: interop.ExecutorNode, *extra: str, discover: str = "none", timeout: int = 30) -> interop.PeerRun:
    args = interop.client_args(
        node.addr, "--inbound-price", IN_PRICE, "--outbound-price", OUT_PRICE, *extra, discover=discover, timeout_secs=timeout
    )
    return interop.run_peer(peer, args, timeout=timeout + 15)


def assert_verified(run: interop.PeerRun, line: dict[str, Any], node: interop.ExecutorNode) -> None:
    """What a reference client checks on every answer: our key signed it, and it is fresh."""
    assert line["variant"] == "SignedLlmResponse", run.describe()
    assert line["signature_valid"] is True, run.describe()
    assert line["verify_error"] is None, run.describe()
    assert line["signer"].lower() == node.evm_address.lower(), run.describe()
    assert line["timestamp_ok"] is True, run.describe()


def assert_served(run: interop.PeerRun, line: dict[str, Any], node: interop.ExecutorNode, prompt: str) -> None:
    assert_verified(run, line, node)
    assert line["error"] is None, run.describe()
    assert line["content"] == f"echo: {prompt}", run.describe()
    assert line["model_used"] == MODEL
    assert line["inbound_tokens"] > 0 and line["outbound_tokens"] > 0, run.describe()
    expected = line["inbound_tokens"] * int(IN_PRICE) + line["outbound_tokens"] * int(OUT_PRICE)
    assert line["total_cost"] == str(expected), run.describe()


def assert_signed_error(run: interop.PeerRun, node: interop.ExecutorNode, model: str, reason: str) -> dict[str, Any]:
    """An error answer is signed, carries no content, costs nothing and names the model."""
    line = run.one("response")
    assert_verified(run, line, node)
    assert line["content"] == "", run.describe()
    assert (line["inbound_tokens"], line["outbound_tokens"], line["total_cost"]) == (0, 0, "0"), run.describe()
    assert line["model_used"] == model, run.describe()
    assert line["error"], run.describe()
    assert re.search(reason, line["error"], re.IGNORECASE), run.describe()
    assert run.returncode == 1, run.describe()  # the peer exits 1 on an error answer
    return line


# -- signed request path ------------------------------------------------------------------------
def test_signed_request_answered_and_verified(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    node = executor_node()
    run = run_client(interop_peer, node, "--prompt", PROMPT)
    assert run.returncode == 0, run.describe()
    assert_served(run, run.one("response"), node, PROMPT)
    assert run.summary["ok"] == 1 and run.summary["failed"] == 0
    # the handler counts a request served once its stream is closed, just after the client has the answer
    assert interop.wait_until(lambda: node.stats.served == 1, 5), node.stats


def test_node_prices_do_not_override_request_prices(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    """The cost uses the prices the request carries, in exact integer wei (no float rounding)."""
    node = executor_node()
    big_in, big_out = "123456789012345678901", "98765432109876543210987"
    args = interop.client_args(node.addr, "--inbound-price", big_in, "--outbound-price", big_out, "--prompt", PROMPT)
    run = interop.run_peer(interop_peer, args, timeout=45)
    line = run.one("response")
    assert line["error"] is None, run.describe()
    assert line["total_cost"] == str(line["inbound_tokens"] * int(big_in) + line["outbound_tokens"] * int(big_out))


# -- refusals: each one a signed error answer -----------------------------------------------------
def test_unknown_model_gets_signed_error(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    node = executor_node()
    run = run_client(interop_peer, node, "--model", "no-such-model")
    assert_signed_error(run, node, "no-such-model", r"no-such-model")


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        ("--unsigned", r"unsigned"),
        ("--stale-timestamp", r"old|expired|stale"),
        ("--bad-signature", r"signature"),
        ("--wrong-executor", r"addressed|executor"),
    ],
)
def test_invalid_request_refused_with_signed_error(
    interop_peer: Path, executor_node: ExecutorFactory, flag: str, reason: str
) -> None:
    node = executor_node()
    run = run_client(interop_peer, node, flag)
    assert_signed_error(run, node, MODEL, reason)
    # the refusal did not cost the connection: a good request right after is served
    again = run_client(interop_peer, node, "--prompt", PROMPT)
    assert again.returncode == 0, again.describe()


def test_unsigned_request_accepted_when_allowed(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    node = executor_node(allow_unsigned=True)
    run = run_client(interop_peer, node, "--unsigned", "--prompt", PROMPT)
    assert run.returncode == 0, run.describe()
    assert_served(run, run.one("response"), node, PROMPT)


def test_wrong_evm_executor_address_refused(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    """--wrong-executor with the EVM form needs our announcement first (to know the mode works)."""
    node = executor_node(network=discovery_network(), services_factory=discovery_services)
    run = run_client(interop_peer, node, "--executor-address-mode", "evm", "--wrong-executor")
    assert_signed_error(run, node, MODEL, r"addressed|executor")


def test_executor_address_as_evm_address_accepted(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    """A client that learned our EVM address from our gossip announcement may address us by it."""
    node = executor_node(network=discovery_network(), services_factory=discovery_services)
    run = run_client(interop_peer, node, "--executor-address-mode", "evm", "--prompt", PROMPT)
    assert run.returncode == 0, run.describe()
    assert_served(run, run.one("response"), node, PROMPT)
    heard = [a for a in run.events("model_announcement") if a["executor_peer_id"] == node.peer_id]
    assert heard and heard[0]["executor_address"].lower() == node.evm_address.lower(), run.describe()


# -- limits and load ---------------------------------------------------------------------------
def test_oversize_frame_reset_and_node_keeps_serving(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    node = executor_node()
    run = run_client(interop_peer, node, "--oversize-bytes", "1100000")
    assert run.one("oversize_request")["cbor_bytes"] > 1_048_576, run.describe()
    failed = run.one("request_failed")
    assert failed["error"], run.describe()  # the client saw its request fail (the node reset the stream)
    assert not run.responses, run.describe()
    assert run.returncode == 1, run.describe()
    assert interop.wait_until(lambda: node.stats.too_large == 1, 5), node.stats
    after = run_client(interop_peer, node, "--prompt", PROMPT)
    assert after.returncode == 0, after.describe()
    assert_served(after, after.one("response"), node, PROMPT)
    assert interop.wait_until(lambda: node.stats.inflight == 0, 5), node.stats


def test_hundred_concurrent_requests_over_one_connection(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    node = executor_node()
    run = run_client(interop_peer, node, "--count", "100", "--concurrency", "100", "--prompt", PROMPT, timeout=60)
    assert run.returncode == 0, run.describe()
    responses = run.responses
    assert sorted(r["index"] for r in responses) == list(range(100)), run.describe()
    for r in responses:
        assert_served(run, r, node, f"{PROMPT} [{r['index']}]")
    assert len(run.events("connected")) == 1 and not run.events("disconnected"), run.describe()
    summary = run.summary
    assert (summary["ok"], summary["failed"]) == (100, 0), run.describe()
    # how fast: benches/bench_throughput.py (this test checks only that every answer is right)


# -- discovery ----------------------------------------------------------------------------------
@pytest.mark.parametrize("add_address", [True, False], ids=["routing-table-seeded", "find-node-on-connect"])
def test_discovery_through_kademlia(interop_peer: Path, executor_node: ExecutorFactory, add_address: bool) -> None:
    """Without --no-add-address the client seeds its routing table by hand; with it, it finds
    us only because our node makes a Kademlia request on connect (PROTOCOL.md §6 (a))."""
    node = executor_node(network=discovery_network(), services_factory=discovery_services)
    extra = [] if add_address else ["--no-add-address"]
    run = run_client(interop_peer, node, *extra, "--prompt", PROMPT, discover="kad", timeout=40)
    found = {(d["via"], d["peer"]) for d in run.events("discovered")}
    assert ("kad_providers", node.peer_id) in found, run.describe()
    assert ("kad_record", node.peer_id) in found, run.describe()
    assert run.returncode == 0, run.describe()
    assert_served(run, run.one("response"), node, PROMPT)
    if not add_address:  # it was our FIND_NODE that put us into the client's routing table

        async def find_node_ok(rt: Any) -> int:
            return getattr(rt.services.get("kad"), "find_node_ok", 0)

        assert node.call(find_node_ok) >= 1


def test_discovery_through_gossip(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    node = executor_node(network=discovery_network(), services_factory=discovery_services)
    run = run_client(interop_peer, node, "--prompt", PROMPT, discover="gossip", timeout=40)
    assert any(d["via"] == "gossip" and d["peer"] == node.peer_id for d in run.events("discovered")), run.describe()
    assert any(e["peer"] == node.peer_id for e in run.events("executor_available")), run.describe()
    assert run.returncode == 0, run.describe()
    assert_served(run, run.one("response"), node, PROMPT)


def test_model_announcement_received_and_verified(interop_peer: Path, executor_node: ExecutorFactory) -> None:
    node = executor_node(network=discovery_network(), services_factory=discovery_services)
    run = run_client(interop_peer, node, "--listen-gossip-secs", "2", timeout=40)
    assert run.returncode == 0, run.describe()
    ours = [a for a in run.events("model_announcement") if a["executor_peer_id"] == node.peer_id]
    assert ours, run.describe()
    assert not run.events("model_announcement_invalid"), run.describe()
    for ann in ours:
        assert ann["signature_valid"] is True and ann["verify_error"] is None, run.describe()
        assert ann["signer"].lower() == node.evm_address.lower()
        assert ann["executor_address"].lower() == node.evm_address.lower()
        assert ann["timestamp_ok"] is True
        assert ann["source"] == node.peer_id
        assert ann["models"] == [MODEL]
    assert ours[0]["announcement_type"] in ("Initial", "Heartbeat", "Update"), run.describe()
