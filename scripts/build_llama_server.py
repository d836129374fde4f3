#!/usr/bin/env python3
"""Build llama.cpp's `llama-server` (CPU only) from the source the `llama-cpp-python` sdist vendors.

Why this script: the real-server tests (tests/test_llamacpp.py, benches/bench_llamacpp.py) need
llama.cpp's own OpenAI-compatible server, which has parallel slots (llama-cpp-python's Python
server answers one request at a time). No binary may be downloaded, but PyPI serves the
`llama-cpp-python` sdist, which carries a complete llama.cpp tree under `vendor/llama.cpp`. The
build takes a quarter of an hour on 2 cores, so its result is cached *outside* the clone:

    ${LLOOM_CI_CACHE:-/var/cache/lloom-ci}/llama-server/<llama-cpp-python version>/bin/llama-server

Idempotent: when that binary exists and runs (`--version`), nothing is done. Two builds at once
(parallel CI jobs sharing the cache) are serialised by a file lock. The last line printed on
stdout is the binary's path, so CI can `export LLOOM_LLAMA_SERVER="$(python3 scripts/build_llama_server.py)"`.

Needs: pip (to fetch the sdist), cmake >= 3.14, a C/C++ compiler. The build is CPU only
(`GGML_NATIVE`: tuned to this machine's CPU; a cached binary that no longer runs, e.g. after the
cache moved to another CPU, is rebuilt), without libcurl (`LLAMA_CURL=OFF`: no model downloads),
without OpenSSL and without the web UI (whose build would fetch prebuilt assets).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# The llama-cpp-python release whose vendored llama.cpp is built; pinned so that every machine
# (and every cache) builds the same server.
DEFAULT_VERSION = "0.3.36"
DEFAULT_CACHE_ROOT = "/var/cache/lloom-ci"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary that can be copied out of the build dir
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # would download the web UI's assets at build time
    "-DLLAMA_BUILD_APP=OFF",
    "-DGGML_NATIVE=ON",
    "-DGGML_OPENMP=OFF",  # ggml's own thread pool: no libgomp at run time
)
CHECK_TIMEOUT_SECS = 60


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only the binary's path."""
    print(f"[build_llama_server] {message}", file=sys.stderr, flush=True)


def binary_runs(binary: Path) -> bool:
    """The cached binary is trusted only if it starts and prints its version."""
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return False
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=CHECK_TIMEOUT_SECS)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def run(cmd: list[str], *, cwd: Path | None = None, nice: bool = True) -> None:
    """Run a build step at lower CPU priority (the build shares the machine), failing loudly."""
    argv = (["nice", "-n", "10"] if nice and shutil.which("nice") else []) + cmd
    log("$ " + " ".join(argv))
    subprocess.run(argv, cwd=cwd, check=True)


def fetch_sdist(version: str, into: Path) -> Path:
    """`pip download` of the sdist (only llama-cpp-python itself from source; pip fetches its
    build backend as wheels to read the metadata, nothing is compiled)."""
    found = sorted(into.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    into.mkdir(parents=True, exist_ok=True)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-python",
            f"llama-cpp-python=={version}",
            "-d",
            str(into),
        ],
        nice=False,
    )
    found = sorted(into.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        raise SystemExit(f"pip download left no llama_cpp_python-{version}.tar.gz in {into}")
    return found[0]


def extract_llama_cpp(sdist: Path, dest: Path) -> None:
    """Unpack only `vendor/llama.cpp` of the sdist into `dest` (replaced whole, never half)."""
    prefix = sdist.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".src-"))
    try:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            if not members:
                raise SystemExit(f"{sdist} has no vendor/llama.cpp")
            for member in members:
                member.name = member.name[len(prefix) :]
            tar.extractall(tmp, members=[m for m in members if m.name], filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build(version: str, root: Path, jobs: int) -> Path:
    """Fetch, configure and build; returns the installed binary."""
    binary = root / "bin" / "llama-server"
    src, build_dir = root / "src", root / "build"
    if not (src / "CMakeLists.txt").is_file():
        extract_llama_cpp(fetch_sdist(version, root / "sdist"), src)
    started = time.monotonic()
    run(["cmake", "-S", str(src), "-B", str(build_dir), *CMAKE_OPTIONS])
    run(["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)])
    built = build_dir / "bin" / "llama-server"
    if not built.is_file():
        raise SystemExit(f"the build finished but {built} does not exist")
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    shutil.copy2(built, tmp)
    tmp.replace(binary)  # atomic: a reader never sees half a binary
    log(f"built {binary} in {time.monotonic() - started:.0f} s")
    return binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default=DEFAULT_VERSION, help="llama-cpp-python release whose llama.cpp to build")
    parser.add_argument(
        "--cache-root",
        type=Path,
        default=Path(os.environ.get("LLOOM_CI_CACHE", DEFAULT_CACHE_ROOT)),
        help="cache root (default: $LLOOM_CI_CACHE or /var/cache/lloom-ci)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default 2)")
    args = parser.parse_args(argv)
    if shutil.which("cmake") is None:
        raise SystemExit("cmake is not on PATH (apt-get install cmake)")
    root = args.cache_root / "llama-server" / args.version
    root.mkdir(parents=True, exist_ok=True)
    binary = root / "bin" / "llama-server"
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if binary_runs(binary):
                log(f"cached: {binary}")
            else:
                build(args.version, root, max(1, args.jobs))
                if not binary_runs(binary):
                    raise SystemExit(f"{binary} was built but does not run (--version failed)")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
