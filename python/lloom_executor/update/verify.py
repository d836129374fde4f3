"""Whether an installation works, judged the way a restarted executor would meet it.

A fresh interpreter must report the expected version (`python -m
lloom_executor --version`) and, when the config file exists, accept it
(`config validate`): pip succeeding only means files were copied, while a
release that fails at import or rejects the operator's config would take the
node down at its next restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .subprocesses import VERIFY_TIMEOUT_S, output_tail, run_module
from .versions import IMPORT_NAME, InvalidVersion, Version


@dataclass
class Verification:
    ok: bool
    reported_version: str | None
    problems: list[str]


def _reported_version(stdout: str) -> str | None:
    """The version from click's `--version` line ("lloom-executor, version X")."""
    match = re.search(r"version\s+(\S+)\s*$", stdout.strip())
    return match.group(1) if match else None


def _same_version(reported: str | None, expected: Version) -> bool:
    try:
        return reported is not None and Version(reported) == expected
    except InvalidVersion:
        return False


def verify_installation(expected: Version, config_file: Path | None, cwd: Path) -> Verification:
    """Check the installed package in a fresh interpreter: its version, and the config with it."""
    problems = []
    proc = run_module([IMPORT_NAME, "--version"], cwd)
    if proc is None:
        return Verification(False, None, [f"`python -m {IMPORT_NAME} --version` did not finish within {VERIFY_TIMEOUT_S} s"])
    reported = None
    if proc.returncode != 0:
        problems.append(
            f"`python -m {IMPORT_NAME} --version` exited {proc.returncode}:\n{output_tail(proc.stdout + proc.stderr)}"
        )
    else:
        reported = _reported_version(proc.stdout)
        if not _same_version(reported, expected):
            problems.append(f"`python -m {IMPORT_NAME} --version` reports {proc.stdout.strip()!r}, expected version {expected}")
    if not problems and config_file is not None and config_file.is_file():
        proc = run_module([IMPORT_NAME, "config", "validate", "--config", str(config_file)], cwd)
        if proc is None:
            problems.append(f"`config validate` did not finish within {VERIFY_TIMEOUT_S} s")
        elif proc.returncode != 0:
            problems.append(
                f"`python -m {IMPORT_NAME} config validate --config {config_file}` exited {proc.returncode}:\n{output_tail(proc.stdout + proc.stderr)}"
            )
    return Verification(not problems, reported, problems)
