"""Every lloom-executor file the package index lists, read through the standard simple repository API.

We read PEP 691 JSON (`application/vnd.pypi.simple.v1+json`), falling back to
the PEP 503 HTML page when the index serves only that. Not PyPI's
`/pypi/<name>/json`: that is a Warehouse-only API that many private indexes
(pypiserver, some Artifactory/Nexus setups) do not have, and it lives at a
different URL from the one pip is configured with, whereas the simple API is
what pip itself reads, so `check` sees exactly the files `pip download` will
choose from, with the hashes and `Requires-Python` the index publishes for
each file.
"""

from __future__ import annotations

import html.parser
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .errors import EXIT_ERROR, EXIT_UNREACHABLE, UpdateError
from .index_url import ca_bundle, redact, split_auth
from .versions import (
    DIST_NAME,
    InvalidSdistFilename,
    InvalidVersion,
    InvalidWheelFilename,
    Tag,
    Version,
    canonicalize_name,
    interpreter_tags,
    parse_sdist_filename,
    parse_wheel_filename,
    python_satisfies,
    python_version,
)

DEFAULT_TIMEOUT_S = 15.0
ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
MAX_PAGE_BYTES = 64 * 1024 * 1024  # a project page is kilobytes; this only stops a misbehaving server filling memory
PIP_HASHES = ("sha256", "sha384", "sha512")  # what `pip --hash` accepts, strongest last


@dataclass(frozen=True)
class IndexFile:
    """One file of the project on the index."""

    filename: str
    url: str
    hashes: dict[str, str]
    requires_python: str | None
    yanked: bool
    yanked_reason: str | None
    version: Version
    tags: frozenset[Tag] | None  # a wheel's tags; None for an sdist

    @property
    def is_wheel(self) -> bool:
        return self.tags is not None

    def problem(self) -> str | None:
        """Why this interpreter cannot install this file; None when it can.

        The package has compiled parts and `update` never builds from source,
        so only a wheel for this interpreter counts.
        """
        if self.tags is None:
            return "not a wheel (update never builds from source)"
        if not self.tags & interpreter_tags():
            return f"wheel for {', '.join(sorted(str(t) for t in self.tags)[:3])}, not this interpreter"
        if self.requires_python:
            fits = python_satisfies(self.requires_python)
            if fits is None:
                return f"unreadable Requires-Python {self.requires_python!r}"
            if not fits:
                return f"requires Python {self.requires_python} (this is {python_version()})"
        return None

    def pip_hashes(self) -> dict[str, str]:
        """The published hashes pip can enforce with `--hash` (an index may publish others too)."""
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
    """The <a> elements of a PEP 503 page with all their attributes (PEP 503 puts the metadata there)."""

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


def _file_entry(filename: str, url: str, hashes: dict[str, Any], requires_python: str | None, yanked: object) -> IndexFile | None:
    """The IndexFile for one listed file; None for files that are not ours or whose names cannot be read.

    Both page formats end here so that JSON and HTML indexes give the same answer for the same files.
    `yanked` is PEP 592/691's value: False, True, or the reason as a string.
    """
    tags: frozenset[Tag] | None = None
    try:
        if filename.endswith(".whl"):
            name, version, _build, tags = parse_wheel_filename(filename)
        else:
            name, version = parse_sdist_filename(filename)
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    if name != canonicalize_name(DIST_NAME):
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
        entry = _file_entry(
            item["filename"], url, item.get("hashes") or {}, item.get("requires-python"), item.get("yanked", False)
        )
        if entry is not None:
            files.append(entry)
    return files


def parse_html_page(data: bytes, page_url: str, charset: str = "utf-8") -> list[IndexFile]:
    """Files of a PEP 503 HTML project page (hash in the URL fragment, PEP 592 yanks, data-requires-python)."""
    parser = _LinkParser()
    parser.feed(data.decode(charset, errors="replace"))
    files = []
    for link in parser.links:
        href = link.get("href")
        if not href:
            continue
        parts = urllib.parse.urlsplit(urllib.parse.urljoin(page_url, href))
        filename = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
        hashes: dict[str, Any] = {}
        if parts.fragment and "=" in parts.fragment:
            name, _, value = parts.fragment.partition("=")
            hashes[name] = value
        yanked: object = False
        if "data-yanked" in link:
            yanked = link["data-yanked"] or True
        entry = _file_entry(
            filename, urllib.parse.urlunsplit(parts._replace(fragment="")), hashes, link.get("data-requires-python"), yanked
        )
        if entry is not None:
            files.append(entry)
    return files


@dataclass
class IndexPage:
    index_url: str
    page_url: str  # after redirects: relative file URLs resolve against it
    api: str  # "json" (PEP 691) or "html" (PEP 503)
    files: list[IndexFile]


def _ssl_context(scheme: str) -> ssl.SSLContext | None:
    """pip's CA bundle for https, so an index behind a private CA works here when it works for pip."""
    if scheme != "https":
        return None
    cafile = ca_bundle()
    try:
        return ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise UpdateError(f"cannot load the CA bundle {cafile}: {exc}") from None


def query_index(index_url: str, timeout: float = DEFAULT_TIMEOUT_S) -> IndexPage:
    """Every file of lloom-executor the index lists.

    Errors say whether retrying can help: EXIT_UNREACHABLE (3) for the network
    and 5xx, EXIT_ERROR for answers that will not change by themselves (404, 401/403).
    """
    page_url = index_url.rstrip("/") + "/" + canonicalize_name(DIST_NAME) + "/"
    plain_url, auth = split_auth(page_url)
    shown = redact(page_url)
    scheme = urllib.parse.urlsplit(plain_url).scheme
    if scheme not in ("http", "https"):
        raise UpdateError(f"index URL {redact(index_url)!r}: only http:// and https:// indexes are supported")
    headers = {"Accept": ACCEPT, "User-Agent": f"lloom-executor-update (python {python_version()})"}
    if auth:
        headers["Authorization"] = auth
    request = urllib.request.Request(plain_url, headers=headers)
    context = _ssl_context(scheme)
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
                hint = (
                    f" (the index URL is the simple API root, as for pip: did you mean {redact(index_url.rstrip('/'))}/simple ?)"
                )
            raise UpdateError(f"{DIST_NAME} is not on the index {redact(index_url)}: {shown} answered 404{hint}") from None
        if exc.code in (401, 403):
            raise UpdateError(
                f"the index refused access ({exc.code} {exc.reason}) to {shown}: check the credentials in the index URL"
            ) from None
        raise UpdateError(
            f"the index answered {exc.code} {exc.reason} for {shown}", EXIT_UNREACHABLE if exc.code >= 500 else EXIT_ERROR
        ) from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UpdateError(f"cannot reach the package index {redact(index_url)} ({shown}): {reason}", EXIT_UNREACHABLE) from None
    if len(data) > MAX_PAGE_BYTES:
        raise UpdateError(f"the index's page {shown} is larger than {MAX_PAGE_BYTES} bytes; refusing to read it")
    if content_type in ("application/vnd.pypi.simple.v1+json", "application/json"):
        return IndexPage(index_url, final_url, "json", parse_json_page(data, final_url))
    return IndexPage(index_url, final_url, "html", parse_html_page(data, final_url, charset))
