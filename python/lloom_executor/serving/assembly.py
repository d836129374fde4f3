"""`build_request_handler`: the request path from its parts.

`service.py` builds the parts from the config and hands them here; tests and
benches call it with only the stages they exercise, so the order in which the
stages are joined (admission, execution, answer) is written once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .. import _native
from ..backends.base import LlmBackend
from ..cache.base import ResponseCache
from ..config import ModelConfig, RequestHandlingConfig
from ..ledger import Ledger
from ..metrics import Metrics
from ..pipeline.content_filter import ContentFilter
from ..pipeline.dispatch import Dispatcher, direct_dispatcher
from ..pipeline.model_registry import ModelRegistry
from ..pipeline.ratelimits import RateLimitRules
from ..pipeline.replay import ReplayGuard, ReplayStore, capacity_for
from ..pipeline.resources import ResourceGovernor
from ..plugins import PluginHost
from ..webhooks import Webhooks
from .admission import standard_admission
from .answer import AnswerWriter, Observers
from .execution import Execution
from .handler import RequestHandler


def build_request_handler(
    key: _native.PrivateKey,
    models: Iterable[ModelConfig] | ModelRegistry,
    backend: LlmBackend,
    *,
    handling: RequestHandlingConfig | None = None,
    allow_unsigned: bool = False,
    peer_id: str | None = None,
    aliases: Mapping[str, str] | None = None,
    receipt_domain: _native.Eip712Domain | None = None,
    ledger: Ledger | None = None,
    dispatcher: Dispatcher | None = None,
    replay: ReplayStore | None = None,
    rate_limits: RateLimitRules | None = None,
    content_filter: ContentFilter | None = None,
    cache: ResponseCache | None = None,
    resources: ResourceGovernor | None = None,
    metrics: Metrics | None = None,
    webhooks: Webhooks | None = None,
    plugins: PluginHost | None = None,
) -> RequestHandler:
    """The request path from its parts; what is not given is off (replay protection and the
    dispatcher always exist: a fresh guard, the direct path bounded by `max_concurrent_requests`).
    `ExecutorService` builds it from the config; tests build it with the stages they exercise."""
    handling = handling or RequestHandlingConfig()
    registry = models if isinstance(models, ModelRegistry) else ModelRegistry(models, aliases)
    if dispatcher is None:
        dispatcher = direct_dispatcher(handling.max_concurrent_requests, resources=resources)
    replay = replay if replay is not None else ReplayGuard(max_entries=capacity_for(handling.replay_rate_per_sec))
    if metrics is not None:
        metrics.watch_replay(lambda: (len(replay), replay.max_entries, replay.forced_evictions))
        if ledger is not None:
            metrics.watch_ledger(ledger.status)
    admission = standard_admission(
        registry=registry,
        replay=replay,
        handling=handling,
        allow_unsigned=allow_unsigned,
        peer_id=peer_id or key.peer_id,
        evm_address=key.address,
        rate_limits=rate_limits,
        content_filter=content_filter,
        plugins=plugins,
        on_rate_limited=metrics.rate_limited if metrics is not None else None,
        commitment_domain=receipt_domain,  # a client's EIP-712 request signature is checked in our domain
        prompt_counter=backend.count_prompt,  # the served model's tokenizer, for prompts near the context length
    )
    execution = Execution(
        backend,
        dispatcher,
        registry,
        request_timeout_secs=handling.request_timeout_secs,
        cache=cache,
        on_cache_result=metrics.cache_result if metrics is not None else None,
    )
    answers = AnswerWriter(key, receipt_domain=receipt_domain, ledger=ledger, observers=Observers(metrics, webhooks, plugins))
    return RequestHandler(registry, admission, execution, answers, content_filter=content_filter, plugins=plugins)
