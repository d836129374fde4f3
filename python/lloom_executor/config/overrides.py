"""Environment overrides the manual documents, applied to the raw TOML before validation.

So a bad override is reported like a bad key. `LLOOM_PRIVATE_KEY` is not a
config value: `identity.py` reads it (it wins over the key files).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .parse import Report

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_RUST_LEVELS = {"trace", "debug", "info", "warn", "error"}


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str], report: Report) -> dict[str, Any]:
    data = dict(data)

    port = environ.get("LLOOM_EXECUTOR_PORT")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            report.error("env LLOOM_EXECUTOR_PORT", f"expected a TCP port 1-65535, got {port!r}")
        else:
            network = dict(data.get("network") or {})
            listen = network.get("listen_address", ["/ip4/0.0.0.0/tcp/4001"])
            listen = [listen] if isinstance(listen, str) else list(listen)
            network["listen_address"] = [re.sub(r"/tcp/\d+", f"/tcp/{port}", a) if isinstance(a, str) else a for a in listen]
            data["network"] = network

    names = environ.get("LLOOM_EXECUTOR_MODELS")
    if names is not None:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        if not wanted:
            report.error("env LLOOM_EXECUTOR_MODELS", "empty model list")
        else:
            models = [dict(m) for m in data.get("models") or [] if isinstance(m, dict)]
            configured = {m.get("name") for m in models}
            for m in models:
                m["enabled"] = m.get("name") in wanted
            for name in wanted:
                if name not in configured:
                    report.warning(
                        "env LLOOM_EXECUTOR_MODELS",
                        f"model {name!r} has no [[models]] entry: serving it at price 0 until one is configured",
                    )
                    models.append({"name": name})
            data["models"] = models

    metrics = environ.get("LLOOM_METRICS_ENABLED")
    if metrics is not None:
        if metrics.lower() not in _TRUE | _FALSE:
            report.error("env LLOOM_METRICS_ENABLED", f"expected true or false, got {metrics!r}")
        else:
            data["metrics"] = {**(data.get("metrics") or {}), "enabled": metrics.lower() in _TRUE}

    workers = environ.get("LLOOM_EXECUTOR_WORKERS")
    if workers is not None:  # checked like the [runtime] key it overrides
        data["runtime"] = {**(data.get("runtime") or {}), "workers": workers}

    api_key = environ.get("OPENAI_API_KEY")
    llm = data.get("llm_client") or {}
    if api_key and llm.get("backend") == "openai" and not llm.get("api_key"):
        data["llm_client"] = {**llm, "api_key": api_key}

    directives = environ.get("RUST_LOG")
    if directives:
        level = rust_log_level(directives)
        if level is None:
            report.warning("env RUST_LOG", f"no level for lloom_executor in {directives!r}; ignored")
        else:
            data["logging"] = {**(data.get("logging") or {}), "level": level}
    return data


def rust_log_level(directives: str) -> str | None:
    """The level RUST_LOG gives `lloom_executor` ("lloom_executor=debug", "warn", "info,lloom_executor=trace")."""
    level = None
    for directive in directives.split(","):
        directive = directive.strip().lower()
        if directive in _RUST_LEVELS:
            level = level or directive
        elif "=" in directive:
            target, _, value = directive.partition("=")
            if target.replace("-", "_") == "lloom_executor" and value in _RUST_LEVELS:
                return value
    return level
