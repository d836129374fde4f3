"""The lloom-executor this interpreter has installed, whether `apply` may replace it, and its dependencies.

`apply` runs `pip install` with this interpreter, which writes into its
site-packages. That only changes what runs when the running code came from
there: an editable install, a `--user`/`--target` install or a source tree on
PYTHONPATH would be left as it is while a second copy appears, so those are
refused with the way to update them instead.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from .errors import UpdateError
from .versions import DIST_NAME, IMPORT_NAME, InvalidRequirement, InvalidVersion, Requirement, Version, canonicalize_name


@dataclass
class Installed:
    version: Version
    dist: metadata.Distribution
    root: Path  # the directory RECORD paths are relative to (site-packages)
    dist_info: str  # the .dist-info directory's name
    editable_from: str | None


def _dist_info_name(dist: metadata.Distribution) -> str:
    """The metadata directory's name; `_path` is private to importlib but the only direct source, hence the RECORD fallback."""
    path = getattr(dist, "_path", None)
    if path is not None:
        return Path(path).name
    for f in dist.files or []:
        if len(f.parts) == 2 and f.parts[0].endswith(".dist-info") and f.parts[1] == "METADATA":
            return f.parts[0]
    raise UpdateError(f"cannot find the .dist-info directory of the installed {DIST_NAME}")


def installed() -> Installed:
    try:
        dist = metadata.distribution(DIST_NAME)
    except metadata.PackageNotFoundError:
        raise UpdateError(
            f"{DIST_NAME} is not installed in this interpreter's environment ({sys.executable}); "
            "`update` manages a pip-installed executor"
        ) from None
    try:
        version = Version(dist.version)
    except InvalidVersion:
        raise UpdateError(f"the installed {DIST_NAME} has an unreadable version {dist.version!r}") from None
    editable_from = None
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "null")  # PEP 610: how pip installed it
    except ValueError:
        direct = None
    if isinstance(direct, dict) and (direct.get("dir_info") or {}).get("editable"):
        editable_from = str(direct.get("url", "?"))
    root = Path(os.path.normpath(os.path.abspath(str(dist.locate_file("")))))
    return Installed(version, dist, root, _dist_info_name(dist), editable_from)


def _same(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check_replaceable(inst: Installed) -> None:
    """Refuse installs that `pip install` of a new wheel would not really replace."""
    if inst.editable_from:
        raise UpdateError(
            f"{DIST_NAME} is installed in development (editable) mode from {inst.editable_from}; "
            "update that checkout instead (git), not with `update apply`"
        )
    if not inst.dist_info.endswith(".dist-info"):
        raise UpdateError(
            f"the {DIST_NAME} this interpreter sees is {inst.root / inst.dist_info}, a source tree or legacy install "
            "(PYTHONPATH, `setup.py develop`?), not a pip-installed wheel: update it the way it was installed"
        )
    scheme = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    if not any(_same(inst.root, p) for p in scheme):
        raise UpdateError(
            f"{DIST_NAME} is installed in {inst.root}, not in this interpreter's site-packages "
            f"({', '.join(sorted(scheme))}), e.g. with pip --user or --target; pip would install the update elsewhere. "
            "Update it with the pip command that installed it"
        )
    spec = find_spec(IMPORT_NAME)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations or not _same(locations[0], inst.root / IMPORT_NAME):
        where = locations[0] if locations else "nowhere"
        raise UpdateError(
            f"this interpreter imports {IMPORT_NAME} from {where}, not from the installed distribution in "
            f"{inst.root} (PYTHONPATH or a source tree?): updating the installed copy would not change what runs"
        )


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _unsatisfied_extra(req: Requirement, extra: str) -> list[str]:
    """What `name[extra]` adds that is missing: the extra's own requirements, one level deep."""
    problems = []
    try:
        extra_reqs = metadata.requires(req.name) or []
    except metadata.PackageNotFoundError:
        extra_reqs = []
    for sub_text in extra_reqs:
        try:
            sub = Requirement(sub_text)
        except InvalidRequirement:
            continue
        if sub.marker is None or not sub.marker.evaluate({"extra": extra}) or sub.marker.evaluate({"extra": ""}):
            continue  # not specific to this extra (the base requirements were checked with the distribution itself)
        sub_have = _installed_version(sub.name)
        if sub_have is None or (sub.specifier and not sub.specifier.contains(sub_have, prereleases=True)):
            state = "not installed" if sub_have is None else f"installed: {sub.name} {sub_have}"
            problems.append(f"{sub.name}{sub.specifier} for {req.name}[{extra}] ({state})")
    return problems


def unsatisfied_requirements(requires_dist: list[str]) -> list[str]:
    """Requires-Dist entries (for no extra) that this environment does not satisfy, each with why.

    `apply` installs with `--no-deps` so that it never changes other packages
    behind the operator's back; this is what stands in for pip's resolver.
    """
    problems = []
    for text in requires_dist:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(f"{text} (unreadable: {exc})")
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if canonicalize_name(req.name) == canonicalize_name(DIST_NAME):
            continue
        have = _installed_version(req.name)
        if have is None:
            problems.append(f"{text} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"{text} (installed: {req.name} {have})")
            continue
        for extra in sorted(req.extras):
            problems.extend(_unsatisfied_extra(req, extra))
    return problems
