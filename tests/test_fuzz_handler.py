"""Fuzzing the whole request handler: hostile frames through the real request path.

Every frame goes through `build_request_handler` (EIP-712 receipts on, a real
SQLite `Ledger` in a temporary directory, the echo backend), the same objects
`ExecutorService` assembles. Frames are valid signed requests with
adversarial field values (odd Unicode, huge numbers, foreign addresses,
stale or future timestamps, prices that are not wei), and mutations of them:
truncations, bit flips, splices of two frames, inserted junk, huge declared
lengths, CBOR rebuilt with duplicate keys, missing or unknown keys, values of
the wrong type, numbers beyond every integer type, a signature (or signer)
taken from another frame, a validator variant, and replays of earlier frames.

The properties, per frame (`Oracle.exchange`):
- the handler never raises (a Rust panic would surface as `PanicException`, a
  `BaseException`, and fail here) and always returns signed bytes that decode
  as a `SignedLlmResponse` or an acknowledgement signed by the executor;
- a frame the codec refuses raises `CodecError` (a `ValueError`) there, is
  answered with a signed `malformed request: ...` error and writes no row;
- a validator message is acknowledged and writes no row;
- a served answer has exactly one new `served` ledger row, for a frame that
  decodes, verifies, is addressed to us and was not served before (same
  signer and digest), with the digest, client, cost and receipt the client got;
- a refused answer writes no `served` row; any refusal row carries an error a
  client got (refusals may be recorded apart or aggregated: their cost is
  bounded under a flood, so they are not matched one to one).

CI runs a smoke size; `LLOOM_FUZZ_EXAMPLES` sets the examples per test and
`benches/fuzz_long.py` runs the long one. With `-s` each test prints how many
frames it sent.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lloom_executor import _native
from lloom_executor.backends import EchoBackend
from lloom_executor.config import ModelConfig
from lloom_executor.ledger import STATUS_SERVED, Ledger
from lloom_executor.p2p.llm_protocol import RequestContext
from lloom_executor.serving import build_request_handler

EXAMPLES = int(os.environ.get("LLOOM_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the working tree; a failure prints its example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

EXECUTOR = _native.PrivateKey.generate()
STRANGER = _native.PrivateKey.generate()
CLIENTS = [_native.PrivateKey.generate() for _ in range(3)]
DOMAIN = _native.Eip712Domain(31337, "0x" + "5f" * 20)
CTX = RequestContext("16Uiu2HAmFuzzPeer", "127.0.0.1", 0, 0.0)
MODEL = "m"
ODD_TEXT = ["", "\x00", "\u202eevil\u202c", "e\u0301\u0301", "\ufeffm", "🌍🏳️‍🌈", '"\\/\b\f\n\r\t\x1f\x7f', "\U0010ffff", "١٢٣"]

# ---------------------------------------------------------------- valid signed frames


def odd_text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=max_size))


FIELDS = ("model", "max_tokens", "address", "inbound", "outbound", "deadline", "timestamp", "temperature", "unsigned")


@st.composite
def signed_frames(draw: st.DrawFn) -> bytes:
    """A signed request we would serve, with up to three of its fields (or its signing) made
    adversarial: another model, odd Unicode, a foreign or malformed address, prices that are not
    wei or are beyond uint256, huge numbers, stale or future timestamps, a passed deadline."""
    now = int(time.time())
    broken = draw(st.sets(st.sampled_from(FIELDS), max_size=3))

    def pick(name: str, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        return draw(bad if name in broken else good)

    prices = ["0", "-1", "1.5", "", "١", "0x10", str(10**30), str(2**256), " 1"]
    us = [EXECUTOR.peer_id, EXECUTOR.address, EXECUTOR.address.upper(), f" {EXECUTOR.peer_id} "]
    model = pick("model", st.just(MODEL), st.one_of(st.just("other"), odd_text()))
    prompt = draw(st.one_of(st.sampled_from(["hello", "the same prompt"]), odd_text(200)))
    system = draw(st.one_of(st.none(), odd_text()))
    temperature = pick(
        "temperature",
        st.one_of(st.none(), st.floats(0.0, 2.0, width=32)),
        st.floats(width=32, allow_nan=False, allow_infinity=False),
    )
    max_tokens = pick("max_tokens", st.one_of(st.none(), st.integers(0, 64)), st.integers(0, 2**32 - 1))
    address = pick("address", st.sampled_from(us), st.one_of(st.sampled_from([STRANGER.peer_id, STRANGER.address]), odd_text()))
    inbound = pick("inbound", st.sampled_from(["1", "2", "1000"]), st.one_of(st.sampled_from(prices), odd_text()))
    outbound = pick("outbound", st.sampled_from(["1", "2", "1000"]), st.one_of(st.sampled_from(prices), odd_text()))
    nonce = draw(st.one_of(st.just(1), st.integers(0, 2**64 - 1)))
    deadline = pick("deadline", st.just(now + 300), st.sampled_from([0, now - 10, 2**64 - 1]))
    timestamp = pick(
        "timestamp", st.just(now), st.one_of(st.sampled_from([now - 1000, now + 1000, 0]), st.integers(0, 2**64 - 1))
    )
    if "unsigned" in broken:
        return bytes(
            _native.encode_unsigned_request(
                model, prompt, system, temperature, max_tokens, address, inbound, outbound, nonce, deadline
            )
        )
    key = draw(st.sampled_from(CLIENTS))
    envelope_nonce = draw(st.one_of(st.none(), st.integers(0, 2**64 - 1)))
    return bytes(
        _native.encode_signed_request(
            key,
            model,
            prompt,
            system,
            temperature,
            max_tokens,
            address,
            inbound,
            outbound,
            nonce,
            deadline,
            timestamp,
            envelope_nonce,
        )
    )


# ---------------------------------------------------------------- byte-level mutations


def head(major: int, arg: int) -> bytes:
    """A CBOR item head (major type, argument), shortest form."""
    if arg < 24:
        return bytes([major << 5 | arg])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if arg < 1 << (8 * size):
            return bytes([major << 5 | info]) + arg.to_bytes(size, "big")
    raise ValueError(arg)


@st.composite
def byte_mutations(draw: st.DrawFn, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["truncate", "flip", "set", "insert", "delete", "splice", "huge", "nest"]))
        if kind == "truncate":
            del data[at:]
        elif kind in ("flip", "set") and at < len(data):
            data[at] = data[at] ^ (1 << draw(st.integers(0, 7))) if kind == "flip" else draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif kind == "splice":
            other = draw(signed_frames())
            data = data[:at] + bytearray(other[draw(st.integers(0, len(other))) :])
        elif kind == "huge" and at < len(data):
            data[at : at + 1] = bytes([data[at] & 0xE0 | 27]) + draw(st.sampled_from([2**64 - 1, 2**32, 2**20])).to_bytes(
                8, "big"
            )
        elif kind == "nest":
            unit = draw(st.sampled_from([b"\x81", b"\x9f", b"\xa1\x61k", b"\xc6"]))
            data[at:at] = unit * draw(st.sampled_from([10, 255, 256, 257, 5000])) + b"\x00"
    return bytes(data)


# ---------------------------------------------------------------- structural mutations (CBOR rebuilt)


class Raw(bytes):
    """Already-encoded CBOR, spliced in as it is."""


def enc(value: Any) -> bytes:
    """CBOR of `value`; a list of pairs is a map that may repeat keys or use any key type."""
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, list) and value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        return head(5, len(value)) + b"".join(enc(k) + enc(v) for k, v in value)
    if isinstance(value, dict):
        return enc(list(value.items())) if value else b"\xa0"
    return cbor2.dumps(value)


WRONG_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64 - 1,
    2**64,
    -(2**64),
    2**200,
    1.5,
    float("nan"),
    float("inf"),
    "",
    "١٢",
    "0x" + "ab" * 20,
    b"",
    b"\x00" * 65,
    [],
    [1, 2],
    {},
    {"k": "v"},
    cbor2.CBORTag(1, 0),
    Raw(b"\xf7"),
    Raw(b"\xf9\x7e\x00"),
    Raw(b"\x7f\x61a\x61b\xff"),
    Raw(b"\x5f\x41a\xff"),
    Raw(b"\x9f\xff"),
]


@st.composite
def structural_mutations(draw: st.DrawFn, frame: bytes) -> bytes:
    """The frame re-encoded as pairs, then entries replaced, repeated, dropped or added;
    or a signature (or signer) taken from another frame."""
    root = cbor2.loads(frame)
    ((variant, body),) = root.items()
    if variant != "SignedLlmRequest":  # an unsigned request
        body = {"payload": body, "signer": b"\x00" * 20, "signature": b"", "timestamp": 0, "nonce": None}
    payload = list(body["payload"].items())
    envelope = [(k, v) for k, v in body.items() if k != "payload"]
    kind = draw(st.sampled_from(["replace", "duplicate", "drop", "add", "foreign_signature", "foreign_signer", "variant"]))
    target = draw(st.sampled_from(["payload", "envelope"]))
    pairs = payload if target == "payload" else envelope
    i = draw(st.integers(0, len(pairs) - 1))
    if kind == "replace":
        pairs[i] = (pairs[i][0], draw(st.sampled_from(WRONG_VALUES)))
    elif kind == "duplicate":
        pairs.insert(draw(st.integers(0, len(pairs))), (pairs[i][0], draw(st.sampled_from(WRONG_VALUES + [pairs[i][1]]))))
    elif kind == "drop":
        del pairs[i]
    elif kind == "add":
        pairs.append((draw(st.sampled_from(["zz", "", "payload", 7, b"k"])), draw(st.sampled_from(WRONG_VALUES))))
    elif kind in ("foreign_signature", "foreign_signer"):
        other = cbor2.loads(draw(signed_frames()))
        other_body = other.get("SignedLlmRequest") or {"signature": b"", "signer": b"\x00" * 20}
        name = "signature" if kind == "foreign_signature" else "signer"
        envelope = [(k, other_body[name] if k == name else v) for k, v in envelope]
    elif kind == "variant":
        variant = draw(
            st.sampled_from(["ModelQuery", "ModelUpdate", "ModelAnnouncement", "LlmRequest", "LlmResponse", "Nope", ""])
        )
    return enc([(variant, [("payload", payload), *envelope])])


def hostile_frames() -> st.SearchStrategy[bytes]:
    return st.one_of(
        signed_frames(),
        signed_frames().flatmap(byte_mutations),
        signed_frames().flatmap(structural_mutations),
        st.binary(max_size=300),
    )


# ---------------------------------------------------------------- the oracle


@dataclass
class Oracle:
    """Sends frames through the handler and checks each answer against the ledger."""

    ledger: Ledger
    runner: asyncio.Runner
    frames: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("served", "refused", "malformed", "acknowledged"), 0))
    served: set[bytes] = field(default_factory=set)  # signer + digest of every request served in this session
    refusals: set[str] = field(default_factory=set)  # every error a client got
    last_row: int = 0

    def session(self, frames: list[bytes]) -> None:
        """One fresh executor (its own replay guard) answers `frames` in order; the ledger is shared."""
        handler = build_request_handler(
            EXECUTOR,
            [ModelConfig(MODEL, inbound_price_wei=1, outbound_price_wei=1)],
            EchoBackend([MODEL]),
            receipt_domain=DOMAIN,
            ledger=self.ledger,
        )
        self.served.clear()
        for frame in frames:
            answer = self.runner.run(handler(frame, CTX))
            self.check(frame, answer)
            self.frames += 1

    def new_rows(self) -> list[dict[str, Any]]:
        rows = [r for r in self.ledger.entries(limit=100) if r["id"] > self.last_row]
        if rows:
            self.last_row = rows[-1]["id"]
        return rows

    def check(self, frame: bytes, answer: bytes | None) -> None:
        """One frame's answer against the codec's verdict and the ledger rows written meanwhile.
        Refusal rows may be kept apart, aggregated or written later (they are bounded under a
        flood), so a refused row is only checked to carry an error some client got."""
        assert isinstance(answer, bytes), f"no answer to {frame.hex()}"
        reply = _native.decode_response(answer)  # raises if our own answer does not decode
        assert reply.signature_valid and reply.recovered == EXECUTOR.address_bytes, reply
        if reply.error is not None:
            self.refusals.add(reply.error)
        rows = self.new_rows()
        served_rows = [r for r in rows if r["status"] == STATUS_SERVED]
        assert all(r["reason"] in self.refusals for r in rows if r["status"] != STATUS_SERVED), rows
        try:
            decoded = _native.decode_request(frame)
        except ValueError as exc:
            assert isinstance(exc, _native.CodecError), repr(exc)
            assert reply.variant == "SignedLlmResponse" and (reply.error or "").startswith("malformed request: ")
            assert served_rows == [] and not any((r["reason"] or "").startswith("malformed") for r in rows), rows
            self.outcomes["malformed"] += 1
            return
        request = decoded.request
        if request is None:
            assert reply.variant == "AcknowledgmentResponse" and served_rows == [], (decoded.variant, rows)
            self.outcomes["acknowledged"] += 1
            return
        assert reply.variant == "SignedLlmResponse", reply
        if reply.error is not None:
            assert served_rows == [], f"a refused frame ({reply.error}) wrote a served row"
            assert reply.receipt is None or reply.receipt["success"] is False
            self.outcomes["refused"] += 1
            return
        # Served: exactly one served row, for a frame that decodes, verifies, is ours and is new.
        assert decoded.is_signed and decoded.signature_valid, "served an unsigned or forged request"
        assert request.executor_address.strip().lower() in {EXECUTOR.peer_id.lower(), EXECUTOR.address.lower()}
        who = bytes(decoded.signer or b"") + bytes(decoded.digest)
        assert who not in self.served, "the same signed request was served twice"
        self.served.add(who)
        (row,) = served_rows
        assert row["reason"] is None and row["request_digest"] == "0x" + bytes(decoded.digest).hex()
        assert row["client_address"] == "0x" + bytes(decoded.signer or b"").hex()
        assert row["total_cost"] == reply.total_cost and row["model"] == MODEL
        receipt = reply.receipt
        assert receipt is not None, "served without a receipt (admission refuses what a receipt cannot hold)"
        assert receipt["success"] is True and bytes(receipt["client"]) == bytes(decoded.signer or b"")
        assert row["receipt_digest"] == "0x" + bytes(receipt["digest"]).hex()
        self.outcomes["served"] += 1


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    data: Path = tmp_path_factory.mktemp("fuzz-ledger")
    with Ledger.in_directory(data) as ledger, asyncio.Runner() as runner:
        yield Oracle(ledger, runner)


def report(name: str, oracle: Oracle, before: int) -> None:
    outcomes = ", ".join(f"{k} {v}" for k, v in oracle.outcomes.items())
    print(f"fuzz handler {name}: {EXAMPLES} examples, {oracle.frames - before} frames (so far: {outcomes})")


def test_the_codec_error_is_a_value_error() -> None:
    """What the handler catches at decode (`ValueError`) is what the codec raises."""
    assert issubclass(_native.CodecError, ValueError)
    with pytest.raises(_native.CodecError, match="truncated frame"):
        _native.decode_request(b"\xa1")


def test_hostile_frames_get_signed_answers_and_honest_rows(oracle: Oracle) -> None:
    before = oracle.frames

    @FUZZ
    @given(st.lists(hostile_frames(), min_size=1, max_size=6))
    def run(frames: list[bytes]) -> None:
        oracle.session(frames)

    run()
    report("hostile_frames", oracle, before)
    assert oracle.outcomes["served"] > 0, "no frame was served: the generator no longer reaches the backend"


def test_replays_are_refused_and_never_served_twice(oracle: Oracle) -> None:
    before = oracle.frames

    @FUZZ
    @given(st.lists(signed_frames(), min_size=1, max_size=4), st.lists(st.integers(0, 3), min_size=1, max_size=6))
    def run(frames: list[bytes], replays: list[int]) -> None:
        oracle.session(frames + [frames[i % len(frames)] for i in replays])

    run()
    report("replays", oracle, before)
