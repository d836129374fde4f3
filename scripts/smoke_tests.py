#!/usr/bin/env python3
"""A smoke subset of the test suite on the Pythons the full suite does not run on.

    python3 scripts/smoke_tests.py [--out dist] [--python 3.12 --python 3.13]

CI runs the whole suite on CPython 3.11. For each other version this makes a
fresh venv, installs our wheel from the wheelhouse (`scripts/build_wheelhouse.py`)
plus the test extras' oracles from the package index, and runs the tests that
exercise what differs per interpreter: the compiled codec, crypto, EIP-712 and
token counting (the Rust extension is abi3, the Cython modules are built per
version), and one request through the whole request path. The tests import the
installed package, not the source tree.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from build_wheelhouse import REPO, find_python
from check_wheelhouse import source_version

SMOKE_TESTS = (
    "tests/test_codec.py",
    "tests/test_codec_errors.py",
    "tests/test_crypto.py",
    "tests/test_eip712.py",
    "tests/test_tokens.py",
    "tests/test_ratelimit.py",
    "tests/test_replay_signers.py",
)


def smoke(version: str, wheelhouse: Path) -> None:
    python = find_python(version)
    with tempfile.TemporaryDirectory(prefix=f"smoke-{version}-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([python, "-m", "venv", venv], check=True)
        pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        # ours only from the wheelhouse (never an index's), the test oracles from the index
        subprocess.run([*pip, "--no-index", "--find-links", wheelhouse, f"lloom-executor=={source_version()}"], check=True)
        # the test extras (pyproject's [test]: the independent oracles these tests import), from the index
        subprocess.run([*pip, "--find-links", wheelhouse, f"lloom-executor[test]=={source_version()}"], check=True)
        started = time.monotonic()
        result = subprocess.run([venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *SMOKE_TESTS], cwd=REPO)
        if result.returncode != 0:
            raise SystemExit(f"CPython {version}: the smoke tests failed")
        print(f"[smoke_tests] CPython {version}: passed in {time.monotonic() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where build_wheelhouse.py wrote (default dist/)")
    parser.add_argument("--python", action="append", help="X.Y to test (default: 3.12 and 3.13)")
    args = parser.parse_args()
    for version in args.python or ["3.12", "3.13"]:
        smoke(version, args.out.resolve() / "wheelhouse")


if __name__ == "__main__":
    main()
