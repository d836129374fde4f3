"""`lloom-executor maintenance`: clean the response cache, optimize the ledger, back up a node.

Why a module of its own: the command line only parses and prints; what is done to the
operator's files lives here, where tests can call it without a subprocess.

Backup (`backup_node`) writes one gzipped tar:

    lloom-backup/MANIFEST.json            what is inside, where each file came from, its sha256
    lloom-backup/config/<config file>     the config file as it is on disk
    lloom-backup/keys/<key file>          identity and Ethereum key files (and [api] tls_key)
    lloom-backup/tls/<cert file>          [api] tls_cert, when configured
    lloom-backup/data/ledger.sqlite3      a consistent copy of the ledger

The ledger runs in WAL mode and may be written while the backup runs: copying its file
would miss the commits still in `-wal` or catch a half-checkpointed page. So the copy is
made with SQLite's online backup API (one step, under a read transaction: a snapshot of
one moment), converted to a self-contained rollback-journal file and checked with
`PRAGMA integrity_check` before it goes into the archive.

The archive holds private keys: it is created with mode 0600 (written to a temporary name
in the target directory with that mode from the start, then renamed into place), and key
members never carry group or other permission bits inside it, so extracting keeps them 0600.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import sqlite3
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from . import __version__
from .cache import clean_cache, parse_age
from .config import Config
from .ledger import LEDGER_FILENAME, Ledger

log = logging.getLogger(__name__)

ARCHIVE_ROOT = "lloom-backup"
MANIFEST_NAME = "MANIFEST.json"
SECRET_MODE_MASK = 0o700  # secrets keep only owner bits inside the archive
BACKUP_BUSY_TIMEOUT_MS = 30_000


class MaintenanceError(RuntimeError):
    """A maintenance command cannot do its job; the message says why, for the operator."""


# -- clean-cache ----------------------------------------------------------------------------
def clean_response_cache(config: Config, older_than: str) -> int:
    """Remove cache entries stored at least `older_than` (`7d`, `12h`, ...) ago; returns how many.

    Raises ValueError for an unreadable age. The memory backend lives inside the running
    process, so there is nothing on disk to clean: 0.
    """
    seconds = parse_age(older_than)
    return asyncio.run(clean_cache(config.cache, seconds))


# -- optimize-db ----------------------------------------------------------------------------
def ledger_path(config: Config) -> Path:
    return Path(config.storage.data_dir).expanduser() / LEDGER_FILENAME


def optimize_ledger(config: Config) -> dict[str, Any]:
    """Checkpoint, ANALYZE, VACUUM the ledger of `[storage] data_dir`; sizes before and after.

    Refuses when there is no ledger yet rather than creating an empty one (a typo in
    `data_dir` should not look like success).
    """
    path = ledger_path(config)
    if not path.is_file():
        raise MaintenanceError(f"no ledger at {path} (check [storage] data_dir; the executor creates it on start)")
    with Ledger(path) as ledger:
        result = ledger.optimize()
        result["rows"] = ledger.count()
    return result


# -- backup ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupMember:
    """One file in the archive."""

    name: str  # path inside the archive
    kind: str  # config | key | tls_cert | ledger
    source: str  # where it came from on this machine
    mode: int  # permission bits as stored in the archive
    size: int
    sha256: str


@dataclass
class BackupReport:
    output: Path
    members: list[BackupMember] = field(default_factory=list)
    ledger_rows: int | None = None  # None: there was no ledger to back up
    warnings: list[str] = field(default_factory=list)

    @property
    def secret_members(self) -> list[BackupMember]:
        return [m for m in self.members if m.kind == "key"]


def _snapshot_ledger(source: Path, target: Path) -> int:
    """Copy the live WAL ledger at `source` into `target` with the online backup API;
    returns the copy's row count. The copy is a single self-contained file."""
    try:
        src = sqlite3.connect(f"file:{source}?mode=rw", uri=True, timeout=BACKUP_BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise MaintenanceError(f"cannot open the ledger {source}: {exc}") from exc
    try:
        src.execute(f"PRAGMA busy_timeout = {BACKUP_BUSY_TIMEOUT_MS}")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: every page in one step, i.e. one consistent snapshot
            mode = dst.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
            if str(mode).lower() != "delete":
                raise MaintenanceError(f"the ledger copy stayed in journal mode {mode}")
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise MaintenanceError(f"the ledger copy failed its integrity check: {check}")
            rows = dst.execute("SELECT count(*) FROM requests").fetchone()[0]
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise MaintenanceError(f"backing up the ledger {source} failed: {exc}") from exc
    finally:
        src.close()
    return int(rows)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_to_back_up(config: Config, config_file: Path, report: BackupReport) -> list[tuple[str, str, Path]]:
    """(kind, archive folder, source) for every file that exists; missing ones become warnings.
    A file named twice (one key file for both keys) goes in once."""
    wanted: list[tuple[str, str, str | None, str]] = [
        ("config", "config", str(config_file), "config file"),
        ("key", "keys", config.identity.private_key_path, "[identity] private_key_path"),
        ("key", "keys", config.identity.ethereum_private_key_path, "[identity] ethereum_private_key_path"),
        ("key", "keys", config.api.tls_key, "[api] tls_key"),
        ("tls_cert", "tls", config.api.tls_cert, "[api] tls_cert"),
    ]
    seen: set[Path] = set()
    out: list[tuple[str, str, Path]] = []
    for kind, folder, raw, what in wanted:
        if not raw:
            continue
        path = Path(raw).expanduser().resolve()
        if path in seen:
            continue
        seen.add(path)
        if not path.is_file():
            if kind == "config":
                raise MaintenanceError(f"config file {path} not found")
            report.warnings.append(f"{what} {path} does not exist; not in the backup")
            continue
        out.append((kind, folder, path))
    return out


def _unique_name(folder: str, path: Path, used: set[str]) -> str:
    base = f"{ARCHIVE_ROOT}/{folder}/{path.name}"
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}.{n}"
    used.add(name)
    return name


def _tarinfo(name: str, size: int, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = int(mtime)
    info.uid, info.gid = os.getuid(), os.getgid()
    return info


BackupProgress = Callable[[int | None, int, int], None]
"""Called as (ledger rows or None, bytes archived so far, bytes to archive) while the archive is written."""


class _CountingReader:
    """A file read by tarfile, reporting the bytes read so far (for a progress display)."""

    def __init__(self, handle: BinaryIO, on_read: Callable[[int], None]) -> None:
        self.handle = handle
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.on_read(len(data))
        return data


def backup_node(
    config: Config,
    config_file: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: BackupProgress | None = None,
) -> BackupReport:
    """Write a gzipped tar of the config file, the key files and a consistent ledger copy.

    `output` is created with mode 0600 and appears only when complete (temporary name,
    then rename); an existing file is replaced only with `force`. `progress` is told the
    bytes archived as they are read (a ledger may take minutes to compress).
    """
    target = Path(output).expanduser()
    if target.exists() and not force:
        raise MaintenanceError(f"{target} already exists (use --force to replace it)")
    if not target.parent.is_dir():
        raise MaintenanceError(f"directory {target.parent} does not exist")
    report = BackupReport(output=target)
    sources = _files_to_back_up(config, Path(config_file).expanduser(), report)
    used: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="lloom-backup-") as scratch:  # mkdtemp: mode 0700
        staged: list[tuple[str, str, Path, int]] = []  # (kind, name, file to read, archive mode)
        for kind, folder, path in sources:
            mode = stat.S_IMODE(path.stat().st_mode)
            if kind == "key":
                mode &= SECRET_MODE_MASK
            staged.append((kind, _unique_name(folder, path, used), path, mode))
        ledger_file = ledger_path(config)
        if ledger_file.is_file():
            copy = Path(scratch) / LEDGER_FILENAME
            report.ledger_rows = _snapshot_ledger(ledger_file, copy)
            staged.append(("ledger", f"{ARCHIVE_ROOT}/data/{LEDGER_FILENAME}", copy, 0o600))
        else:
            report.warnings.append(f"no ledger at {ledger_file}; the backup holds no ledger")

        to_archive = sum(path.stat().st_size for _, _, path, _ in staged)
        archived = 0

        def read(n: int) -> None:
            nonlocal archived
            archived += n
            if progress is not None:
                progress(report.ledger_rows, archived, to_archive)

        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")  # mode 0600
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                    now = time.time()
                    for kind, name, path, mode in staged:
                        with open(path, "rb") as handle:  # streamed: a ledger may be large
                            info = os.fstat(handle.fileno())
                            tar.addfile(_tarinfo(name, info.st_size, mode, info.st_mtime), _CountingReader(handle, read))
                        source = str(ledger_file) if kind == "ledger" else str(path)
                        report.members.append(BackupMember(name, kind, source, mode, info.st_size, _sha256(path)))
                    manifest = {
                        "format": 1,
                        "created": int(now),
                        "lloom_executor_version": __version__,
                        "ledger_rows": report.ledger_rows,
                        "members": [m.__dict__ | {"mode": f"{m.mode:04o}"} for m in report.members],
                    }
                    body = json.dumps(manifest, indent=2).encode()
                    tar.addfile(_tarinfo(f"{ARCHIVE_ROOT}/{MANIFEST_NAME}", len(body), 0o600, now), io.BytesIO(body))
                raw.flush()  # the tar and gzip trailers are written: make the whole archive durable
                os.fsync(raw.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    log.info("backup written to %s (%d files, ledger rows: %s)", target, len(report.members), report.ledger_rows)
    return report


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns
