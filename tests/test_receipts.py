"""EIP-712 receipts in the SignedLlmResponse envelope (PROTOCOL.md §4, §7).

- codec: the `receipt` entry is written after the standard envelope fields,
  read back typed, a malformed one is kept raw without failing the frame, and
  other unknown keys are still ignored; without a receipt the bytes are unchanged;
- serving: every admitted signed request gets a receipt that verifies against
  the request and the answer (success or signed error), nothing else gets one;
- the client verifies it over the wire; the Rust reference-style peer (serde
  structs without the field) still verifies our answers that carry one.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

import interop
from lloom_executor import _native
from lloom_executor.backends import Completion, CompletionRequest, EchoBackend
from lloom_executor.backends.base import BackendServerError
from lloom_executor.client import LloomClient
from lloom_executor.client.receipts import check_receipt, envelope_receipt, wire_temperature
from lloom_executor.config import ModelConfig, NetworkConfig, RequestHandlingConfig
from lloom_executor.p2p.llm_protocol import RequestContext
from lloom_executor.serving import RequestHandler, build_request_handler

MODEL = "gpt-3.5-turbo"
DOMAIN = _native.Eip712Domain(31337, "0x" + "5f" * 20)
CTX = RequestContext("16Uiu2HAmTestPeer", "127.0.0.1", 0, 0.0)
RUST_CLIENT_KEY = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"


def sample_receipt(**over: Any) -> dict[str, Any]:
    r = {
        "request_hash": b"\x01" * 32,
        "client": b"\x02" * 20,
        "timestamp": 1_700_000_000,
        "success": True,
        "digest": b"\x03" * 32,
        "signature": b"\x04" * 65,
    }
    r.update(over)
    return r


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- codec --------------------------------------------------------------------------------------
def test_receipt_roundtrip_and_wire_shape() -> None:
    key = _native.PrivateKey.generate()
    args = (key, "hi", 1, 2, "5", MODEL, None, 1_700_000_001)
    plain = bytes(_native.encode_signed_response(*args))
    assert bytes(_native.encode_signed_response(*args, None, None)) == plain  # no receipt: unchanged bytes
    assert _native.decode_response(plain).receipt is None
    frame = bytes(_native.encode_signed_response(*args, 7, sample_receipt()))
    d = _native.decode_response(frame)
    assert d.signature_valid and d.recovered == key.address_bytes and d.nonce == 7
    assert d.receipt == sample_receipt()
    assert list(d.receipt) == ["request_hash", "client", "timestamp", "success", "digest", "signature"]
    # the CBOR shape, read by an independent decoder: after the standard fields, byte strings
    env = cbor2.loads(frame)["SignedLlmResponse"]
    assert list(env) == ["payload", "signer", "signature", "timestamp", "nonce", "receipt"]
    assert env["receipt"] == sample_receipt()
    assert list(env["receipt"]) == list(sample_receipt())
    # the payload (what is signed) is the same as without the receipt
    assert d.payload_json == _native.decode_response(plain).payload_json
    assert envelope_receipt(frame) == sample_receipt() and envelope_receipt(plain) is None


def test_receipt_hex_input_and_bad_input() -> None:
    key = _native.PrivateKey.generate()
    hexed = {k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in sample_receipt().items()}
    frame = _native.encode_signed_response(key, "", 0, 0, "0", MODEL, "err", 1, None, hexed)
    assert _native.decode_response(frame).receipt == sample_receipt()
    for bad, exc in [
        (sample_receipt(digest=b"\x03" * 31), ValueError),
        (sample_receipt(signature=b"\x04" * 64), ValueError),
        (sample_receipt(client="0x1234"), ValueError),
        (sample_receipt(success=1), TypeError),
        (sample_receipt(timestamp=-1), ValueError),
        ({k: v for k, v in sample_receipt().items() if k != "digest"}, ValueError),
        ([1, 2], TypeError),
    ]:
        with pytest.raises(exc):
            _native.encode_signed_response(key, "", 0, 0, "0", MODEL, None, 1, None, bad)


def _reencode_with_envelope(frame: bytes, **extra: Any) -> bytes:
    message = cbor2.loads(frame)
    message["SignedLlmResponse"].update(extra)
    return cbor2.dumps(message)


def test_malformed_receipt_kept_raw_and_other_unknown_keys_ignored() -> None:
    key = _native.PrivateKey.generate()
    frame = bytes(_native.encode_signed_response(key, "hi", 1, 2, "5", MODEL, None, 1_700_000_001))
    odd = _reencode_with_envelope(frame, receipt={"request_hash": b"\x01" * 3, "x": [1, "y"]}, future_key={"a": 1})
    d = _native.decode_response(odd)
    assert d.signature_valid and d.content == "hi"  # the frame still decodes and verifies
    assert d.receipt == {"request_hash": b"\x01" * 3, "x": [1, "y"]}  # raw, for the client to report
    assert _native.decode_response(_reencode_with_envelope(frame, receipt=None)).receipt is None
    typed = _native.decode_response(_reencode_with_envelope(frame, receipt=sample_receipt(extra=1), other=2))
    assert typed.receipt == sample_receipt()  # extra keys inside the receipt ignored too
    assert check_receipt(
        d.receipt,
        DOMAIN,
        executor_address=key.address,
        client_address="0x" + "02" * 20,
        model=MODEL,
        prompt="p",
        system_prompt=None,
        max_tokens=None,
        temperature=None,
        inbound_price="0",
        outbound_price="0",
        nonce=1,
        deadline=2,
        content="hi",
        inbound_tokens=1,
        outbound_tokens=2,
    ).problem.startswith("malformed receipt")


def test_wire_temperature_is_the_f32() -> None:
    assert wire_temperature(None) == 0.0
    assert wire_temperature(0.7) == struct.unpack("<f", struct.pack("<f", 0.7))[0] != 0.7


# -- serving ------------------------------------------------------------------------------------
class FailingEcho(EchoBackend):
    async def complete(self, request: CompletionRequest) -> Completion:
        if request.prompt == "fail":
            raise BackendServerError("backend exploded at http://10.0.0.7:8000", status=500)
        return await super().complete(request)


def _handler(executor: _native.PrivateKey, domain: Any = DOMAIN, **kw: Any) -> RequestHandler:
    return build_request_handler(
        executor,
        [ModelConfig(MODEL, inbound_price_wei=1, outbound_price_wei=2)],
        FailingEcho([MODEL]),
        receipt_domain=domain,
        **kw,
    )


def _request(
    client: _native.PrivateKey,
    executor: _native.PrivateKey,
    prompt: str,
    *,
    system: str | None = "sys",
    temperature: float | None = 0.7,
    max_tokens: int | None = 64,
    model: str = MODEL,
) -> tuple[bytes, dict]:
    now = int(time.time())
    req = dict(
        model=model,
        prompt=prompt,
        system_prompt=system,
        temperature=temperature,
        max_tokens=max_tokens,
        executor_address=executor.peer_id,
        inbound_price="3000000000000000000000",
        outbound_price="7",
        nonce=424242,
        deadline=now + 300,
    )
    return bytes(_native.encode_signed_request(client, *req.values(), now)), req


def _check(
    answer: _native.DecodedResponse, req: dict, executor: _native.PrivateKey, client: _native.PrivateKey, domain: Any = DOMAIN
) -> Any:
    args = {k: v for k, v in req.items() if k != "executor_address"}
    return check_receipt(
        answer.receipt,
        domain,
        executor_address=executor.address,
        client_address=client.address,
        content=answer.content,
        inbound_tokens=answer.inbound_tokens,
        outbound_tokens=answer.outbound_tokens,
        **args,
    )


@pytest.mark.parametrize("temperature,max_tokens,system", [(0.7, 64, "sys"), (None, None, None), (1.23456, 5, "")])
def test_served_answer_carries_a_valid_receipt(temperature, max_tokens, system) -> None:
    executor, client = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    frame, req = _request(client, executor, "hello", system=system, temperature=temperature, max_tokens=max_tokens)
    answer = _native.decode_response(run(_handler(executor)(frame, CTX)))
    assert answer.error is None and answer.signature_valid
    r = answer.receipt
    assert r["client"] == client.address_bytes and r["success"] is True and r["timestamp"] == answer.timestamp
    checked = _check(answer, req, executor, client)
    assert checked.valid, checked.problem
    # the digest is exactly the commitment an independent computation gives
    temp = struct.unpack("<f", struct.pack("<f", temperature))[0] if temperature is not None else 0.0
    request_hash = DOMAIN.request_commitment_digest(
        executor.address, MODEL, "hello", system, max_tokens or 0, temp, req["inbound_price"], "7", 424242, req["deadline"]
    )
    assert r["request_hash"] == request_hash
    assert r["digest"] == DOMAIN.response_commitment_digest(
        request_hash,
        client.address,
        MODEL,
        answer.content,
        answer.inbound_tokens,
        answer.outbound_tokens,
        req["inbound_price"],
        "7",
        answer.timestamp,
        True,
    )
    assert _native.recover_address(r["digest"], r["signature"]) == executor.address_bytes
    # it verifies for this answer only
    assert not check_receipt(
        r,
        DOMAIN,
        executor_address=executor.address,
        client_address=client.address,
        content="other",
        inbound_tokens=answer.inbound_tokens,
        outbound_tokens=answer.outbound_tokens,
        **{k: v for k, v in req.items() if k != "executor_address"},
    ).valid
    other_domain = _native.Eip712Domain(1, "0x" + "5f" * 20)
    assert not _check(answer, req, executor, client, other_domain).valid
    assert not _check(answer, req, executor, _native.PrivateKey.generate()).valid  # names another client


def test_error_after_admission_carries_a_failure_receipt() -> None:
    executor, client = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    frame, req = _request(client, executor, "fail")
    answer = _native.decode_response(run(_handler(executor)(frame, CTX)))
    assert answer.error == "the backend failed on this request" and answer.content == "" and answer.total_cost == "0"
    assert answer.receipt["success"] is False
    checked = _check(answer, req, executor, client)
    assert checked.valid and checked.success is False, checked.problem


def test_no_receipt_for_refusals_unsigned_or_without_domain() -> None:
    executor, client = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    refused, _ = _request(client, executor, "hello", model="no-such-model")
    answer = _native.decode_response(run(_handler(executor)(refused, CTX)))
    assert answer.error and answer.receipt is None and answer.signature_valid
    frame, _ = _request(client, executor, "hello")
    assert _native.decode_response(run(_handler(executor, domain=None)(frame, CTX))).receipt is None
    now = int(time.time())
    unsigned = _native.encode_unsigned_request(MODEL, "hello", None, None, 8, executor.peer_id, "1", "2", 1, now + 60)
    answer = _native.decode_response(run(_handler(executor, allow_unsigned=True)(unsigned, CTX)))
    assert answer.error is None and answer.receipt is None


@pytest.mark.parametrize(
    "price, temperature, refused",
    [
        (str(2**256 - 1), None, False),
        (str(2**256), None, True),  # no uint256 holds it
        # temperature travels as an f32; these two are neighbouring f32 values around the uint32 edge
        ("1", 429_496.71875, False),  # round(t x 10000) = 4294967188 < 2**32: fits the uint32
        ("1", 429_496.75, True),  # 4294967500: does not
        ("1", -1.0, True),
    ],
)
def test_values_a_receipt_cannot_hold_are_refused_at_admission(price: str, temperature: float | None, refused: bool) -> None:
    """Never served and charged without a receipt a contract could verify: a price of 2**256 wei or
    more, or a temperature outside the receipt's uint32 of round(t x 10000), is refused up front."""
    executor, client = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    now = int(time.time())
    frame = _native.encode_signed_request(
        client, MODEL, "hello", None, temperature, 8, executor.peer_id, price, "2", 1, now + 60, now
    )
    answer = _native.decode_response(run(_handler(executor)(frame, CTX)))
    if refused:
        assert answer.error is not None and "in the receipt" in answer.error and answer.receipt is None
    else:
        assert answer.error is None and answer.receipt is not None


# -- over the wire ------------------------------------------------------------------------------
class Capturing:
    """Wraps a handler and keeps every (request frame, answer frame)."""

    def __init__(self, inner: RequestHandler) -> None:
        self.inner = inner
        self.exchanges: list[tuple[bytes, bytes]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def __call__(self, frame: bytes, ctx: RequestContext) -> bytes | None:
        answer = await self.inner(frame, ctx)
        self.exchanges.append((bytes(frame), bytes(answer)))
        return answer


@contextlib.contextmanager
def receipt_executor(loop_thread: interop.LoopThread):
    from lloom_executor.p2p.bootstrap import BootstrapService
    from lloom_executor.p2p.node import P2PNode

    key = _native.PrivateKey.generate()
    handler = Capturing(_handler(key))
    node = P2PNode(
        key, NetworkConfig(listen_address=("/ip4/127.0.0.1/tcp/0",)), RequestHandlingConfig(), handler, [BootstrapService()]
    )
    addrs = loop_thread.run(node.start(), timeout=40)
    running = interop.ExecutorNode(node, handler, loop_thread, addrs)
    try:
        yield running
    finally:
        running.stop()


def test_client_verifies_receipt_over_the_wire(loop_thread: interop.LoopThread) -> None:
    with receipt_executor(loop_thread) as node:
        key = _native.PrivateKey.generate()

        async def ask(domain: Any, temperature: float | None) -> Any:
            c = LloomClient(key, enable_gossip=False, enable_kad=False, eip712_domain=domain)
            await c.start()
            try:
                return await c.request(
                    node.addr,
                    MODEL,
                    "hello receipts",
                    system_prompt="be brief",
                    temperature=temperature,
                    max_tokens=32,
                    inbound_price="11",
                    outbound_price="13",
                )
            finally:
                await c.stop()

        answer = loop_thread.run(ask(DOMAIN, 0.7), timeout=60)
        assert answer.ok and answer.receipt is not None
        assert answer.receipt.valid and answer.receipt.success, answer.receipt.problem
        assert answer.receipt_raw["client"] == key.address_bytes
        answer = loop_thread.run(ask(DOMAIN, None), timeout=60)
        assert answer.receipt.valid, answer.receipt.problem
        wrong = loop_thread.run(ask(_native.Eip712Domain(31337, "0x" + "60" * 20), 0.2), timeout=60)
        assert wrong.receipt is not None and not wrong.receipt.valid


def _interop_binary() -> Path:
    try:
        return interop.interop_peer_binary()
    except interop.InteropBuildError as exc:
        pytest.fail(f"could not build the Rust interop peer:\n{exc}", pytrace=False)


def test_rust_reference_peer_verifies_answers_with_receipts(loop_thread: interop.LoopThread) -> None:
    """The reference-style serde structs ignore the envelope's `receipt`: the answer still verifies."""
    peer = _interop_binary()
    client = _native.PrivateKey.from_hex(RUST_CLIENT_KEY)
    with receipt_executor(loop_thread) as node:
        args = interop.client_args(
            node.addr,
            "--inbound-price",
            "500000000000000",
            "--outbound-price",
            "1000000000000000",
            "--prompt",
            "receipt please",
            "--temperature",
            "0.7",
            "--max-tokens",
            "40",
        )
        result = interop.run_peer(peer, args, timeout=45, env={"LLOOM_PRIVATE_KEY": RUST_CLIENT_KEY})
        line = result.one("response")
        assert result.returncode == 0, result.describe()
        assert line["variant"] == "SignedLlmResponse" and line["signature_valid"] is True, result.describe()
        assert line["verify_error"] is None and line["timestamp_ok"] is True, result.describe()
        assert line["signer"].lower() == node.evm_address.lower(), result.describe()
        assert line["content"] == "echo: receipt please" and line["error"] is None, result.describe()
        # what the peer received did carry a receipt, and it commits to the peer's request
        ((request_frame, answer_frame),) = node.handler.exchanges
        answer = _native.decode_response(answer_frame)
        assert answer.receipt is not None and answer.receipt["client"] == client.address_bytes
        request = _native.decode_request(request_frame).request
        req = {
            name: getattr(request, name)
            for name in (
                "model",
                "prompt",
                "system_prompt",
                "temperature",
                "max_tokens",
                "inbound_price",
                "outbound_price",
                "nonce",
                "deadline",
            )
        }
        assert req["temperature"] == pytest.approx(0.7) and req["max_tokens"] == 40
        checked = _check(answer, req, node.node.key, client)
        assert checked.valid, checked.problem
