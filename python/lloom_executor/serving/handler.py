"""The asyncio-side answer to one `/lloom/llm/1.0.0` frame: the executor's request path.

decode (native codec) -> admission (`admission.py`) -> the backend turn
(`execution.py`) -> response checks (the built-in filter, then the plugins'
check_response) -> exact wei pricing -> receipt, ledger row, observers and
the signed `SignedLlmResponse` (`answer.py`). Every refusal is a signed error
answer (docs/PROTOCOL.md §5); an unexpected fault in our own code becomes one
too (`internal_error`), never a dropped stream.

The handler holds no configuration of its own: `service.py` builds its parts
and hands them over.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .. import _native
from ..backends.base import weakest_source
from ..cache.base import ResponseCache
from ..outcome import Refusal, RefusalCode, Reply, Timings
from ..p2p.llm_protocol import RequestContext
from ..pipeline.content_filter import ContentFilter
from ..pipeline.model_registry import ModelRegistry
from ..plugins import PluginHost
from .admission import NATIVE_SOURCE, Admission, Admitted, plugin_view
from .answer import AnswerWriter
from .execution import INTERNAL_ERROR, Execution, Produced, outbound_tokens, public_failure

log = logging.getLogger(__name__)

DRAINING = "executor is shutting down; send the request to another executor"
WITHHELD = "the answer was withheld by this executor's content filter"


class RequestHandler:
    """Answers one request frame with signed bytes (the P2P layer's `RequestHandler`)."""

    def __init__(
        self,
        registry: ModelRegistry,
        admission: Admission,
        execution: Execution,
        answers: AnswerWriter,
        *,
        content_filter: ContentFilter | None = None,
        plugins: PluginHost | None = None,
    ) -> None:
        self.registry = registry
        self.admission = admission
        self.execution = execution
        self.answers = answers
        self.content_filter = content_filter
        self.plugins = plugins
        self.draining = False  # set on shutdown: new requests get a signed refusal

    async def __call__(self, frame: bytes, ctx: RequestContext) -> bytes | None:
        try:
            decoded = _native.decode_request(frame)
        except ValueError as exc:  # the codec's message says what is wrong with the frame
            log.info("undecodable request from %s: %s", ctx.peer_id, exc)
            return self.answers.malformed(ctx.peer_id, str(exc))
        request = decoded.request
        if request is None:
            return self.answers.acknowledge(decoded)
        now = time.monotonic()
        timings = Timings(ctx.received_at if 0 < ctx.received_at <= now else now)
        admitted: Admitted | None = None
        code = RefusalCode.SUCCESS
        try:
            if self.draining:
                raise Refusal(DRAINING, RefusalCode.DRAINING)
            admitted = await self.admission.admit(decoded, ctx)
            reply = await self._serve(admitted, timings)
        except asyncio.CancelledError:  # the client's connection ended (or the node stops): no answer
            if admitted is not None:  # nothing was served: the same signed request may come again
                self.admission.forget(admitted)
            self.answers.cancelled(decoded, ctx, timings, self._served_name(admitted, request.model))
            raise
        except Refusal as refused:
            reply, code = Reply.refusal(request.model, refused.reason), refused.code
            if refused.detail:
                log.debug("refused a request from %s (%s): %s", ctx.peer_id, refused.code, refused.detail)
        except Exception as exc:  # a bug of ours: the client still gets a signed answer, the log the detail
            log.exception("request from %s failed inside the executor", ctx.peer_id)
            failure = public_failure(exc, request.model)
            reply, code = Reply.refusal(request.model, failure.reason), failure.code
        served = self._served_name(admitted, request.model)
        try:
            return await self.answers.answer(decoded, ctx, admitted, reply, timings, code, served)
        except Exception:  # a bug of ours while answering: still a signed answer, never a dropped stream
            log.exception("answering a request from %s failed inside the executor", ctx.peer_id)
            return self.answers.error(request.model, INTERNAL_ERROR)

    def _served_name(self, admitted: Admitted | None, requested: str) -> str:
        """The name of ours the request meant: the admitted model, else what `requested` resolves
        to ("" for none: only our names label metrics)."""
        served = admitted.model if admitted is not None else self.registry.resolve(requested)
        return served.name if served else ""

    async def _serve(self, admitted: Admitted, timings: Timings) -> Reply:
        """The backend turn, then the response checks, then the price; `model_used` names the
        served model (not the alias). The content, fresh or cached, passes the built-in response
        filter and the plugins' check_response once each, after the request timeout's bound (a
        plugin's check has its own `timeout_secs`). Only a fresh answer both let through is cached."""
        produced = await self.execution.produce(admitted, timings, lambda: self.admission.forget(admitted))
        content = produced.completion.content
        if self.content_filter is not None and self.content_filter.check_response(content) is not None:
            raise Refusal(WITHHELD, RefusalCode.CONTENT_FILTERED)
        plugins = self.plugins
        if plugins is not None and plugins.checks_responses:
            refusal = await plugins.check_response(plugin_view(admitted.candidate), content)
            if refusal is not None:
                raise refusal
        if produced.fresh:
            await self._cache(admitted, produced)
        return self._priced(admitted, produced)

    async def _cache(self, admitted: Admitted, produced: Produced) -> None:
        cache: ResponseCache | None = self.execution.cache
        if cache is None or produced.cache_key is None:
            return
        try:
            await cache.put(produced.cache_key, produced.completion)
        except Exception as exc:  # the answer is good; only its reuse is lost
            log.warning("response cache write failed for model %s: %s", admitted.model.name, exc)

    @staticmethod
    def _priced(admitted: Admitted, produced: Produced) -> Reply:
        """Exact wei: tokens (the backend's counts, else ours) times the request's offered prices,
        which admission checked cover ours; the reply says who counted (the weakest source)."""
        completion = produced.completion
        request = admitted.candidate.request
        sources = [completion.token_source]  # who counted what the backend reported
        inbound = completion.inbound_tokens
        if inbound is None:  # admission's count: the model's tokenizer where it asked it, else ours
            inbound = admitted.prompt_tokens
            sources.append(admitted.prompt_source)
        outbound = produced.outbound if produced.outbound is not None else outbound_tokens(completion)
        if completion.outbound_tokens is None:
            sources.append(NATIVE_SOURCE)
        cost = inbound * int(request.inbound_price) + outbound * int(request.outbound_price)
        return Reply(completion.content, inbound, outbound, str(cost), admitted.model.name, token_source=weakest_source(*sources))
