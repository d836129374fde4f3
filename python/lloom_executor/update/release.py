"""Which release `check` and `download` offer, and why newer ones are passed over.

The newest version that has a wheel this interpreter can install (its tags
among the interpreter's, its `Requires-Python` satisfied, not yanked), as pip
would choose. Pre-releases only with `--pre`. `--version X` picks one exactly
(even a pre-release or a yanked one): the operator asked for it by name. A
newer release without a wheel for this platform (an sdist only, another OS) is
reported rather than silently ignored, so an operator waiting for it learns why
it is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UpdateError
from .simple_api import IndexFile
from .versions import DIST_NAME, Version, parse_version_option


@dataclass
class Selection:
    """The release chosen from an index page, and what was passed over."""

    version: Version | None  # None when nothing is installable
    files: list[IndexFile]  # installable files of that version
    newest_any: Version | None  # the newest version on the index at all (with --pre: pre-releases too)
    skipped: list[tuple[Version, str]] = field(default_factory=list)  # newer versions passed over, and why
    warnings: list[str] = field(default_factory=list)


def _pinned(by_version: dict[Version, list[IndexFile]], version: str) -> Selection:
    """`--version X`: that release or an error naming what is there instead."""
    wanted = parse_version_option(version)
    candidates = by_version.get(wanted)
    if not candidates:
        known = ", ".join(str(v) for v in sorted(by_version, reverse=True)[:10]) or "none"
        raise UpdateError(f"{DIST_NAME} {wanted} is not on the index (newest versions there: {known})")
    usable = [f for f in candidates if f.problem() is None]
    if not usable:
        reasons = "; ".join(f"{f.filename}: {f.problem()}" for f in candidates)
        raise UpdateError(f"{DIST_NAME} {wanted} has no wheel this interpreter can install ({reasons})")
    warnings = []
    if all(f.yanked for f in usable):
        reason = next((f.yanked_reason for f in usable if f.yanked_reason), None)
        warnings.append(f"{wanted} is yanked on the index" + (f": {reason}" if reason else ""))
    return Selection(wanted, usable, max(by_version), warnings=warnings)


def select_release(files: list[IndexFile], *, version: str | None = None, pre: bool = False) -> Selection:
    by_version: dict[Version, list[IndexFile]] = {}
    for f in files:
        by_version.setdefault(f.version, []).append(f)
    if version is not None:
        return _pinned(by_version, version)
    versions = sorted((v for v in by_version if pre or not v.is_prerelease), reverse=True)
    skipped: list[tuple[Version, str]] = []
    for v in versions:
        usable = [f for f in by_version[v] if not f.yanked and f.problem() is None]
        if usable:
            return Selection(v, usable, versions[0], skipped)
        if all(f.yanked for f in by_version[v]):
            continue  # a yanked release is simply not offered, as pip does
        reasons = sorted({f.problem() or "yanked" for f in by_version[v]})
        skipped.append((v, "; ".join(reasons)))
    return Selection(None, [], versions[0] if versions else None, skipped)
