"""End to end, honestly: executor processes under load from the Rust client, side by side in one run.

Three scenarios, each executor in its own process, each driven by `tests/interop_peer client`
(rust-libp2p 0.56, one connection, signed requests, no discovery) in another process, so the
client's cost is never counted as ours:

(a) product path -- `lloom-executor start --config FILE` with the echo backend: what users run,
    built by `ExecutorService` from a config file with the SQLite ledger (one row per answer,
    committed before it leaves), EIP-712 receipts, the replay guard, rate limits (per PeerId
    and per IP, set far above the load so none refuses), metrics, Kademlia and gossipsub on
    (`e2e_rig.product_config` is the whole file);
(b) bare P2P handler -- `P2PNode` + `build_request_handler(key, models, EchoBackend(...))` and
    nothing else, as the test suite's `executor_node` fixture builds it (`e2e_bare_node.py`);
    the figure the README quoted before issue 12, and the floor for (a);
(c) product path in front of an OpenAI-compatible server that answers after 200 ms
    (`tests/openai_server.py`, a thread of this process) with `max_concurrent_requests = 32`,
    32 in flight on one connection, against the ideal `concurrency / latency` = 160 req/s.

For each, `extra_info` holds requests/s (answers over the client's own time from its first
request to its last answer), p50/p99 of the client's per-answer latency, and the executor
process's user+system CPU time per request from its own kernel counters, read before and after
the measured client run (`benches/report.py` prints them as the README's end-to-end table,
with (a) - (b) CPU per request and (c) / ideal). A warm-up run with a fresh client precedes the
measured one. `LLOOM_BENCH_E2E_REQUESTS` (default 1500) and `LLOOM_BENCH_E2E_IN_FLIGHT`
(default 32) set the load; with `--benchmark-disable` (the CI smoke run) a few dozen requests
prove each scenario works, without a warm-up.

    pytest benches/bench_e2e.py --benchmark-only --benchmark-json=e2e.json && python benches/report.py e2e.json
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_rig  # noqa: E402  (this directory's harness)
from e2e_rig import ExecutorProcess, LoadResult  # noqa: E402
from openai_server import OpenAIServer  # noqa: E402  (tests/, on the path through e2e_rig)

MODEL = "test-model"  # served by every scenario; also a model tests/openai_server.py knows
PROMPT = "Explain in a few sentences how a peer-to-peer network routes a request to a node that can answer it."
REQUESTS = int(os.environ.get("LLOOM_BENCH_E2E_REQUESTS", "1500"))
IN_FLIGHT = int(os.environ.get("LLOOM_BENCH_E2E_IN_FLIGHT", "32"))
SMOKE_REQUESTS, SMOKE_IN_FLIGHT = 40, 8
BACKEND_LATENCY_S, BACKEND_SLOTS = 0.2, 32
IDEAL_REQ_PER_S = BACKEND_SLOTS / BACKEND_LATENCY_S


@pytest.fixture(scope="module")
def peer_binary() -> Path:
    return e2e_rig.interop.interop_peer_binary()


@pytest.fixture(scope="module")
def tree_state() -> dict[str, Any]:
    return e2e_rig.tree_state()


@pytest.fixture
def slow_backend() -> Iterator[OpenAIServer]:
    with OpenAIServer(latency=BACKEND_LATENCY_S) as server:
        yield server


def measure(
    benchmark: Any, binary: Path, executor: ExecutorProcess, *, count: int, concurrency: int, info: dict[str, Any]
) -> LoadResult:
    """Warm up (timed runs only), then one measured client run; its figures go to `extra_info`."""
    if not benchmark.disabled:
        warmup = min(count, max(2 * concurrency, count // 10))
        e2e_rig.drive(binary, executor, model=MODEL, prompt=PROMPT, count=warmup, concurrency=concurrency)

    def round_() -> LoadResult:
        return e2e_rig.drive(binary, executor, model=MODEL, prompt=PROMPT, count=count, concurrency=concurrency)

    result: LoadResult = benchmark.pedantic(round_, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    benchmark.extra_info.update(result.as_extra_info())
    return result


def load(benchmark: Any, in_flight: int = IN_FLIGHT) -> tuple[int, int]:
    """(requests, in flight) of the measured run: realistic when timed, a smoke test when not."""
    return (SMOKE_REQUESTS, min(SMOKE_IN_FLIGHT, in_flight)) if benchmark.disabled else (REQUESTS, in_flight)


def run_scenario(
    benchmark: Any, binary: Path, argv: list[str], info: dict[str, Any], *, in_flight: int = IN_FLIGHT
) -> LoadResult:
    count, concurrency = load(benchmark, in_flight)
    with e2e_rig.executor_process(argv) as executor:
        return measure(benchmark, binary, executor, count=count, concurrency=concurrency, info=info)


@pytest.mark.benchmark(group="e2e-process: echo backend, rust client, one connection")
def test_product_path_echo(benchmark: Any, peer_binary: Path, tree_state: dict[str, Any], tmp_path: Path) -> None:
    config = e2e_rig.product_config(tmp_path, model=MODEL, llm='backend = "echo"')
    info = {"scenario": "a", "label": "product path: `lloom-executor start`, echo backend", **tree_state}
    result = run_scenario(benchmark, peer_binary, e2e_rig.product_command(config), info)
    assert result.req_per_s > 0 and result.cpu_ms_per_request > 0


@pytest.mark.benchmark(group="e2e-process: echo backend, rust client, one connection")
def test_bare_handler_echo(benchmark: Any, peer_binary: Path, tree_state: dict[str, Any]) -> None:
    info = {"scenario": "b", "label": "bare P2P handler: P2PNode + request handler, echo backend", **tree_state}
    result = run_scenario(benchmark, peer_binary, e2e_rig.bare_command(MODEL), info)
    assert result.req_per_s > 0 and result.cpu_ms_per_request > 0


@pytest.mark.benchmark(group="e2e-process: 200 ms OpenAI-compatible backend, 32 slots")
def test_product_path_slow_backend(
    benchmark: Any, peer_binary: Path, tree_state: dict[str, Any], slow_backend: OpenAIServer, tmp_path: Path
) -> None:
    llm = f'backend = "openai"\nbase_url = "{slow_backend.base_url}"\napi_key = "bench"\ntimeout_secs = 30\nmax_retries = 0'
    config = e2e_rig.product_config(tmp_path, model=MODEL, llm=llm, max_concurrent_requests=BACKEND_SLOTS)
    info = {
        "scenario": "c",
        "label": f"product path, OpenAI-compatible backend answering in {BACKEND_LATENCY_S * 1000:.0f} ms, "
        f"max_concurrent_requests = {BACKEND_SLOTS}",
        "ideal_req_per_s": IDEAL_REQ_PER_S,
        **tree_state,
    }
    result = run_scenario(benchmark, peer_binary, e2e_rig.product_command(config), info, in_flight=BACKEND_SLOTS)
    assert result.p50_ms >= BACKEND_LATENCY_S * 1000  # every answer waited for the backend
    assert len(slow_backend.chat_requests) >= result.requests
