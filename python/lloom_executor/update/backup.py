"""`apply --backup`: the installed version as a wheel, rebuilt from the files its RECORD lists.

Rebuilding from RECORD works offline and for versions that were never on the
index (a local build), unlike re-downloading the current version, which needs
the network and an index that still serves that exact file. Each file is
checked against its recorded hash; the console script is left out because pip
regenerates it from the entry points on install.
"""

from __future__ import annotations

import csv
import email.parser
import io
import os
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UpdateError
from .installed import Installed
from .store import remove_other_wheels
from .versions import DIST_NAME, Version, interpreter_tags, parse_tag
from .wheels import inspect_wheel, record_hash


@dataclass
class BackupResult:
    path: Path
    version: Version
    files: int
    warnings: list[str]


def _compressed_tag(tag_lines: list[str]) -> str | None:
    """The wheel file-name tag for WHEEL's Tag lines (None when they are not a product set)."""
    parsed = [t.split("-") for t in tag_lines]
    if not parsed or any(len(p) != 3 for p in parsed):
        return None
    pys, abis, plats = (sorted({p[i] for p in parsed}) for i in range(3))
    if len(pys) * len(abis) * len(plats) != len(set(tag_lines)):
        return None
    return "-".join(".".join(part) for part in (pys, abis, plats))


def _within(path: str, directory: str | None) -> str | None:
    """`path` relative to `directory` when it lies strictly inside it; None otherwise."""
    if not directory:
        return None
    directory = os.path.normpath(os.path.abspath(directory))
    if path == directory or not path.startswith(directory + os.sep):
        return None
    return os.path.relpath(path, directory)


def _file_tag(inst: Installed) -> str:
    """The tag for the backup's file name, from the installed WHEEL file; refuses tags this interpreter cannot install."""
    wheel_text = inst.dist.read_text("WHEEL")
    if not wheel_text:
        raise UpdateError(f"the installed {DIST_NAME} has no {inst.dist_info}/WHEEL: cannot rebuild a wheel of it")
    wheel_meta = email.parser.Parser().parsestr(wheel_text, headersonly=True)
    tag_lines = [t.strip() for t in wheel_meta.get_all("Tag") or [] if t.strip()]
    usable = [t for t in tag_lines if set(parse_tag(t)) & interpreter_tags()]
    if not usable:
        raise UpdateError(
            f"the installed {DIST_NAME}'s WHEEL tags ({', '.join(tag_lines) or 'none'}) do not fit this interpreter: cannot rebuild an installable wheel"
        )
    return _compressed_tag(tag_lines) or usable[0]


@dataclass
class _Members:
    """The installed files that go into the backup, as (name in the wheel, file on disk), and what was wrong."""

    members: list[tuple[str, str]]
    missing: list[str]
    modified: list[str]
    warnings: list[str]


def _collect_members(inst: Installed) -> _Members:
    """Map each RECORD entry to its place in a wheel: site-packages at the root, scripts and data under .data/."""
    dist, info = inst.dist, inst.dist_info
    scripts = sysconfig.get_path("scripts")
    data_root = sysconfig.get_path("data")
    entry_scripts = {ep.name for ep in dist.entry_points if ep.group in ("console_scripts", "gui_scripts")}
    skip_info = {
        f"{info}/RECORD",
        f"{info}/INSTALLER",
        f"{info}/REQUESTED",
        f"{info}/direct_url.json",
    }  # written by the installer
    data_dir_name = info[: -len(".dist-info")] + ".data"
    found = _Members([], [], [], [])
    for entry in dist.files or []:
        rel = entry.as_posix()
        if "__pycache__" in entry.parts or rel.endswith((".pyc", ".pyo")) or rel in skip_info:
            continue
        absolute = os.path.normpath(os.path.join(str(inst.root), rel))
        inside = _within(absolute, str(inst.root))
        if inside is not None:
            arcname = inside.replace(os.sep, "/")
        elif (script_rel := _within(absolute, scripts)) is not None:
            if os.path.basename(absolute) in entry_scripts:
                continue  # pip writes console scripts from entry_points.txt
            arcname = f"{data_dir_name}/scripts/{script_rel.replace(os.sep, '/')}"
        elif (data_rel := _within(absolute, data_root)) is not None:
            arcname = f"{data_dir_name}/data/{data_rel.replace(os.sep, '/')}"
        else:
            found.warnings.append(f"not backed up (outside the environment): {absolute}")
            continue
        if not os.path.isfile(absolute):
            found.missing.append(rel)
            continue
        if entry.hash is not None and entry.hash.mode == "sha256":
            with open(absolute, "rb") as fh:
                if record_hash(fh.read()) != f"sha256={entry.hash.value}":
                    found.modified.append(rel)
        found.members.append((arcname, absolute))
    return found


def _write_wheel(members: list[tuple[str, str]], info: str, tmp_name: str) -> None:
    """The zip with a fresh RECORD (hashes of what was actually written), tested after writing."""
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, absolute in members:
            with open(absolute, "rb") as fh:
                data = fh.read()
            zinfo = zipfile.ZipInfo.from_file(absolute, arcname)
            zinfo.date_time = max(zinfo.date_time, (1980, 1, 1, 0, 0, 0))  # zip cannot store earlier dates
            zinfo.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zinfo, data)
            writer.writerow([arcname, record_hash(data), len(data)])
        writer.writerow([f"{info}/RECORD", "", ""])
        zf.writestr(f"{info}/RECORD", record.getvalue())
    with zipfile.ZipFile(tmp_name) as zf:
        bad = zf.testzip()
        if bad is not None:
            raise UpdateError(f"the backup wheel is damaged ({bad}); not updating")


def build_backup_wheel(inst: Installed, dest_dir: Path) -> BackupResult:
    """A wheel of the installed distribution, rebuilt from its RECORD; pip installs it offline."""
    info = inst.dist_info
    if not inst.dist.files:
        raise UpdateError(f"the installed {DIST_NAME} has no RECORD (not installed from a wheel?): cannot back it up")
    file_tag = _file_tag(inst)
    found = _collect_members(inst)
    if found.missing:
        raise UpdateError(
            f"cannot back up the installed {DIST_NAME} {inst.version}: {len(found.missing)} file(s) listed in its RECORD are "
            f"missing (first: {found.missing[0]}); the installation is already incomplete. Reinstall it, or apply without --backup"
        )
    warnings = found.warnings
    if found.modified:
        warnings.append(
            f"{len(found.modified)} installed file(s) differ from their RECORD hash and are backed up as they are now (first: {found.modified[0]})"
        )
    members = found.members
    names = {a for a, _ in members}
    if f"{info}/METADATA" not in names or f"{info}/WHEEL" not in names:
        raise UpdateError(
            f"the installed {DIST_NAME}'s RECORD does not list {info}/METADATA and {info}/WHEEL: cannot rebuild a wheel"
        )
    members.sort(key=lambda m: (m[0].startswith(info + "/"), m[0]))  # .dist-info last, as the spec recommends

    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / f"{info[: -len('.dist-info')]}-{file_tag}.whl"
    fd, tmp_name = tempfile.mkstemp(prefix=".backup-", suffix=".whl", dir=dest_dir)
    os.close(fd)
    try:
        _write_wheel(members, info, tmp_name)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    remove_other_wheels(dest_dir, target)
    inspect_wheel(target)  # a wheel pip will accept: names and versions agree
    return BackupResult(target, inst.version, len(members), warnings)
