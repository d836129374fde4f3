"""`lloom-executor maintenance`: the commands over `maintenance.py` (cache cleaning, ledger
optimization, backups). Their work is imported when a command runs, so other commands start fast."""

from __future__ import annotations

from pathlib import Path

import click

from .cli_config import config_file, config_option, load_or_exit


@click.group("maintenance")
def maintenance_group() -> None:
    """Clean the response cache, optimize the ledger, back up the node."""


@maintenance_group.command("clean-cache")
@config_option
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="AGE",
    help="Remove entries stored at least this long ago: 7d, 12h, 30m, 45s, 2w or seconds.",
)
def maintenance_clean_cache(config_path: Path | None, older_than: str) -> None:
    """Remove response-cache entries older than AGE from the [cache] backend (disk or redis), even when caching is disabled."""
    from .cache import parse_age
    from .maintenance import clean_response_cache

    try:
        parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    config = load_or_exit(config_path).config
    cache = config.cache
    if cache.backend == "memory":
        click.echo("[cache] backend is memory: it lives inside the running executor; nothing to clean on disk")
        return
    where = cache.path if cache.backend == "disk" else "redis"
    try:
        removed = clean_response_cache(config, older_than)
    except Exception as exc:  # the store's own error, e.g. Redis unreachable: say it, exit non-zero
        raise click.ClickException(f"cleaning the {cache.backend} cache failed: {type(exc).__name__}: {exc}") from None
    click.echo(
        f"removed {removed} cache entr{'y' if removed == 1 else 'ies'} older than {older_than}"
        f" from the {cache.backend} cache ({where})"
    )


@maintenance_group.command("optimize-db")
@config_option
def maintenance_optimize_db(config_path: Path | None) -> None:
    """Checkpoint the ledger's WAL, ANALYZE and VACUUM it; safe while the executor runs."""
    from .ledger import LedgerError
    from .maintenance import MaintenanceError, human_bytes, optimize_ledger

    config = load_or_exit(config_path).config
    try:
        result = optimize_ledger(config)
    except (MaintenanceError, LedgerError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"ledger:  {result['path']} ({result['rows']} rows)")
    click.echo(f"before:  {human_bytes(result['bytes_before'])} ({result['bytes_before']} bytes, database + WAL)")
    click.echo(f"after:   {human_bytes(result['bytes_after'])} ({result['bytes_after']} bytes)")
    checkpoint = "complete" if result["checkpoint_complete"] else "partial (a reader held the WAL)"
    click.echo(f"checkpoint {checkpoint}; took {result['seconds']} s")


@maintenance_group.command("backup")
@config_option
@click.option(
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The archive to write (.tar.gz), created with mode 0600.",
)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option(
    "--progress/--no-progress",
    "show_progress",
    default=None,
    help="Show bytes archived on stderr (default: when stderr is a terminal).",
)
def maintenance_backup(config_path: Path | None, output: Path, force: bool, show_progress: bool | None) -> None:
    """Back up the config file, the key files and a consistent copy of the ledger into one .tar.gz."""
    from .maintenance import MaintenanceError, backup_node
    from .progress import Progress, wanted

    loaded = load_or_exit(config_path)
    bar = Progress("backup", unit="bytes", enabled=wanted(show_progress))

    def progress(rows: int | None, done: int, total: int) -> None:
        bar.label = "backup" if rows is None else f"backup (ledger: {rows} rows)"
        bar.total = total
        bar.update(done)

    try:
        report = backup_node(loaded.config, loaded.path or config_file(config_path), output, force=force, progress=progress)
    except MaintenanceError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        bar.finish()
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for member in report.members:
        click.echo(f"  {member.mode:04o}  {member.size:>10}  {member.name}  <- {member.source}")
    rows = "no ledger" if report.ledger_rows is None else f"ledger: {report.ledger_rows} rows"
    click.echo(f"backup written to {report.output} (mode 0600; {len(report.members)} files; {rows})")
    if report.secret_members:
        click.echo(
            f"warning: {report.output} holds the node's private keys; keep it as secret as the keys themselves "
            "(anyone with it can sign as this executor)",
            err=True,
        )
