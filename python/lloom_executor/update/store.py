"""The updates directory: downloaded wheels, backups, their manifests, and the lock between commands.

Under `[storage] data_dir` of the config given with `--config` (default
~/.lloom/executor/config.toml; when no --config is given and that file does not
exist, data_dir is ~/.lloom/executor/data):

    updates/<version>/<wheel>            the downloaded wheel
    updates/<version>/update.json        its version, sha256 and where it came from
    updates/backup-<version>/<wheel>     `apply --backup`: the previous install, as a wheel
    updates/backup-<version>/backup.json
    updates/.lock                        held while a download or apply runs

Nothing else is written (besides pip's changes to site-packages): the key
files and the ledger are never opened, the config is only read. The directory
may be deleted at any time except during `download`/`apply`.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UpdateError
from .versions import Version

MANIFEST_NAME = "update.json"


def updates_dir(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / "updates"


@contextmanager
def update_lock(data_dir: Path) -> Iterator[None]:
    """Exclusive for the duration: two applies at once would each back up and install over the other's work.

    Non-blocking, so a second command fails at once and says why instead of hanging.
    """
    base = updates_dir(data_dir)
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(base / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError(f"another `lloom-executor update` is running (it holds {base / '.lock'})") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Written whole or not at all (rename): a manifest is how later commands trust the file next to it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def utc_timestamp() -> str:
    """When a manifest was written, for the operator reading it."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def remove_other_wheels(directory: Path, keep: Path) -> None:
    """One wheel per directory, so an older leftover can never be the one installed."""
    for other in directory.glob("*.whl"):
        if other != keep:
            other.unlink()


@dataclass
class Downloaded:
    version: Version
    wheel: Path
    sha256: str
    manifest: dict[str, Any]


def read_download(directory: Path) -> Downloaded | None:
    """The download in `directory` per its manifest; None when the manifest is unreadable or its wheel is gone.

    The wheel's hash is not checked here: that reads the whole file, and only
    the command about to use it needs to.
    """
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        version = Version(manifest["version"])
        wheel = directory / manifest["filename"]
        sha = str(manifest["sha256"]).lower()
    except (ValueError, KeyError, TypeError, OSError):  # InvalidVersion is a ValueError
        return None
    return Downloaded(version, wheel, sha, manifest) if wheel.is_file() else None


def downloaded_updates(data_dir: Path | None) -> list[Downloaded]:
    """Downloaded wheels whose manifest is readable and whose file is present, newest first (hashes not checked)."""
    if data_dir is None:
        return []
    base = updates_dir(data_dir)
    if not base.is_dir():
        return []
    found = []
    for sub in base.iterdir():
        if sub.name.startswith((".", "backup-")):
            continue
        download = read_download(sub)
        if download is not None:
            found.append(download)
    return sorted(found, key=lambda d: d.version, reverse=True)
