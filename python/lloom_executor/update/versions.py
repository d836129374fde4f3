"""Versions of lloom-executor and what this interpreter can install: the one place that loads `packaging`.

`packaging` is a dependency of lloom-executor, but `update` exists to repair
and replace installs, so it falls back to pip's vendored copy (pip is needed
for updating anyway) rather than fail in an environment that lost it.
"""

from __future__ import annotations

import functools
import sys

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.tags import Tag, parse_tag, sys_tags
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - depends on the environment; same API, so the same names
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[assignment]
    from pip._vendor.packaging.specifiers import InvalidSpecifier, SpecifierSet  # type: ignore[assignment]
    from pip._vendor.packaging.tags import Tag, parse_tag, sys_tags  # type: ignore[assignment]
    from pip._vendor.packaging.utils import (  # type: ignore[assignment]
        InvalidSdistFilename,
        InvalidWheelFilename,
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )
    from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore[assignment]

from .errors import UpdateError

DIST_NAME = "lloom-executor"
IMPORT_NAME = "lloom_executor"

__all__ = [
    "DIST_NAME",
    "IMPORT_NAME",
    "InvalidRequirement",
    "InvalidSdistFilename",
    "InvalidSpecifier",
    "InvalidVersion",
    "InvalidWheelFilename",
    "Requirement",
    "SpecifierSet",
    "Tag",
    "Version",
    "canonicalize_name",
    "interpreter_tags",
    "parse_sdist_filename",
    "parse_tag",
    "parse_version_option",
    "parse_wheel_filename",
    "python_satisfies",
    "python_version",
]


@functools.cache
def interpreter_tags() -> frozenset[Tag]:
    """Cached: computing the tag list walks every supported platform and ABI, and it cannot change in-process."""
    return frozenset(sys_tags())


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def python_satisfies(requires_python: str) -> bool | None:
    """Whether this interpreter meets a Requires-Python; None when the specifier is unreadable.

    Pre-release interpreters count as matching, as pip treats them.
    """
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:
        return None
    return spec.contains(python_version(), prereleases=True)


def parse_version_option(version: str) -> Version:
    """The value of `--version`, or the usage message every command gives for a bad one."""
    try:
        return Version(version)
    except InvalidVersion:
        raise UpdateError(f"--version {version!r} is not a valid version") from None
