"""contracts/AccountingV2.vy against AccountingV2's interface, on a real EVM (py-evm).

The oracles are independent of the contract and of our code: selectors and type
hashes are recomputed here from the Solidity signatures with keccak (eth-utils),
EIP-712 digests with eth-account's `encode_typed_data` (docs/PROTOCOL.md §7's
reference oracle), transactions are built with eth-abi and signed by eth-account.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from evm_rig import EvmRig, load_artifact

REPO = Path(__file__).resolve().parent.parent
REQUEST_TUPLE = "(address,string,bytes32,bytes32,uint32,uint32,uint256,uint256,uint64,uint64)"
RESPONSE_TUPLE = "(bytes32,address,string,bytes32,uint32,uint32,uint256,uint256,uint64,bool)"
# AccountingV2's functions as Solidity declares them (structs as their tuple types)
SOLIDITY_SIGNATURES = [
    f"processRequestSigned({REQUEST_TUPLE},{RESPONSE_TUPLE},bytes,bytes)",
    f"processRequest({REQUEST_TUPLE},{RESPONSE_TUPLE},bytes,string,string,string)",
    "getUsageRecord(bytes32)",
    "getCurrentNonce(address)",
    f"getRequestMessageHash({REQUEST_TUPLE})",
    f"getResponseMessageHash({RESPONSE_TUPLE})",
    "clientNonces(address)",
    "DOMAIN_SEPARATOR()",
]
REQUEST_TYPE = (
    "LlmRequestCommitment(address executor,string model,bytes32 promptHash,bytes32 systemPromptHash,"
    "uint32 maxTokens,uint32 temperature,uint256 inboundPrice,uint256 outboundPrice,uint64 nonce,uint64 deadline)"
)
RESPONSE_TYPE = (
    "LlmResponseCommitment(bytes32 requestHash,address client,string model,bytes32 contentHash,"
    "uint32 inboundTokens,uint32 outboundTokens,uint256 inboundPrice,uint256 outboundPrice,uint64 timestamp,bool success)"
)
USAGE_RECORD = "(bytes32,address,address,string,uint256,uint256,uint256,uint256,uint256,uint64,uint64,bool,uint256)"


def typed(domain: dict[str, Any], primary: str, message: dict[str, Any]) -> dict[str, Any]:
    fields = {
        "LlmRequestCommitment": REQUEST_TYPE,
        "LlmResponseCommitment": RESPONSE_TYPE,
    }[primary]
    inner = fields[fields.index("(") + 1 : -1]
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            primary: [{"type": p.split(" ")[0], "name": p.split(" ")[1]} for p in inner.split(",")],
        },
        "primaryType": primary,
        "domain": domain,
        "message": message,
    }


@pytest.fixture(scope="module")
def chain() -> Any:
    rig = EvmRig()
    address = rig.deploy()
    yield rig, address
    rig.close()


def test_artifact_selectors_are_accountingv2s() -> None:
    identifiers = load_artifact()["method_identifiers"]
    for signature in SOLIDITY_SIGNATURES:
        assert identifiers[signature] == "0x" + keccak(text=signature)[:4].hex(), signature


def test_artifact_is_the_compiled_source() -> None:
    """Where CI has the compiler's own environment (vyper pins cbor2<6, see contracts/build.py)."""
    vyper_python = os.environ.get("LLOOM_VYPER_PYTHON")
    if not vyper_python:
        pytest.skip("LLOOM_VYPER_PYTHON (an interpreter with vyper 0.4.3) is not set")
    result = subprocess.run([vyper_python, str(REPO / "contracts" / "build.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def request_message(executor: str, nonce: int, deadline: int, model: str = "m") -> dict[str, Any]:
    return {
        "executor": executor,
        "model": model,
        "promptHash": keccak(text="hello"),
        "systemPromptHash": b"\0" * 32,
        "maxTokens": 64,
        "temperature": 7000,
        "inboundPrice": 3,
        "outboundPrice": 5,
        "nonce": nonce,
        "deadline": deadline,
    }


def as_tuple(message: dict[str, Any], type_string: str) -> tuple[Any, ...]:
    names = [p.split(" ")[1] for p in type_string[type_string.index("(") + 1 : -1].split(",")]
    return tuple(message[n] for n in names)


def vrs27(signature: bytes) -> bytes:
    return signature[:64] + bytes([signature[64] if signature[64] >= 27 else signature[64] + 27])


def digest_of(domain: dict[str, Any], primary: str, message: dict[str, Any]) -> bytes:
    signable = encode_typed_data(full_message=typed(domain, primary, message))
    return keccak(b"\x19\x01" + signable.header + signable.body)


def settle_args(
    rig: EvmRig,
    address: str,
    client: Any,
    executor: Any,
    nonce: int,
    deadline: int,
    *,
    response_signer: Any = None,
    v_offset: int = 27,
) -> tuple[bytes, bytes]:
    """Calldata of processRequestSigned for a fresh request; v sent as 27/28 unless `v_offset` says otherwise."""
    domain = {"name": "Lloom Network", "version": "1.0.0", "chainId": rig.chain_id, "verifyingContract": address}
    request = request_message(executor.address, nonce, deadline)
    request_hash = digest_of(domain, "LlmRequestCommitment", request)
    client_sig = Account.unsafe_sign_hash(request_hash, client.key).signature
    response = {
        "requestHash": request_hash,
        "client": client.address,
        "model": "m",
        "contentHash": keccak(text="world"),
        "inboundTokens": 10,
        "outboundTokens": 20,
        "inboundPrice": 3,
        "outboundPrice": 5,
        "timestamp": int(time.time()),
        "success": True,
    }
    signer = response_signer or executor
    executor_sig = Account.unsafe_sign_hash(digest_of(domain, "LlmResponseCommitment", response), signer.key).signature

    def v(signature: bytes) -> bytes:
        return signature[:64] + bytes([(signature[64] - 27 if signature[64] >= 27 else signature[64]) + v_offset])

    data = keccak(text=SOLIDITY_SIGNATURES[0])[:4] + abi_encode(
        [REQUEST_TUPLE, RESPONSE_TUPLE, "bytes", "bytes"],
        [as_tuple(request, REQUEST_TYPE), as_tuple(response, RESPONSE_TYPE), v(bytes(client_sig)), v(bytes(executor_sig))],
    )
    return data, request_hash


def send(rig: EvmRig, address: str, data: bytes) -> dict[str, Any]:
    tx_hash = rig.tester.send_transaction({"from": rig.funder, "to": address, "data": "0x" + data.hex(), "gas": 1_000_000})
    return dict(rig.tester.get_transaction_receipt(tx_hash))


def test_domain_and_type_hashes_match_eip712(chain: Any) -> None:
    rig, address = chain
    domain = {"name": "Lloom Network", "version": "1.0.0", "chainId": rig.chain_id, "verifyingContract": address}
    message = request_message(to_checksum_address("0x" + "11" * 20), 1, 2**40)
    oracle = encode_typed_data(full_message=typed(domain, "LlmRequestCommitment", message))
    (separator,) = rig.call(address, "DOMAIN_SEPARATOR()", [], ["bytes32"])
    assert separator == oracle.header
    (digest,) = rig.call(address, f"getRequestMessageHash({REQUEST_TUPLE})", [as_tuple(message, REQUEST_TYPE)], ["bytes32"])
    assert digest == keccak(b"\x19\x01" + oracle.header + oracle.body)


def test_process_request_signed_records_usage_and_enforces_nonce_and_deadline(chain: Any) -> None:
    rig, address = chain
    client, executor = Account.create(), Account.create()
    far = int(time.time()) + 3600
    bad, _ = settle_args(rig, address, client, executor, nonce=2, deadline=far)  # a gap: nonce 1 is next
    with pytest.raises(Exception, match="Invalid nonce"):
        rig.tester.call({"from": rig.funder, "to": address, "data": "0x" + bad.hex()})
    data, request_hash = settle_args(rig, address, client, executor, nonce=1, deadline=far)
    assert send(rig, address, data)["status"] == 1
    record = rig.call(address, "getUsageRecord(bytes32)", [request_hash], [USAGE_RECORD])[0]
    assert record[0] == request_hash
    assert (to_checksum_address(record[1]), to_checksum_address(record[2])) == (executor.address, client.address)
    assert (record[3], record[4], record[5], record[8]) == ("m", 10, 20, 10 * 3 + 20 * 5)
    assert rig.call(address, "getCurrentNonce(address)", [client.address], ["uint256"]) == (1,)
    assert rig.call(address, "executorStats(address)", [executor.address], ["uint256"] * 4) == (1, 10, 20, 130)
    with pytest.raises(Exception, match="Invalid nonce"):  # the same settlement again
        rig.tester.call({"from": rig.funder, "to": address, "data": "0x" + data.hex()})
    past = rig.latest_timestamp() - 1
    late, _ = settle_args(rig, address, client, executor, nonce=2, deadline=past)
    with pytest.raises(Exception, match="Request expired"):
        rig.tester.call({"from": rig.funder, "to": address, "data": "0x" + late.hex()})


def test_signature_with_v_0_or_1_or_by_someone_else_is_refused(chain: Any) -> None:
    rig, address = chain
    client, executor = Account.create(), Account.create()
    deadline = int(time.time()) + 3600
    raw_v, _ = settle_args(rig, address, client, executor, nonce=1, deadline=deadline, v_offset=0)
    with pytest.raises(Exception, match="Invalid signature v"):
        rig.tester.call({"from": rig.funder, "to": address, "data": "0x" + raw_v.hex()})
    forged, _ = settle_args(rig, address, client, executor, nonce=1, deadline=deadline, response_signer=Account.create())
    with pytest.raises(Exception, match="Invalid executor signature"):
        rig.tester.call({"from": rig.funder, "to": address, "data": "0x" + forged.hex()})


def test_rpc_endpoint_speaks_json_rpc(chain: Any) -> None:
    import httpx

    rig, address = chain
    answer = httpx.post(rig.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).json()
    assert int(answer["result"], 16) == rig.chain_id
    code = httpx.post(rig.url, json={"jsonrpc": "2.0", "id": 2, "method": "eth_getCode", "params": [address, "latest"]}).json()
    assert len(code["result"]) > 1000
    client = Account.create()
    data = keccak(text=SOLIDITY_SIGNATURES[0])[:4] + b"\0" * 64
    err = httpx.post(
        rig.url,
        json={
            "jsonrpc": "2.0",
            "id": 3,
            "method": "eth_call",
            "params": [{"to": address, "from": client.address, "data": "0x" + data.hex()}, "latest"],
        },
    ).json()
    assert err["error"]["code"] in (3, -32000)
    assert sys.version_info >= (3, 11)
