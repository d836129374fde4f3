"""Every section and key of the operator's config, as typed, documented dataclasses.

The parser (`parse.py`) reads these definitions: a field's type says what TOML
value it takes, its `setting()` metadata adds bounds, choices, a converter and
the TOML key when it differs. Defaults are the manual's, except that optional
features stay off until configured and admin endpoints bind to loopback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import multiaddr

WEI_PER_ETH = 10**18


def setting(
    default: Any = None,
    *,
    factory: Callable[[], Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    convert: Callable[[Any], Any] | None = None,
    key: str | None = None,
    one_or_many: bool = False,
    secret: bool = False,
    raw: bool = False,
    doc: str = "",
) -> Any:
    """A config field: `convert` turns the TOML value into the stored one or raises ValueError
    (with `raw`, it gets the TOML value unchecked: for fields stored in another type, like wei)."""
    meta = {
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "convert": convert,
        "key": key,
        "one_or_many": one_or_many,
        "secret": secret,
        "raw": raw,
        "doc": doc,
    }
    # secrets stay out of reprs, so a logged or dumped config never shows them
    if factory is not None:
        return field(default_factory=factory, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


# -- converters (raise ValueError with a readable message) --------------------------
def eth_to_wei(text: str) -> int:
    """Exact conversion of a decimal ETH amount ("0.00001") to integer wei."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f'expected a decimal string like "0.00001", got {type(text).__name__}')
    try:
        amount = Decimal(str(text))
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {text!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a non-negative decimal, got {text!r}")
    wei = amount * WEI_PER_ETH
    if wei != wei.to_integral_value():
        raise ValueError(f"{text!r} ETH is not a whole number of wei")
    return int(wei)


def expand_path(text: str) -> str:
    """`~` expands to the operator's home directory in every path setting."""
    return os.path.expanduser(text)


def check_multiaddr(text: str) -> str:
    try:
        multiaddr.Multiaddr(text)
    except Exception as exc:  # the multiaddr package raises several unrelated types
        raise ValueError(f"not a valid multiaddr ({text!r}: {exc})") from None
    return text


def check_peer_multiaddr(text: str) -> str:
    check_multiaddr(text)
    if "/p2p/" not in text:
        raise ValueError(f"must end in /p2p/<peer id> ({text!r})")
    return text


def check_host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return text


def check_url(text: str) -> str:
    if not re.match(r"^[a-z][a-z0-9+.-]*://[^\s/]+", text):
        raise ValueError(f"expected a URL like scheme://host[:port]/path, got {text!r}")
    return text


def check_address(text: str) -> str:
    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", text):
        raise ValueError(f"expected a 0x-prefixed 20-byte hex address, got {text!r}")
    return text


def check_regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {text!r}: {exc}") from None
    return text


# -- sections ------------------------------------------------------------------------
@dataclass(frozen=True)
class ProtocolsConfig:
    """[network.protocols]: each switch starts or skips a real subsystem."""

    enable_mdns: bool = setting(True)
    enable_kad: bool = setting(True)
    enable_gossipsub: bool = setting(True)
    enable_autonat: bool = setting(True)
    enable_relay: bool = setting(True)


@dataclass(frozen=True)
class NetworkConfig:
    """[network]"""

    listen_address: tuple[str, ...] = setting(("/ip4/0.0.0.0/tcp/4001",), convert=check_multiaddr, one_or_many=True)
    external_address: tuple[str, ...] = setting((), convert=check_multiaddr, one_or_many=True)
    bootstrap_peers: tuple[str, ...] = setting((), convert=check_peer_multiaddr)
    relay_addresses: tuple[str, ...] = setting((), convert=check_peer_multiaddr, doc="circuit-relay v2 relays to reserve on")
    announce_interval_secs: int = setting(300, minimum=1)
    protocols: ProtocolsConfig = setting(factory=ProtocolsConfig)
    # ours: inbound connection admission (p2p/admission.py); pending = before noise + muxer finished
    max_pending_per_ip: int = setting(32, minimum=1, maximum=65536, doc="ours: inbound handshakes at once from one address")
    max_pending_per_prefix: int = setting(
        128, minimum=1, maximum=65536, doc="ours: inbound handshakes at once from one /24 (IPv4) or /64 (IPv6)"
    )
    max_pending_total: int = setting(1024, minimum=1, maximum=65536, doc="ours: inbound handshakes at once, all sources")
    max_connections_per_ip: int = setting(
        64, minimum=1, maximum=65536, doc="ours: inbound TCP connections (pending + established) from one address"
    )
    max_connections_per_peer: int = setting(
        8, minimum=1, maximum=1024, doc="ours: connections with one PeerId (relayed clients are counted here)"
    )
    handshake_timeout_secs: float = setting(
        10.0, minimum=0.1, maximum=120.0, doc="ours: accept to a registered connection (multistream, noise, muxer)"
    )


@dataclass(frozen=True)
class IdentityConfig:
    """[identity]: hex key files, mode 0600; by default both hold the same key."""

    private_key_path: str = setting("~/.lloom/executor/identity_key", convert=expand_path)
    ethereum_private_key_path: str = setting("~/.lloom/executor/eth_key", convert=expand_path)


@dataclass(frozen=True)
class OpenAiLimitsConfig:
    """[openai_limits]: enforced before the backend is called."""

    max_requests_per_minute: int | None = setting(None, minimum=1)
    max_tokens_per_minute: int | None = setting(None, minimum=1)
    max_cost_per_day_usd: float | None = setting(None, minimum=0)
    model_prices_usd: dict[str, dict[str, float]] = setting(
        factory=dict, doc="per model: input_per_1k and output_per_1k in USD, for max_cost_per_day_usd"
    )


POOL_STRATEGIES = ("round_robin", "least_loaded")
DEFAULT_BACKEND = "llm_client"
"""The name [llm_client] goes by among the backends ([[models]] backend = "llm_client" is the default)."""


@dataclass(frozen=True)
class LlmClientConfig:
    """[llm_client]: the default backend (models without `backend =` go here)."""

    backend: str = setting("lmstudio", doc="lmstudio, openai, echo, or module:Class of a custom backend")
    base_url: str = setting("http://localhost:1234/v1", convert=check_url)
    base_urls: tuple[str, ...] = setting((), convert=check_url, doc="ours: an instance pool; replaces base_url")
    api_key: str | None = setting(None, secret=True)
    timeout_secs: float = setting(300.0, minimum=0.001)
    max_retries: int = setting(3, minimum=0)
    strategy: str = setting("round_robin", choices=POOL_STRATEGIES, doc="ours: how base_urls share the calls")
    failure_threshold: int = setting(3, minimum=1, maximum=1000, doc="ours: failures in a row that take a pool instance out")
    health_check_interval_secs: float = setting(
        10.0, minimum=0.1, maximum=3600, doc="ours: how often each pool instance is probed (a taken-out one comes back)"
    )


@dataclass(frozen=True)
class LlmBackendConfig:
    """One [[llm_backends]] entry (ours): a named backend beside [llm_client]; its models say
    `backend = "<name>"` in their [[models]] entry. Keys as in [llm_client], plus its own limits."""

    __rejected_keys__: ClassVar[dict[str, str]] = {
        "endpoint": "the reference's name; use base_url (or base_urls for a pool of instances)",
        "supported_models": (
            'not accepted: which backend serves a model is said in its [[models]] entry, backend = "<this name>"'
        ),
    }

    name: str = setting("", doc="unique; letters, digits, '-' and '_'; [[models]] backend = name")
    backend: str = setting("openai", doc="lmstudio, openai, echo, or module:Class of a custom backend")
    base_url: str | None = setting(None, convert=check_url)
    base_urls: tuple[str, ...] = setting((), convert=check_url, doc="an instance pool")
    api_key: str | None = setting(None, secret=True)
    timeout_secs: float = setting(300.0, minimum=0.001)
    max_retries: int = setting(3, minimum=0)
    strategy: str = setting("round_robin", choices=POOL_STRATEGIES)
    failure_threshold: int = setting(3, minimum=1, maximum=1000)
    health_check_interval_secs: float = setting(10.0, minimum=0.1, maximum=3600)
    max_concurrent_requests: int | None = setting(None, minimum=1, doc="calls in flight to this backend, all models")
    limits: OpenAiLimitsConfig = setting(factory=OpenAiLimitsConfig, doc="[openai_limits]-style limits of this backend alone")


@dataclass(frozen=True)
class ModelConfig:
    """One [[models]] entry; prices are ETH per token in TOML, kept here in wei."""

    name: str = setting("")
    enabled: bool = setting(True)
    context_length: int = setting(4096, minimum=1)
    inbound_price_wei: int = setting(0, convert=eth_to_wei, key="inbound_price", raw=True)
    outbound_price_wei: int = setting(0, convert=eth_to_wei, key="outbound_price", raw=True)
    max_batch_size: int | None = setting(
        None, minimum=1, doc="cap on this model's batches; None: [batching] max_batch_size applies"
    )
    max_tokens_per_second: float | None = setting(
        None, minimum=0.001, doc="ceiling on this model's output tokens per second, all its requests together"
    )
    max_concurrent_requests: int | None = setting(None, minimum=1)
    backend: str | None = setting(None, doc="ours: the [[llm_backends]] name serving it; default [llm_client]")
    gpu_memory_gb: float | None = setting(None, minimum=0, doc="GPU memory it holds while it has calls in flight")
    cpu_cores: int | None = setting(None, minimum=1, doc="CPU cores it holds while it has calls in flight")


@dataclass(frozen=True)
class RequestHandlingConfig:
    """[request_handling]"""

    max_concurrent_requests: int = setting(10, minimum=1)
    request_timeout_secs: float = setting(600.0, minimum=0.001)
    max_request_size_bytes: int = setting(1_048_576, minimum=1)
    max_tokens_per_request: int = setting(4096, minimum=1)
    allow_unsigned: bool = setting(False, doc="serve unsigned LlmRequest (the reference does, with a warning)")
    stream_read_timeout_secs: float = setting(30.0, minimum=0.001)
    max_inflight_streams: int = setting(1024, minimum=1, doc="request streams open at once, all peers")
    max_inflight_streams_per_peer: int = setting(256, minimum=1, doc="request streams open at once from one peer")
    drain_timeout_secs: float = setting(30.0, minimum=0, doc="how long shutdown waits for in-flight requests")
    replay_rate_per_sec: int = setting(
        1000, minimum=1, doc="ours: sustained requests/s the replay guard holds a full window for (rate x 600 s entries)"
    )


@dataclass(frozen=True)
class PricingConfig:
    """[pricing]"""

    strategy: str = setting("fixed", choices=("fixed", "dynamic", "market"))
    base_multiplier: float = setting(1.0, minimum=0)
    peak_multiplier: float = setting(1.5, minimum=0)
    off_peak_multiplier: float = setting(0.8, minimum=0)
    update_interval_secs: int = setting(300, minimum=1)


@dataclass(frozen=True)
class BlockchainConfig:
    """[blockchain]: chain id and contract also form the EIP-712 receipt domain; with `enabled`,
    served requests whose client signed the EIP-712 commitment are settled on the contract
    (python/lloom_executor/settlement, docs/settlement.md). The keys after `gas_price_gwei` are ours."""

    enabled: bool = setting(False)
    rpc_url: str = setting("http://localhost:8545", convert=check_url)
    chain_id: int = setting(1, minimum=1)
    contract_address: str = setting("0x0000000000000000000000000000000000000000", convert=check_address)
    gas_price_gwei: float = setting(20.0, minimum=0, doc="max fee per gas (EIP-1559), or the gas price cap (legacy)")
    settlement_key_file: str | None = setting(
        None, convert=expand_path, doc="the funded key that sends settlements (else env LLOOM_SETTLEMENT_KEY)"
    )
    confirmations: int = setting(2, minimum=1, doc="blocks on top of a settlement's block before it counts as confirmed")
    poll_interval_secs: float = setting(5.0, minimum=0.05)
    rpc_timeout_secs: float = setting(10.0, minimum=0.1)
    deadline_margin_secs: int = setting(30, minimum=0, doc="no transaction is sent this close to a request's deadline")
    max_attempts: int = setting(3, minimum=1, doc="transactions sent for one request before it is left as it ended")
    gas_budget_gwei_per_hour: int = setting(0, minimum=0, doc="most gas fees (max fee x gas) sent per hour; 0: no limit")
    min_settle_value_wei: int = setting(0, minimum=0, doc="a request worth less is not sent (stays unsettleable)")


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]"""

    enabled: bool = setting(True)
    endpoint: str = setting("127.0.0.1:9092", convert=check_host_port)
    push_gateway: str | None = setting(None, convert=check_url)
    push_interval_secs: int = setting(30, minimum=1)


@dataclass(frozen=True)
class LoggingConfig:
    """[logging]"""

    level: str = setting("info", choices=("trace", "debug", "info", "warn", "error"))
    file: str | None = setting(None, convert=expand_path)
    max_size_mb: int = setting(100, minimum=1)
    max_backups: int = setting(5, minimum=0)
    compress: bool = setting(False)


@dataclass(frozen=True)
class ModelDiscoveryConfig:
    """[model_discovery]"""

    enabled: bool = setting(False)
    refresh_interval_secs: int = setting(300, minimum=1)
    advertise_models: bool = setting(True)


@dataclass(frozen=True)
class BatchingConfig:
    """[batching]"""

    enabled: bool = setting(False)
    max_batch_size: int = setting(8, minimum=1)
    batch_timeout_ms: int = setting(100, minimum=0)
    group_by_model: bool = setting(True)


@dataclass(frozen=True)
class PriorityConfig:
    """[priority]"""

    enabled: bool = setting(False)
    high_priority_price_multiplier: float = setting(1.5, minimum=1.0)
    queue_sizes: dict[str, int] = setting(factory=lambda: {"low": 100, "normal": 200, "high": 50})


@dataclass(frozen=True)
class ModelResources:
    memory_gb: float = setting(0.0, minimum=0)
    gpu_required: bool = setting(False)


@dataclass(frozen=True)
class ResourcesConfig:
    """[resources] and [resources.per_model]"""

    max_memory_gb: float | None = setting(None, minimum=0)
    max_cpu_percent: float = setting(100.0, minimum=1, maximum=100)
    gpu_memory_reserved_gb: float = setting(0.0, minimum=0)
    swap_enabled: bool = setting(False)
    per_model: dict[str, ModelResources] = setting(factory=dict)


@dataclass(frozen=True)
class RedisCacheConfig:
    url: str = setting("redis://localhost:6379", convert=check_url)
    prefix: str = setting("lloom:cache:")


@dataclass(frozen=True)
class CacheConfig:
    """[cache] and [cache.redis]"""

    enabled: bool = setting(False)
    backend: str = setting("memory", choices=("memory", "redis", "disk"))
    max_size_gb: float = setting(1.0, minimum=0)
    ttl_seconds: int = setting(3600, minimum=1)
    path: str = setting("~/.lloom/executor/cache", convert=expand_path, doc="directory of the disk cache")
    deterministic_only: bool = setting(True, doc="cache only temperature-0 requests")
    redis: RedisCacheConfig = setting(factory=RedisCacheConfig)


@dataclass(frozen=True)
class ModelAffinity:
    model: str = setting("")
    devices: tuple[int, ...] = setting(())


@dataclass(frozen=True)
class GpuAllocationConfig:
    """[gpu_allocation] and [[gpu_allocation.model_affinity]]"""

    strategy: str = setting("round_robin", choices=("round_robin", "least_loaded", "affinity"))
    devices: tuple[int, ...] = setting(())
    model_affinity: tuple[ModelAffinity, ...] = setting(())


@dataclass(frozen=True)
class ApiConfig:
    """[api]: health and admin endpoints; loopback unless configured."""

    enabled: bool = setting(True)
    listen_address: str = setting("127.0.0.1:8080", convert=check_host_port)
    auth_token: str | None = setting(None, secret=True)
    tls_cert: str | None = setting(None, convert=expand_path)
    tls_key: str | None = setting(None, convert=expand_path)


@dataclass(frozen=True)
class ContentFilterConfig:
    """[content_filter]"""

    enabled: bool = setting(False)
    block_patterns: tuple[str, ...] = setting((), convert=check_regex)
    max_prompt_length: int | None = setting(None, minimum=1)
    scan_responses: bool = setting(False)


@dataclass(frozen=True)
class RateLimitRule:
    identifier: str = setting("peer_id", choices=("peer_id", "ip_address"))
    max_requests_per_minute: int | None = setting(None, minimum=1)
    max_tokens_per_minute: int | None = setting(None, minimum=1)
    burst_size: int | None = setting(None, minimum=1)


@dataclass(frozen=True)
class RateLimitingConfig:
    """[rate_limiting] and [[rate_limiting.rules]]"""

    enabled: bool = setting(False)
    rules: tuple[RateLimitRule, ...] = setting(())


@dataclass(frozen=True)
class ClusteringConfig:
    """[clustering]"""

    enabled: bool = setting(False)
    node_id: str | None = setting(None)
    peers: tuple[str, ...] = setting((), convert=check_host_port)
    consensus: str = setting("raft", doc='only "raft": coordination runs on etcd (config/rules.py says why)')
    shared_state_backend: str = setting("redis", choices=("redis", "sqlite"))
    redis_url: str | None = setting(
        None,
        convert=check_url,
        secret=True,
        doc="ours: redis://[:password@]host:port/db (rediss:// for TLS); the state the members share",
    )
    etcd_endpoints: tuple[str, ...] = setting(
        (), convert=check_url, doc="ours: client URLs of an etcd v3 cluster (http:// or https://): membership, leader, epoch"
    )
    etcd_prefix: str = setting("/lloom-executor/", doc="ours: the etcd key prefix of this executor's cluster (ends in /)")
    etcd_lease_ttl_secs: int = setting(10, minimum=2, doc="ours: a member that stops renewing is gone after this")
    etcd_ca_file: str | None = setting(None, doc="ours: CA bundle for https:// etcd endpoints (default: system CAs)")
    members: tuple[str, ...] = setting((), doc="ours: every member's node_id; spaces the gossip sequence numbers")


@dataclass(frozen=True)
class FailoverConfig:
    """[failover]"""

    enabled: bool = setting(False)
    role: str = setting("primary", choices=("primary", "backup"))
    health_check_interval_secs: int = setting(10, minimum=1)
    takeover_delay_secs: int = setting(30, minimum=0)
    vip_address: str | None = setting(None)


@dataclass(frozen=True)
class PluginConfig:
    """One [[plugins]] entry: a Python plugin loaded at start (see docs/plugins.md)."""

    name: str = setting("", doc="unique; letters, digits, '-' and '_'; names its logger and metric labels")
    path: str = setting("", convert=expand_path, doc="a .py file, a package directory, or a compiled extension module")
    config: dict[str, Any] = setting(factory=dict, doc="passed to the plugin's create_plugin(config, context)")
    timeout_secs: float = setting(
        1.0, minimum=0.001, maximum=300, doc="time bound of each hook call; a check hook over it refuses the request"
    )


WEBHOOK_EVENTS = ("request_completed", "error", "model_loaded", "model_unloaded", "started", "stopped")
"""Every event a `[[webhooks.endpoints]]` entry may subscribe to (docs/webhooks.md describes them)."""


@dataclass(frozen=True)
class WebhookEndpoint:
    url: str = setting("", convert=check_url)
    events: tuple[str, ...] = setting(("request_completed", "error"), choices=WEBHOOK_EVENTS)
    auth_header: str | None = setting(None, secret=True)
    retry_attempts: int = setting(3, minimum=0)


@dataclass(frozen=True)
class WebhooksConfig:
    """[webhooks] and [[webhooks.endpoints]]"""

    enabled: bool = setting(False)
    endpoints: tuple[WebhookEndpoint, ...] = setting(())


@dataclass(frozen=True)
class StorageConfig:
    """[storage] (ours, not in the manual): where the ledger and other state live."""

    data_dir: str = setting("~/.lloom/executor/data", convert=expand_path)


def check_workers(value: Any) -> int | str:
    """`[runtime] workers`: "auto" or a whole number of worker processes, 1 to 1024."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise ValueError(f'expected "auto" or a number of workers 1-1024, got {value!r}')
    return value


@dataclass(frozen=True)
class RuntimeConfig:
    """[runtime] (ours): how many worker processes serve this node (docs/workers.md)."""

    workers: int | str = setting(
        1, convert=check_workers, raw=True, doc='"auto" (the cores this process may use) or a number; 1 = one process'
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration; see `load_config` for files, `${VAR}` and environment overrides."""

    network: NetworkConfig = setting(factory=NetworkConfig)
    identity: IdentityConfig = setting(factory=IdentityConfig)
    llm_client: LlmClientConfig = setting(factory=LlmClientConfig)
    llm_backends: tuple[LlmBackendConfig, ...] = setting(())
    models: tuple[ModelConfig, ...] = setting(())
    request_handling: RequestHandlingConfig = setting(factory=RequestHandlingConfig)
    pricing: PricingConfig = setting(factory=PricingConfig)
    blockchain: BlockchainConfig = setting(factory=BlockchainConfig)
    metrics: MetricsConfig = setting(factory=MetricsConfig)
    logging: LoggingConfig = setting(factory=LoggingConfig)
    openai_limits: OpenAiLimitsConfig = setting(factory=OpenAiLimitsConfig)
    model_discovery: ModelDiscoveryConfig = setting(factory=ModelDiscoveryConfig)
    model_aliases: dict[str, str] = setting(factory=dict)
    batching: BatchingConfig = setting(factory=BatchingConfig)
    priority: PriorityConfig = setting(factory=PriorityConfig)
    resources: ResourcesConfig = setting(factory=ResourcesConfig)
    cache: CacheConfig = setting(factory=CacheConfig)
    gpu_allocation: GpuAllocationConfig = setting(factory=GpuAllocationConfig)
    api: ApiConfig = setting(factory=ApiConfig)
    content_filter: ContentFilterConfig = setting(factory=ContentFilterConfig)
    rate_limiting: RateLimitingConfig = setting(factory=RateLimitingConfig)
    clustering: ClusteringConfig = setting(factory=ClusteringConfig)
    failover: FailoverConfig = setting(factory=FailoverConfig)
    plugins: tuple[PluginConfig, ...] = setting(())
    webhooks: WebhooksConfig = setting(factory=WebhooksConfig)
    storage: StorageConfig = setting(factory=StorageConfig)
    runtime: RuntimeConfig = setting(factory=RuntimeConfig)

    if TYPE_CHECKING:
        # Attached by the package `__init__`, which owns the parser and the rules (this
        # module only declares sections); declared here so callers are type-checked.
        @classmethod
        def from_dict(cls, data: dict[str, Any]) -> Config:
            """Parse an already-loaded table without the environment; raises ConfigError."""

        @classmethod
        def load(cls, path: str | Path) -> Config:
            """Read and validate a file, ignoring the environment; raises ConfigError."""
