"""The payloads of request and node events, built once and delivered by webhooks and plugins.

A leaf module: `webhooks/` sends these dicts as signed JSON, `plugins/` hands
them to `on_request_finished`; both take them from here so the two can never
describe the same request differently. The receiver's view of every field is
in docs/webhooks.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _native
from .config.schema import ModelConfig
from .outcome import AnsweredRequest, RefusalCode

REQUEST_COMPLETED = "request_completed"
ERROR = "error"


def signer(decoded: _native.DecodedRequest) -> bytes | None:
    """The 20-byte address that signed the request; None when it is unsigned or badly signed."""
    if decoded.is_signed and decoded.signature_valid and decoded.signer is not None:
        return bytes(decoded.signer)
    return None


def checksum_or_none(address: bytes | None) -> str | None:
    """EIP-55 form of a 20-byte address; None stays None."""
    return _native.checksum_address(address) if address is not None else None


def hex_or_none(value: bytes | None) -> str | None:
    return "0x" + bytes(value).hex() if value is not None else None


def _round_ms(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def request_event(answered: AnsweredRequest) -> tuple[str, dict[str, Any]]:
    """(event name, data) of an answered request: `request_completed` for an answer with
    content, `error` for a signed error answer (`code`: the refusal's label). Build it only
    when someone receives it: the request path does not pay for unsent events."""
    data: dict[str, Any] = {
        "model": answered.model or None,
        "requested_model": answered.requested_model,
        "client": checksum_or_none(answered.client),
        "peer_id": answered.peer_id,
    }
    request_digest = "0x" + answered.request_digest.hex()
    reply = answered.reply
    if reply.error is None:
        data.update(
            inbound_tokens=reply.inbound_tokens,
            outbound_tokens=reply.outbound_tokens,
            total_cost_wei=reply.total_cost,
            latency_ms=_round_ms(answered.total_ms),
            queued_ms=_round_ms(answered.queued_ms),
            backend_ms=_round_ms(answered.backend_ms),
            cached=answered.cached,
            request_digest=request_digest,
            receipt_digest=hex_or_none(answered.receipt.digest) if answered.receipt else None,
        )
        return REQUEST_COMPLETED, data
    data.update(code=str(answered.code), reason=reply.error, request_digest=request_digest)
    return ERROR, data


def malformed_event(peer_id: str, reason: str, suppressed: int = 0) -> tuple[str, dict[str, Any]]:
    """(event name, data) of a frame that did not decode (answered with a signed error).
    `suppressed`: malformed frames not reported since the previous such event."""
    return ERROR, {
        "model": None,
        "requested_model": None,
        "client": None,
        "peer_id": peer_id,
        "code": str(RefusalCode.MALFORMED),
        "reason": reason,
        "suppressed": suppressed,
    }


def model_data(model: ModelConfig, source: str) -> dict[str, Any]:
    """`model_loaded` / `model_unloaded` data; `source` is "config" at start, "discovery" later."""
    return {
        "model": model.name,
        "source": source,
        "context_length": model.context_length,
        "inbound_price_wei": str(model.inbound_price_wei),
        "outbound_price_wei": str(model.outbound_price_wei),
    }


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a plugin's check hook sees of an admitted request (read-only; no key material)."""

    model: str  # the served model (an alias resolved)
    requested_model: str  # as the client sent it
    prompt: str
    system_prompt: str | None
    max_tokens: int  # the output budget the backend gets (the request's, or this executor's default)
    requested_max_tokens: int | None  # as sent; None: not given
    prompt_tokens: int  # our count of the prompt (and system prompt)
    temperature: float | None
    client: str | None  # EIP-55 address of the request's signer; None when unsigned
    peer_id: str  # libp2p peer id of the connection it came on
    remote_ip: str | None
    inbound_price_wei: int  # offered, per input token
    outbound_price_wei: int  # offered, per output token
    deadline: int | None  # unix seconds; None: none
    request_digest: str  # 0x hex: the ledger's key, and `request_digest` in events

    @classmethod
    def of(
        cls,
        decoded: _native.DecodedRequest,
        peer_id: str,
        remote_ip: str | None,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
    ) -> RequestView:
        request = decoded.request
        assert request is not None
        return cls(
            model=model,
            requested_model=request.model,
            prompt=request.prompt,
            system_prompt=request.system_prompt,
            max_tokens=max_tokens,
            requested_max_tokens=request.max_tokens,
            prompt_tokens=prompt_tokens,
            temperature=request.temperature,
            client=checksum_or_none(signer(decoded)),
            peer_id=peer_id,
            remote_ip=remote_ip,
            inbound_price_wei=int(request.inbound_price),
            outbound_price_wei=int(request.outbound_price),
            deadline=request.deadline or None,
            request_digest="0x" + bytes(decoded.digest).hex(),
        )
