"""The click commands `update check | download | apply`: options, output and exit codes, nothing else.

Built by a function rather than at import so the caller supplies how `--config`
becomes paths (`resolve_paths`): the CLI reads the real configuration, while
this package itself must not import the rest of lloom_executor (see __init__).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from .apply import run_apply
from .check import CheckResult, run_check
from .download import run_download
from .errors import EXIT_CODES_HELP, EXIT_OK, EXIT_UPDATE_AVAILABLE, UpdateError
from .index_url import redact
from .simple_api import DEFAULT_TIMEOUT_S
from .versions import DIST_NAME

_Decorated = TypeVar("_Decorated", bound=Callable[..., Any])


class ByteLine:
    """`download: 1.2 MiB` redrawn in place on stderr, at most every 0.1 s, then a newline.

    Not lloom_executor.progress: this package must run on its own while `apply` replaces the
    rest of lloom_executor (see __init__), so it carries this small copy. Called from pip's
    watcher thread; click.echo writes whole strings, so lines do not interleave.
    """

    def __init__(self, label: str, min_interval: float = 0.1) -> None:
        self.label = label
        self.min_interval = min_interval
        self.done: int | None = None
        self._drawn_at = -min_interval

    def text(self) -> str:
        size = float(self.done or 0)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                break
            size /= 1024
        return f"{self.label}: {size:.0f} B" if unit == "B" else f"{self.label}: {size:.1f} {unit}"

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self._drawn_at >= self.min_interval:
            click.echo("\r" + self.text() + "   ", err=True, nl=False)
            self._drawn_at = now

    def finish(self) -> None:
        if self.done is not None:
            click.echo("\r" + self.text() + "   ", err=True)


@dataclass(frozen=True)
class UpdatePaths:
    """What the commands need from the configuration."""

    data_dir: Path
    config_file: Path | None  # the operator's config, validated after an update; None when there is none


def _print_check(result: CheckResult, pre: bool) -> None:
    """`check`'s human output: the versions, why newer releases are not offered, and the next command to run."""
    sel = result.selection
    click.echo(f"installed: {DIST_NAME} {result.installed}")
    click.echo(
        f"index:     {redact(result.index_url)} ({result.index_source}; {'PEP 691 JSON' if result.page.api == 'json' else 'PEP 503 HTML'})"
    )
    click.echo(
        f"latest:    {sel.version if sel.version is not None else 'none installable here'}"
        + (" (pre-releases included)" if pre else "")
    )
    for v, reason in sel.skipped:
        click.echo(f"note: {v} is on the index but not installable here: {reason}")
    if result.update_available:
        ready = any(d.version == sel.version for d in result.downloaded)
        click.echo(f"update available: {result.installed} -> {sel.version}")
        click.echo(
            "downloaded already: apply it with `lloom-executor update apply --backup`"
            if ready
            else "next: `lloom-executor update download`, then `lloom-executor update apply --backup`"
        )
    elif sel.version is None:
        click.echo("no installable release on the index: up to date")
    elif sel.version < result.installed:
        click.echo(f"up to date (the installed {result.installed} is newer than the index's {sel.version})")
    else:
        click.echo("up to date")


def build_update_group(
    resolve_paths: Callable[[Path | None], UpdatePaths], config_help: str = "Config file (for [storage] data_dir)."
) -> click.Group:
    """The `update` command group; `resolve_paths(--config)` reads the config (raising click errors)."""

    def config_option(fn: _Decorated) -> _Decorated:
        return click.option(
            "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help=config_help
        )(fn)

    index_option = click.option(
        "--index-url",
        "index_url",
        default=None,
        metavar="URL",
        help="Simple-API root of the package index, as for pip (default: PIP_INDEX_URL, pip's config, https://pypi.org/simple).",
    )
    pre_option = click.option("--pre", is_flag=True, help="Consider pre-releases too.")
    timeout_option = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        help="Seconds to wait for the index.",
    )

    @click.group("update", epilog=EXIT_CODES_HELP)
    def update_group() -> None:
        """Update this pip-installed executor: check the index, download a verified wheel, apply it with rollback.

        Downloads and backups live in [storage] data_dir/updates; key files and the
        ledger are never touched. After `apply`, restart the running executor.
        """

    @update_group.command("check", epilog=EXIT_CODES_HELP)
    @config_option
    @index_option
    @pre_option
    @timeout_option
    @click.option(
        "--json", "as_json", is_flag=True, help='Machine-readable output (errors too, as {"error": ..., "exit_code": ...}).'
    )
    @click.pass_context
    def check_cmd(
        ctx: click.Context, config_path: Path | None, index_url: str | None, pre: bool, timeout: float, as_json: bool
    ) -> None:
        """Ask the package index for newer releases of lloom-executor installable here.

        Exits 0 when up to date and 10 when an update is available, so scripts
        can branch on it; 3 when the index cannot be reached.
        """
        data_dir: Path | None = None
        try:
            data_dir = resolve_paths(config_path).data_dir
        except click.ClickException as exc:
            if not as_json:
                click.echo(f"warning: {exc.format_message()} (not listing downloaded updates)", err=True)
        try:
            result = run_check(index_url, pre, timeout, data_dir)
        except UpdateError as exc:
            if as_json:
                click.echo(json.dumps({"error": exc.format_message(), "exit_code": exc.exit_code}, indent=2))
                ctx.exit(exc.exit_code)
            raise
        code = EXIT_UPDATE_AVAILABLE if result.update_available else EXIT_OK
        if as_json:
            click.echo(json.dumps(result.to_json(), indent=2))
        else:
            _print_check(result, pre)
        ctx.exit(code)

    @update_group.command("download", epilog=EXIT_CODES_HELP)
    @config_option
    @index_option
    @pre_option
    @timeout_option
    @click.option(
        "--version", "version", default=None, metavar="X", help="Download this version instead of the newest (even an older one)."
    )
    @click.option(
        "--progress/--no-progress",
        "show_progress",
        default=None,
        help="Show the bytes downloaded on stderr (default: when stderr is a terminal).",
    )
    def download_cmd(
        config_path: Path | None,
        index_url: str | None,
        pre: bool,
        timeout: float,
        version: str | None,
        show_progress: bool | None,
    ) -> None:
        """Download and verify the wheel of the newest release (or --version) into data_dir/updates/<version>/.

        Uses `python -m pip download --no-deps --only-binary=:all:` of this
        interpreter, then checks the file against the sha256 the index
        published. Running it again keeps a wheel that is already there and valid.
        """
        paths = resolve_paths(config_path)
        line = ByteLine("download") if (sys.stderr.isatty() if show_progress is None else show_progress) else None
        try:
            result = run_download(index_url, pre, timeout, paths.data_dir, version, click.echo, line.update if line else None)
        finally:
            if line is not None:
                line.finish()
        if result.nothing_newer:
            click.echo(
                f"nothing to download: {DIST_NAME} {result.check.installed} is installed and the newest release installable here is {result.version}"
            )
            return
        state = "already downloaded" if result.already else "downloaded"
        click.echo(f"{state}: {DIST_NAME} {result.version}")
        click.echo(f"wheel:  {result.wheel}")
        click.echo(f"sha256: {result.sha256} (matches the index)")
        click.echo(f"next: `lloom-executor update apply --backup{'' if version is None else f' --version {result.version}'}`")

    @update_group.command("apply", epilog=EXIT_CODES_HELP)
    @config_option
    @click.option(
        "--backup",
        is_flag=True,
        help="Save the installed version as a wheel first and restore it automatically if the update fails.",
    )
    @click.option(
        "--version",
        "version",
        default=None,
        metavar="X",
        help="Apply this downloaded version instead of the newest downloaded (may downgrade).",
    )
    def apply_cmd(config_path: Path | None, backup: bool, version: str | None) -> None:
        """Install the downloaded update with pip (--no-deps) and verify it in a fresh interpreter.

        Verification: `python -m lloom_executor --version` reports the new version,
        and `config validate` passes for the config. With --backup a failed update is
        rolled back to the previous version (verified the same way); without it the
        command says that no rollback was possible. Dependencies the new version
        needs must already be installed: otherwise it refuses before changing anything.
        The running executor is not stopped: restart it afterwards.
        """
        paths = resolve_paths(config_path)
        code = run_apply(paths.data_dir, paths.config_file, version, backup, click.echo)
        if code:
            sys.exit(code)

    return update_group
