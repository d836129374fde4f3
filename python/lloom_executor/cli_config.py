"""What every command shares about `--config`: the option, the file it names, and loading it
(or exiting with every problem, each with its key and line)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .config import DEFAULT_CONFIG_PATH, ConfigError, LoadedConfig, load_config

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
