"""The executor in front of a real llama.cpp server (`llama-server`), driven by the Rust peer.

Why: the OpenAI-compatible backend must work against the servers operators run, with their real
tokenizer, chat template, slots and error answers. Each test here runs `lloom-executor start`
(a separate process, configured as an operator would) in front of `llama-server` serving the
tiny generated model of `llamacpp_rig` (its planted answers: a prompt ending in "?" gets
" hello world." and a stop; any other prompt loops " tick tock ..." until max_tokens), and sends
signed requests over libp2p with the Rust reference-style client (`tests/interop_peer`).

What the server itself reports is the reference: its `/tokenize` of the templated prompt, its
`usage`, its `/slots` and its Prometheus counters.

`llama-server` is built by `scripts/build_llama_server.py` (CI exports `LLOOM_LLAMA_SERVER`). When
it is missing the tests fail in CI (`CI=true`) and are skipped elsewhere with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import interop
import llamacpp_rig as rig
from llamacpp_rig import MODEL_ALIAS, ExecutorProcess, LlamaServer, ServerOptions
from lloom_executor.ledger import Ledger

SLOTS = 2
CTX_PER_SLOT = 8192  # long enough that a whole generation takes seconds (the model makes ~2500 tokens/s)
OFFER_IN, OFFER_OUT = "500000000000000", "1000000000000000"  # the Rust client's default offer (covers our price)
QUESTION = "What does the tiny model answer?"
SYSTEM = "You answer briefly."
LONG_GENERATION = CTX_PER_SLOT - 64  # max_tokens of a generation that takes seconds


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server_binary() -> Path:
    binary = rig.required_llama_server()
    return binary


@pytest.fixture(scope="module")
def peer() -> Path:
    return interop.interop_peer_binary()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llamacpp")


@pytest.fixture(scope="module")
def model_file(workdir: Path) -> Path:
    return rig.write_tiny_llama_gguf(workdir / "tiny-llama.gguf")


@pytest.fixture(scope="module")
def server(server_binary: Path, model_file: Path, workdir: Path) -> Iterator[LlamaServer]:
    options = ServerOptions(ctx_size=SLOTS * CTX_PER_SLOT, slots=SLOTS)
    with rig.llama_server(server_binary, model_file, workdir / "llama-server.log", options) as running:
        yield running


@pytest.fixture(scope="module")
def executor(server: LlamaServer, workdir: Path) -> Iterator[ExecutorProcess]:
    """The executor most tests share: its configured context length is the server's per slot."""
    config = rig.write_executor_config(workdir / "executor", server, context_length=CTX_PER_SLOT)
    with rig.executor_process(config, workdir / "executor.log") as running:
        yield running


# -- helpers -------------------------------------------------------------------------------------
def client(executor: ExecutorProcess, *extra: str, timeout: int = 60) -> list[str]:
    return interop.client_args(
        executor.addr,
        "--model",
        MODEL_ALIAS,
        "--inbound-price",
        OFFER_IN,
        "--outbound-price",
        OFFER_OUT,
        *extra,
        timeout_secs=timeout,
    )


def ask(peer: Path, executor: ExecutorProcess, *extra: str, timeout: int = 60) -> interop.PeerRun:
    return interop.run_peer(peer, client(executor, *extra, timeout=timeout), timeout=timeout + 15)


def served(run: interop.PeerRun, executor: ExecutorProcess) -> dict[str, Any]:
    """The one answer of `run`: signed, an error-free success (else the failure with both logs)."""
    line = run.one("response")
    where = f"{run.describe()}\nexecutor log:\n{executor.log()}"
    assert line["variant"] == "SignedLlmResponse" and line["signature_valid"] is True, where
    assert line["error"] is None, where
    assert line["model_used"] == MODEL_ALIAS, where
    return line


def refused(run: interop.PeerRun) -> dict[str, Any]:
    """The one answer of `run`: a signed error that charges nothing."""
    line = run.one("response")
    assert line["variant"] == "SignedLlmResponse" and line["signature_valid"] is True, run.describe()
    assert line["error"], run.describe()
    assert (line["content"], line["inbound_tokens"], line["outbound_tokens"], line["total_cost"]) == ("", 0, 0, "0")
    return line


def cost(inbound: int, outbound: int) -> str:
    """What an answer costs: the request's offered prices (which cover ours) per token, exactly."""
    return str(inbound * int(OFFER_IN) + outbound * int(OFFER_OUT))


def ledger_rows(executor_dir: Path) -> list[dict[str, Any]]:
    with Ledger.in_directory(executor_dir / "data") as ledger:
        return ledger.entries()


# -- answers and what they are charged -------------------------------------------------------------
def test_answer_is_charged_exactly_from_the_servers_own_counts(
    peer: Path, executor: ExecutorProcess, server: LlamaServer, workdir: Path
) -> None:
    """System prompt and prompt go through the model's chat template; the prompt tokens charged
    are what the server's tokenizer makes of the templated messages, the completion tokens what
    it generated (the planted answer and its end-of-sequence: a natural stop before max_tokens)."""
    run = ask(peer, executor, "--prompt", QUESTION, "--system-prompt", SYSTEM, "--temperature", "0", "--max-tokens", "32")
    line = served(run, executor)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    direct = server.chat(messages, temperature=0, max_tokens=32)
    assert direct["choices"][0]["finish_reason"] == "stop"
    assert line["content"].strip() == direct["choices"][0]["message"]["content"].strip() == rig.SHORT_ANSWER.strip()
    assert line["inbound_tokens"] == server.prompt_tokens(messages) == direct["usage"]["prompt_tokens"]
    assert line["outbound_tokens"] == direct["usage"]["completion_tokens"] == rig.ANSWER_TOKENS
    assert line["total_cost"] == cost(line["inbound_tokens"], line["outbound_tokens"])
    rows = [r for r in ledger_rows(workdir / "executor") if r["status"] == "served" and r["total_cost"] == line["total_cost"]]
    assert rows, "the served answer has no ledger row"
    assert (rows[-1]["inbound_tokens"], rows[-1]["outbound_tokens"]) == (line["inbound_tokens"], line["outbound_tokens"])


def test_max_tokens_cuts_the_generation_and_is_charged_as_generated(
    peer: Path, executor: ExecutorProcess, server: LlamaServer
) -> None:
    """A prompt not ending in "?" loops until max_tokens: the answer has exactly that many tokens."""
    prompt = "Count for me"
    run = ask(peer, executor, "--prompt", prompt, "--temperature", "0", "--max-tokens", "7")
    line = served(run, executor)
    assert line["content"].strip() == rig.loop_answer(7).strip()
    assert line["outbound_tokens"] == 7
    assert line["inbound_tokens"] == server.prompt_tokens([{"role": "user", "content": prompt}])
    assert line["total_cost"] == cost(line["inbound_tokens"], 7)


def test_temperature_reaches_the_server(peer: Path, executor: ExecutorProcess, server: LlamaServer) -> None:
    """The temperature the client signed is the one the server samples with (its slot says so)."""
    run = ask(peer, executor, "--prompt", "Warm up", "--temperature", "0.75", "--max-tokens", "3")
    served(run, executor)
    temperatures = [slot.get("params", {}).get("temperature") for slot in server.slots()]
    assert any(t is not None and abs(t - 0.75) < 1e-6 for t in temperatures), temperatures


# -- the context length -----------------------------------------------------------------------------
def test_prompt_over_the_context_is_refused_before_the_server_is_called(
    peer: Path, executor: ExecutorProcess, server: LlamaServer
) -> None:
    """Our own count says the prompt cannot fit: a signed too_large refusal, and the server never
    sees the request (its prompt-token counter does not move)."""
    before = server.metrics()["prompt_tokens_total"]
    prompt = " ".join(["word"] * (CTX_PER_SLOT + 50))
    run = ask(peer, executor, "--prompt", prompt, "--max-tokens", "8")
    line = refused(run)
    assert re.search(r"exceeds the context length", line["error"]), line["error"]
    assert server.metrics()["prompt_tokens_total"] == before


@pytest.fixture(scope="module")
def over_the_servers_context(peer: Path, server: LlamaServer, workdir: Path) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """One request that our count (cl100k) lets through but the model's tokenizer does not fit:
    letters without spaces are one token each for this model, several per token for cl100k, and
    this executor believes the context is four times what the server gives a slot. Returns the
    answer, the executor's log and its ledger rows."""
    config = rig.write_executor_config(workdir / "optimistic", server, context_length=4 * CTX_PER_SLOT)
    with rig.executor_process(config, workdir / "optimistic.log") as optimistic:
        prompt = "".join("abcdefghij"[i % 10] for i in range(CTX_PER_SLOT + 100))
        run = ask(peer, optimistic, "--prompt", prompt, "--max-tokens", "8")
        line = refused(run)
        log = optimistic.log()
    return line, log, ledger_rows(workdir / "optimistic")


def test_the_servers_context_error_is_told_apart_and_refused(
    over_the_servers_context: tuple[dict[str, Any], str, list[dict[str, Any]]],
) -> None:
    """The server answers 400 exceed_context_size_error: the backend raises BackendContextExceeded
    (logged with the server's own words), the client gets a signed refusal, the ledger a row."""
    line, log, rows = over_the_servers_context
    assert "BackendContextExceeded" in log and "exceeds the available context size" in log, log
    assert [r["status"] for r in rows] == ["refused"], rows


def test_the_servers_context_error_is_a_clear_too_large_refusal(
    over_the_servers_context: tuple[dict[str, Any], str, list[dict[str, Any]]],
) -> None:
    line, _, rows = over_the_servers_context
    assert [r["code"] for r in rows] == ["too_large"], rows
    assert re.search(r"context", line["error"], re.IGNORECASE), line["error"]


# -- concurrency ---------------------------------------------------------------------------------------
def test_requests_beyond_the_servers_slots_queue_and_all_complete(
    peer: Path, executor: ExecutorProcess, server: LlamaServer
) -> None:
    """Six requests in flight on two slots: the server runs two at a time (its /slots) and holds
    the rest (its deferred-requests gauge), and every answer is a charged success."""
    count, max_tokens = 6, 1500  # each generation long enough (~0.5 s) for the sampling watcher to see the queue
    seen = {"busy": 0, "deferred": 0.0}
    done = threading.Event()

    def watch() -> None:  # polls every 10 ms until the run is over
        while not done.wait(0.01):
            with contextlib.suppress(Exception):
                seen["busy"] = max(seen["busy"], server.busy_slots())
                seen["deferred"] = max(seen["deferred"], server.metrics().get("requests_deferred", 0.0))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run = ask(
            peer,
            executor,
            "--prompt",
            "Load",
            "--count",
            str(count),
            "--concurrency",
            str(count),
            "--max-tokens",
            str(max_tokens),
        )
    finally:
        done.set()
        watcher.join(10)
    assert run.summary["ok"] == count and run.summary["failed"] == 0, run.describe()
    for line in run.responses:
        assert line["error"] is None and line["outbound_tokens"] == max_tokens, run.describe()
        assert line["total_cost"] == cost(line["inbound_tokens"], max_tokens)
    assert seen["busy"] == SLOTS, seen
    assert seen["deferred"] >= 1, seen


# -- cancellation ----------------------------------------------------------------------------------------
def wait_for_new_task(server: LlamaServer, known: int, alive: Any) -> int:
    """The id of the task that has just reached the server (its log says so; polling, not sleeping)."""
    assert interop.wait_until(lambda: len(server.launched_tasks()) > known or not alive(), 60)
    tasks = server.launched_tasks()
    assert len(tasks) > known, "the request never reached the server"
    return tasks[known]


def wait_until_released(server: LlamaServer, task: int) -> tuple[bool, int]:
    """(cancelled, tokens in the slot) once the server has released `task`."""
    found: list[tuple[bool, int]] = []

    def released() -> bool:
        state = server.released(task)
        if state is not None:
            found.append(state)
        return state is not None

    assert interop.wait_until(released, 120), f"task {task} still generating after 120 s"
    return found[0]


def test_a_passed_deadline_cancels_the_backend_request(peer: Path, server: LlamaServer, workdir: Path) -> None:
    """request_timeout_secs passes while the server generates: the client gets a signed
    backend_timeout, the server cancels the task (its log says so) long before the generation
    would have ended, and the ledger has the refusal."""
    max_tokens = LONG_GENERATION
    config = rig.write_executor_config(workdir / "hasty", server, context_length=CTX_PER_SLOT, request_timeout_secs=0.5)
    with rig.executor_process(config, workdir / "hasty.log") as hasty:
        known = len(server.launched_tasks())
        runs: list[interop.PeerRun] = []
        asking = threading.Thread(
            target=lambda: runs.append(ask(peer, hasty, "--prompt", "Go on", "--max-tokens", str(max_tokens)))
        )
        asking.start()
        task = wait_for_new_task(server, known, asking.is_alive)
        asking.join(90)
        line = refused(runs[0])
        cancelled, tokens = wait_until_released(server, task)
    assert "in time" in line["error"] or "timeout" in line["error"].lower(), line["error"]
    # A whole generation takes the server over 10 s (attention grows with the context); cancelled,
    # it stops at once, far below half of max_tokens.
    assert cancelled and tokens < max_tokens // 2, f"task {task}: cancelled {cancelled}, {tokens} tokens of {max_tokens}"
    assert [r["code"] for r in ledger_rows(workdir / "hasty")] == ["backend_timeout"]


def test_a_client_that_disconnects_cancels_the_backend_request(
    peer: Path, executor: ExecutorProcess, server: LlamaServer, workdir: Path
) -> None:
    """The client is killed while its request generates: the server cancels the task before the
    generation would have ended (the executor dropped the backend request), and the ledger keeps a
    `cancelled` refusal record of it."""
    max_tokens = LONG_GENERATION
    before = sum(r["code"] == "cancelled" for r in ledger_rows(workdir / "executor"))
    known = len(server.launched_tasks())
    argv = [str(peer), *client(executor, "--prompt", "Keep going", "--max-tokens", str(max_tokens))]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        task = wait_for_new_task(server, known, lambda: proc.poll() is None)
        proc.kill()
        proc.wait(10)
        cancelled, tokens = wait_until_released(server, task)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
    assert cancelled and tokens < max_tokens // 2, f"task {task}: cancelled {cancelled}, {tokens} tokens of {max_tokens}"
    deadline = time.monotonic() + 30  # refusal records are written within about a second
    while sum(r["code"] == "cancelled" for r in ledger_rows(workdir / "executor")) == before:
        assert time.monotonic() < deadline, "no `cancelled` ledger record of the abandoned request"
        time.sleep(0.1)


def test_a_client_that_resets_its_stream_cancels_the_backend_request(
    executor: ExecutorProcess, server: LlamaServer, workdir: Path
) -> None:
    """The client gives up on a request (its own timeout: our client resets the stream) and keeps
    its connection: the server cancels the task long before the generation would have ended, while
    the client is still connected, and the ledger keeps a `cancelled` record."""
    from lloom_executor.client import LloomClient
    from lloom_executor.client.types import RequestTimeout

    max_tokens = LONG_GENERATION
    before = sum(r["code"] == "cancelled" for r in ledger_rows(workdir / "executor"))
    known = len(server.launched_tasks())
    peer_id = executor.addr.rsplit("/p2p/", 1)[1]

    async def scenario() -> tuple[bool, int]:
        client = LloomClient(bootstrap=[], request_timeout=60)
        await client.start()
        try:
            await client.connect(executor.addr)
            asking = asyncio.ensure_future(
                client.request(
                    peer_id,
                    MODEL_ALIAS,
                    "Keep going",
                    max_tokens=max_tokens,
                    inbound_price=OFFER_IN,
                    outbound_price=OFFER_OUT,
                    timeout=4,  # far below the generation's time (over 10 s): the client gives up
                )
            )
            task = await asyncio.to_thread(wait_for_new_task, server, known, lambda: not asking.done())
            with pytest.raises(RequestTimeout):
                await asking
            return await asyncio.to_thread(wait_until_released, server, task)  # the client is still connected
        finally:
            await client.stop()

    cancelled, tokens = asyncio.run(scenario())
    assert cancelled and tokens < max_tokens // 2, f"cancelled {cancelled}, {tokens} tokens of {max_tokens}"
    deadline = time.monotonic() + 30  # refusal records are written within about a second
    while sum(r["code"] == "cancelled" for r in ledger_rows(workdir / "executor")) == before:
        assert time.monotonic() < deadline, "no `cancelled` ledger record of the abandoned request"
        time.sleep(0.1)


# -- the operator's commands against the server ----------------------------------------------------------
def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lloom_executor", *args], capture_output=True, text=True, timeout=timeout)


def test_test_backend_models_list_and_benchmark_against_the_server(server: LlamaServer, workdir: Path) -> None:
    config = rig.write_executor_config(workdir / "commands", server, context_length=CTX_PER_SLOT)
    checked = cli("test-backend", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert MODEL_ALIAS in checked.stdout

    listed = cli("models", "list", "--json", "--config", str(config))
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert MODEL_ALIAS in json.dumps(json.loads(listed.stdout))

    bench = cli(
        "benchmark",
        "--config",
        str(config),
        "--model",
        MODEL_ALIAS,
        "--requests",
        "6",
        "--concurrency",
        "2",
        "--max-tokens",
        "16",
        "--prompt",
        "Count the ticks",  # not ending in "?" or ".": the planted loop, 16 tokens each
        "--json",
    )
    assert bench.returncode == 0, bench.stdout + bench.stderr
    result = json.loads(bench.stdout)
    for path in ("executor", "backend_only"):
        assert result[path]["successes"] == 6 and result[path]["errors"] == 0, result
        assert result[path]["tokens_out"] == 6 * 16, result
