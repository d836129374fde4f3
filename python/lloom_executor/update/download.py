"""`update download`: fetch the chosen release's wheel with pip, enforcing the hash the index published.

pip does the fetching (`python -m pip download --no-deps --only-binary=:all:`
with this interpreter) so that proxies, certificates and authentication work
exactly as they do for the operator's pip. It gets the version pinned and the
published hashes (`--hash`, so pip itself refuses a file that does not match),
and the file's hash is checked again before it is kept. find-links and extra
index URLs are switched off for that one call, so the file can only come from
the index `check` read. Running it again is a no-op when the wheel is already
there and matches.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .check import CheckResult, run_check
from .errors import EXIT_ERROR, EXIT_UNREACHABLE, UpdateError
from .index_url import redact
from .simple_api import IndexFile
from .store import MANIFEST_NAME, read_download, remove_other_wheels, update_lock, updates_dir, utc_timestamp, write_json
from .subprocesses import output_tail, run_pip
from .versions import DIST_NAME, Version
from .wheels import file_hash, inspect_wheel

# what pip prints when it cannot connect at all (as opposed to a refusal by the index): exit code 3, retry later
_UNREACHABLE_MARKERS = (
    "Max retries exceeded",
    "NewConnectionError",
    "Connection refused",
    "Temporary failure in name resolution",
)


@dataclass
class DownloadResult:
    version: Version
    wheel: Path | None
    sha256: str | None
    already: bool
    nothing_newer: bool
    check: CheckResult


def pip_download_env(index_url: str) -> dict[str, str]:
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


def pip_download_args(timeout: float, dest: Path, requirement: Path) -> list[str]:
    """pip's arguments for `download` (the index comes from `pip_download_env`, not from here)."""
    return [
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--timeout",
        str(timeout),
        "--dest",
        str(dest),
        "-r",
        str(requirement),
    ]


def _matches_published(path: Path, published: IndexFile) -> bool:
    """Every hash the index published that we can compute agrees; False when it published none (unverifiable)."""
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


def _kept_earlier(target_dir: Path, by_name: dict[str, IndexFile]) -> Path | None:
    """The wheel an earlier download left in `target_dir`, when it still matches what the index publishes."""
    earlier = read_download(target_dir)
    if earlier is None:
        return None
    published = by_name.get(earlier.wheel.name)
    try:
        return earlier.wheel if published is not None and _matches_published(earlier.wheel, published) else None
    except OSError:
        return None


ByteReport = Callable[[int], None]
"""Told the bytes pip has written so far while it downloads (a progress display)."""


def tree_bytes(root: Path) -> int:
    """Bytes of the files under `root` now (files pip renames or removes meanwhile are skipped)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


class _DownloadWatch:
    """Reports the bytes under pip's private temporary directory every `interval` s while pip runs.

    pip runs as a subprocess whose output is captured (its own progress bar draws only on a
    terminal, and its text is parsed for errors), so the bytes are read off the disk instead:
    the temporary directory is ours, so whatever grows there is this download.
    """

    def __init__(self, root: Path, report: ByteReport, interval: float = 0.2) -> None:
        self.root = root
        self.report = report
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lloom-update-download-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.report(tree_bytes(self.root))

    def __enter__(self) -> _DownloadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _fetch(
    result: CheckResult,
    version: Version,
    timeout: float,
    data_dir: Path,
    echo: Callable[[str], None],
    progress: ByteReport | None = None,
) -> tuple[Path, IndexFile]:
    """Download the wheel with pip into a private temporary directory and verify it there; returns it and its index entry.

    Only a verified file leaves the temporary directory, so a refused download leaves nothing behind.
    """
    sel = result.selection
    by_name = {f.filename: f for f in sel.files}
    hashes = sorted({f"{name}:{value}" for f in sel.files for name, value in f.pip_hashes().items()})
    if not hashes:
        raise UpdateError(
            f"the index publishes no sha256/sha384/sha512 for {DIST_NAME} {version}'s wheels: "
            "refusing a file that cannot be verified"
        )
    updates_dir(data_dir).mkdir(parents=True, exist_ok=True)
    target_dir = updates_dir(data_dir) / str(version)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=updates_dir(data_dir)) as tmp:
        tmp_dir = Path(tmp)
        requirement = tmp_dir / "requirement.txt"
        requirement.write_text(f"{DIST_NAME}=={version} " + " ".join(f"--hash={h}" for h in hashes) + "\n", encoding="utf-8")
        dest = tmp_dir / "wheel"
        echo(f"downloading {DIST_NAME} {version} from {redact(result.index_url)} with pip ...")
        env = pip_download_env(result.index_url)
        if progress is None:
            proc = run_pip(pip_download_args(timeout, dest, requirement), env=env)
        else:
            pip_tmp = tmp_dir / "pip-tmp"  # pip downloads into TMPDIR before --dest: watch both
            pip_tmp.mkdir()
            env["TMPDIR"] = str(pip_tmp)
            with _DownloadWatch(tmp_dir, progress):
                proc = run_pip(pip_download_args(timeout, dest, requirement), env=env)
        output = proc.stdout + "\n" + proc.stderr
        if proc.returncode != 0:
            if "DO NOT MATCH THE HASHES" in output or "do not match the hashes" in output.lower():
                raise UpdateError(
                    f"the file the index served for {DIST_NAME} {version} does not match the hash the index published: "
                    f"refused, nothing kept (pip said:\n{output_tail(output, 8)})"
                )
            unreachable = any(s in output for s in _UNREACHABLE_MARKERS)
            raise UpdateError(
                f"pip download of {DIST_NAME} {version} failed (exit {proc.returncode}):\n{output_tail(output)}",
                EXIT_UNREACHABLE if unreachable else EXIT_ERROR,
            )
        wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
        if len(wheels) != 1:
            raise UpdateError(
                f"pip download left {len(wheels)} wheel(s) instead of one: {', '.join(w.name for w in wheels) or 'none'}"
            )
        wheel = wheels[0]
        if progress is not None:
            progress(wheel.stat().st_size)  # the final count: the whole file
        published = by_name.get(wheel.name)
        if published is None:
            raise UpdateError(
                f"pip chose {wheel.name}, which the index did not list as an installable wheel of {version}: refused"
            )
        if not _matches_published(wheel, published):
            raise UpdateError(f"{wheel.name} does not match the hash the index published for it: refused, nothing kept")
        inspect_wheel(wheel)
        target_dir.mkdir(parents=True, exist_ok=True)
        final = target_dir / wheel.name
        shutil.move(str(wheel), final)
    return final, published


def run_download(
    index_option: str | None,
    pre: bool,
    timeout: float,
    data_dir: Path,
    version: str | None,
    echo: Callable[[str], None],
    progress: ByteReport | None = None,
) -> DownloadResult:
    result = run_check(index_option, pre, timeout, data_dir, version=version)
    sel = result.selection
    if sel.version is None:
        raise UpdateError(_nothing_installable(result))
    for warning in sel.warnings:
        echo(f"warning: {warning}")
    if version is None and sel.version <= result.installed:
        return DownloadResult(sel.version, None, None, False, True, result)
    target_dir = updates_dir(data_dir) / str(sel.version)
    with update_lock(data_dir):
        manifest_path = target_dir / MANIFEST_NAME
        if manifest_path.is_file():
            existing = _kept_earlier(target_dir, {f.filename: f for f in sel.files})
            if existing is not None:
                return DownloadResult(sel.version, existing, file_hash(existing), True, False, result)
            echo(f"the earlier download in {target_dir} is incomplete or does not match the index: downloading again")
        final, published = _fetch(result, sel.version, timeout, data_dir, echo, progress)
        remove_other_wheels(target_dir, final)
        sha = file_hash(final)
        write_json(
            manifest_path,
            {
                "version": str(sel.version),
                "filename": final.name,
                "sha256": sha,
                "published_hashes": published.hashes,
                "index_url": redact(result.index_url),
                "requires_python": published.requires_python,
                "yanked": published.yanked,
                "downloaded_at": utc_timestamp(),
            },
        )
    return DownloadResult(sel.version, final, sha, False, False, result)
