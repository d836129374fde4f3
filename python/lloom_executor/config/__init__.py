"""Configuration: typed sections (`schema`), the TOML reader (`parse`), environment
overrides (`overrides`), cross-field rules (`rules`) and what is not active yet (`features`).

`load_config(path)` is the one entry point for a file; `Config.from_dict`
parses an already-loaded table without consulting the environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .features import inactive_features
from .overrides import apply_env_overrides, rust_log_level
from .parse import Problem, Report, expand_env, locate_keys, parse_dataclass
from .rules import check_rules
from .schema import (
    ApiConfig,
    BatchingConfig,
    BlockchainConfig,
    CacheConfig,
    Config,
    ContentFilterConfig,
    IdentityConfig,
    LlmClientConfig,
    LoggingConfig,
    MetricsConfig,
    ModelConfig,
    NetworkConfig,
    PricingConfig,
    PriorityConfig,
    ProtocolsConfig,
    RateLimitingConfig,
    RateLimitRule,
    RequestHandlingConfig,
    RuntimeConfig,
    StorageConfig,
    check_workers,
    eth_to_wei,
)

DEFAULT_CONFIG_PATH = Path("~/.lloom/executor/config.toml")


class ConfigError(ValueError):
    """The configuration has errors; `problems` lists each with its key path (and line)."""

    def __init__(self, issues: list[Problem], warnings: list[Problem] | None = None):
        self.issues = issues
        self.warnings = warnings or []
        self.problems = [str(p) for p in issues]
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: Path | None
    warnings: list[Problem]


def parse_config(
    data: dict[str, Any], environ: Mapping[str, str] | None = None, line_of: dict[str, int] | None = None
) -> tuple[Config, Report]:
    """Everything but reading the file: `${VAR}`, overrides, types, rules. Never raises."""
    report = Report(line_of)
    if environ is not None:
        data = expand_env(data, "", report, environ)
        data = apply_env_overrides(data, environ, report)
    config = parse_dataclass(Config, data, "", report)
    check_rules(config, report)
    return config, report


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read, expand, override and validate; raises ConfigError listing every error."""
    environ = os.environ if environ is None else environ
    file = Path(path if path is not None else DEFAULT_CONFIG_PATH).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(str(file), "config file not found (create one with `lloom-executor init`)")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(str(file), f"TOML syntax error: {exc}")]) from None
    config, report = parse_config(data, environ, locate_keys(text))
    if report.errors:
        raise ConfigError(report.errors, report.warnings)
    return LoadedConfig(config, file, report.warnings)


def _from_dict(cls: type[Config], data: dict[str, Any]) -> Config:
    config, report = parse_config(data)
    if report.errors:
        raise ConfigError(report.errors)
    return config


def _load(cls: type[Config], path: str | Path) -> Config:
    return load_config(path, environ={}).config


# Declared (for type checkers) in schema.Config, which cannot import the parser: attached here,
# replacing those declarations, which mypy reports as assigning to a method.
Config.from_dict = classmethod(_from_dict)  # type: ignore[method-assign,assignment]
Config.load = classmethod(_load)  # type: ignore[method-assign,assignment]

__all__ = [
    "ApiConfig",
    "BatchingConfig",
    "BlockchainConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "ContentFilterConfig",
    "DEFAULT_CONFIG_PATH",
    "IdentityConfig",
    "LlmClientConfig",
    "LoadedConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "NetworkConfig",
    "PricingConfig",
    "PriorityConfig",
    "Problem",
    "ProtocolsConfig",
    "RateLimitRule",
    "RateLimitingConfig",
    "RequestHandlingConfig",
    "RuntimeConfig",
    "StorageConfig",
    "check_workers",
    "eth_to_wei",
    "inactive_features",
    "load_config",
    "parse_config",
    "rust_log_level",
]
