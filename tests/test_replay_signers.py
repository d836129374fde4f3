"""Replay protection is per signer: a replay is the same signer resending the same signed payload.

Real signed frames through the real request path (`build_request_handler` with
a response cache and EIP-712 receipts); receipts are read back from the
answer's envelope and checked to name the client that asked.
"""

from __future__ import annotations

import asyncio
import time

from lloom_executor import _native
from lloom_executor.backends import EchoBackend
from lloom_executor.cache.memory import MemoryCache
from lloom_executor.config import ModelConfig
from lloom_executor.outcome import RefusalCode
from lloom_executor.p2p.llm_protocol import RequestContext
from lloom_executor.pipeline.replay import ReplayGuard, replay_key
from lloom_executor.serving import RequestHandler, build_request_handler

EXECUTOR = _native.PrivateKey.generate()
DOMAIN = _native.Eip712Domain(1, "0x" + "11" * 20)
CTX = RequestContext("16Uiu2HAmTestPeer", "127.0.0.1", 0, 0.0)


def handler(**kw: object) -> RequestHandler:
    return build_request_handler(EXECUTOR, [ModelConfig("m")], EchoBackend(["m"]), receipt_domain=DOMAIN, **kw)  # type: ignore[arg-type]


def signed_by(client: _native.PrivateKey, now: int, prompt: str = "the reference client's demo prompt") -> bytes:
    """What a reference client sends: nonce 1, deadline now + 300, the same payload for everyone."""
    return bytes(
        _native.encode_signed_request(client, "m", prompt, None, None, 16, EXECUTOR.peer_id, "1", "1", 1, now + 300, now)
    )


def ask(h: RequestHandler, *frames: bytes) -> list[_native.DecodedResponse]:
    async def run() -> list[_native.DecodedResponse]:
        return [_native.decode_response(await h(f, CTX)) for f in frames]

    return asyncio.run(run())


def receipt_client(answer: _native.DecodedResponse) -> bytes:
    assert answer.receipt is not None
    return bytes(answer.receipt["client"])


def test_two_clients_with_identical_payloads_in_the_same_second_are_both_served() -> None:
    now = int(time.time())
    alice, bob = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    first, second = signed_by(alice, now), signed_by(bob, now)
    assert _native.decode_request(first).digest == _native.decode_request(second).digest  # the payloads are equal
    a, b = ask(handler(), first, second)
    assert a.error is None and b.error is None
    assert receipt_client(a) == alice.address_bytes and receipt_client(b) == bob.address_bytes


def test_the_same_client_resending_its_frame_is_refused() -> None:
    frame = signed_by(_native.PrivateKey.generate(), int(time.time()))
    served, replayed = ask(handler(), frame, frame)
    assert served.error is None
    assert replayed.error == "replay: this signed request was already received" and replayed.total_cost == "0"


def test_a_payload_re_signed_by_another_signer_is_served_once_per_signer() -> None:
    """A captured frame whose signature is replaced by another signer's over the same payload is
    that signer's request (and that signer pays): once each, each receipt naming its own client."""
    now = int(time.time())
    original, thief = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    frame = signed_by(original, now)
    decoded = _native.decode_request(frame)
    re_signed = signed_by(thief, now)
    assert _native.decode_request(re_signed).digest == decoded.digest and bytes(decoded.signer) == original.address_bytes
    answers = ask(handler(), frame, re_signed, frame, re_signed)
    assert [a.error is None for a in answers] == [True, True, False, False]
    assert receipt_client(answers[0]) == original.address_bytes and receipt_client(answers[1]) == thief.address_bytes


def test_a_cached_answer_carries_a_receipt_naming_the_client_that_asked() -> None:
    now = int(time.time())
    alice, bob = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    cache = MemoryCache(1 << 20, 3600, deterministic_only=False)
    h = handler(cache=cache)
    a, b = ask(h, signed_by(alice, now), signed_by(bob, now))
    assert cache.stats().hits == 1  # bob's answer came from the cache
    assert a.content == b.content and a.error is None and b.error is None
    assert receipt_client(a) == alice.address_bytes and receipt_client(b) == bob.address_bytes


def test_unsigned_requests_are_keyed_on_the_digest_alone() -> None:
    now = int(time.time())
    unsigned = bytes(_native.encode_unsigned_request("m", "hi", None, None, 16, EXECUTOR.peer_id, "1", "1", 1, now + 300))
    decoded = _native.decode_request(unsigned)
    assert replay_key(decoded) == bytes(decoded.digest)
    signed = _native.decode_request(signed_by(_native.PrivateKey.generate(), now, "hi"))
    assert replay_key(signed) == bytes(signed.signer) + bytes(signed.digest) and len(replay_key(signed)) == 52
    served, replayed = ask(handler(allow_unsigned=True, replay=ReplayGuard()), unsigned, unsigned)
    assert served.error is None and replayed.error == "replay: this signed request was already received"
    assert RefusalCode.REPLAY == "replay"


def test_capacity_follows_the_configured_rate_and_forced_evictions_are_counted() -> None:
    """The guard holds rate x 600 s entries; when it is full of live ones the soonest-expiring
    is forgotten, and /metrics counts it."""
    from lloom_executor.config import RequestHandlingConfig
    from lloom_executor.metrics import Metrics
    from lloom_executor.pipeline.replay import DEFAULT_WINDOW_SECS, capacity_for

    assert capacity_for(1000) == 600_000 == int(1000 * DEFAULT_WINDOW_SECS)
    metrics = Metrics()
    h = handler(metrics=metrics, handling=RequestHandlingConfig(replay_rate_per_sec=1))  # 600 entries
    assert h.admission.replay.max_entries == 600
    now = int(time.time())
    clients = [_native.PrivateKey.generate() for _ in range(601)]
    answers = ask(h, *(signed_by(c, now) for c in clients))
    assert all(a.error is None for a in answers)
    exposition = {s.name: s.value for m in metrics.collect() for s in m.samples if s.name.startswith("lloom_executor_replay")}
    assert exposition == {
        "lloom_executor_replay_entries": 600,
        "lloom_executor_replay_capacity": 600,
        "lloom_executor_replay_forced_evictions_total": 1,
    }
