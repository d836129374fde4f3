"""This interpreter in child processes: pip, and fresh interpreters that import the installed package.

Always `sys.executable`: the update is for the environment the command runs
in, and a `pip` found on PATH may belong to another one. stdin is closed so a
prompt (credentials, confirmation) fails instead of hanging an unattended update.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .errors import UpdateError

PIP_TIMEOUT_S = 900
VERIFY_TIMEOUT_S = 120


def output_tail(text: str, lines: int = 15) -> str:
    """The last non-empty lines, indented: where pip and tracebacks say what went wrong, short enough for a message."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept)


def run_pip(
    args: list[str], env: dict[str, str] | None = None, timeout: float = PIP_TIMEOUT_S, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"]
    try:
        return subprocess.run(
            cmd, check=False, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd
        )
    except subprocess.TimeoutExpired:
        raise UpdateError(f"pip did not finish within {timeout:.0f} s: {' '.join(cmd[3:5])}") from None
    except OSError as exc:
        raise UpdateError(f"cannot run pip with {sys.executable}: {exc}") from None


def install_wheel(wheel: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Exactly this file and nothing else: no index, no dependency changes; reinstalls the same version too (rollback)."""
    return run_pip(["install", "--no-deps", "--force-reinstall", "--no-index", str(wheel)], cwd=cwd)


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str] | None:
    """`python -m ARGS` in a fresh interpreter, which imports the package from disk as a restart would; None on timeout.

    `cwd` is not the operator's directory, so a source checkout there cannot be imported instead.
    """
    try:
        return subprocess.run(
            [sys.executable, "-m", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=VERIFY_TIMEOUT_S,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return None
