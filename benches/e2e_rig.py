"""The harness behind `bench_e2e.py`: executor processes, the Rust load client, and the counters.

Why a harness of its own: an end-to-end figure is honest only when the executor under test
runs alone in its own process (so its CPU counters are its own), when the load comes from
another process (so the client's cost is not counted as ours), and when the executor is built
the way users run it (`lloom-executor start --config FILE`). This module starts such
processes, waits for the line that says they listen (no guessed sleeps), drives them with
`tests/interop_peer client`, and turns the client's per-answer latencies and the executor's
user+system CPU time into requests/s, p50/p99 and CPU ms per request.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import interop  # noqa: E402  (the suite's harness: builds and runs the Rust peer)
from lloom_executor import _native  # noqa: E402

LISTENING = re.compile(r"listening on (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\S+)")
START_TIMEOUT_SECS = 60.0
STOP_TIMEOUT_SECS = 30.0
BARE_NODE_SCRIPT = Path(__file__).resolve().parent / "e2e_bare_node.py"

# The product config (the suite's `write_operator_config`) charges 0.000001 / 0.000002 ETH per token:
# the client's offer covers both that (10^12 / 2*10^12 wei) and the bare node's price (1 / 2 wei).
# Chain id and contract of the EIP-712 receipt domain (receipts are signed with blockchain.enabled = false too).
RECEIPT_CHAIN_ID, RECEIPT_CONTRACT = 8453, "0x" + "42" * 20
# Rate limits on, per PeerId and per IP, far above what one bench run sends (so nothing is refused
# but every request pays for both bucket checks).
RATE_LIMIT_PER_MINUTE = 60_000_000
TOKEN_LIMIT_PER_MINUTE = 6_000_000_000


def product_config(directory: Path, *, model: str, llm: str, max_concurrent_requests: int | None = None) -> Path:
    """The config file of the product path, as an operator writes one for a node on loopback.

    Everything `start` turns on by default stays on (the ledger under `[storage] data_dir` on this
    disk, Kademlia and gossipsub, EIP-712 receipts, the replay guard); on top of that metrics
    (on an ephemeral port) and rate limits are on. Off: the admin API, mDNS/AutoNAT/relay (no
    network to find on loopback). `llm` is the `[llm_client]` body; `max_concurrent_requests`
    left out keeps `start`'s default (10, as the bare handler's `RequestHandlingConfig()`).
    """
    handling = "" if max_concurrent_requests is None else f"max_concurrent_requests = {max_concurrent_requests}"
    extra = f"""
[request_handling]
{handling}
[blockchain]
chain_id = {RECEIPT_CHAIN_ID}
contract_address = "{RECEIPT_CONTRACT}"
[rate_limiting]
enabled = true
[[rate_limiting.rules]]
identifier = "peer_id"
max_requests_per_minute = {RATE_LIMIT_PER_MINUTE}
max_tokens_per_minute = {TOKEN_LIMIT_PER_MINUTE}
[[rate_limiting.rules]]
identifier = "ip_address"
max_requests_per_minute = {RATE_LIMIT_PER_MINUTE}
[logging]
level = "info"
"""
    return interop.write_operator_config(
        directory, llm=llm, models=[model], metrics='enabled = true\nendpoint = "127.0.0.1:0"', extra=extra
    )


def product_command(config: Path) -> list[str]:
    """`lloom-executor start --config FILE`, with this interpreter (the venv's console script runs the same)."""
    return [sys.executable, "-m", "lloom_executor", "start", "--config", str(config)]


def bare_command(model: str) -> list[str]:
    return [sys.executable, str(BARE_NODE_SCRIPT), model]


class ExecutorProcess:
    """An executor in its own process, its output drained by a reader thread (a full pipe would
    stall it) and kept for failure messages; ready once it logs its loopback address."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        self.argv = list(argv)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LLOOM_")}  # no operator overrides
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**clean, **(env or {})},
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.addr: str | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="bench-executor-output", daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT_SECS) or self.addr is None:
            self.stop()
            raise RuntimeError(f"{' '.join(self.argv)} did not start listening:\n{self.output()}")
        self.ps = psutil.Process(self.proc.pid)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.append(line)
                if self.addr is None and (match := LISTENING.search(line)):
                    self.addr = match.group(1)
                    self._ready.set()
        finally:
            self._ready.set()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the executor process, all its threads, from the kernel's counters."""
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def output(self) -> str:
        return "".join(self.lines[-60:])

    def stop(self) -> None:
        """SIGTERM (the executor drains and exits), SIGKILL if it has not exited in time."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)


@contextlib.contextmanager
def executor_process(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Iterator[ExecutorProcess]:
    executor = ExecutorProcess(argv, env=env)
    try:
        yield executor
    finally:
        executor.stop()


@dataclass(frozen=True)
class LoadResult:
    """One measured client run against one executor process."""

    requests: int
    concurrency: int
    req_per_s: float  # answers / the client's own time from its first request to its last answer
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float  # executor user+system CPU over the run / answers
    client_elapsed_ms: int
    executor_cpu_s: float
    client_cpu_s: float  # the Rust client process's user+system CPU
    others_cpu_cores: float  # CPU busy on this machine apart from executor, client and bench, in cores

    def as_extra_info(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU counters at one instant: the executor's, the bench's waited-for children (the
    client), the bench's own and the whole machine's busy time. On a shared machine the
    machine's busy time less the others says how much unrelated load ran during a measurement
    (a run with a core's worth of it is not a clean figure)."""

    wall: float
    executor: float
    children: float
    own: float
    machine_busy: float

    @classmethod
    def take(cls, executor: ExecutorProcess) -> CpuSnapshot:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        machine = psutil.cpu_times()
        return cls(
            wall=time.monotonic(),
            executor=executor.cpu_seconds(),
            children=children.ru_utime + children.ru_stime,
            own=own.ru_utime + own.ru_stime,
            machine_busy=sum(getattr(machine, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq")),
        )

    def others_since(self, before: CpuSnapshot) -> float:
        """Cores' worth of CPU used by everything else on the machine between `before` and now."""
        ours = (self.executor - before.executor) + (self.children - before.children) + (self.own - before.own)
        return max(0.0, (self.machine_busy - before.machine_busy) - ours) / max(self.wall - before.wall, 1e-9)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: a latency some answer really had, never an interpolation."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def drive(
    binary: Path,
    executor: ExecutorProcess,
    *,
    model: str,
    prompt: str,
    count: int,
    concurrency: int,
    timeout_secs: int = 300,
    extra: Sequence[str] = (),
) -> LoadResult:
    """One `interop-peer client` run (one connection, `count` signed requests, `concurrency` in
    flight, no discovery) against `executor`; every answer must be a signed success. `extra`: more
    client arguments (e.g. `--max-tokens N`).

    The executor's CPU is read just before the client starts and just after it exits, so the
    window also holds the client's connection set-up and teardown (one Noise handshake, identify):
    a fixed cost of a few ms, spread over the run's requests.
    """
    assert executor.addr is not None
    args = interop.client_args(
        executor.addr,
        "--model",
        model,
        "--prompt",
        prompt,
        "--count",
        str(count),
        "--concurrency",
        str(concurrency),
        *extra,
        timeout_secs=timeout_secs,
    )
    before = CpuSnapshot.take(executor)
    run = interop.run_peer(binary, args, timeout=timeout_secs + 20)
    after = CpuSnapshot.take(executor)
    cpu = after.executor - before.executor
    summary = run.summary
    if run.returncode != 0 or summary["failed"] or summary["ok"] != count:
        raise AssertionError(f"{run.describe()}\nexecutor output:\n{executor.output()}")
    bad = [r for r in run.responses if not r.get("signature_valid") or r.get("error") is not None]
    assert not bad, f"{len(bad)} answers were not signed successes, e.g. {bad[0]}"
    latencies = [float(r["latency_ms"]) for r in run.responses]
    elapsed_ms = int(summary["elapsed_ms"])
    return LoadResult(
        requests=count,
        concurrency=concurrency,
        req_per_s=round(count / max(elapsed_ms, 1) * 1000, 1),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        cpu_ms_per_request=round(cpu * 1000 / count, 3),
        client_elapsed_ms=elapsed_ms,
        executor_cpu_s=round(cpu, 3),
        client_cpu_s=round(after.children - before.children, 3),
        others_cpu_cores=round(after.others_since(before), 2),
    )


def tree_state() -> dict[str, Any]:
    """What was measured: the package the executors import and, when it is this repository's
    `python/`, the HEAD and the uncommitted paths under python/ and native/ (the numbers of a
    tree under change are only comparable with that state)."""
    package = Path(_native.__file__).resolve().parent
    if not package.is_relative_to(REPO):
        return {"package": str(package)}

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.rstrip("\n")

    return {
        "package": str(package),
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_dirty": [line[3:] for line in git("status", "--porcelain", "--", "python", "native").splitlines() if line.strip()],
    }
