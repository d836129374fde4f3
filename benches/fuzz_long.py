"""The long fuzz run (not CI): the Rust codec harness and the Python handler harness at scale.

    .venv/bin/python benches/fuzz_long.py [--rust-cases N] [--python-examples M]

Rust: every property of `native/src/codec/fuzz_tests` runs `--rust-cases` cases
(`PROPTEST_CASES`) in a release build, the optimisation level the extension
ships with. Python: each test of `tests/test_fuzz_handler.py` runs
`--python-examples` hypothesis examples (`LLOOM_FUZZ_EXAMPLES`), each a session
of several frames through the real handler and a real SQLite ledger (kept on
/dev/shm when there is one: the run measures the handler, not the disk).

It prints what each harness ran (cases, frames, outcomes), the failures and
the wall time, and exits non-zero when either harness failed. The defaults
(170,000 cases x 6 properties, 2 x 1,500 handler examples) exceed 10^6 cases.
CARGO_TARGET_DIR is honoured (CI's is /var/cache/lloom-ci/cargo-target).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


LOG_DIR = Path(tempfile.mkdtemp(prefix="lloom-fuzz-logs-"))


def run(cmd: list[str], env: dict[str, str], log_name: str) -> tuple[int, str, float]:
    """Run `cmd`, echoing its progress lines as they come and keeping all of its output (a
    failure's shrunk input included) in LOG_DIR/`log_name`; (exit code, output, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    log = (LOG_DIR / log_name).open("w")
    for line in proc.stdout:
        lines.append(line)
        log.write(line)
        if line.startswith(("fuzz ", "test ", "FAILED", "failures", "minimal failing input")) or " passed" in line:
            print(line, end="", flush=True)
    log.close()
    print(f"full output: {LOG_DIR / log_name}", flush=True)
    return proc.wait(), "".join(lines), time.monotonic() - started


def rust(cases: int) -> tuple[bool, str]:
    env = {**os.environ, "PROPTEST_CASES": str(cases)}
    cmd = ["cargo", "test", "--release", "--manifest-path", "native/Cargo.toml", "fuzz_tests", "--", "--nocapture"]
    code, out, secs = run(cmd, env, "rust.log")
    ran = [
        (name, int(n), int(inputs)) for name, n, inputs in re.findall(r"^fuzz (\w+): (\d+) cases, (\d+) inputs run", out, re.M)
    ]
    total = sum(n for _, n, _ in ran)
    failed = re.findall(r"^fuzz (\w+) failed", out, re.M)
    lines = [
        f"Rust codec: {len(ran)} properties x {cases:,} cases = {total:,} cases, {len(failed)} failed {failed}, {secs:.0f} s"
    ]
    return code == 0 and not failed, "\n".join(lines)


def python(examples: int) -> tuple[bool, str]:
    env = {**os.environ, "LLOOM_FUZZ_EXAMPLES": str(examples)}
    shm = Path("/dev/shm")
    base = tempfile.mkdtemp(prefix="lloom-fuzz-", dir=shm if shm.is_dir() else None)
    cmd = [sys.executable, "-m", "pytest", "tests/test_fuzz_handler.py", "-q", "-s", "-p", "no:cacheprovider"]
    cmd += ["--show-capture=no", f"--basetemp={base}"]
    code, out, secs = run(cmd, env, "python.log")
    reports = re.findall(r"^\.?fuzz handler (\w+): (\d+) examples, (\d+) frames \(so far: (.*)\)$", out, re.M)
    frames = sum(int(f) for _, _, f, _ in reports)
    outcomes = reports[-1][3] if reports else "none"
    summary = re.findall(r"^\d+ (?:passed|failed).*$", out, re.M)
    lines = [
        f"Python handler: {len(reports)} tests x {examples:,} examples = {frames:,} frames, {secs:.0f} s",
        f"  outcomes: {outcomes}",
        f"  pytest: {summary[-1] if summary else 'no summary'}",
    ]
    return code == 0, "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rust-cases", type=int, default=170_000, help="cases per Rust property")
    parser.add_argument("--python-examples", type=int, default=1_500, help="hypothesis examples per Python test")
    parser.add_argument("--skip-rust", action="store_true")
    parser.add_argument("--skip-python", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    results = []
    if not args.skip_rust:
        results.append(rust(args.rust_cases))
    if not args.skip_python:
        results.append(python(args.python_examples))
    print("\n== fuzz_long result")
    for _, text in results:
        print(text)
    ok = all(passed for passed, _ in results)
    print(f"{'PASS' if ok else 'FAIL'}: wall time {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
