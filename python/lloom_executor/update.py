"""`lloom-executor update check|download|apply`: update a pip-installed executor safely.

The manual's commands (written for the Rust reference node), implemented for
this package as pip installs it: the `lloom-executor` distribution in the
environment of the interpreter that runs the command (`sys.executable`).

    lloom-executor update check                 # is there a newer release?
    lloom-executor update download              # fetch and verify its wheel
    lloom-executor update apply --backup        # install it; roll back on failure

then restart the running executor (`apply` never stops or signals it).

Where updates come from
    The package index pip uses: `--index-url`, else `PIP_INDEX_URL`, else pip's
    configuration (`pip config list`: `download.index-url`, `install.index-url`,
    `global.index-url`, in that order), else https://pypi.org/simple. The URL is
    the *simple API root*, exactly what `pip --index-url` takes (PyPI:
    https://pypi.org/simple; a private index: https://host/simple or
    https://user:token@host/simple; credentials are never printed, nor put on
    pip's command line, which any local user can read: for that reason give a
    URL with credentials in PIP_INDEX_URL or pip's config, not `--index-url`).
    The index's CA bundle: `PIP_CERT`, else pip's `cert` setting, else the
    system's.

    We read the standard simple repository API: PEP 691 JSON
    (`application/vnd.pypi.simple.v1+json`), falling back to the PEP 503 HTML
    page when the index serves only that. Not PyPI's `/pypi/<name>/json`: that
    is a Warehouse-only API that many private indexes (pypiserver, some
    Artifactory/Nexus setups) do not have, and it lives at a different URL from
    the one pip is configured with, whereas the simple API is what pip itself
    reads, so `check` sees exactly the files `pip download` will choose from,
    with the hashes and `Requires-Python` the index publishes for each file.

Which release
    The newest version that has a wheel this interpreter can install (its tags
    among the interpreter's, its `Requires-Python` satisfied, not yanked).
    Pre-releases only with `--pre`. `--version X` picks one exactly (even a
    pre-release or a yanked one). A newer release without a wheel for this
    platform (an sdist only, another OS) is mentioned but not offered: the
    package has compiled parts, and `update` never builds from source.

Files (under `[storage] data_dir` of the config given with `--config`, default
~/.lloom/executor/config.toml; when no --config is given and that file does not
exist, data_dir is ~/.lloom/executor/data and `apply` has no config to validate)
    updates/<version>/<wheel>            the downloaded wheel
    updates/<version>/update.json        its version, sha256 and where it came from
    updates/backup-<version>/<wheel>     `apply --backup`: the previous install, as a wheel
    updates/backup-<version>/backup.json
    updates/.lock                        held while a download or apply runs
    Nothing else is written (besides pip's changes to site-packages): the key
    files and the ledger are never opened, the config is only read. The
    directory may be deleted at any time except during `download`/`apply`.

download
    Runs `python -m pip download --no-deps --only-binary=:all:` with this
    interpreter against the same index, the version pinned and the hashes the
    index published given to pip (`--hash`, so pip itself refuses a file that
    does not match), then checks the file's sha256 again before keeping it.
    find-links and extra index URLs are switched off for that one call, so the
    file can only come from the index `check` read (given to pip in
    PIP_INDEX_URL, not as an argument). Running it again is a no-op
    when the wheel is already there and matches.

apply [--backup] [--version X]
    Installs the newest downloaded wheel (or X) with
    `python -m pip install --no-deps --force-reinstall --no-index <wheel>`,
    after checking: the wheel's hash against update.json, that it is a
    lloom-executor wheel of that version for this interpreter, its
    Requires-Python, and every Requires-Dist against what is installed (an
    unsatisfied one is refused before anything changes, naming it: install it
    first with pip). It refuses to touch an editable (development) install, an
    install outside this interpreter's site-packages (`--user`, `--target`),
    and a process that imports lloom_executor from somewhere other than the
    installed distribution (PYTHONPATH, a source tree): there an update would
    not change what runs.

    Then it checks the result in a fresh interpreter: `python -m
    lloom_executor --version` must report the new version and, when the
    config file exists, `python -m lloom_executor config validate --config
    <it>` must pass. On failure, with `--backup` the previous version is
    reinstalled and verified the same way; without it nothing can be restored
    and the command says so.

    The backup is a wheel rebuilt from the installed files listed in the
    distribution's RECORD (each checked against its recorded hash; the console
    script is regenerated by pip from the entry points). This works offline
    and for versions that were never on the index (a local build), unlike
    re-downloading the current version, which needs the network and an index
    that still serves that exact file.

Exit codes (for scripts)
    0   check: up to date; download: the wheel is there and verified
        (or nothing newer to fetch); apply: installed and verified (or nothing
        newer to apply)
    1   an error; nothing was changed (bad input, a refused wheel or
        dependency, nothing downloaded, a hash mismatch, a pip failure
        before installing)
    2   usage error (unknown option, bad value)
    3   the package index could not be reached (network, DNS, TLS) or answered
        with a server error (5xx): retry later
    10  check: an update is available
    20  apply: the update failed, and the previous version is installed and
        verified (rolled back)
    21  apply: the update failed and the installation could not be verified as
        working: no --backup (no rollback possible), or the rollback failed too;
        the message says how to recover by hand

This module imports only the standard library, click and `packaging` (pip's
vendored copy when `packaging` is absent), never the rest of lloom_executor: it
keeps running while `apply` replaces the package's files under it.
"""
from __future__ import annotations

import ast
import base64
import csv
import datetime as _dt
import email.parser
import fcntl
import functools
import hashlib
import html.parser
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import types
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import click

DIST_NAME = "lloom-executor"
IMPORT_NAME = "lloom_executor"
DEFAULT_INDEX_URL = "https://pypi.org/simple"
DEFAULT_TIMEOUT_S = 15.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_UPDATE_AVAILABLE = 10
EXIT_ROLLED_BACK = 20
EXIT_BROKEN = 21

ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
MAX_PAGE_BYTES = 64 * 1024 * 1024
PIP_HASHES = ("sha256", "sha384", "sha512")  # what `pip --hash` accepts, strongest last
VERIFY_TIMEOUT_S = 120
PIP_TIMEOUT_S = 900


class UpdateError(click.ClickException):
    """A failed update command: the message for the operator and the exit code (see the module doc)."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


@functools.cache
def _pk() -> types.SimpleNamespace:
    """`packaging`, or pip's vendored copy (pip is needed for updating anyway)."""
    try:
        from packaging import tags, utils
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pragma: no cover - depends on the environment
        from pip._vendor.packaging import tags, utils  # type: ignore[no-redef]
        from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[no-redef]
        from pip._vendor.packaging.specifiers import InvalidSpecifier, SpecifierSet  # type: ignore[no-redef]
        from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore[no-redef]
    return types.SimpleNamespace(
        Version=Version, InvalidVersion=InvalidVersion, SpecifierSet=SpecifierSet, InvalidSpecifier=InvalidSpecifier,
        Requirement=Requirement, InvalidRequirement=InvalidRequirement, canonicalize_name=utils.canonicalize_name,
        parse_wheel_filename=utils.parse_wheel_filename, parse_sdist_filename=utils.parse_sdist_filename,
        InvalidWheelFilename=utils.InvalidWheelFilename, InvalidSdistFilename=utils.InvalidSdistFilename,
        parse_tag=tags.parse_tag, sys_tags=tags.sys_tags,
    )


@functools.cache
def interpreter_tags() -> frozenset:
    return frozenset(_pk().sys_tags())


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


# ---------------------------------------------------------------- index URL, credentials, pip config


@functools.cache
def pip_config() -> dict[str, str]:
    """`pip config list` of this interpreter's pip as a dict (empty when pip cannot say)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    values: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or key.startswith(":env:"):
            continue
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw.strip("'\"")
        values[key.strip()] = str(value)
    return values


def resolve_index_url(option: str | None) -> tuple[str, str]:
    """The simple-API root to use and where it came from."""
    if option:
        return option, "--index-url"
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"], "PIP_INDEX_URL"
    config = pip_config()
    for key in ("download.index-url", "install.index-url", "global.index-url"):
        if config.get(key):
            return config[key], f"pip config {key}"
    return DEFAULT_INDEX_URL, "default"


def ca_bundle() -> str | None:
    cert = os.environ.get("PIP_CERT")
    if cert:
        return cert
    config = pip_config()
    for key in ("download.cert", "install.cert", "global.cert"):
        if config.get(key):
            return config[key]
    return None


def redact(url: str) -> str:
    """The URL without a password (or token) in it, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:****@{host}" if parts.password is not None else f"****@{host}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _split_auth(url: str) -> tuple[str, str | None]:
    """The URL without userinfo, and the Basic Authorization header it carried."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), f"Basic {token}"


# ---------------------------------------------------------------- the simple repository API


@dataclass(frozen=True)
class IndexFile:
    """One file of the project on the index."""

    filename: str
    url: str
    hashes: dict[str, str]
    requires_python: str | None
    yanked: bool
    yanked_reason: str | None
    version: Any  # packaging Version
    tags: frozenset | None  # a wheel's tags; None for an sdist

    @property
    def is_wheel(self) -> bool:
        return self.tags is not None

    def problem(self) -> str | None:
        """Why this interpreter cannot install this file; None when it can."""
        if self.tags is None:
            return "not a wheel (update never builds from source)"
        if not self.tags & interpreter_tags():
            return f"wheel for {', '.join(sorted(str(t) for t in self.tags)[:3])}, not this interpreter"
        if self.requires_python:
            pk = _pk()
            try:
                spec = pk.SpecifierSet(self.requires_python)
            except pk.InvalidSpecifier:
                return f"unreadable Requires-Python {self.requires_python!r}"
            if not spec.contains(python_version(), prereleases=True):
                return f"requires Python {self.requires_python} (this is {python_version()})"
        return None

    def pip_hashes(self) -> dict[str, str]:
        return {name: value for name, value in self.hashes.items() if name in PIP_HASHES}

    def to_json(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "url": redact(self.url),
            "hashes": self.hashes,
            "requires_python": self.requires_python,
            "yanked": self.yanked,
        }


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[dict[str, str | None]] = []
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._current = dict(attrs)
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._current is not None:
            self._current["#text"] = "".join(self._text).strip()
            self.links.append(self._current)
            self._current = None


def _file_entry(filename: str, url: str, hashes: dict[str, str], requires_python: str | None, yanked: Any) -> IndexFile | None:
    pk = _pk()
    ours = pk.canonicalize_name(DIST_NAME)
    tags = None
    try:
        if filename.endswith(".whl"):
            name, version, _build, tags = pk.parse_wheel_filename(filename)
        else:
            name, version = pk.parse_sdist_filename(filename)
    except (pk.InvalidWheelFilename, pk.InvalidSdistFilename, pk.InvalidVersion):
        return None
    if name != ours:
        return None
    reason = yanked if isinstance(yanked, str) and yanked else None
    return IndexFile(
        filename=filename,
        url=url,
        hashes={k.lower(): v.lower() for k, v in hashes.items() if isinstance(v, str)},
        requires_python=(requires_python or None),
        yanked=yanked is True or isinstance(yanked, str),
        yanked_reason=reason,
        version=version,
        tags=frozenset(tags) if tags is not None else None,
    )


def parse_json_page(data: bytes, page_url: str) -> list[IndexFile]:
    """Files of a PEP 691 JSON project page."""
    try:
        doc = json.loads(data)
        raw_files = doc["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UpdateError(f"the index's answer for {DIST_NAME} is not a PEP 691 project page: {exc}") from None
    files = []
    for item in raw_files:
        if not isinstance(item, dict) or "filename" not in item or "url" not in item:
            continue
        url = urllib.parse.urljoin(page_url, item["url"])
        entry = _file_entry(item["filename"], url, item.get("hashes") or {}, item.get("requires-python"), item.get("yanked", False))
        if entry is not None:
            files.append(entry)
    return files


def parse_html_page(data: bytes, page_url: str, charset: str = "utf-8") -> list[IndexFile]:
    """Files of a PEP 503 HTML project page (hash in the URL fragment, PEP 592 yanks, data-requires-python)."""
    parser = _LinkParser()
    parser.feed(data.decode(charset, errors="replace"))
    base = page_url
    files = []
    for link in parser.links:
        href = link.get("href")
        if not href:
            continue
        url = urllib.parse.urljoin(base, href)
        parts = urllib.parse.urlsplit(url)
        filename = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
        hashes = {}
        if parts.fragment and "=" in parts.fragment:
            name, _, value = parts.fragment.partition("=")
            hashes[name] = value
        yanked: Any = False
        if "data-yanked" in link:
            yanked = link["data-yanked"] or True
        entry = _file_entry(filename, urllib.parse.urlunsplit(parts._replace(fragment="")), hashes, link.get("data-requires-python"), yanked)
        if entry is not None:
            files.append(entry)
    return files


@dataclass
class IndexPage:
    index_url: str
    page_url: str
    api: str  # "json" (PEP 691) or "html" (PEP 503)
    files: list[IndexFile]


def query_index(index_url: str, timeout: float = DEFAULT_TIMEOUT_S) -> IndexPage:
    """Every file of lloom-executor the index lists. UpdateError(3) when it cannot be reached."""
    pk = _pk()
    page_url = index_url.rstrip("/") + "/" + pk.canonicalize_name(DIST_NAME) + "/"
    plain_url, auth = _split_auth(page_url)
    shown = redact(page_url)
    scheme = urllib.parse.urlsplit(plain_url).scheme
    if scheme not in ("http", "https"):
        raise UpdateError(f"index URL {redact(index_url)!r}: only http:// and https:// indexes are supported")
    headers = {"Accept": ACCEPT, "User-Agent": f"lloom-executor-update (python {python_version()})"}
    if auth:
        headers["Authorization"] = auth
    request = urllib.request.Request(plain_url, headers=headers)
    context = None
    if scheme == "https":
        cafile = ca_bundle()
        try:
            context = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
        except (OSError, ssl.SSLError) as exc:
            raise UpdateError(f"cannot load the CA bundle {cafile}: {exc}") from None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            data = response.read(MAX_PAGE_BYTES + 1)
            final_url = response.geturl()
            content_type = response.headers.get_content_type()
            charset = response.headers.get_content_charset() or "utf-8"
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            hint = ""
            if not urllib.parse.urlsplit(index_url).path.rstrip("/").endswith("simple"):
                hint = f" (the index URL is the simple API root, as for pip: did you mean {redact(index_url.rstrip('/'))}/simple ?)"
            raise UpdateError(f"{DIST_NAME} is not on the index {redact(index_url)}: {shown} answered 404{hint}") from None
        if exc.code in (401, 403):
            raise UpdateError(f"the index refused access ({exc.code} {exc.reason}) to {shown}: check the credentials in the index URL") from None
        raise UpdateError(f"the index answered {exc.code} {exc.reason} for {shown}", EXIT_UNREACHABLE if exc.code >= 500 else EXIT_ERROR) from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UpdateError(f"cannot reach the package index {redact(index_url)} ({shown}): {reason}", EXIT_UNREACHABLE) from None
    if len(data) > MAX_PAGE_BYTES:
        raise UpdateError(f"the index's page {shown} is larger than {MAX_PAGE_BYTES} bytes; refusing to read it")
    if content_type in ("application/vnd.pypi.simple.v1+json", "application/json"):
        return IndexPage(index_url, final_url, "json", parse_json_page(data, final_url))
    return IndexPage(index_url, final_url, "html", parse_html_page(data, final_url, charset))


@dataclass
class Selection:
    """The release chosen from an index page, and what was passed over."""

    version: Any | None  # Version, or None when nothing installable
    files: list[IndexFile]  # installable files of that version
    newest_any: Any | None  # the newest version on the index at all (with --pre: pre-releases too)
    skipped: list[tuple[Any, str]] = field(default_factory=list)  # newer versions passed over, and why
    warnings: list[str] = field(default_factory=list)


def select_release(files: list[IndexFile], *, version: str | None = None, pre: bool = False) -> Selection:
    pk = _pk()
    by_version: dict[Any, list[IndexFile]] = {}
    for f in files:
        by_version.setdefault(f.version, []).append(f)
    if version is not None:
        try:
            wanted = pk.Version(version)
        except pk.InvalidVersion:
            raise UpdateError(f"--version {version!r} is not a valid version") from None
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
    versions = sorted((v for v in by_version if pre or not v.is_prerelease), reverse=True)
    skipped = []
    for v in versions:
        usable = [f for f in by_version[v] if not f.yanked and f.problem() is None]
        if usable:
            return Selection(v, usable, versions[0], skipped)
        if all(f.yanked for f in by_version[v]):
            continue  # a yanked release is simply not offered, as pip does
        reasons = sorted({f.problem() or "yanked" for f in by_version[v]})
        skipped.append((v, "; ".join(reasons)))
    return Selection(None, [], versions[0] if versions else None, skipped)


# ---------------------------------------------------------------- the installed distribution


@dataclass
class Installed:
    version: Any  # Version
    dist: metadata.Distribution
    root: Path  # the directory RECORD paths are relative to (site-packages)
    dist_info: str  # the .dist-info directory's name
    editable_from: str | None


def _dist_info_name(dist: metadata.Distribution) -> str:
    path = getattr(dist, "_path", None)
    if path is not None:
        return Path(path).name
    for f in dist.files or []:
        if len(f.parts) == 2 and f.parts[0].endswith(".dist-info") and f.parts[1] == "METADATA":
            return f.parts[0]
    raise UpdateError(f"cannot find the .dist-info directory of the installed {DIST_NAME}")


def installed() -> Installed:
    pk = _pk()
    try:
        dist = metadata.distribution(DIST_NAME)
    except metadata.PackageNotFoundError:
        raise UpdateError(
            f"{DIST_NAME} is not installed in this interpreter's environment ({sys.executable}); "
            "`update` manages a pip-installed executor"
        ) from None
    try:
        version = pk.Version(dist.version)
    except pk.InvalidVersion:
        raise UpdateError(f"the installed {DIST_NAME} has an unreadable version {dist.version!r}") from None
    editable_from = None
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "null")
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


# ---------------------------------------------------------------- wheels


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@dataclass
class WheelInfo:
    path: Path
    version: Any
    tags: frozenset
    requires_python: str | None
    requires_dist: list[str]


def inspect_wheel(path: Path) -> WheelInfo:
    """The wheel's own metadata; UpdateError when it is not a lloom-executor wheel."""
    pk = _pk()
    try:
        name, version, _build, tags = pk.parse_wheel_filename(path.name)
    except (pk.InvalidWheelFilename, pk.InvalidVersion) as exc:
        raise UpdateError(f"{path.name} is not a wheel file name: {exc}") from None
    if name != pk.canonicalize_name(DIST_NAME):
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
    meta_name = pk.canonicalize_name(meta.get("Name", ""))
    try:
        meta_version = pk.Version(meta.get("Version", ""))
    except pk.InvalidVersion:
        meta_version = None
    if meta_name != name or meta_version != version:
        raise UpdateError(f"{path.name}: its METADATA says {meta.get('Name')} {meta.get('Version')}, not {DIST_NAME} {version}")
    return WheelInfo(path, version, frozenset(tags), meta.get("Requires-Python"), list(meta.get_all("Requires-Dist") or []))


def unsatisfied_requirements(requires_dist: list[str]) -> list[str]:
    """Requires-Dist entries (for no extra) that this environment does not satisfy, each with why."""
    pk = _pk()
    problems = []

    def installed_version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    for text in requires_dist:
        try:
            req = pk.Requirement(text)
        except pk.InvalidRequirement as exc:
            problems.append(f"{text} (unreadable: {exc})")
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if pk.canonicalize_name(req.name) == pk.canonicalize_name(DIST_NAME):
            continue
        have = installed_version(req.name)
        if have is None:
            problems.append(f"{text} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"{text} (installed: {req.name} {have})")
            continue
        for extra in sorted(req.extras):  # one level: what `name[extra]` adds
            try:
                extra_reqs = metadata.requires(req.name) or []
            except metadata.PackageNotFoundError:
                extra_reqs = []
            for sub_text in extra_reqs:
                try:
                    sub = pk.Requirement(sub_text)
                except pk.InvalidRequirement:
                    continue
                if sub.marker is None or not sub.marker.evaluate({"extra": extra}) or sub.marker.evaluate({"extra": ""}):
                    continue
                sub_have = installed_version(sub.name)
                if sub_have is None or (sub.specifier and not sub.specifier.contains(sub_have, prereleases=True)):
                    state = "not installed" if sub_have is None else f"installed: {sub.name} {sub_have}"
                    problems.append(f"{sub.name}{sub.specifier} for {req.name}[{extra}] ({state})")
    return problems


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
    if not directory:
        return None
    directory = os.path.normpath(os.path.abspath(directory))
    if path == directory or not path.startswith(directory + os.sep):
        return None
    return os.path.relpath(path, directory)


@dataclass
class BackupResult:
    path: Path
    version: Any
    files: int
    warnings: list[str]


def build_backup_wheel(inst: Installed, dest_dir: Path) -> BackupResult:
    """A wheel of the installed distribution, rebuilt from its RECORD; pip installs it offline."""
    pk = _pk()
    dist, info = inst.dist, inst.dist_info
    if not dist.files:
        raise UpdateError(f"the installed {DIST_NAME} has no RECORD (not installed from a wheel?): cannot back it up")
    wheel_text = dist.read_text("WHEEL")
    if not wheel_text:
        raise UpdateError(f"the installed {DIST_NAME} has no {info}/WHEEL: cannot rebuild a wheel of it")
    wheel_meta = email.parser.Parser().parsestr(wheel_text, headersonly=True)
    tag_lines = [t.strip() for t in wheel_meta.get_all("Tag") or [] if t.strip()]
    tags = set()
    for line in tag_lines:
        tags |= set(pk.parse_tag(line))
    usable = [t for t in tag_lines if set(pk.parse_tag(t)) & interpreter_tags()]
    if not usable:
        raise UpdateError(f"the installed {DIST_NAME}'s WHEEL tags ({', '.join(tag_lines) or 'none'}) do not fit this interpreter: cannot rebuild an installable wheel")
    file_tag = _compressed_tag(tag_lines) or usable[0]

    scripts = sysconfig.get_path("scripts")
    data_root = sysconfig.get_path("data")
    entry_scripts = {ep.name for ep in dist.entry_points if ep.group in ("console_scripts", "gui_scripts")}
    skip_info = {f"{info}/RECORD", f"{info}/INSTALLER", f"{info}/REQUESTED", f"{info}/direct_url.json"}
    data_dir_name = info[: -len(".dist-info")] + ".data"
    members: list[tuple[str, str]] = []  # (arcname, absolute path)
    missing, modified, warnings = [], [], []
    for entry in dist.files:
        rel = entry.as_posix() if hasattr(entry, "as_posix") else str(entry)
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
            warnings.append(f"not backed up (outside the environment): {absolute}")
            continue
        if not os.path.isfile(absolute):
            missing.append(rel)
            continue
        if entry.hash is not None and entry.hash.mode == "sha256":
            with open(absolute, "rb") as fh:
                if _record_hash(fh.read()) != f"sha256={entry.hash.value}":
                    modified.append(rel)
        members.append((arcname, absolute))
    if missing:
        raise UpdateError(
            f"cannot back up the installed {DIST_NAME} {inst.version}: {len(missing)} file(s) listed in its RECORD are "
            f"missing (first: {missing[0]}); the installation is already incomplete. Reinstall it, or apply without --backup"
        )
    if modified:
        warnings.append(f"{len(modified)} installed file(s) differ from their RECORD hash and are backed up as they are now (first: {modified[0]})")
    if f"{info}/METADATA" not in {a for a, _ in members} or f"{info}/WHEEL" not in {a for a, _ in members}:
        raise UpdateError(f"the installed {DIST_NAME}'s RECORD does not list {info}/METADATA and {info}/WHEEL: cannot rebuild a wheel")
    members.sort(key=lambda m: (m[0].startswith(info + "/"), m[0]))  # .dist-info last, as the spec recommends

    dest_dir.mkdir(parents=True, exist_ok=True)
    name = f"{info[: -len('.dist-info')]}-{file_tag}.whl"
    target = dest_dir / name
    fd, tmp_name = tempfile.mkstemp(prefix=".backup-", suffix=".whl", dir=dest_dir)
    os.close(fd)
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arcname, absolute in members:
                with open(absolute, "rb") as fh:
                    data = fh.read()
                zinfo = zipfile.ZipInfo.from_file(absolute, arcname)
                zinfo.date_time = max(zinfo.date_time, (1980, 1, 1, 0, 0, 0))
                zinfo.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(zinfo, data)
                writer.writerow([arcname, _record_hash(data), len(data)])
            writer.writerow([f"{info}/RECORD", "", ""])
            zf.writestr(f"{info}/RECORD", record.getvalue())
        with zipfile.ZipFile(tmp_name) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise UpdateError(f"the backup wheel is damaged ({bad}); not updating")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    for other in dest_dir.glob("*.whl"):
        if other != target:
            other.unlink()
    inspect_wheel(target)  # a wheel pip will accept: names and versions agree
    return BackupResult(target, inst.version, len(members), warnings)


# ---------------------------------------------------------------- the updates directory


def updates_dir(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / "updates"


@contextmanager
def update_lock(data_dir: Path) -> Iterator[None]:
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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class Downloaded:
    version: Any
    wheel: Path
    sha256: str
    manifest: dict[str, Any]


def downloaded_updates(data_dir: Path | None) -> list[Downloaded]:
    """Downloaded wheels whose manifest is readable and whose file is present, newest first (hashes not checked)."""
    if data_dir is None:
        return []
    pk = _pk()
    found = []
    base = updates_dir(data_dir)
    if not base.is_dir():
        return []
    for sub in base.iterdir():
        manifest_path = sub / "update.json"
        if sub.name.startswith((".", "backup-")) or not manifest_path.is_file():
            continue
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            version = pk.Version(manifest["version"])
            wheel = sub / manifest["filename"]
            sha = str(manifest["sha256"]).lower()
        except (ValueError, KeyError, TypeError, pk.InvalidVersion, OSError):
            continue
        if wheel.is_file():
            found.append(Downloaded(version, wheel, sha, manifest))
    return sorted(found, key=lambda d: d.version, reverse=True)


# ---------------------------------------------------------------- pip


def _pip(args: list[str], env: dict[str, str] | None = None, timeout: float = PIP_TIMEOUT_S, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"]
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise UpdateError(f"pip did not finish within {timeout:.0f} s: {' '.join(cmd[3:5])}") from None
    except OSError as exc:
        raise UpdateError(f"cannot run pip with {sys.executable}: {exc}") from None


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept)


# ---------------------------------------------------------------- check


@dataclass
class CheckResult:
    installed: Any
    index_url: str
    index_source: str
    page: IndexPage
    selection: Selection
    downloaded: list[Downloaded]

    @property
    def update_available(self) -> bool:
        return self.selection.version is not None and self.selection.version > self.installed

    def to_json(self) -> dict[str, Any]:
        sel = self.selection
        return {
            "installed": str(self.installed),
            "latest": str(sel.version) if sel.version is not None else None,
            "update_available": self.update_available,
            "index_url": redact(self.index_url),
            "index_url_source": self.index_source,
            "index_api": self.page.api,
            "files": [f.to_json() for f in sel.files],
            "newer_without_installable_wheel": [{"version": str(v), "reason": r} for v, r in sel.skipped],
            "downloaded": [str(d.version) for d in self.downloaded],
            "warnings": sel.warnings,
        }


def run_check(index_option: str | None, pre: bool, timeout: float, data_dir: Path | None, version: str | None = None) -> CheckResult:
    inst = installed()
    index_url, source = resolve_index_url(index_option)
    page = query_index(index_url, timeout)
    selection = select_release(page.files, version=version, pre=pre)
    return CheckResult(inst.version, index_url, source, page, selection, downloaded_updates(data_dir))


# ---------------------------------------------------------------- download


@dataclass
class DownloadResult:
    version: Any
    wheel: Path | None
    sha256: str | None
    already: bool
    nothing_newer: bool
    check: CheckResult


def _pip_download_env(index_url: str) -> dict[str, str]:
    """pip's environment for `download`: the index `check` read, and only it.

    The index URL goes to pip in PIP_INDEX_URL, never on its command line: it may
    carry credentials (https://user:token@host/simple), and any local user can
    read a process's arguments (ps, /proc/<pid>/cmdline) but not its environment.
    """
    env = dict(os.environ)
    env["PIP_INDEX_URL"] = index_url
    env["PIP_FIND_LINKS"] = ""  # only the index `check` read may supply the file
    env["PIP_EXTRA_INDEX_URL"] = ""
    env.pop("PIP_NO_INDEX", None)
    return env


def _pip_download_args(timeout: float, dest: Path, requirement: Path) -> list[str]:
    """pip's arguments for `download` (the index comes from `_pip_download_env`, not from here)."""
    return [
        "download", "--no-deps", "--only-binary=:all:", "--timeout", str(timeout),
        "--dest", str(dest), "-r", str(requirement),
    ]


def run_download(index_option: str | None, pre: bool, timeout: float, data_dir: Path, version: str | None, echo: Callable[[str], None]) -> DownloadResult:
    result = run_check(index_option, pre, timeout, data_dir, version=version)
    sel = result.selection
    if sel.version is None:
        raise UpdateError(_nothing_installable(result))
    for warning in sel.warnings:
        echo(f"warning: {warning}")
    if version is None and sel.version <= result.installed:
        return DownloadResult(sel.version, None, None, False, True, result)
    target_dir = updates_dir(data_dir) / str(sel.version)
    by_name = {f.filename: f for f in sel.files}
    with update_lock(data_dir):
        manifest_path = target_dir / "update.json"
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
                existing = target_dir / manifest["filename"]
                published = by_name.get(manifest["filename"])
                if published is not None and existing.is_file() and _matches(existing, published):
                    return DownloadResult(sel.version, existing, file_hash(existing), True, False, result)
            except (ValueError, KeyError, TypeError, OSError):
                pass
            echo(f"the earlier download in {target_dir} is incomplete or does not match the index: downloading again")
        hashes = sorted({f"{name}:{value}" for f in sel.files for name, value in f.pip_hashes().items()})
        if not hashes:
            raise UpdateError(
                f"the index publishes no sha256/sha384/sha512 for {DIST_NAME} {sel.version}'s wheels: "
                "refusing a file that cannot be verified"
            )
        updates_dir(data_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=updates_dir(data_dir)) as tmp:
            tmp_dir = Path(tmp)
            requirement = tmp_dir / "requirement.txt"
            requirement.write_text(
                f"{DIST_NAME}=={sel.version} " + " ".join(f"--hash={h}" for h in hashes) + "\n", encoding="utf-8"
            )
            dest = tmp_dir / "wheel"
            echo(f"downloading {DIST_NAME} {sel.version} from {redact(result.index_url)} with pip ...")
            proc = _pip(_pip_download_args(timeout, dest, requirement), env=_pip_download_env(result.index_url))
            output = proc.stdout + "\n" + proc.stderr
            if proc.returncode != 0:
                if "DO NOT MATCH THE HASHES" in output or "do not match the hashes" in output.lower():
                    raise UpdateError(
                        f"the file the index served for {DIST_NAME} {sel.version} does not match the hash the index published: "
                        f"refused, nothing kept (pip said:\n{_tail(output, 8)})"
                    )
                unreachable = any(s in output for s in ("Max retries exceeded", "NewConnectionError", "Connection refused", "Temporary failure in name resolution"))
                raise UpdateError(
                    f"pip download of {DIST_NAME} {sel.version} failed (exit {proc.returncode}):\n{_tail(output)}",
                    EXIT_UNREACHABLE if unreachable else EXIT_ERROR,
                )
            wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
            if len(wheels) != 1:
                raise UpdateError(f"pip download left {len(wheels)} wheel(s) instead of one: {', '.join(w.name for w in wheels) or 'none'}")
            wheel = wheels[0]
            published = by_name.get(wheel.name)
            if published is None:
                raise UpdateError(f"pip chose {wheel.name}, which the index did not list as an installable wheel of {sel.version}: refused")
            if not _matches(wheel, published):
                raise UpdateError(f"{wheel.name} does not match the hash the index published for it: refused, nothing kept")
            inspect_wheel(wheel)
            target_dir.mkdir(parents=True, exist_ok=True)
            final = target_dir / wheel.name
            shutil.move(str(wheel), final)
        for other in target_dir.glob("*.whl"):
            if other != final:
                other.unlink()
        sha = file_hash(final)
        _write_json(
            manifest_path,
            {
                "version": str(sel.version),
                "filename": final.name,
                "sha256": sha,
                "published_hashes": published.hashes,
                "index_url": redact(result.index_url),
                "requires_python": published.requires_python,
                "yanked": published.yanked,
                "downloaded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            },
        )
    return DownloadResult(sel.version, final, sha, False, False, result)


def _matches(path: Path, published: IndexFile) -> bool:
    usable = [name for name in ("sha512", "sha384", "sha256") if name in published.hashes]
    if not usable:
        return False
    return all(file_hash(path, name) == published.hashes[name] for name in usable)


def _nothing_installable(result: CheckResult) -> str:
    sel = result.selection
    if sel.newest_any is None:
        return f"the index {redact(result.index_url)} lists no release of {DIST_NAME}"
    detail = "; ".join(f"{v}: {r}" for v, r in sel.skipped[:5]) or "all releases are yanked or pre-releases (try --pre)"
    return f"no release of {DIST_NAME} on {redact(result.index_url)} has a wheel this interpreter can install ({detail})"


# ---------------------------------------------------------------- apply


@dataclass
class Verification:
    ok: bool
    reported_version: str | None
    problems: list[str]


def verify_installation(expected: Any, config_file: Path | None, cwd: Path) -> Verification:
    """Check the installed package in a fresh interpreter: its version, and the config with it."""
    pk = _pk()
    problems = []
    reported = None
    env = dict(os.environ)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", IMPORT_NAME, "--version"], check=False, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S,
            cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return Verification(False, None, [f"`python -m {IMPORT_NAME} --version` did not finish within {VERIFY_TIMEOUT_S} s"])
    if proc.returncode != 0:
        problems.append(f"`python -m {IMPORT_NAME} --version` exited {proc.returncode}:\n{_tail(proc.stdout + proc.stderr)}")
    else:
        match = re.search(r"version\s+(\S+)\s*$", proc.stdout.strip())
        reported = match.group(1) if match else None
        try:
            same = reported is not None and pk.Version(reported) == expected
        except pk.InvalidVersion:
            same = False
        if not same:
            problems.append(f"`python -m {IMPORT_NAME} --version` reports {proc.stdout.strip()!r}, expected version {expected}")
    if not problems and config_file is not None and config_file.is_file():
        try:
            proc = subprocess.run(
                [sys.executable, "-m", IMPORT_NAME, "config", "validate", "--config", str(config_file)],
                check=False, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            problems.append(f"`config validate` did not finish within {VERIFY_TIMEOUT_S} s")
        else:
            if proc.returncode != 0:
                problems.append(f"`python -m {IMPORT_NAME} config validate --config {config_file}` exited {proc.returncode}:\n{_tail(proc.stdout + proc.stderr)}")
    return Verification(not problems, reported, problems)


def _install_wheel(wheel: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _pip(["install", "--no-deps", "--force-reinstall", "--no-index", str(wheel)], cwd=cwd)


def _pick_download(data_dir: Path, version: str | None) -> Downloaded:
    pk = _pk()
    found = downloaded_updates(data_dir)
    if version is not None:
        try:
            wanted = pk.Version(version)
        except pk.InvalidVersion:
            raise UpdateError(f"--version {version!r} is not a valid version") from None
        for d in found:
            if d.version == wanted:
                return d
        raise UpdateError(f"{DIST_NAME} {wanted} is not downloaded in {updates_dir(data_dir)}: run `lloom-executor update download --version {wanted}` first")
    if not found:
        raise UpdateError(f"no update is downloaded in {updates_dir(data_dir)}: run `lloom-executor update download` first")
    return found[0]


def run_apply(data_dir: Path, config_file: Path | None, version: str | None, backup: bool, echo: Callable[[str], None]) -> int:
    """Install a downloaded update, verify it, roll back when asked to and needed. Returns the exit code."""
    _pk()
    interpreter_tags()
    inst = installed()
    check_replaceable(inst)
    with update_lock(data_dir):
        chosen = _pick_download(data_dir, version)
        if version is None and chosen.version <= inst.version:
            echo(f"nothing to apply: {DIST_NAME} {inst.version} is installed; the newest download is {chosen.version}")
            return EXIT_OK
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
        if wheel.requires_python:
            pk = _pk()
            try:
                ok = pk.SpecifierSet(wheel.requires_python).contains(python_version(), prereleases=True)
            except pk.InvalidSpecifier:
                ok = False
            if not ok:
                raise UpdateError(f"{DIST_NAME} {wheel.version} requires Python {wheel.requires_python}; this is {python_version()}")
        missing = unsatisfied_requirements(wheel.requires_dist)
        if missing:
            raise UpdateError(
                f"{DIST_NAME} {wheel.version} needs dependencies this environment does not satisfy; nothing was changed:\n"
                + "\n".join(f"    {m}" for m in missing)
                + f"\ninstall them first (e.g. `{sys.executable} -m pip install '<requirement>'`), then apply again"
            )
        if wheel.version < inst.version:
            echo(f"downgrading: {DIST_NAME} {inst.version} is installed; installing {wheel.version} as asked")
        elif wheel.version == inst.version:
            echo(f"reinstalling {DIST_NAME} {wheel.version} (already the installed version)")
        work = updates_dir(data_dir)
        saved: BackupResult | None = None
        if backup:
            saved = build_backup_wheel(inst, work / f"backup-{inst.version}")
            _write_json(
                saved.path.parent / "backup.json",
                {
                    "version": str(inst.version),
                    "filename": saved.path.name,
                    "sha256": file_hash(saved.path),
                    "rebuilt_from": str(inst.root / inst.dist_info / "RECORD"),
                    "files": saved.files,
                    "warnings": saved.warnings,
                    "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                },
            )
            for warning in saved.warnings:
                echo(f"warning: backup: {warning}")
            echo(f"backup of {DIST_NAME} {inst.version}: {saved.path} ({saved.files} files)")

        echo(f"installing {DIST_NAME} {wheel.version} from {chosen.wheel} ...")
        proc = _install_wheel(chosen.wheel, work)
        if proc.returncode == 0:
            check = verify_installation(wheel.version, config_file, work)
            if check.ok:
                checked = f"; config {config_file} valid" if config_file is not None and config_file.is_file() else ""
                echo(f"updated {DIST_NAME} {inst.version} -> {wheel.version} (verified: `python -m {IMPORT_NAME} --version` reports {check.reported_version}{checked})")
                echo(f"restart the running executor to run {wheel.version} (this command does not stop it), e.g. `systemctl restart lloom-executor`")
                return EXIT_OK
            failure = f"the installed {wheel.version} failed verification:\n" + "\n".join(f"  {p}" for p in check.problems)
        else:
            failure = f"pip install of {chosen.wheel.name} failed (exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
            # pip restores what it uninstalled when an install fails: is the previous version intact?
            previous = verify_installation(inst.version, config_file, work)
            if previous.ok:
                raise UpdateError(
                    f"update to {wheel.version} failed: {failure}\n"
                    f"{DIST_NAME} {inst.version} is still installed and verified; nothing to roll back",
                    EXIT_ROLLED_BACK,
                )

        if saved is None:
            local = next((d.wheel for d in downloaded_updates(data_dir) if d.version == inst.version), None)
            source = f"--no-index '{local}'" if local is not None else f"'{DIST_NAME}=={inst.version}'` (from the index"
            raise UpdateError(
                f"update to {wheel.version} failed: {failure}\n"
                f"NO ROLLBACK WAS POSSIBLE: apply ran without --backup. The installation is {wheel.version} and does not work "
                f"(`lloom-executor` itself may not start). Recover by installing the previous version with pip: "
                f"`{sys.executable} -m pip install --no-deps --force-reinstall {source}`"
                + ("" if local is not None else ")")
                + "; use `update apply --backup` next time. "
                "The running executor, if any, is untouched: do not restart it until this is fixed.",
                EXIT_BROKEN,
            )
        echo(f"update to {wheel.version} failed; rolling back to {inst.version} from {saved.path} ...")
        proc = _install_wheel(saved.path, work)
        restored = verify_installation(inst.version, config_file, work) if proc.returncode == 0 else None
        if restored is not None and restored.ok:
            raise UpdateError(
                f"update to {wheel.version} failed: {failure}\n"
                f"rolled back: {DIST_NAME} {inst.version} is installed again and verified (`python -m {IMPORT_NAME} --version` reports "
                f"{restored.reported_version}). The running executor, if any, was not touched and need not be restarted.",
                EXIT_ROLLED_BACK,
            )
        why = (
            f"pip install of the backup failed (exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
            if restored is None
            else "the restored version failed verification:\n" + "\n".join(f"  {p}" for p in restored.problems)
        )
        raise UpdateError(
            f"update to {wheel.version} failed: {failure}\n"
            f"ROLLBACK FAILED: {why}\n"
            f"the backup wheel is {saved.path}; install it by hand with `{sys.executable} -m pip install --no-deps --force-reinstall "
            f"--no-index '{saved.path}'`. The running executor, if any, is untouched: do not restart it until this is fixed.",
            EXIT_BROKEN,
        )


# ---------------------------------------------------------------- the click commands


@dataclass(frozen=True)
class UpdatePaths:
    """What the commands need from the configuration."""

    data_dir: Path
    config_file: Path | None  # the operator's config, validated after an update; None when there is none


EXIT_CODES_HELP = (
    "Exit codes: 0 done (check: up to date), 1 error (nothing changed), 2 usage error, "
    "3 index unreachable, 10 update available (check), 20 apply failed and rolled back (previous "
    "version verified), 21 apply failed with no working rollback."
)


def build_update_group(resolve_paths: Callable[[Path | None], UpdatePaths], config_help: str = "Config file (for [storage] data_dir).") -> click.Group:
    """The `update` command group; `resolve_paths(--config)` reads the config (raising click errors)."""

    def config_option(fn):
        return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help=config_help)(fn)

    index_option = click.option(
        "--index-url", "index_url", default=None, metavar="URL",
        help="Simple-API root of the package index, as for pip (default: PIP_INDEX_URL, pip's config, https://pypi.org/simple).",
    )
    pre_option = click.option("--pre", is_flag=True, help="Consider pre-releases too.")
    timeout_option = click.option(
        "--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT_S, show_default=True, help="Seconds to wait for the index."
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
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output (errors too, as {\"error\": ..., \"exit_code\": ...}).")
    @click.pass_context
    def check_cmd(ctx: click.Context, config_path: Path | None, index_url: str | None, pre: bool, timeout: float, as_json: bool) -> None:
        """Ask the package index for newer releases of lloom-executor installable here.

        Exits 0 when up to date and 10 when an update is available, so scripts
        can branch on it; 3 when the index cannot be reached.
        """
        data_dir = None
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
        sel = result.selection
        code = EXIT_UPDATE_AVAILABLE if result.update_available else EXIT_OK
        if as_json:
            click.echo(json.dumps(result.to_json(), indent=2))
            ctx.exit(code)
        click.echo(f"installed: {DIST_NAME} {result.installed}")
        click.echo(f"index:     {redact(result.index_url)} ({result.index_source}; {'PEP 691 JSON' if result.page.api == 'json' else 'PEP 503 HTML'})")
        click.echo(f"latest:    {sel.version if sel.version is not None else 'none installable here'}" + (" (pre-releases included)" if pre else ""))
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
        ctx.exit(code)

    @update_group.command("download", epilog=EXIT_CODES_HELP)
    @config_option
    @index_option
    @pre_option
    @timeout_option
    @click.option("--version", "version", default=None, metavar="X", help="Download this version instead of the newest (even an older one).")
    def download_cmd(config_path: Path | None, index_url: str | None, pre: bool, timeout: float, version: str | None) -> None:
        """Download and verify the wheel of the newest release (or --version) into data_dir/updates/<version>/.

        Uses `python -m pip download --no-deps --only-binary=:all:` of this
        interpreter, then checks the file against the sha256 the index
        published. Running it again keeps a wheel that is already there and valid.
        """
        paths = resolve_paths(config_path)
        result = run_download(index_url, pre, timeout, paths.data_dir, version, click.echo)
        if result.nothing_newer:
            click.echo(f"nothing to download: {DIST_NAME} {result.check.installed} is installed and the newest release installable here is {result.version}")
            return
        state = "already downloaded" if result.already else "downloaded"
        click.echo(f"{state}: {DIST_NAME} {result.version}")
        click.echo(f"wheel:  {result.wheel}")
        click.echo(f"sha256: {result.sha256} (matches the index)")
        click.echo(f"next: `lloom-executor update apply --backup{'' if version is None else f' --version {result.version}'}`")

    @update_group.command("apply", epilog=EXIT_CODES_HELP)
    @config_option
    @click.option("--backup", is_flag=True, help="Save the installed version as a wheel first and restore it automatically if the update fails.")
    @click.option("--version", "version", default=None, metavar="X", help="Apply this downloaded version instead of the newest downloaded (may downgrade).")
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
