"""`update apply [--backup] [--version X]`: install a downloaded wheel, verify it, roll back when it does not work.

Installs the newest downloaded wheel (or X) with `python -m pip install
--no-deps --force-reinstall --no-index <wheel>`, after checking everything
that could make it fail half-way: the wheel's hash against update.json, that
it is a lloom-executor wheel of that version for this interpreter, its
Requires-Python, and every Requires-Dist against what is installed (an
unsatisfied one is refused before anything changes, naming it). Installs that
an update would not really replace are refused (see installed.py).

Then the result is verified in a fresh interpreter (verify.py). On failure,
with `--backup` the previous version is reinstalled from the wheel rebuilt
before installing (backup.py) and verified the same way; without it nothing
can be restored and the message says how to recover by hand. The running
executor is never stopped or signalled: the operator restarts it once the
new version is verified.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from .backup import BackupResult, build_backup_wheel
from .errors import EXIT_BROKEN, EXIT_OK, EXIT_ROLLED_BACK, UpdateError
from .installed import Installed, check_replaceable, installed, unsatisfied_requirements
from .store import Downloaded, downloaded_updates, update_lock, updates_dir, utc_timestamp, write_json
from .subprocesses import install_wheel, output_tail
from .verify import verify_installation
from .versions import DIST_NAME, IMPORT_NAME, interpreter_tags, parse_version_option, python_satisfies, python_version
from .wheels import WheelInfo, file_hash, inspect_wheel


def _pick_download(data_dir: Path, version: str | None) -> Downloaded:
    found = downloaded_updates(data_dir)
    if version is not None:
        wanted = parse_version_option(version)
        for d in found:
            if d.version == wanted:
                return d
        raise UpdateError(
            f"{DIST_NAME} {wanted} is not downloaded in {updates_dir(data_dir)}: run `lloom-executor update download --version {wanted}` first"
        )
    if not found:
        raise UpdateError(f"no update is downloaded in {updates_dir(data_dir)}: run `lloom-executor update download` first")
    return found[0]


def _installable_wheel(chosen: Downloaded) -> WheelInfo:
    """The downloaded wheel, refused unless pip can install it here and it will import: pip runs with --no-deps."""
    actual = file_hash(chosen.wheel)
    if actual != chosen.sha256:
        raise UpdateError(
            f"{chosen.wheel} has sha256 {actual}, but {chosen.sha256} was verified when it was downloaded: "
            f"the file changed; run `lloom-executor update download --version {chosen.version}` again"
        )
    wheel = inspect_wheel(chosen.wheel)
    if wheel.version != chosen.version:
        raise UpdateError(f"{chosen.wheel.name} is version {wheel.version}, not {chosen.version}")
    if not wheel.tags & interpreter_tags():
        raise UpdateError(f"{chosen.wheel.name} is not for this interpreter ({sys.executable})")
    if wheel.requires_python and not python_satisfies(wheel.requires_python):
        raise UpdateError(f"{DIST_NAME} {wheel.version} requires Python {wheel.requires_python}; this is {python_version()}")
    missing = unsatisfied_requirements(wheel.requires_dist)
    if missing:
        raise UpdateError(
            f"{DIST_NAME} {wheel.version} needs dependencies this environment does not satisfy; nothing was changed:\n"
            + "\n".join(f"    {m}" for m in missing)
            + f"\ninstall them first (e.g. `{sys.executable} -m pip install '<requirement>'`), then apply again"
        )
    return wheel


def _save_backup(inst: Installed, work: Path, echo: Callable[[str], None]) -> BackupResult:
    """The installed version as a wheel plus backup.json, which records where it came from for an operator restoring by hand."""
    saved = build_backup_wheel(inst, work / f"backup-{inst.version}")
    write_json(
        saved.path.parent / "backup.json",
        {
            "version": str(inst.version),
            "filename": saved.path.name,
            "sha256": file_hash(saved.path),
            "rebuilt_from": str(inst.root / inst.dist_info / "RECORD"),
            "files": saved.files,
            "warnings": saved.warnings,
            "created_at": utc_timestamp(),
        },
    )
    for warning in saved.warnings:
        echo(f"warning: backup: {warning}")
    echo(f"backup of {DIST_NAME} {inst.version}: {saved.path} ({saved.files} files)")
    return saved


def _no_rollback(inst: Installed, wheel: WheelInfo, failure: str, data_dir: Path) -> UpdateError:
    """Exit 21 without --backup: the exact pip command that restores the previous version, from a local wheel when there is one."""
    local = next((d.wheel for d in downloaded_updates(data_dir) if d.version == inst.version), None)
    source = f"--no-index '{local}'" if local is not None else f"'{DIST_NAME}=={inst.version}'` (from the index"
    return UpdateError(
        f"update to {wheel.version} failed: {failure}\n"
        f"NO ROLLBACK WAS POSSIBLE: apply ran without --backup. The installation is {wheel.version} and does not work "
        f"(`lloom-executor` itself may not start). Recover by installing the previous version with pip: "
        f"`{sys.executable} -m pip install --no-deps --force-reinstall {source}`"
        + ("" if local is not None else ")")
        + "; use `update apply --backup` next time. "
        "The running executor, if any, is untouched: do not restart it until this is fixed.",
        EXIT_BROKEN,
    )


def _roll_back(
    inst: Installed,
    wheel: WheelInfo,
    failure: str,
    saved: BackupResult,
    config_file: Path | None,
    work: Path,
    echo: Callable[[str], None],
) -> UpdateError:
    """Reinstall the backup and verify it; the error to exit with: 20 when the previous version works again, else 21."""
    echo(f"update to {wheel.version} failed; rolling back to {inst.version} from {saved.path} ...")
    proc = install_wheel(saved.path, work)
    restored = verify_installation(inst.version, config_file, work) if proc.returncode == 0 else None
    if restored is not None and restored.ok:
        return UpdateError(
            f"update to {wheel.version} failed: {failure}\n"
            f"rolled back: {DIST_NAME} {inst.version} is installed again and verified (`python -m {IMPORT_NAME} --version` reports "
            f"{restored.reported_version}). The running executor, if any, was not touched and need not be restarted.",
            EXIT_ROLLED_BACK,
        )
    why = (
        f"pip install of the backup failed (exit {proc.returncode}):\n{output_tail(proc.stdout + proc.stderr)}"
        if restored is None
        else "the restored version failed verification:\n" + "\n".join(f"  {p}" for p in restored.problems)
    )
    return UpdateError(
        f"update to {wheel.version} failed: {failure}\n"
        f"ROLLBACK FAILED: {why}\n"
        f"the backup wheel is {saved.path}; install it by hand with `{sys.executable} -m pip install --no-deps --force-reinstall "
        f"--no-index '{saved.path}'`. The running executor, if any, is untouched: do not restart it until this is fixed.",
        EXIT_BROKEN,
    )


def run_apply(data_dir: Path, config_file: Path | None, version: str | None, backup: bool, echo: Callable[[str], None]) -> int:
    """Install a downloaded update, verify it, roll back when asked to and needed. Returns the exit code."""
    interpreter_tags()  # computed up front: an interpreter whose tags cannot be read fails before anything is locked or read
    inst = installed()
    check_replaceable(inst)
    with update_lock(data_dir):
        chosen = _pick_download(data_dir, version)
        if version is None and chosen.version <= inst.version:
            echo(f"nothing to apply: {DIST_NAME} {inst.version} is installed; the newest download is {chosen.version}")
            return EXIT_OK
        wheel = _installable_wheel(chosen)
        if wheel.version < inst.version:
            echo(f"downgrading: {DIST_NAME} {inst.version} is installed; installing {wheel.version} as asked")
        elif wheel.version == inst.version:
            echo(f"reinstalling {DIST_NAME} {wheel.version} (already the installed version)")
        work = updates_dir(data_dir)
        saved = _save_backup(inst, work, echo) if backup else None

        echo(f"installing {DIST_NAME} {wheel.version} from {chosen.wheel} ...")
        proc = install_wheel(chosen.wheel, work)
        if proc.returncode == 0:
            check = verify_installation(wheel.version, config_file, work)
            if check.ok:
                checked = f"; config {config_file} valid" if config_file is not None and config_file.is_file() else ""
                echo(
                    f"updated {DIST_NAME} {inst.version} -> {wheel.version} (verified: `python -m {IMPORT_NAME} --version` reports {check.reported_version}{checked})"
                )
                echo(
                    f"restart the running executor to run {wheel.version} (this command does not stop it), e.g. `systemctl restart lloom-executor`"
                )
                return EXIT_OK
            failure = f"the installed {wheel.version} failed verification:\n" + "\n".join(f"  {p}" for p in check.problems)
        else:
            failure = (
                f"pip install of {chosen.wheel.name} failed (exit {proc.returncode}):\n{output_tail(proc.stdout + proc.stderr)}"
            )
            # pip restores what it uninstalled when an install fails: is the previous version intact?
            previous = verify_installation(inst.version, config_file, work)
            if previous.ok:
                raise UpdateError(
                    f"update to {wheel.version} failed: {failure}\n"
                    f"{DIST_NAME} {inst.version} is still installed and verified; nothing to roll back",
                    EXIT_ROLLED_BACK,
                )
        if saved is None:
            raise _no_rollback(inst, wheel, failure, data_dir)
        raise _roll_back(inst, wheel, failure, saved, config_file, work, echo)
