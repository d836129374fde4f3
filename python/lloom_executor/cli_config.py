"""What every command shares: `--config` (the option, the file it names, and loading it, or
exiting with every problem, each with its key and line) and the plain-text tables they print."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .config import DEFAULT_CONFIG_PATH, Config, ConfigError, LoadedConfig, load_config

CONFIG_HELP = f"Config file (default {DEFAULT_CONFIG_PATH})."

_Command = TypeVar("_Command", bound=Callable[..., Any])


def config_option(fn: _Command) -> _Command:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help=CONFIG_HELP
    )(fn)


def config_file(config_path: Path | None) -> Path:
    return (config_path or DEFAULT_CONFIG_PATH).expanduser()


def echo_problems(exc: ConfigError) -> None:
    for problem in exc.issues:
        click.echo(f"error: {problem}", err=True)
    for problem in exc.warnings:
        click.echo(f"warning: {problem}", err=True)


def load_or_exit(config_path: Path | None) -> LoadedConfig:
    """The validated config, or a clean exit listing every error."""
    path = config_file(config_path)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        echo_problems(exc)
        raise click.ClickException(
            f"{path}: {len(exc.issues)} configuration error(s); see `lloom-executor config validate`"
        ) from None
    return loaded


def configured_backends(config: Config) -> dict[str, dict[str, Any]]:
    """From the config alone: each backend (`llm_client` first) with its kind, its instances
    (credential-free URLs, or "device N") and the models it serves, for `models list`
    and `test-backend`."""
    from .backends.from_config import device_url, instance_label
    from .backends.registry import DEFAULT_BASE_URLS
    from .config.schema import DEFAULT_BACKEND

    llm = config.llm_client
    if config.gpu_allocation.devices:
        instances = [f"device {d}: {instance_label(device_url(llm.base_url, d))}" for d in config.gpu_allocation.devices]
    else:
        instances = [instance_label(u) for u in (llm.base_urls or (llm.base_url,))]
    out: dict[str, dict[str, Any]] = {
        DEFAULT_BACKEND: {"kind": llm.backend, "instances": instances if llm.backend != "echo" else [], "models": []}
    }
    for entry in config.llm_backends:
        default = DEFAULT_BASE_URLS.get(entry.backend)
        urls = entry.base_urls or ((entry.base_url,) if entry.base_url else (default,) if default else ())
        out[entry.name] = {
            "kind": entry.backend,
            "instances": [instance_label(u) for u in urls] if entry.backend != "echo" else [],
            "models": [],
        }
    for model in config.models:
        backend = out.get(model.backend or DEFAULT_BACKEND)
        if backend is not None:  # an unknown name is a config error, reported by `config validate`
            backend["models"].append(model.name)
    return out


def describe_backend(name: str, backend: dict[str, Any]) -> str:
    """One line: "llm_client: lmstudio at http://a/v1, http://b/v1"."""
    where = f" at {', '.join(backend['instances'])}" if backend["instances"] else ""
    return f"{name}: {backend['kind']}{where}"


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)))
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)))
