"""Cross-field rules: what no single key can check on its own."""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urlsplit

from .parse import Report
from .schema import DEFAULT_BACKEND, Config

_BACKENDS = ("lmstudio", "openai", "echo")


def check_rules(config: Config, report: Report) -> None:
    names = [m.name for m in config.models]
    for i, model in enumerate(config.models):
        if not model.name:
            report.error(f"models[{i}].name", "required")
        elif names.index(model.name) != i:
            report.error(f"models[{i}].name", f"duplicate model {model.name!r}")
    known = set(names)

    check_backends(config, report)
    check_blockchain(config, report)

    for alias, target in config.model_aliases.items():
        if target not in known:
            report.error(f"model_aliases.{alias}", f"points to {target!r}, which is not a configured model")
        if alias in known:
            report.error(f"model_aliases.{alias}", "an alias may not shadow a configured model name")

    gpu = config.gpu_allocation
    for i, rule in enumerate(gpu.model_affinity):
        where = f"gpu_allocation.model_affinity[{i}]"
        if rule.model not in known:
            report.error(f"{where}.model", f"{rule.model!r} is not a configured model")
        elif backend_of(config, rule.model) != DEFAULT_BACKEND:
            report.error(
                f"{where}.model", f"{rule.model!r} is served by backend {backend_of(config, rule.model)!r}, not the device pool"
            )
        missing = [d for d in rule.devices if d not in gpu.devices]
        if missing:
            report.error(f"{where}.devices", f"devices {missing} are not in gpu_allocation.devices {list(gpu.devices)}")
    if gpu.strategy == "affinity" and not gpu.model_affinity:
        report.error("gpu_allocation.strategy", "affinity needs [[gpu_allocation.model_affinity]] entries")

    api = config.api
    if (api.tls_cert is None) != (api.tls_key is None):
        report.error("api.tls_cert", "tls_cert and tls_key must be given together")
    for key in ("tls_cert", "tls_key"):
        path = getattr(api, key)
        if path is not None and not os.path.isfile(path):
            report.error(f"api.{key}", f"file not found: {path}")
    host = api.listen_address.rpartition(":")[0].strip("[]")
    if api.enabled and not api.auth_token and not _is_loopback(host):
        report.warning("api.auth_token", f"the API listens on {host} without an auth_token")

    for i, limit in enumerate(config.rate_limiting.rules):
        where = f"rate_limiting.rules[{i}]"
        if limit.max_requests_per_minute is None and limit.max_tokens_per_minute is None:
            report.error(where, "a rule needs max_requests_per_minute or max_tokens_per_minute")
        if limit.burst_size is not None and limit.max_requests_per_minute is None:
            report.error(f"{where}.burst_size", "burst_size needs max_requests_per_minute")

    for name, size in config.priority.queue_sizes.items():
        if name not in ("low", "normal", "high"):
            report.error(f"priority.queue_sizes.{name}", "queues are low, normal and high")
        elif size < 1:
            report.error(f"priority.queue_sizes.{name}", f"must be >= 1, got {size}")

    p = config.pricing
    if not p.off_peak_multiplier <= p.base_multiplier <= p.peak_multiplier:
        report.warning("pricing", "expected off_peak_multiplier <= base_multiplier <= peak_multiplier")

    for name in config.resources.per_model:
        if name not in known:
            report.warning(f"resources.per_model.{name}", "not a configured model")

    limits = config.openai_limits
    for name, prices in limits.model_prices_usd.items():
        for key in prices:
            if key not in ("input_per_1k", "output_per_1k"):
                report.error(f"openai_limits.model_prices_usd.{name}.{key}", "expected input_per_1k or output_per_1k")
    if limits.max_cost_per_day_usd is not None:
        for name in sorted(set(models_of(config, DEFAULT_BACKEND)) - set(limits.model_prices_usd)):
            report.error(
                "openai_limits.max_cost_per_day_usd",
                f"needs a USD price for model {name!r} in openai_limits.model_prices_usd",
            )

    check_webhooks(config, report)
    if config.clustering.enabled and not config.clustering.node_id:
        report.error("clustering.node_id", "required when clustering is enabled")
    if config.clustering.enabled and config.clustering.shared_state_backend == "redis":
        url = config.clustering.redis_url
        if not url:
            report.error("clustering.redis_url", 'required when clustering is enabled with shared_state_backend = "redis"')
        elif not url.startswith(("redis://", "rediss://", "unix://")):
            report.error("clustering.redis_url", "expected redis://, rediss:// (TLS) or unix://")
    if config.clustering.enabled and config.clustering.shared_state_backend == "sqlite":
        report.error("clustering.shared_state_backend", 'members on several machines cannot share a SQLite file; use "redis"')
    check_coordination(config, report)
    check_plugins(config, report)


def check_coordination(config: Config, report: Report) -> None:
    """[clustering]'s etcd keys (docs/clustering.md, "Coordination")."""
    clustering = config.clustering
    if clustering.consensus != "raft":
        report.error(
            "clustering.consensus",
            f'only "raft" is supported, got {clustering.consensus!r}: membership and leader election run on etcd, '
            "whose consensus is raft; there is no other implementation to choose",
        )
    for endpoint in clustering.etcd_endpoints:
        if not endpoint.startswith(("http://", "https://")):
            report.error("clustering.etcd_endpoints", f"expected http:// or https:// client URLs, got {endpoint!r}")
    if not clustering.etcd_prefix.endswith("/"):
        report.error("clustering.etcd_prefix", "must end with /")
    if clustering.members and clustering.node_id not in clustering.members:
        report.error("clustering.members", "must list this member's node_id")


_PLUGIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_BACKEND_NAME = _PLUGIN_NAME
DEVICE_PLACEHOLDER = "{device}"


ZERO_ADDRESS = "0x" + "0" * 40


def check_blockchain(config: Config, report: Report) -> None:
    """Settlement sends transactions: the example's placeholders (zero address) must never reach a
    chain, and the RPC endpoint must be one a JSON-RPC client can POST to."""
    chain = config.blockchain
    if not chain.enabled:
        return
    if chain.contract_address.lower() == ZERO_ADDRESS:
        report.error("blockchain.contract_address", "the zero address: set the AccountingV2 contract to settle on")
    if urlsplit(chain.rpc_url).scheme not in ("http", "https"):
        report.error("blockchain.rpc_url", f"expected an http(s) JSON-RPC URL, got {chain.rpc_url!r}")
    if chain.gas_price_gwei <= 0:
        report.error("blockchain.gas_price_gwei", "must be above 0: it caps the fee of every settlement")


def backend_of(config: Config, model: str) -> str:
    """The name of the backend serving `model` ("llm_client" unless its entry names one)."""
    for m in config.models:
        if m.name == model:
            return m.backend or DEFAULT_BACKEND
    return DEFAULT_BACKEND


def models_of(config: Config, backend: str) -> list[str]:
    """The configured models the backend named `backend` serves."""
    return [m.name for m in config.models if (m.backend or DEFAULT_BACKEND) == backend]


def _check_kind(kind: str, api_key: str | None, where: str, report: Report) -> None:
    if kind not in _BACKENDS and not re.fullmatch(r"[\w.]+:[\w.]+", kind):
        report.error(f"{where}.backend", f"must be one of {', '.join(_BACKENDS)} or module:Class, got {kind!r}")
    if kind == "openai" and not api_key:
        report.warning(f"{where}.api_key", "the openai backend needs an API key (set it or OPENAI_API_KEY)")


def _check_urls(urls: tuple[str, ...], where: str, report: Report) -> None:
    seen: set[str] = set()
    for j, url in enumerate(urls):
        if url.rstrip("/") in seen:
            report.error(f"{where}.base_urls[{j}]", f"duplicate instance {url!r}")
        seen.add(url.rstrip("/"))


def check_backends(config: Config, report: Report) -> None:
    """[llm_client] and [[llm_backends]]: kinds, names, one way to give the URL(s), every
    backend used by some model and every model's backend configured."""
    llm = config.llm_client
    _check_kind(llm.backend, llm.api_key, "llm_client", report)
    _check_urls(llm.base_urls, "llm_client", report)
    if llm.base_urls and config.gpu_allocation.devices:
        report.error("llm_client.base_urls", "give either base_urls or [gpu_allocation] devices ({device} in base_url), not both")
    names: dict[str, int] = {}
    for i, entry in enumerate(config.llm_backends):
        where = f"llm_backends[{i}]"
        if not entry.name:
            report.error(f"{where}.name", "required")
        elif entry.name == DEFAULT_BACKEND:
            report.error(f"{where}.name", f"{DEFAULT_BACKEND!r} is [llm_client]'s name; choose another")
        elif not _BACKEND_NAME.fullmatch(entry.name):
            report.error(
                f"{where}.name",
                f"must start with a letter and hold only letters, digits, '-' and '_' (at most 64), got {entry.name!r}",
            )
        elif entry.name in names:
            report.error(f"{where}.name", f"duplicate backend name {entry.name!r}, also llm_backends[{names[entry.name]}]")
        else:
            names[entry.name] = i
        _check_kind(entry.backend, entry.api_key, where, report)
        if entry.base_url is not None and entry.base_urls:
            report.error(f"{where}.base_urls", "give base_url (one instance) or base_urls (a pool), not both")
        elif entry.base_url is None and not entry.base_urls and entry.backend not in ("echo", "openai"):
            report.error(f"{where}.base_url", f"required for the {entry.backend} backend (or base_urls for a pool)")
        for url in (entry.base_url, *entry.base_urls):
            if url is not None and DEVICE_PLACEHOLDER in url:
                report.error(
                    f"{where}.base_url", "{device} belongs to [llm_client] with [gpu_allocation]; list base_urls instead"
                )
                break
        _check_urls(entry.base_urls, where, report)
        if not models_of(config, entry.name) and entry.name:
            report.warning(where, f"backend {entry.name!r} serves no model (no [[models]] entry says backend = {entry.name!r})")
        prices = entry.limits.model_prices_usd
        for model, table in prices.items():
            for key in table:
                if key not in ("input_per_1k", "output_per_1k"):
                    report.error(f"{where}.limits.model_prices_usd.{model}.{key}", "expected input_per_1k or output_per_1k")
        if entry.limits.max_cost_per_day_usd is not None:
            for model in models_of(config, entry.name):
                if model not in prices:
                    report.error(
                        f"{where}.limits.max_cost_per_day_usd",
                        f"needs a USD price for model {model!r} in limits.model_prices_usd",
                    )
    for i, served in enumerate(config.models):
        if served.backend is not None and served.backend != DEFAULT_BACKEND and served.backend not in names:
            known = ", ".join([DEFAULT_BACKEND, *names]) if names else f"{DEFAULT_BACKEND} only: there are no [[llm_backends]]"
            report.error(f"models[{i}].backend", f"names backend {served.backend!r}, which is not configured (known: {known})")


def plugin_location(path: str) -> tuple[str, str | None]:
    """What a `[[plugins]] path` points to: ("file" | "package" | "extension", None), or ("", why not).

    The loader (`plugins/loading.py`) and `config validate` share it. An extension module must be
    built for this interpreter: `<module>.so` or `<module><one of EXTENSION_SUFFIXES>`, with
    `<module>` a Python identifier (its init function is PyInit_<module>).
    """
    from importlib.machinery import EXTENSION_SUFFIXES

    if not os.path.exists(path):
        return "", f"not found: {path}"
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "__init__.py")):
            return "package", None
        return "", f"{path} is a directory without __init__.py (a plugin package needs one)"
    name = os.path.basename(path)
    if name.endswith(".py"):
        return "file", None
    module, dot, suffix = name.partition(".")
    if dot and "." + suffix in EXTENSION_SUFFIXES:
        if not module.isidentifier():
            return "", f"an extension module's file name must start with a Python identifier (its PyInit_ name), got {name!r}"
        return "extension", None
    if name.endswith((".so", ".pyd")):
        return "", (
            f"{name} is not an extension module for this Python (it loads {', '.join(EXTENSION_SUFFIXES)}); "
            "rebuild the plugin for this interpreter"
        )
    return "", (
        f"expected a .py file, a package directory or a compiled extension module ({', '.join(EXTENSION_SUFFIXES)}), got {name!r}"
    )


def check_plugins(config: Config, report: Report) -> None:
    """Each [[plugins]] entry: a unique, well-formed name and a loadable location (nothing is imported here)."""
    seen: dict[str, int] = {}
    for i, plugin in enumerate(config.plugins):
        where = f"plugins[{i}]"
        if not plugin.name:
            report.error(f"{where}.name", "required")
        elif not _PLUGIN_NAME.fullmatch(plugin.name):
            report.error(
                f"{where}.name",
                f"must start with a letter and hold only letters, digits, '-' and '_' (at most 64), got {plugin.name!r}",
            )
        else:
            key = plugin.name.replace("-", "_")  # its module name: `a-b` and `a_b` would be one module
            if key in seen:
                first = config.plugins[seen[key]].name
                same = "" if first == plugin.name else f" ({first!r} and {plugin.name!r} name the same module)"
                report.error(f"{where}.name", f"duplicate plugin name {plugin.name!r}, also plugins[{seen[key]}]{same}")
            else:
                seen[key] = i
        if not plugin.path:
            report.error(f"{where}.path", "required")
            continue
        _, problem = plugin_location(plugin.path)
        if problem is not None:
            report.error(f"{where}.path", problem)


def check_webhooks(config: Config, report: Report) -> None:
    """Endpoints are http(s) URLs; an auth header is one line (and not sent in clear text to
    another machine); an enabled [webhooks] with no endpoint, or an endpoint with no event, sends nothing."""
    hooks = config.webhooks
    if hooks.enabled and not hooks.endpoints:
        report.warning("webhooks", "enabled without [[webhooks.endpoints]]: no events are sent")
    for i, endpoint in enumerate(hooks.endpoints):
        where = f"webhooks.endpoints[{i}]"
        try:
            parts = urlsplit(endpoint.url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            report.error(f"{where}.url", f"not a valid URL ({exc}): {endpoint.url!r}")
            continue
        if not endpoint.url:
            report.error(f"{where}.url", "required")
        elif parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            report.error(f"{where}.url", f"expected an http:// or https:// URL, got {endpoint.url!r}")
        if endpoint.auth_header is not None and (problem := header_value_problem(endpoint.auth_header)):
            report.error(f"{where}.auth_header", problem)  # never the value: it is a secret
        elif endpoint.auth_header and parts.scheme.lower() == "http" and parts.hostname and not _is_loopback(parts.hostname):
            report.warning(f"{where}.auth_header", f"sent in clear text to {parts.hostname} over http://; use https://")
        if not endpoint.events:
            report.warning(f"{where}.events", "empty: this endpoint receives no events")


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be sent as an HTTP header value as it is (None: it can). The message
    never quotes the value. Leading or trailing whitespace (e.g. "Bearer " from an empty
    ${TOKEN}), control characters and non-ASCII are rejected here, at load time, rather than
    by the HTTP client at every delivery."""
    if any(c in value for c in "\r\n\0"):
        return "must be a single line (no line breaks)"
    if value != value.strip():
        return "has leading or trailing whitespace (an empty ${VARIABLE} in it?)"
    if not (value.isascii() and value.isprintable()):
        return "contains a control character or a character that is not printable ASCII"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
