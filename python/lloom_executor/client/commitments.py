"""The client's EIP-712 `LlmRequestCommitment`: what makes an answered request settleable on chain.

AccountingV2's `processRequestSigned` needs the client's EIP-712 signature over the
request commitment (docs/PROTOCOL.md §7); reference clients sign only the p2p
envelope, so their requests can never be settled. A client that wants its usage
settled signs the commitment too and carries the signature in the request's
*envelope* as the `commitment` extension (`{"executor": bytes20, "signature":
bytes65}`): the signed payload is untouched, so every verifier still verifies,
and reference decoders ignore the unknown key (tests/test_interop_rust.py).

The commitment's fields come from the request itself, except `executor` (the
request's `executor_address` may be a PeerId) and the on-chain meaning of
`nonce`: a settleable request's payload `nonce` *is* the client's next on-chain
nonce, and its `deadline` the commitment's deadline.

Nonces (`ChainNonces`): the contract accepts only `clientNonces[client] + 1`, so a
nonce must never be left unused behind a later one. A nonce whose request was
refused, failed to arrive, or was served but not settled by its deadline is free
again and is the next one handed out; `sync` brings the view in line with the
chain (`getCurrentNonce`).

Deadline: `SETTLEABLE_DEADLINE_SECS` (1 hour) by default, so the executor's
settlement loop has time to wait for earlier nonces and for its confirmations.
The executor's replay guard keeps a request's digest until its deadline (capped at
24 hours, `pipeline/replay.py`), so a longer deadline is covered there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import _native

SETTLEABLE_DEADLINE_SECS = 3600
COMMITMENT_KEY = "commitment"


@dataclass
class ChainNonces:
    """The client's on-chain nonces: settled ones, and those held by requests in flight or served."""

    settled: int = 0  # clientNonces[client] as last read from the chain
    _held: dict[int, int] = field(default_factory=dict)  # nonce -> the deadline until which it is held
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, deadline: int) -> int:
        """The lowest nonce above `settled` that nothing holds now (expired holds are free)."""
        now = int(time.time())
        with self._lock:
            nonce = self.settled + 1
            while self._held.get(nonce, 0) >= now:
                nonce += 1
            self._held[nonce] = deadline
            return nonce

    def release(self, nonce: int) -> None:
        """The request was refused or never answered: its nonce is reused by the next request."""
        with self._lock:
            self._held.pop(nonce, None)

    def sync(self, on_chain: int) -> None:
        """The chain's `getCurrentNonce(client)`: nonces at or below it are settled."""
        with self._lock:
            self.settled = max(self.settled, int(on_chain))
            for nonce in [n for n in self._held if n <= self.settled]:
                del self._held[nonce]

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)


@dataclass
class RequestCommitments:
    """Signs requests' EIP-712 commitments for one contract (domain) with the client's key."""

    domain: _native.Eip712Domain
    nonces: ChainNonces = field(default_factory=ChainNonces)
    deadline_secs: int = SETTLEABLE_DEADLINE_SECS

    def sign(
        self,
        key: _native.PrivateKey,
        executor: bytes,
        *,
        model: str,
        prompt: str,
        system_prompt: str | None,
        max_tokens: int | None,
        temperature: float | None,
        inbound_price: str,
        outbound_price: str,
        nonce: int,
        deadline: int,
    ) -> tuple[bytes, dict[str, Any]]:
        """(request hash, the envelope's `commitment` value). `temperature` is the wire f32
        widened (what the executor will read), so both sides hash the same number."""
        digest = bytes(
            self.domain.request_commitment_digest(
                executor,
                model,
                prompt,
                system_prompt,
                max_tokens or 0,
                temperature or 0.0,
                inbound_price,
                outbound_price,
                nonce,
                deadline,
            )
        )
        signature = bytes(key.sign_digest(digest))
        return digest, {"executor": bytes(executor), "signature": signature}
