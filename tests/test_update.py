"""`lloom-executor update check|download|apply` against a real local package index.

The index is an HTTP server on 127.0.0.1 speaking the simple repository API
(PEP 691 JSON, PEP 503 HTML by content negotiation) with sha256 digests, like
PyPI. The wheels are tiny `lloom-executor` distributions written here per the
wheel spec: 0.0.1 and 0.0.2 work, 0.0.3 fails at import, 0.0.4 needs a
dependency that is not installed. Everything that installs runs in a throwaway
venv (one per module) whose interpreter runs our real update package (copied
next to a small runner as `updatecmd`, with click and packaging on its path), so
pip replaces the fake distribution there and never touches this environment.
There, an import of any other lloom_executor module would fail: the package
must keep running while `apply` replaces lloom_executor's files.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import http.server
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UPDATE_PACKAGE = REPO / "python" / "lloom_executor" / "update"

MAIN_PY = """\
import sys
import tomllib

from lloom_executor import __version__


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(f"lloom-executor, version {__version__}")
        return 0
    if args[:2] == ["config", "validate"] and "--config" in args:
        path = args[args.index("--config") + 1]
        try:
            with open(path, "rb") as fh:
                tomllib.load(fh)
        except Exception as exc:
            print(f"{path}: invalid: {exc}", file=sys.stderr)
            return 1
        print(f"{path}: valid")
        return 0
    print("usage: lloom-executor --version | config validate --config FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
"""

RUNNER_PY = '''\
"""Runs the real update commands (updatecmd/ is a copy of the lloom_executor/update package) in this venv."""
import sys
import tomllib
from pathlib import Path

import click

import updatecmd


def resolve(config_path):
    if config_path is None:
        raise click.ClickException("the test runner needs --config")
    data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    return updatecmd.UpdatePaths(Path(data["storage"]["data_dir"]), config_path)


updatecmd.build_update_group(resolve).main(args=sys.argv[1:], prog_name="lloom-executor update")
'''


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(
    directory: Path, version: str, *, broken: bool = False, requires: tuple[str, ...] = (), tag: str = "py3-none-any"
) -> Path:
    """A wheel of a tiny lloom-executor, written per the binary distribution format spec."""
    info = f"lloom_executor-{version}.dist-info"
    init = f'__version__ = "{version}"\n'
    if broken:
        init += f'raise ImportError("lloom_executor {version} is broken on purpose")\n'
    metadata = "Metadata-Version: 2.1\nName: lloom-executor\nVersion: {}\nRequires-Python: >=3.8\n{}".format(
        version, "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    files = {
        "lloom_executor/__init__.py": init,
        "lloom_executor/__main__.py": MAIN_PY,
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test_update\nRoot-Is-Purelib: true\nTag: {tag}\n",
        f"{info}/entry_points.txt": "[console_scripts]\nlloom-executor = lloom_executor.__main__:main\n",
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    path = directory / f"lloom_executor-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            data = text.encode()
            zf.writestr(name, data)
            writer.writerow([name, _record_hash(data), len(data)])
        writer.writerow([f"{info}/RECORD", "", ""])
        zf.writestr(f"{info}/RECORD", record.getvalue())
    return path


@dataclass
class Published:
    served: bytes  # what the index sends
    sha256: str  # what the index says it is
    requires_python: str | None = ">=3.8"
    yanked: bool = False


@dataclass
class LocalIndex:
    """A package index on 127.0.0.1: GET /simple/lloom-executor/ (JSON or HTML) and /files/<name>."""

    files: dict[str, Published] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None
    # (user, password) to require with HTTP basic auth; None: open
    credentials: tuple[str, str] | None = None
    # while `credentials` are set: each request's path and whether it carried them
    authorized: list[tuple[str, bool]] = field(default_factory=list)
    # while `credentials` are set: the command line of every process that had the password in it
    # when a request came (read from /proc/<pid>/cmdline, as any local user can)
    leaked_to: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/simple"

    def scan_command_lines(self, secret: str) -> None:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes()
            except OSError:  # the process has gone, or is not ours to read
                continue
            if secret.encode() in argv:
                self.leaked_to.append(argv.replace(b"\0", b" ").decode(errors="replace"))

    def publish(self, wheel: Path, *, corrupt: bool = False) -> None:
        data = wheel.read_bytes()
        served = data[:-7] + b"garbage" if corrupt else data
        self.files[wheel.name] = Published(served, hashlib.sha256(data).hexdigest())

    def publish_bytes(self, filename: str, data: bytes) -> None:
        self.files[filename] = Published(data, hashlib.sha256(data).hexdigest())

    def file_url(self, filename: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/files/{filename}"

    def json_page(self) -> bytes:
        files = [
            {
                "filename": name,
                "url": self.file_url(name),
                "hashes": {"sha256": p.sha256},
                "requires-python": p.requires_python,
                "yanked": p.yanked,
                "size": len(p.served),
                "upload-time": "2025-01-01T00:00:00.000000Z",
                "core-metadata": False,
                "data-dist-info-metadata": False,
            }
            for name, p in sorted(self.files.items())
        ]
        versions = sorted({name.split("-")[1].removesuffix(".tar.gz") for name in self.files})
        doc = {"meta": {"api-version": "1.1", "_last-serial": 1}, "name": "lloom-executor", "versions": versions, "files": files}
        return json.dumps(doc).encode()

    def html_page(self) -> bytes:
        import html

        links = "".join(
            f'<a href="{self.file_url(name)}#sha256={p.sha256}"'
            + (f' data-requires-python="{html.escape(p.requires_python)}"' if p.requires_python else "")
            + (' data-yanked=""' if p.yanked else "")
            + f">{name}</a><br/>\n"
            for name, p in sorted(self.files.items())
        )
        return (
            '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.1">'
            f"<title>Links for lloom-executor</title></head><body><h1>Links for lloom-executor</h1>\n{links}</body></html>\n"
        ).encode()

    def start(self) -> None:
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet: one line per request would flood the test output
                pass

            def send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                index.requests.append(self.path)
                if index.credentials is not None:
                    user, password = index.credentials
                    index.scan_command_lines(password)
                    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                    ok = self.headers.get("Authorization") == expected
                    index.authorized.append((self.path, ok))
                    if not ok:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="test index"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                if self.path == "/simple/lloom-executor":
                    self.send_response(301)
                    self.send_header("Location", "/simple/lloom-executor/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/simple/lloom-executor/":
                    if "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", ""):
                        self.send(200, index.json_page(), "application/vnd.pypi.simple.v1+json")
                    else:
                        self.send(200, index.html_page(), "text/html; charset=utf-8")
                elif self.path.startswith("/files/") and self.path[len("/files/") :] in index.files:
                    self.send(200, index.files[self.path[len("/files/") :]].served, "application/octet-stream")
                else:
                    self.send(404, b"not found")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class World:
    base: Path
    index: LocalIndex
    wheels: dict[str, Path]
    venv: Path
    runner: Path
    config: Path
    data_dir: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return self.venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        }
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1")
        env.update(extra)
        return env

    def update(self, *args: str, index: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`lloom-executor update ARGS` in the venv (our real update package), with --config and the local index."""
        command, *rest = args
        extra = ["--config", str(self.config)]
        if index and command in ("check", "download"):
            extra += ["--index-url", self.index.url]
        return subprocess.run(
            [str(self.python), str(self.runner), command, *extra, *rest],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            env=env or self.env(),
            cwd=self.base,
        )

    def installed_version(self) -> str | None:
        infos = sorted(self.site_packages.glob("lloom_executor-*.dist-info"))
        assert len(infos) <= 1, infos
        return infos[0].name[len("lloom_executor-") : -len(".dist-info")] if infos else None

    def runs_as(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), "-m", "lloom_executor", "--version"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(),
            cwd=self.base,
        )

    def install(self, version: str) -> None:
        """Put `version` in place directly with the venv's pip (test setup, not the code under test)."""
        if self.installed_version() == version and self.runs_as().returncode == 0:
            return
        out = subprocess.run(
            [str(self.python), "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", str(self.wheels[version])],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            env=self.env(),
        )
        assert out.returncode == 0, out.stdout + out.stderr

    def download(self, version: str) -> None:
        out = self.update("download", "--version", version)
        assert out.returncode == 0, out.stdout + out.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("update")
    wheel_dir = base / "wheels"
    wheel_dir.mkdir()
    wheels = {
        "0.0.1": write_wheel(wheel_dir, "0.0.1"),
        "0.0.2": write_wheel(wheel_dir, "0.0.2"),
        "0.0.3": write_wheel(wheel_dir, "0.0.3", broken=True),
        "0.0.4": write_wheel(
            wheel_dir,
            "0.0.4",
            requires=("lloom-test-absent-dependency>=1.0", "pip>=999", 'never-on-this-os; sys_platform == "win32x"'),
        ),
        "0.0.5rc1": write_wheel(wheel_dir, "0.0.5rc1"),
        "0.1.0-other": write_wheel(wheel_dir, "0.1.0", tag="cp27-cp27mu-linux_armv7l"),
    }
    # A throwaway venv; the code under test runs there with copies of click and packaging.
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    deps = base / "deps"
    deps.mkdir()
    import click
    import packaging

    for module in (click, packaging):
        assert module.__file__ is not None
        src = Path(module.__file__).parent
        shutil.copytree(src, deps / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    runner_dir = base / "runner"
    runner_dir.mkdir()
    shutil.copytree(UPDATE_PACKAGE, runner_dir / "updatecmd", ignore=shutil.ignore_patterns("__pycache__"))
    (runner_dir / "run_update.py").write_text(RUNNER_PY, encoding="utf-8")
    node = base / "node"
    data_dir = node / "data"
    data_dir.mkdir(parents=True)
    config = node / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{data_dir}"\n', encoding="utf-8")
    index = LocalIndex()
    index.start()
    w = World(base, index, wheels, venv, runner_dir / "run_update.py", config, data_dir)
    (w.site_packages / "_lloom_test_deps.pth").write_text(f"{deps}\n", encoding="utf-8")
    w.install("0.0.1")
    try:
        yield w
    finally:
        index.stop()


@pytest.fixture
def index(world: World) -> LocalIndex:
    world.index.files.clear()
    world.index.credentials = None
    world.index.authorized.clear()
    world.index.leaked_to.clear()
    return world.index


def test_check_reports_up_to_date_update_available_and_unreachable(world: World, index: LocalIndex) -> None:
    world.install("0.0.1")
    index.publish(world.wheels["0.0.1"])
    out = world.update("check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "installed: lloom-executor 0.0.1" in out.stdout and "up to date" in out.stdout

    for version in ("0.0.2", "0.0.5rc1", "0.1.0-other"):
        index.publish(world.wheels[version])
    index.publish_bytes("lloom_executor-0.0.9.tar.gz", b"an sdist: never built by update")
    out = world.update("check")
    assert out.returncode == 10, out.stdout + out.stderr
    assert "update available: 0.0.1 -> 0.0.2" in out.stdout
    assert "0.1.0 is on the index but not installable here" in out.stdout
    assert "0.0.9 is on the index but not installable here: not a wheel" in out.stdout

    out = world.update("check", "--json")
    assert out.returncode == 10, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["installed"], doc["latest"], doc["update_available"], doc["index_api"]) == ("0.0.1", "0.0.2", True, "json")
    assert doc["files"][0]["hashes"]["sha256"] == hashlib.sha256(world.wheels["0.0.2"].read_bytes()).hexdigest()

    # pre-releases only with --pre; the index from PIP_INDEX_URL when no --index-url
    out = world.update("check", "--json", "--pre", index=False, env=world.env(PIP_INDEX_URL=index.url))
    assert out.returncode == 10, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["latest"], doc["index_url_source"]) == ("0.0.5rc1", "PIP_INDEX_URL")

    unreachable = f"http://127.0.0.1:{_closed_port()}/simple"
    out = world.update("check", "--index-url", unreachable, index=False)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "cannot reach the package index" in out.stderr and unreachable in out.stderr
    out = world.update("check", "--json", "--index-url", unreachable, index=False)
    assert out.returncode == 3 and json.loads(out.stdout)["exit_code"] == 3


def test_download_verifies_the_published_hash_and_is_idempotent(world: World, index: LocalIndex) -> None:
    world.install("0.0.1")
    shutil.rmtree(world.data_dir / "updates" / "0.0.2", ignore_errors=True)
    index.publish(world.wheels["0.0.1"])
    index.publish(world.wheels["0.0.2"], corrupt=True)
    out = world.update("download")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "does not match the hash the index published" in out.stderr
    assert not list((world.data_dir / "updates").glob("0.0.2/*.whl"))

    index.publish(world.wheels["0.0.2"])
    out = world.update("download")
    assert out.returncode == 0, out.stdout + out.stderr
    wheel = world.data_dir / "updates" / "0.0.2" / world.wheels["0.0.2"].name
    assert wheel.read_bytes() == world.wheels["0.0.2"].read_bytes()
    assert f"wheel:  {wheel}" in out.stdout
    manifest = json.loads((wheel.parent / "update.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()

    before = wheel.stat().st_mtime_ns
    out = world.update("download")
    assert out.returncode == 0 and "already downloaded: lloom-executor 0.0.2" in out.stdout, out.stdout + out.stderr
    assert wheel.stat().st_mtime_ns == before

    wheel.write_bytes(wheel.read_bytes() + b"damage on disk")
    out = world.update("download")
    assert out.returncode == 0 and "downloading again" in out.stdout, out.stdout + out.stderr
    assert wheel.read_bytes() == world.wheels["0.0.2"].read_bytes()


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="needs /proc to read other processes' command lines")
def test_download_keeps_index_credentials_off_pips_command_line(world: World, index: LocalIndex) -> None:
    """An index URL with credentials reaches pip in its environment: while pip fetches, no
    process's command line (what `ps` shows any local user) holds the password."""
    world.install("0.0.1")
    shutil.rmtree(world.data_dir / "updates" / "0.0.2", ignore_errors=True)
    index.publish(world.wheels["0.0.1"])
    index.publish(world.wheels["0.0.2"])
    password = "tok-" + secrets.token_hex(12)
    index.credentials = ("lloom", password)
    with_credentials = index.url.replace("http://", f"http://lloom:{password}@", 1)

    # the URL given as PIP_INDEX_URL, so the command line of `update` itself holds no password either
    out = world.update("download", index=False, env=world.env(PIP_INDEX_URL=with_credentials))
    assert out.returncode == 0, out.stdout + out.stderr
    wheel = world.data_dir / "updates" / "0.0.2" / world.wheels["0.0.2"].name
    assert wheel.read_bytes() == world.wheels["0.0.2"].read_bytes()
    assert password not in out.stdout + out.stderr and "lloom:****@" in out.stdout
    file_path = f"/files/{world.wheels['0.0.2'].name}"
    assert (file_path, True) in index.authorized  # pip fetched the wheel, with the credentials
    assert index.leaked_to == []

    # the index really requires them
    shutil.rmtree(wheel.parent)
    out = world.update("download", index=False, env=world.env(PIP_INDEX_URL=index.url))
    assert out.returncode == 1 and "the index refused access (401" in out.stderr, out.stdout + out.stderr
    assert not wheel.parent.exists()


def test_pip_download_gets_the_index_in_its_environment_not_its_arguments(tmp_path: Path) -> None:
    from lloom_executor.update.download import pip_download_args, pip_download_env

    url = "https://user:s3cret@index.test/simple"
    args = pip_download_args(60.0, tmp_path / "wheel", tmp_path / "requirement.txt")
    assert "--index-url" not in args and "-i" not in args and not any("s3cret" in a for a in args)
    env = pip_download_env(url)
    assert env["PIP_INDEX_URL"] == url
    assert (env["PIP_FIND_LINKS"], env["PIP_EXTRA_INDEX_URL"], "PIP_NO_INDEX" in env) == ("", "", False)


def test_apply_with_backup_updates_then_rolls_back_a_broken_release(world: World, index: LocalIndex) -> None:
    world.install("0.0.1")
    for version in ("0.0.1", "0.0.2", "0.0.3"):
        index.publish(world.wheels[version])
    world.download("0.0.2")
    # the node's secrets and ledger, which update must never touch
    secrets = {world.config.parent / "identity_key": os.urandom(32), world.data_dir / "ledger.sqlite3": os.urandom(64)}
    for path, data in secrets.items():
        path.write_bytes(data)

    out = world.update("apply", "--backup", "--version", "0.0.2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "updated lloom-executor 0.0.1 -> 0.0.2 (verified" in out.stdout
    assert "restart the running executor" in out.stdout
    assert world.runs_as().stdout.strip() == "lloom-executor, version 0.0.2"
    assert list((world.data_dir / "updates" / "backup-0.0.1").glob("lloom_executor-0.0.1-py3-none-any.whl"))

    world.download("0.0.3")
    out = world.update("apply", "--backup")  # the newest download: 0.0.3, broken at import
    assert out.returncode == 20, out.stdout + out.stderr
    assert "failed verification" in out.stderr and "broken on purpose" in out.stderr
    assert "rolled back: lloom-executor 0.0.2 is installed again and verified" in out.stderr
    assert world.installed_version() == "0.0.2"
    assert world.runs_as().stdout.strip() == "lloom-executor, version 0.0.2"
    script = subprocess.run(
        [str(world.venv / "bin" / "lloom-executor"), "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=world.env(),
    )
    assert script.stdout.strip() == "lloom-executor, version 0.0.2", script.stderr  # pip rewrote the console script
    for path, data in secrets.items():
        assert path.read_bytes() == data


def test_apply_without_backup_says_no_rollback_was_possible(world: World, index: LocalIndex) -> None:
    world.install("0.0.2")
    index.publish(world.wheels["0.0.3"])
    world.download("0.0.3")
    try:
        out = world.update("apply", "--version", "0.0.3")
        assert out.returncode == 21, out.stdout + out.stderr
        assert "NO ROLLBACK WAS POSSIBLE: apply ran without --backup" in out.stderr
        assert world.installed_version() == "0.0.3" and world.runs_as().returncode != 0
    finally:
        world.install("0.0.2")


def test_apply_refuses_unsatisfied_requires_dist_before_installing(world: World, index: LocalIndex) -> None:
    world.install("0.0.2")
    index.publish(world.wheels["0.0.4"])
    world.download("0.0.4")
    out = world.update("apply", "--backup", "--version", "0.0.4")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "lloom-test-absent-dependency>=1.0 (not installed)" in out.stderr
    assert "pip>=999 (installed: pip " in out.stderr
    assert "never-on-this-os" not in out.stderr  # its marker does not apply here
    assert "nothing was changed" in out.stderr
    assert world.installed_version() == "0.0.2" and world.runs_as().returncode == 0


def test_index_pages_and_release_selection() -> None:
    """The PEP 503 HTML fallback and the choice of release, without a network."""
    from lloom_executor import update

    page = (
        b"<html><body>"
        b'<a href="../../files/lloom_executor-0.2.0-py3-none-any.whl#sha256=aa" data-requires-python="&gt;=3.8">x</a>'
        b'<a href="../../files/lloom_executor-0.3.0-py3-none-any.whl#sha256=bb" data-yanked="broken">x</a>'
        b'<a href="../../files/lloom_executor-0.4.0-py3-none-any.whl#sha256=cc" data-requires-python="&lt;3">x</a>'
        b'<a href="../../files/lloom_executor-0.5.0b1-py3-none-any.whl#sha256=dd">x</a>'
        b'<a href="../../files/other_package-9.0-py3-none-any.whl#sha256=ee">x</a>'
        b"</body></html>"
    )
    files = update.parse_html_page(page, "https://example.test/simple/lloom-executor/")
    assert [str(f.version) for f in files] == ["0.2.0", "0.3.0", "0.4.0", "0.5.0b1"]
    assert files[0].url == "https://example.test/files/lloom_executor-0.2.0-py3-none-any.whl"
    assert (files[0].hashes, files[0].requires_python) == ({"sha256": "aa"}, ">=3.8")
    assert files[1].yanked and files[1].yanked_reason == "broken"

    chosen = update.select_release(files)
    assert str(chosen.version) == "0.2.0"  # 0.3.0 yanked, 0.4.0 wants Python < 3, 0.5.0b1 a pre-release
    assert [(str(v), why) for v, why in chosen.skipped] == [("0.4.0", f"requires Python <3 (this is {update.python_version()})")]
    assert str(update.select_release(files, pre=True).version) == "0.5.0b1"
    pinned = update.select_release(files, version="0.3.0")
    assert str(pinned.version) == "0.3.0" and "yanked" in pinned.warnings[0]
    with pytest.raises(update.UpdateError, match="0.9 is not on the index"):
        update.select_release(files, version="0.9")

    assert update.redact("https://user:s3cret@index.test/simple") == "https://user:****@index.test/simple"


def test_cli_has_the_update_commands() -> None:
    from click.testing import CliRunner

    from lloom_executor.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["update", "--help"])
    assert out.exit_code == 0 and all(c in out.output for c in ("check", "download", "apply"))
    out = runner.invoke(main, ["update", "check", "--index-url", f"http://127.0.0.1:{_closed_port()}/simple"])
    assert out.exit_code == 3, out.output
    assert "cannot reach the package index" in out.output


def test_importing_the_package_loads_all_of_it() -> None:
    """`apply` replaces lloom_executor's files while it runs, so no update module may be imported after it
    starts: importing the package must load every one of them (in a fresh interpreter, as the CLI does)."""
    modules = sorted(f"lloom_executor.update.{p.stem}" for p in UPDATE_PACKAGE.glob("*.py") if p.stem != "__init__")
    probe = "import sys, lloom_executor.update; print(' '.join(sorted(m for m in sys.modules if m.startswith('lloom_executor.update.'))))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.split() == modules
