"""Turning a reply into the signed answer: receipt, ledger row, observers, wire bytes.

Order matters: a served answer's ledger row is committed (and synced) before
the answer leaves, so nothing is served that the ledger does not hold; a
failed write turns a would-be served answer into a signed error
(`ledger_error`). A refusal's record is handed to the ledger without waiting
for a write (what is kept of refusals is bounded: `ledger/refusals.py`), so
a flood of cheap refusals is not a flood of fsyncs. The metrics, the
webhooks and the plugins then see one `AnsweredRequest`, the answer as the
client got it, so they cannot disagree with the ledger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .. import _native
from ..events import ERROR, REQUEST_COMPLETED, malformed_event, request_event, signer
from ..ledger import Ledger
from ..metrics import Metrics
from ..outcome import AnsweredRequest, Receipt, RefusalCode, Reply, Timings
from ..p2p.llm_protocol import RequestContext
from ..plugins import PluginHost
from ..webhooks import Webhooks
from .admission import Admitted
from .records import ledger_entry, settlement_commitment, sign_receipt

log = logging.getLogger(__name__)

MALFORMED_REPORT_INTERVAL_SECS = 10.0  # at most one `malformed` event per interval for the whole node
LEDGER_FAILED = "executor could not record the request; it was not served"
CANCELLED = "the request was cancelled before its answer (the client's connection ended)"


@dataclass(frozen=True)
class Observers:
    """Who hears about answered requests (each None when not configured)."""

    metrics: Metrics | None = None
    webhooks: Webhooks | None = None
    plugins: PluginHost | None = None


class AnswerWriter:
    """Signs, records and reports every answer of one executor."""

    def __init__(
        self,
        key: _native.PrivateKey,
        *,
        receipt_domain: _native.Eip712Domain | None,
        ledger: Ledger | None,
        observers: Observers,
        malformed_report_interval_secs: float = MALFORMED_REPORT_INTERVAL_SECS,
    ) -> None:
        self.key = key
        self.receipt_domain = receipt_domain  # None: answers carry no EIP-712 receipt
        self.ledger = ledger  # None: nothing is recorded (tests of other stages)
        self.observers = observers
        self.malformed_report_interval_secs = malformed_report_interval_secs
        self._malformed_next_report = -float("inf")  # time.monotonic() from which the next may be reported
        self._malformed_held_back = 0  # malformed frames not reported since the last report

    async def answer(
        self,
        decoded: _native.DecodedRequest,
        ctx: RequestContext,
        admitted: Admitted | None,
        reply: Reply,
        timings: Timings,
        code: RefusalCode,
        served_model: str,
    ) -> bytes:
        """Sign the receipt (admitted requests only), commit the row, report, and encode the answer.
        `served_model`: the name of ours the request meant ("" for none): only our names label series."""
        request = decoded.request
        assert request is not None
        timestamp = int(time.time())
        domain = self.receipt_domain if admitted is not None else None
        receipt = sign_receipt(domain, self.key, decoded, reply, timestamp) if domain is not None else None
        answered = self._answered(decoded, ctx, reply, timings, code, served_model, receipt)
        if self.ledger is not None:
            if answered.served:
                try:
                    entry = ledger_entry(answered)
                    signature = admitted.candidate.client_commitment if admitted is not None else None
                    if signature is not None and receipt is not None:  # verified at admission: settleable
                        entry = replace(entry, client_commitment=settlement_commitment(request, reply, receipt, signature))
                    await self.ledger.record_async(entry)  # committed and synced
                except Exception as exc:  # never serve what the ledger does not hold
                    log.debug("ledger write failed; answering request from %s with an error: %s", ctx.peer_id, exc)
                    reply = Reply.refusal(request.model, LEDGER_FAILED)
                    receipt = sign_receipt(domain, self.key, decoded, reply, timestamp) if domain is not None else None
                    answered = replace(answered, reply=reply, receipt=receipt, code=RefusalCode.LEDGER_ERROR)
            self._record_refusal(answered)
        self._report(answered)
        return _native.encode_signed_response(
            self.key,
            reply.content,
            reply.inbound_tokens,
            reply.outbound_tokens,
            reply.total_cost,
            reply.model_used,
            reply.error,
            timestamp,
            None,
            receipt.envelope() if receipt is not None else None,
        )

    def cancelled(self, decoded: _native.DecodedRequest, ctx: RequestContext, timings: Timings, served_model: str) -> None:
        """The work for a request was cancelled before its answer (the client's connection ended,
        or the node stopped): nothing is sent, and its refusal record and metrics say so."""
        request = decoded.request
        assert request is not None
        reply = Reply.refusal(request.model, CANCELLED)
        answered = self._answered(decoded, ctx, reply, timings, RefusalCode.CANCELLED, served_model, None)
        self._record_refusal(answered)
        self._report(answered)

    @staticmethod
    def _answered(
        decoded: _native.DecodedRequest,
        ctx: RequestContext,
        reply: Reply,
        timings: Timings,
        code: RefusalCode,
        served_model: str,
        receipt: Receipt | None,
    ) -> AnsweredRequest:
        request = decoded.request
        assert request is not None
        return AnsweredRequest(
            code=code,
            reply=reply,
            model=served_model,
            requested_model=request.model,
            client=signer(decoded),
            peer_id=ctx.peer_id,
            inbound_price=request.inbound_price,
            outbound_price=request.outbound_price,
            request_digest=bytes(decoded.digest),
            receipt=receipt,
            queued_ms=timings.queued_ms,
            backend_ms=timings.backend_ms,
            total_ms=timings.total_ms(),
            cached=timings.cached,
        )

    def _record_refusal(self, answered: AnsweredRequest) -> None:
        """A refusal is kept without waiting for a write (`ledger/refusals.py`: bounded under a
        flood); the signed refusal leaves at once. A served answer has its row already."""
        if answered.served or self.ledger is None:
            return
        try:
            self.ledger.record_refusal(ledger_entry(answered), str(answered.code))
        except Exception:  # the refusal is sent either way
            log.exception("could not keep the ledger record of a refusal")

    def _report(self, answered: AnsweredRequest) -> None:
        metrics = self.observers.metrics
        if metrics is not None:
            reply = answered.reply
            metrics.request_finished(
                answered.model or "unknown",
                str(answered.code),
                answered.total_ms / 1000.0,
                reply.inbound_tokens,
                reply.outbound_tokens,
                int(reply.total_cost) if answered.served else 0,
            )
            if answered.served and reply.token_source is not None:
                metrics.token_count(reply.token_source)
        self._emit(REQUEST_COMPLETED if answered.served else ERROR, request_event, answered)

    def _emit(self, event: str, build: Callable[..., tuple[str, dict[str, Any]]], *args: Any) -> None:
        """`event` to the webhooks and the plugins' on_request_finished; its data is built only
        when one of them listens, and then once for both. A fault here is logged, never raised."""
        webhooks, plugins = self.observers.webhooks, self.observers.plugins
        to_webhooks = webhooks is not None and webhooks.wants(event)
        to_plugins = plugins is not None and plugins.observes
        if not (to_webhooks or to_plugins):
            return
        try:
            event, data = build(*args)
            if to_webhooks:
                webhooks.emit(event, data)  # type: ignore[union-attr]  # to_webhooks: not None
            if to_plugins:
                plugins.request_finished(event, data)  # type: ignore[union-attr]
        except Exception:
            log.exception("could not report the event of a request")

    def malformed(self, peer_id: str, problem: str) -> bytes:
        """The signed error for a frame that did not decode. Its `error` event is sent at most
        once per `malformed_report_interval_secs` for the whole node (junk costs a sender
        nothing; one event per frame would push real events out of the bounded queues), with
        the count held back since the previous one."""
        reason = f"malformed request: {problem}"
        now = time.monotonic()
        if now < self._malformed_next_report:
            self._malformed_held_back += 1
        else:
            held, self._malformed_held_back = self._malformed_held_back, 0
            self._malformed_next_report = now + self.malformed_report_interval_secs
            self._emit(ERROR, malformed_event, peer_id, reason, held)
        return self.error("", reason)

    def error(self, model: str, reason: str) -> bytes:
        return _native.encode_signed_response(self.key, "", 0, 0, "0", model, reason, int(time.time()))

    def acknowledge(self, decoded: _native.DecodedRequest) -> bytes:
        """Validator messages: acknowledged (signed) but not acted on by this executor."""
        return _native.encode_signed_ack(
            self.key, decoded.digest.hex(), False, f"{decoded.variant} is not handled by this executor", int(time.time())
        )
