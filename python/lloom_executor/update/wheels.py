"""Hashes and metadata of wheel files, read without installing them.

`apply` installs with `--no-deps`, so everything pip would otherwise check
(that the file is what it claims, for this interpreter, with its dependencies
present) is checked here first, before anything changes.
"""

from __future__ import annotations

import base64
import email.parser
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UpdateError
from .versions import DIST_NAME, InvalidVersion, InvalidWheelFilename, Tag, Version, canonicalize_name, parse_wheel_filename


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks: a wheel of the package is tens of megabytes."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_hash(data: bytes) -> str:
    """The hash as a wheel's RECORD writes it (urlsafe base64, no padding), to compare with or write into one."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@dataclass
class WheelInfo:
    path: Path
    version: Version
    tags: frozenset[Tag]
    requires_python: str | None
    requires_dist: list[str]


def inspect_wheel(path: Path) -> WheelInfo:
    """The wheel's own metadata; UpdateError when it is not a lloom-executor wheel.

    The file name and the METADATA inside must agree: pip trusts the name, and
    a wheel whose name lies would install a different version than the one verified.
    """
    try:
        name, version, _build, tags = parse_wheel_filename(path.name)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise UpdateError(f"{path.name} is not a wheel file name: {exc}") from None
    if name != canonicalize_name(DIST_NAME):
        raise UpdateError(f"{path.name} is a wheel of {name}, not {DIST_NAME}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {n.split("/", 1)[0] for n in zf.namelist() if n.split("/", 1)[0].endswith(".dist-info")}
            if len(infos) != 1:
                raise UpdateError(f"{path.name} has {len(infos)} .dist-info directories (a wheel has exactly one)")
            meta_text = zf.read(f"{infos.pop()}/METADATA").decode("utf-8")
    except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError) as exc:
        raise UpdateError(f"{path} is not a readable wheel: {exc}") from None
    meta = email.parser.Parser().parsestr(meta_text, headersonly=True)
    meta_name = canonicalize_name(meta.get("Name", ""))
    meta_version: Version | None
    try:
        meta_version = Version(meta.get("Version", ""))
    except InvalidVersion:
        meta_version = None
    if meta_name != name or meta_version != version:
        raise UpdateError(f"{path.name}: its METADATA says {meta.get('Name')} {meta.get('Version')}, not {DIST_NAME} {version}")
    return WheelInfo(path, version, frozenset(tags), meta.get("Requires-Python"), list(meta.get_all("Requires-Dist") or []))
