"""Which package index to ask, with which CA bundle and credentials: the same one pip would use.

The index is `--index-url`, else `PIP_INDEX_URL`, else pip's configuration
(`pip config list`: `download.index-url`, `install.index-url`,
`global.index-url`, in that order), else https://pypi.org/simple. Following
pip's own order means `check` reads the index that `pip download` will fetch
from. The URL is the *simple API root*, exactly what `pip --index-url` takes
(PyPI: https://pypi.org/simple; a private index: https://host/simple or
https://user:token@host/simple). The CA bundle: `PIP_CERT`, else pip's `cert`
setting, else the system's.

Credentials in the URL are never printed (`redact`), nor put on pip's command
line, which any local user can read: for that reason give a URL with
credentials in PIP_INDEX_URL or pip's config, not `--index-url`.
"""

from __future__ import annotations

import ast
import base64
import functools
import os
import subprocess
import sys
import urllib.parse

DEFAULT_INDEX_URL = "https://pypi.org/simple"


@functools.cache
def pip_config() -> dict[str, str]:
    """`pip config list` of this interpreter's pip as a dict (empty when pip cannot say).

    Cached: it runs pip in a subprocess, and both the index URL and the CA bundle need it.
    """
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    values: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or key.startswith(":env:"):
            continue  # :env: lines repeat PIP_* variables, which we read from the environment directly
        try:
            value = ast.literal_eval(raw)  # pip prints values as Python literals ('https://...')
        except (ValueError, SyntaxError):
            value = raw.strip("'\"")
        values[key.strip()] = str(value)
    return values


def _first_configured(keys: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of pip's config `keys` that has a value, and that key."""
    config = pip_config()
    for key in keys:
        if config.get(key):
            return config[key], key
    return None


def resolve_index_url(option: str | None) -> tuple[str, str]:
    """The simple-API root to use and where it came from (shown to the operator and in `check --json`)."""
    if option:
        return option, "--index-url"
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"], "PIP_INDEX_URL"
    configured = _first_configured(("download.index-url", "install.index-url", "global.index-url"))
    if configured is not None:
        url, key = configured
        return url, f"pip config {key}"
    return DEFAULT_INDEX_URL, "default"


def ca_bundle() -> str | None:
    """The CA file pip would verify the index with; None for the system's."""
    cert = os.environ.get("PIP_CERT")
    if cert:
        return cert
    configured = _first_configured(("download.cert", "install.cert", "global.cert"))
    return configured[0] if configured is not None else None


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


def split_auth(url: str) -> tuple[str, str | None]:
    """The URL without userinfo, and the Basic Authorization header it carried.

    urllib does not send userinfo from a URL by itself, and a URL with it would
    show up in tracebacks and redirects; a header does neither.
    """
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
