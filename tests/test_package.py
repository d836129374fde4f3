"""The installed package: entry points, version, and the loud failure when a build is missing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import lloom_executor


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_console_script_version() -> None:
    exe = shutil.which("lloom-executor")
    assert exe, "console script lloom-executor is not on PATH"
    out = run(exe, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"lloom-executor, version {lloom_executor.__version__}"


def test_module_help() -> None:
    out = run(sys.executable, "-m", "lloom_executor", "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    assert "Lloom" in out.stdout


def test_compiled_extensions_are_compiled() -> None:
    from lloom_executor import _native
    from lloom_executor._fast import ratelimit, scheduler

    for module in (_native, ratelimit, scheduler):
        assert Path(module.__file__).suffix in {".so", ".pyd"}, module.__file__


def test_missing_extension_fails_with_build_hint(tmp_path: Path) -> None:
    """A source tree without compiled extensions must refuse to import, not fall back."""
    src = Path(lloom_executor.__file__).parent
    dst = tmp_path / "lloom_executor"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    out = run(sys.executable, "-c", "import lloom_executor", cwd=tmp_path)
    assert out.returncode != 0
    assert "ImportError" in out.stderr
    assert "compiled extensions are missing" in out.stderr
    assert "pip install ." in out.stderr
