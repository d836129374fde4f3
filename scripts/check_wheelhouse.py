#!/usr/bin/env python3
"""The user's path, checked: install from the wheelhouse with no toolchain, then run the demo, on each Python.

    python3 scripts/check_wheelhouse.py [--out dist]

For CPython 3.11, 3.12 and 3.13: a fresh venv; `pip install --no-index
--find-links OUT/wheelhouse --only-binary=:all: lloom-executor==VERSION` run
with an environment whose PATH holds only the venv's bin and an empty folder
(no cc, gcc, c++, cargo, rustc, zig: checked before each install), a
throwaway HOME (no ~/.cargo, no pip config or cache); then `lloom-executor
--version` must print the version written in python/lloom_executor/__init__.py,
`lloom-executor demo` must pass, and fastecdsa (the dependency built here from
its sdist) must import with the libgmp its wheel carries. Prints each wheel's
size. Run it after scripts/build_wheelhouse.py; it changes nothing outside a
temporary folder.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from build_wheelhouse import PYTHONS, REPO, find_python

TOOLCHAIN = ("cc", "gcc", "c++", "g++", "clang", "cargo", "rustc", "zig", "ld")
DEMO_TIMEOUT_S = 300
# fastecdsa's extension must load the libgmp its repaired wheel carries, not the system's.
GMP_PROBE = (
    "import fastecdsa.curvemath, fastecdsa._ecdsa; print(next(l.split()[-1] for l in open('/proc/self/maps') if 'libgmp' in l))"
)


def log(message: str) -> None:
    print(f"[check_wheelhouse] {message}", flush=True)


def source_version() -> str:
    text = (REPO / "python" / "lloom_executor" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise SystemExit("no __version__ in python/lloom_executor/__init__.py")
    return match.group(1)


def bare_env(venv: Path, root: Path) -> dict[str, str]:
    """An environment with nothing a build could use: PATH = the venv's bin + an empty folder, a new HOME."""
    empty = root / "empty-bin"
    home = root / "home"
    empty.mkdir()
    home.mkdir()
    path = f"{venv / 'bin'}{os.pathsep}{empty}"
    found = {tool: shutil.which(tool, path=path) for tool in TOOLCHAIN}
    if any(found.values()):
        raise SystemExit(f"the install PATH is not bare: {found}")
    return {
        "PATH": path,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


def run(cmd: list[str | Path], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    log("$ " + " ".join(str(c) for c in cmd))
    proc = subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(str(c) for c in cmd)}")
    return proc.stdout


def check_one(version: str, python: Path, wheelhouse: Path, expected: str) -> None:
    tag = "cp" + version.replace(".", "")
    (wheel,) = wheelhouse.glob(f"lloom_executor-{expected}-{tag}-{tag}-*.whl")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"lloom-wheel-{version}-") as tmp:
        root = Path(tmp)
        venv = root / "venv"
        subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
        env = bare_env(venv, root)
        pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", "--only-binary=:all:"]
        run([*pip, "--find-links", wheelhouse, f"lloom-executor=={expected}"], env, root)
        exe = venv / "bin" / "lloom-executor"
        reported = run([exe, "--version"], env, root).strip()
        if reported != f"lloom-executor, version {expected}":
            raise SystemExit(f"CPython {version}: --version says {reported!r}, the source says {expected}")
        demo = run([exe, "demo"], env, root, timeout=DEMO_TIMEOUT_S)
        if "demo ok" not in demo:
            raise SystemExit(f"CPython {version}: demo did not pass:\n{demo}")
        gmp = Path(run([venv / "bin" / "python", "-c", GMP_PROBE], env, root).strip())
        if gmp.parent.name != "fastecdsa.libs":
            raise SystemExit(f"CPython {version}: fastecdsa loaded {gmp}, not the libgmp of its wheel")
        installed = sum(f.stat().st_size for f in (venv / "lib").rglob("lloom_executor/**/*") if f.is_file())
    log(
        f"CPython {version}: ok in {time.monotonic() - t0:.0f} s: {wheel.name} {wheel.stat().st_size / 1e6:.2f} MB "
        f"(installed {installed / 1e6:.1f} MB), --version {expected}, demo ok, fastecdsa with {gmp.parent.name}/{gmp.name}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="build_wheelhouse.py's output folder (default: dist/)")
    parser.add_argument("--pythons", default=",".join(PYTHONS), help="X.Y list (default: %(default)s)")
    args = parser.parse_args()
    wheelhouse = (args.out / "wheelhouse").resolve()
    expected = source_version()
    for version in args.pythons.split(","):
        check_one(version, find_python(version), wheelhouse, expected)


if __name__ == "__main__":
    main()
