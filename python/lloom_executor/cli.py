"""The `lloom-executor` command line (click)."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import __version__
from .cli_benchmark import benchmark
from .cli_cluster import cluster_group
from .cli_config import CONFIG_HELP, config_file, config_option, echo_problems, load_or_exit, print_table
from .cli_dashboards import dashboards_group
from .cli_maintenance import maintenance_group
from .cli_settlement import settlement_group
from .config import ConfigError, load_config

if TYPE_CHECKING:  # imported where used, so that every command starts fast
    from .diagnostics import ModelCheck, ModelRow
    from .update import UpdatePaths


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
    text = template.replace("{identity_key}", identity_cfg.private_key_path).replace(
        "{eth_key}", identity_cfg.ethereum_private_key_path
    )
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
        echo_problems(exc)
        click.echo(f"{path}: {len(exc.issues)} error(s)", err=True)
        sys.exit(1)
    for problem in loaded.warnings:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"{path}: valid ({len(loaded.warnings)} warning(s))")


@main.command()
@config_option
@click.option("--debug", is_flag=True, help="Log at debug level (overrides [logging] level).")
@click.option(
    "--workers", default=None, help='Worker processes of this node: "auto" (one per core) or N (default [runtime] workers).'
)
def start(config_path: Path | None, debug: bool, workers: str | None) -> None:
    """Start the executor and serve until SIGINT/SIGTERM (then drain and exit 0)."""
    from .cli_start import run_start

    run_start(config_path, debug, workers)


@main.command("test-backend")
@config_option
def test_backend(config_path: Path | None) -> None:
    """Connect to each LLM backend, list its models and run one short completion per enabled model it serves."""
    import asyncio
    import dataclasses

    from .backends.base import BackendError
    from .backends.from_config import running_backends
    from .cli_config import configured_backends, describe_backend
    from .diagnostics import check_backend

    config = load_or_exit(config_path).config
    described = configured_backends(config)

    async def run() -> dict[str, tuple[list[str], list[ModelCheck]] | BackendError]:
        results: dict[str, tuple[list[str], list[ModelCheck]] | BackendError] = {}
        async with running_backends(config) as backends:
            for name, entry in backends.entries.items():
                served = tuple(m for m in config.models if backends.backend_of(m.name) == name)
                try:
                    results[name] = await check_backend(entry.serving, dataclasses.replace(config, models=served))
                except BackendError as exc:
                    results[name] = exc
        return results

    results = asyncio.run(run())
    checks: list[ModelCheck] = []
    unreachable: list[str] = []
    for name, result in results.items():
        click.echo(f"backend {describe_backend(name, described[name])}")
        if isinstance(result, BackendError):
            problem = f"backend unreachable: {type(result).__name__}: {result}"
            if len(results) == 1:
                raise click.ClickException(problem)
            unreachable.append(name)
            click.echo(f"  {problem}")
            continue
        available, backend_checks = result
        click.echo(f"  models offered by the backend: {', '.join(available) if available else 'none'}")
        checks += backend_checks
    if not checks and not unreachable:
        raise click.ClickException("no enabled [[models]] to test")
    routes = {m: name for name, b in described.items() for m in b["models"]}
    print_table(
        ["model", "backend", "result", "latency", "ttft", "tokens", "tokens/s", "detail"],
        [
            [
                c.model,
                routes.get(c.model, "-"),
                "ok" if c.ok else "FAILED",
                f"{c.latency_s * 1000:.0f} ms",
                f"{c.ttft_s * 1000:.0f} ms" if c.ttft_s is not None else "-",
                c.tokens,
                f"{c.tokens_per_s:.1f}" if c.tokens_per_s else "-",
                c.detail,
            ]
            for c in checks
        ],
    )
    failed = [c for c in checks if not c.ok]
    problems = [f"{len(failed)} of {len(checks)} model(s) failed"] if failed else []
    problems += [f"backend(s) unreachable: {', '.join(unreachable)}"] if unreachable else []
    if problems:
        raise click.ClickException("; ".join(problems))


@main.group("models")
def models_group() -> None:
    """Models this executor serves."""


INSECURE_HELP = "With TLS: accept the API's certificate without verifying it (default: trust [api] tls_cert as CA)."


def no_node_message(url: str) -> str:
    return f"no running executor at {url} (start one with `lloom-executor start`)"


@models_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--offline", is_flag=True, help="Ask neither the running node nor the backend: config only.")
@click.option("--insecure", is_flag=True, help=INSECURE_HELP)
def models_list(config_path: Path | None, as_json: bool, offline: bool, insecure: bool) -> None:
    """Models with prices (wei per token), aliases and the backend's state of each.

    From the running node's API ([api] listen_address) when it answers, with
    the other executors it sees on the network; else from the config and the backend.
    """
    import asyncio
    import dataclasses
    import json

    from .api import ApiRequestError, ApiUnreachable, api_base_url, api_get
    from .backends.from_config import running_backends
    from .cli_config import configured_backends, describe_backend
    from .diagnostics import model_rows

    config = load_or_exit(config_path).config
    backends = configured_backends(config)
    served_by = {m: name for name, b in backends.items() for m in b["models"]}
    if not offline and config.api.enabled:
        try:
            data = api_get(config.api, "/admin/models", insecure=insecure)
        except ApiUnreachable:
            data = None
        except ApiRequestError as exc:
            click.echo(f"warning: running node's API: {exc}; using the config and the backend", err=True)
            data = None
        if data is not None:
            data["source"] = api_base_url(config.api)
            data["backends"] = backends
            if as_json:
                click.echo(json.dumps(data, indent=2))
                return
            click.echo(f"source: running executor at {data['source']}")
            click.echo(f"backend: {data['backend']['type']} ({data['backend_status']})")
            for name, backend in backends.items():
                click.echo(f"  {describe_backend(name, backend)}")
            print_table(
                ["model", "aliases", "enabled", "context", "inbound wei/token", "outbound wei/token", "backend", "served by"],
                [
                    [
                        r["name"],
                        ",".join(r["aliases"]) or "-",
                        r["enabled"],
                        r["context_length"],
                        r["inbound_price_wei"],
                        r["outbound_price_wei"],
                        r["backend_state"],
                        served_by.get(r["name"], "-"),
                    ]
                    for r in data["models"]
                ],
            )
            network = data.get("network") or {}
            click.echo(f"\nother executors on the network: {len(network)}")
            if network:
                print_table(
                    ["peer", "address", "models (inbound/outbound wei per token)"],
                    [
                        [
                            peer,
                            info.get("address") or "-",
                            ", ".join(
                                f"{m.get('model_id', '?')} "
                                f"{'/'.join(map(str, (info.get('prices') or {}).get(m.get('model_id'), ['?', '?'])))}"
                                for m in info.get("models", [])
                            )
                            or "-",
                        ]
                        for peer, info in sorted(network.items())
                    ],
                )
            return

    async def run() -> tuple[list[ModelRow], str]:
        if offline:
            return await model_rows(config, None)
        async with running_backends(config) as backends:
            return await model_rows(config, backends)

    rows, status = asyncio.run(run())
    if as_json:
        click.echo(
            json.dumps(
                {
                    "backend_status": status,
                    "models": [dict(dataclasses.asdict(r), served_by=served_by.get(r.name)) for r in rows],
                    "backends": backends,
                    "source": "config",
                },
                indent=2,
            )
        )
        return
    click.echo(f"backend: {config.llm_client.backend} ({status})")
    for name, backend in backends.items():
        click.echo(f"  {describe_backend(name, backend)}")
    print_table(
        ["model", "aliases", "enabled", "context", "inbound wei/token", "outbound wei/token", "backend", "served by"],
        [
            [
                r.name,
                ",".join(r.aliases) or "-",
                r.enabled,
                r.context_length,
                r.inbound_price_wei,
                r.outbound_price_wei,
                r.backend_state,
                served_by.get(r.name, "-"),
            ]
            for r in rows
        ],
    )


@main.group("peers")
def peers_group() -> None:
    """Peers of the running executor (read from its [api])."""


def _latency(value: object) -> str:
    return f"{value:.1f} ms" if isinstance(value, (int, float)) else "-"


@peers_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--insecure", is_flag=True, help=INSECURE_HELP)
def peers_list(config_path: Path | None, as_json: bool, insecure: bool) -> None:
    """Connected peers: direction, address, latency, roles and protocols (from the running node's API)."""
    import json

    from .api import ApiRequestError, ApiUnreachable, api_base_url, api_get

    path = config_file(config_path)
    config = load_or_exit(config_path).config
    if not config.api.enabled:
        raise click.ClickException(
            f"[api] is disabled in {path}; `peers list` reads the running executor's API (set [api] enabled = true)"
        )
    try:
        peers = api_get(config.api, "/admin/peers", insecure=insecure)
    except ApiUnreachable:
        raise click.ClickException(no_node_message(api_base_url(config.api))) from None
    except ApiRequestError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(peers, indent=2))
        return
    click.echo(f"{len(peers)} connected peer(s)")
    if peers:
        print_table(
            ["peer", "direction", "address", "latency", "roles", "protocols"],
            [
                [
                    p["peer_id"],
                    p.get("direction", "-"),
                    (p.get("addresses") or ["-"])[0],
                    _latency(p.get("latency_ms")),
                    ",".join(p.get("roles") or []) or "-",
                    ",".join(p.get("protocols") or []) or "-",
                ]
                for p in peers
            ],
        )


@main.command()
def demo() -> None:
    """Run an executor (echo backend, not a model) and a client on loopback; verify signed answers."""
    import logging

    import uvloop

    from .demo import run_demo

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    result = uvloop.run(run_demo())
    click.echo(f"executor  {result.executor_peer_id}")
    click.echo(f"address   {result.executor_address}")
    click.echo(f"listening {', '.join(result.listen)}")
    click.echo(f"found via {', '.join(result.discovered_via) or 'bootstrap address only'}")
    click.echo("")
    print_table(
        ["model", "prompt", "answer", "tokens in/out", "cost (wei)", "signature", "receipt", "latency"],
        [
            [
                r.model,
                r.prompt[:32] + ("…" if len(r.prompt) > 32 else ""),
                (r.content[:40] + ("…" if len(r.content) > 40 else "")) if r.error is None else f"error: {r.error[:40]}…",
                f"{r.inbound_tokens}/{r.outbound_tokens}",
                r.total_cost_wei,
                "valid" if r.signature_ok else "INVALID",
                r.receipt,
                f"{r.latency_ms:.0f} ms",
            ]
            for r in result.rows
        ],
    )
    click.echo("")
    if not result.ok:
        raise click.ClickException("demo failed: an answer or its receipt did not verify, or was priced wrong")
    click.echo("demo ok: every answer signed by the executor's key, priced exactly in wei, with a valid EIP-712 receipt")


def _update_paths(config_path: Path | None) -> UpdatePaths:
    """data_dir and the config file for `update`: the config's [storage] data_dir, or the default
    data_dir when no --config is given and the default config file does not exist."""
    from .config import StorageConfig
    from .update import UpdatePaths

    path = config_file(config_path)
    if config_path is None and not path.exists():
        return UpdatePaths(Path(StorageConfig().data_dir).expanduser(), None)
    loaded = load_or_exit(config_path)
    return UpdatePaths(Path(loaded.config.storage.data_dir).expanduser(), loaded.path or path)


class _LazyUpdateGroup(click.Group):
    """`update`: its commands (the update package) are imported only when used, so every other command starts as fast as before."""

    _built: click.Group | None = None

    def _group(self) -> click.Group:
        if self._built is None:
            from .update import build_update_group

            self._built = build_update_group(_update_paths, CONFIG_HELP)
        return self._built

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._group().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._group().get_command(ctx, cmd_name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._group().format_help(ctx, formatter)


main.add_command(
    _LazyUpdateGroup("update", short_help="Update this pip-installed executor: check, download, apply with rollback.")
)
main.add_command(maintenance_group)
main.add_command(dashboards_group)
main.add_command(benchmark)
main.add_command(settlement_group)
main.add_command(cluster_group)
