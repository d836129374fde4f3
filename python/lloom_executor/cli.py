"""The `lloom-executor` command line (click)."""
from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import click

from . import __version__
from .config import DEFAULT_CONFIG_PATH, ConfigError, load_config

CONFIG_HELP = f"Config file (default {DEFAULT_CONFIG_PATH})."


def config_option(fn):
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help=CONFIG_HELP)(fn)


def config_file(config_path: Path | None) -> Path:
    return (config_path or DEFAULT_CONFIG_PATH).expanduser()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lloom-executor")
def main() -> None:
    """Run a Lloom executor node: sell LLM inference on the Lloom P2P network."""


@main.command()
@config_option
@click.option("--force", is_flag=True, help="Replace an existing config and keys.")
@click.option("--separate-keys", is_flag=True, help="Generate different keys for the libp2p identity and the Ethereum key.")
def init(config_path: Path | None, force: bool, separate_keys: bool) -> None:
    """Create the config file (commented defaults) and the node's key files."""
    from .config import IdentityConfig
    from .identity import IdentityError, create_identity

    path = config_file(config_path)
    if path.exists() and not force:
        raise click.ClickException(f"{path} already exists; use --force to replace it (and the keys)")
    identity_cfg = IdentityConfig(
        private_key_path=str(path.parent / "identity_key"), ethereum_private_key_path=str(path.parent / "eth_key")
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        identity = create_identity(identity_cfg, force=force, separate_keys=separate_keys)
    except IdentityError as exc:
        raise click.ClickException(str(exc)) from None
    template = resources.files("lloom_executor").joinpath("data/config.default.toml").read_text(encoding="utf-8")
    text = template.replace("{identity_key}", identity_cfg.private_key_path).replace("{eth_key}", identity_cfg.ethereum_private_key_path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    click.echo(f"config:      {path}")
    click.echo(f"keys:        {identity_cfg.private_key_path}, {identity_cfg.ethereum_private_key_path} (mode 0600)")
    click.echo(f"peer id:     {identity.peer_id}")
    click.echo(f"EVM address: {identity.address}")


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("validate")
@config_option
def config_validate(config_path: Path | None) -> None:
    """Check the config: every problem with its key (and line), unknown keys, cross-field rules."""
    path = config_file(config_path)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        for problem in exc.issues:
            click.echo(f"error: {problem}", err=True)
        for problem in exc.warnings:
            click.echo(f"warning: {problem}", err=True)
        click.echo(f"{path}: {len(exc.issues)} error(s)", err=True)
        sys.exit(1)
    for problem in loaded.warnings:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"{path}: valid ({len(loaded.warnings)} warning(s))")
