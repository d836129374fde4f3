"""`lloom-executor start`: one process, a supervisor of N workers, or one of those workers.

Which of the three is decided here, before anything heavy is imported: a
process the supervisor started (`LLOOM_WORKER` set) is a worker whatever the
config says; otherwise `--workers`, then LLOOM_EXECUTOR_WORKERS, then
`[runtime] workers` give N, and N = 1 is the single process it always was.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import click

from .cli_config import load_or_exit
from .config import check_workers
from .workers.role import WorkerRole, resolve_workers


def run_start(config_path: Path | None, debug: bool, workers: str | None) -> None:
    """The body of `start` (see the module docstring for the three roles)."""
    loaded = load_or_exit(config_path)
    config = loaded.config
    role = WorkerRole.from_env(os.environ)
    logging_config = dataclasses.replace(config.logging, level="debug") if debug else config.logging
    if role is not None and role.index > 0 and logging_config.file:  # one writer per log file
        stem, dot, suffix = logging_config.file.rpartition(".")
        name = f"{stem}.worker{role.index}.{suffix}" if dot else f"{logging_config.file}.worker{role.index}"
        logging_config = dataclasses.replace(logging_config, file=name)
    from .logs import setup_logging

    setup_logging(logging_config)
    if role is not None:  # every line says which worker wrote it
        for handler in logging.getLogger().handlers:
            fmt = handler.formatter._fmt if handler.formatter is not None else None
            handler.setFormatter(logging.Formatter((fmt or "%(message)s").replace("%(name)s", f"w{role.index} %(name)s")))
    log = logging.getLogger("lloom_executor")
    if role is None or role.lead:
        for problem in loaded.warnings:
            log.warning("config: %s", problem)
    if role is None:
        try:
            count = resolve_workers(check_workers(workers) if workers is not None else config.runtime.workers)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--workers") from None
        if count > 1:
            _supervise(config_path, debug, count, config.network.listen_address, config.request_handling.drain_timeout_secs)
            return
    _serve(config, role)


def _supervise(config_path: Path | None, debug: bool, count: int, listen: tuple[str, ...], drain_secs: float) -> None:
    from .workers.supervisor import Supervisor, WorkerStartError, worker_argv

    log = logging.getLogger("lloom_executor")
    log.info("starting %d workers of one node", count)
    supervisor = Supervisor(
        worker_argv(str(config_path) if config_path is not None else None, debug),
        count,
        listen=listen,
        drain_timeout_secs=drain_secs,
    )
    try:
        code = supervisor.run()
    except (WorkerStartError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if code:
        raise SystemExit(code)


def _serve(config: object, role: WorkerRole | None) -> None:
    """One process serving: the whole node (role None) or one worker of it."""
    import uvloop

    from .config import Config
    from .identity import IdentityError, load_identity
    from .plugins import PluginError
    from .service import ExecutorService

    assert isinstance(config, Config)
    try:
        identity = load_identity(config.identity)
    except IdentityError as exc:
        if role is not None:
            role.report_failed(str(exc))
        raise click.ClickException(str(exc)) from None
    try:
        uvloop.run(ExecutorService(config, identity, role=role).run_until_signal())
    except PluginError as exc:  # a configured plugin that cannot run: say which, and do not serve without it
        if role is not None:
            role.report_failed(str(exc))
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        if role is not None:
            role.report_failed(f"{type(exc).__name__}: {exc}")
        raise
