"""The state workers share (workers/shared_state.py) and the `[runtime] workers` setting.

Atomicity is checked across real processes on one SQLite file; the shared
buckets are checked against the in-process Cython `RateLimiter` as the oracle
of the bucket model.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from lloom_executor._fast.ratelimit import RateLimiter
from lloom_executor.config import Config, ConfigError, load_config
from lloom_executor.workers.role import WorkerRole, cores_available, per_worker_config, resolve_workers
from lloom_executor.workers.shared_state import NodeState, SharedBucket, SharedReplayStore

DIGESTS = [i.to_bytes(4, "big") * 13 for i in range(300)]


def admit_all(path: str, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue[list[bytes]]) -> None:
    store = SharedReplayStore(NodeState(path))
    start.wait()
    out.put([d for d in DIGESTS if store.check_and_remember(d)])


def test_each_digest_is_admitted_by_exactly_one_of_several_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # spawned children import `admit_all` from this module by its pytest name (tests.test_workers_state,
    # --import-mode=importlib): they get the parent's sys.path, which must hold the repository root
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    path = str(tmp_path / "node-state.sqlite3")
    NodeState(path).close()  # the schema exists before they race
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=admit_all, args=(path, start, out)) for _ in range(3)]
    for p in procs:
        p.start()
    admitted = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    flat = [d for batch in admitted for d in batch]
    assert sorted(flat) == sorted(DIGESTS)  # every digest once, none twice


def test_replay_retention_follows_the_window_and_the_deadline(tmp_path: Path) -> None:
    store = SharedReplayStore(NodeState(tmp_path / "s.sqlite3"), window_secs=10)
    assert store.check_and_remember(b"a", now=100.0)
    assert not store.check_and_remember(b"a", now=109.0) and store.seen(b"a", now=109.0)
    assert store.check_and_remember(b"a", now=110.0)  # the window passed: a fresh request again
    assert store.check_and_remember(b"b", now=100.0, deadline=1000)
    assert not store.check_and_remember(b"b", now=500.0)  # held until its signed deadline
    assert store.forget(b"b") and store.check_and_remember(b"b", now=500.0)
    assert store.sweep(now=2000.0) == 2 and len(store) == 0


@pytest.mark.parametrize(("rpm", "tpm", "burst"), [(6, None, None), (60, 1000, 3), (None, 500, None)])
def test_shared_buckets_decide_as_the_in_process_limiter(
    tmp_path: Path, rpm: int | None, tpm: int | None, burst: int | None
) -> None:
    oracle = RateLimiter(rpm, tpm, burst)
    state = NodeState(tmp_path / "s.sqlite3")
    shared = SharedBucket(state, 0, rpm, tpm, burst)
    now = 1000.0
    for step in range(200):
        now += (step % 7) * 0.37
        tokens = (step * 37) % 120
        with state.transaction():
            got = shared.try_acquire("client", 1, tokens, now)
        want = oracle.try_acquire("client", 1, tokens, now)
        assert got == pytest.approx(want, abs=1e-6), (step, got, want)


def test_workers_setting_file_env_and_auto(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[runtime]\nworkers = "auto"\n')
    assert resolve_workers(load_config(path, environ={}).config.runtime.workers) == cores_available()
    assert load_config(path, environ={"LLOOM_EXECUTOR_WORKERS": "3"}).config.runtime.workers == 3
    with pytest.raises(ConfigError, match="runtime.workers"):
        load_config(path, environ={"LLOOM_EXECUTOR_WORKERS": "none"})
    assert Config.from_dict({}).runtime.workers == 1
    assert cores_available() == len(os.sched_getaffinity(0))


def test_per_worker_shares_and_one_worker_unchanged() -> None:
    config = Config.from_dict(
        {"request_handling": {"max_concurrent_requests": 10}, "openai_limits": {"max_requests_per_minute": 100}}
    )
    assert per_worker_config(config, WorkerRole()) is config
    shared = per_worker_config(config, WorkerRole(1, 4))
    assert shared.request_handling.max_concurrent_requests == 2
    assert shared.openai_limits.max_requests_per_minute == 100  # an account's limit: node-wide (shared_limits.py)
    assert per_worker_config(config, WorkerRole(0, 64)).request_handling.max_concurrent_requests == 1
