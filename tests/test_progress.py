"""Progress of long commands: on stderr when it is a terminal (a real pty here) or with
`--progress`, never on stdout, and nothing at all in a pipe or with `--no-progress`.

- `Progress` itself, with an injected clock: its lines, byte units, live rate, redraw throttling.
- `maintenance backup` as a real process: with stderr on a pty it shows bytes archived and the
  ledger's rows; in a pipe it shows nothing and stdout is what it was.
- `update download` as a real process against the suite's local package index: bytes.
- `run_benchmark` with the echo backend through real libp2p: requests done per path and req/s.
"""

from __future__ import annotations

import io
import os
import pty
import select
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lloom_executor.config import Config
from lloom_executor.ledger import Ledger
from lloom_executor.progress import Progress, human_bytes, wanted


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}


def run_with_pty_stderr(args: list[str], timeout: float = 120) -> tuple[int, str, str]:
    """Run `python -m lloom_executor ARGS` with stderr on a pseudo-terminal (stdout a pipe), as in a
    terminal where the output is piped on: returns (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lloom_executor", *args], stdout=subprocess.PIPE, stderr=slave, env=env(), text=True
    )
    os.close(slave)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            assert ready, f"no output and no exit within {timeout} s"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed its end (it exited)
                break
            if not chunk:
                break
            shown += chunk
        out = proc.stdout.read() if proc.stdout else ""
        code = proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return code, out, shown.decode(errors="replace")


# -- Progress -------------------------------------------------------------------------------------
def test_lines_units_rate_and_throttling() -> None:
    clock, stream = Clock(), io.StringIO()
    bar = Progress("executor", 50, unit="requests", rate=True, stream=stream, clock=clock, min_interval=0.1)
    bar.update(1)
    assert stream.getvalue() == "\rexecutor: 1/50 requests"
    clock.now += 0.05
    bar.update(2)  # within min_interval: not redrawn
    assert stream.getvalue() == "\rexecutor: 1/50 requests"
    clock.now += 1.95
    bar.update(21)
    assert stream.getvalue().endswith("\rexecutor: 21/50 requests  10.5/s")
    bar.update(50)  # the last one is always drawn
    bar.finish()
    assert stream.getvalue().endswith("\rexecutor: 50/50 requests  25.0/s\n")

    stream = io.StringIO()
    size = Progress("backup", 3 * 1024 * 1024, unit="bytes", stream=stream, clock=clock)
    size.update(1536)
    size.finish()
    assert stream.getvalue() == "\rbackup: 1.5 KiB/3.0 MiB" * 2 + "\n"  # finish redraws the final state, then ends the line
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 1024**3)] == ["0 B", "1023 B", "1.0 KiB", "5.0 GiB"]


def test_a_shorter_line_erases_the_longer_one_before_it() -> None:
    clock, stream = Clock(), io.StringIO()
    bar = Progress("x", unit="bytes", stream=stream, clock=clock, min_interval=0)
    bar.update(2048)
    bar.update(5)
    assert stream.getvalue() == "\rx: 2.0 KiB" + "\rx: 5 B    "  # padded to the 10 characters drawn before


def test_disabled_writes_nothing() -> None:
    stream = io.StringIO()
    bar = Progress("x", 3, enabled=False, stream=stream)
    for n in range(4):
        bar.update(n)
    bar.finish()
    assert stream.getvalue() == "" and bar.done == 3


def test_wanted_follows_the_option_then_the_terminal(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as terminal, open(tmp_path / "log", "w") as file:
            assert wanted(None, stream=terminal) is True
            assert wanted(None, as_json=True, stream=terminal) is False
            assert wanted(False, stream=terminal) is False
            assert wanted(None, stream=file) is False
            assert wanted(True, stream=file) is True
    finally:
        os.close(master)
        os.close(slave)


# -- maintenance backup -----------------------------------------------------------------------------
@pytest.fixture
def node(tmp_path: Path) -> Path:
    from test_maintenance import entry, write_node

    directory = tmp_path / "node"
    directory.mkdir()
    config = write_node(directory)
    with Ledger.in_directory(directory / "data") as ledger:
        ledger.record_many([entry(i) for i in range(300)])
    return config


def test_backup_progress_on_a_terminal(tmp_path: Path, node: Path) -> None:
    code, out, shown = run_with_pty_stderr(["maintenance", "backup", "--config", str(node), "--output", str(tmp_path / "b.tgz")])
    assert code == 0, out + shown
    assert "backup (ledger: 300 rows): " in shown
    final = shown.replace("\r\n", "\n").split("\r")[-1].splitlines()[0].rstrip()
    done, total = final.rsplit(": ", 1)[1].split("/")
    assert done == total, final  # it ends at every byte archived
    assert "backup (ledger" not in out and "backup written to" in out


def test_backup_in_a_pipe_shows_no_progress_unless_asked(tmp_path: Path, node: Path) -> None:
    args = [sys.executable, "-m", "lloom_executor", "maintenance", "backup", "--config", str(node)]
    # bytes, not text: text mode would turn the carriage returns into newlines
    quiet = subprocess.run([*args, "--output", str(tmp_path / "a.tgz")], capture_output=True, env=env(), timeout=60)
    assert quiet.returncode == 0 and b"\r" not in quiet.stderr and b"backup (ledger" not in quiet.stderr, quiet.stderr
    asked = subprocess.run([*args, "--output", str(tmp_path / "b.tgz"), "--progress"], capture_output=True, env=env(), timeout=60)
    assert asked.returncode == 0 and b"\rbackup (ledger: 300 rows): " in asked.stderr, asked.stderr
    assert asked.stdout.replace(b"b.tgz", b"a.tgz") == quiet.stdout  # stdout is the same with or without it


# -- update download ------------------------------------------------------------------------------
def test_update_download_progress_shows_the_wheels_bytes(tmp_path: Path) -> None:
    from test_update import LocalIndex, write_wheel

    wheel = write_wheel(tmp_path, "0.0.2")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{data_dir}"\n')
    index = LocalIndex()
    index.start()
    try:
        index.publish(wheel)
        args = ["update", "download", "--config", str(config), "--index-url", index.url, "--version", "0.0.2"]
        code, out, shown = run_with_pty_stderr(args)
        assert code == 0, out + shown
        assert shown.replace("\r\n", "\n").split("\r")[-1].strip() == f"download: {human_bytes(wheel.stat().st_size)}"
        assert "downloaded: lloom-executor 0.0.2" in out and "download:" not in out
        shutil.rmtree(data_dir / "updates")
        piped = subprocess.run([sys.executable, "-m", "lloom_executor", *args], capture_output=True, env=env(), timeout=120)
        assert piped.returncode == 0 and b"\r" not in piped.stderr and b"download:" not in piped.stderr, piped.stderr
    finally:
        index.stop()


# -- benchmark --------------------------------------------------------------------------------------
def test_benchmark_reports_requests_done_and_rate_per_path(tmp_path: Path) -> None:
    import uvloop

    from lloom_executor.benchmark import run_benchmark

    config = Config.from_dict(
        {
            "network": {"listen_address": "/ip4/127.0.0.1/tcp/0"},
            "llm_client": {"backend": "echo"},
            "models": [{"name": "m", "inbound_price": "0.000001", "outbound_price": "0.000002"}],
            "storage": {"data_dir": str(tmp_path / "data")},
        }
    )
    stream = io.StringIO()
    bars: dict[str, Progress] = {}

    def progress(path: str) -> Callable[[int], None]:
        bars[path] = Progress(path, 12, unit="requests", rate=True, stream=stream, min_interval=0)
        return bars[path].update

    result = uvloop.run(run_benchmark(config, "m", requests=12, concurrency=3, workdir=tmp_path / "bench", progress=progress))
    assert result.executor.successes == 12 and result.backend_only.successes == 12
    assert set(bars) == {"executor", "backend alone"}
    for path, bar in bars.items():
        draws = [line for line in stream.getvalue().split("\r") if line.startswith(path + ":")]
        assert [int(line.split(": ")[1].split("/")[0]) for line in draws] == list(range(1, 13)), draws
        assert draws[-1].rstrip().endswith("/s") and bar.done == 12
