"""Several backends and an instance pool of real llama.cpp servers, through `lloom-executor start`.

Why: `test_backend_pool.py` proves the pool against our own OpenAI-wire test server; operators
pool real inference servers, which die with requests half generated on their slots. Here one
executor (a separate process, configured as an operator would) serves three backends:

* `[llm_client]`: a pool (`base_urls`) of two `llama-server` processes, each serving the tiny
  generated model of `llamacpp_rig` under the same alias (a prompt ending in "?" is answered
  " hello world."; any other prompt loops " tick tock ..." until max_tokens);
* `[[llm_backends]] local`: the OpenAI-compatible test server (`openai_server.py`, "echo: ...");
* `[[llm_backends]] locked`: another test server that wants a different API key (401).

The Rust reference-style peer sends signed requests over libp2p. What the servers themselves
say (their logs of the tasks they ran, the test server's recorded requests) tells which backend
and which instance served a request; `/health/detailed` and `/metrics` what the executor knows.
Waits poll their condition with a deadline, never sleep a fixed time.

`llama-server` is built by `scripts/build_llama_server.py`: missing, the tests fail in CI
(`CI=true`) and are skipped elsewhere with the reason (as in `test_llamacpp.py`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import interop
import llamacpp_rig as rig
from llamacpp_rig import MODEL_ALIAS, ExecutorProcess, LlamaServer, ServerOptions
from lloom_executor.ledger import Ledger
from openai_server import OpenAIServer, echo_content
from service_rig import samples

CTX_PER_SLOT = 1024
SLOTS = 2
OFFER_IN, OFFER_OUT = "500000000000000", "1000000000000000"  # the Rust client's default offer (covers our prices)
LOCAL_MODEL = "test-model"  # served by the test server (its default listing)
LOCKED_MODEL = "gpt-x"
LOCKED_MODELS = [{"id": LOCKED_MODEL, "object": "model", "state": "loaded"}]
BACKEND_FAILED = "the backend failed on this request"  # serving/execution.py's public sentence
BACKEND_TIMEOUT = "the backend did not answer in time"
LOAD_TOKENS = 384  # max_tokens of the load sent while an instance is killed: its batch keeps B busy ~1 s
POLL_DEADLINE = 60.0
HTTP_THREADS = 24  # per llama-server: above the connections the executor may hold to one (see `llamas`)


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
    return tmp_path_factory.mktemp("pool-llamacpp")


@pytest.fixture(scope="module")
def llamas(server_binary: Path, workdir: Path) -> Iterator[list[LlamaServer]]:
    """Two llama.cpp servers, each with its own generated model file, one alias: one pool.

    HTTP threads: llama-server serves each connection on one thread for as long as the client keeps
    it alive, with max(slots + 2, cores - 1) threads by default (4 here). When B dies, its calls move
    to A, and the executor then holds more connections to A than A has threads: the extra ones
    waited unserved until the executor's 60 s timeout (seen here twice in ~25 runs). More threads than
    the executor's max_concurrent_requests (16) plus a probe rule that out."""
    options = ServerOptions(ctx_size=SLOTS * CTX_PER_SLOT, slots=SLOTS, extra=("--threads-http", str(HTTP_THREADS)))
    with contextlib.ExitStack() as stack:
        started = []
        for name in ("a", "b"):
            model = rig.write_tiny_llama_gguf(workdir / f"tiny-llama-{name}.gguf")
            started.append(stack.enter_context(rig.llama_server(server_binary, model, workdir / f"llama-{name}.log", options)))
        yield started


@pytest.fixture(scope="module")
def local() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def locked() -> Iterator[OpenAIServer]:
    with OpenAIServer(LOCKED_MODELS, api_key="sk-right") as server:
        yield server


class Executor:
    """The executor process with its health API and metrics ports."""

    def __init__(self, process: ExecutorProcess, directory: Path, api_port: int, metrics_port: int) -> None:
        self.process = process
        self.directory = directory
        self.api = f"http://127.0.0.1:{api_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def instances(self, backend: str = "llm_client") -> list[dict[str, Any]]:
        """The backend's instances as `/health/detailed` shows them."""
        resp = httpx.get(self.api + "/health/detailed", timeout=10, trust_env=False)
        resp.raise_for_status()
        return list(resp.json()["backends"][backend]["instances"])

    def instance(self, label: str) -> dict[str, Any]:
        return next(i for i in self.instances() if i["instance"] == label)

    def instance_up_metric(self, label: str) -> float:
        text = httpx.get(self.metrics_url, timeout=10, trust_env=False).text
        return samples(text)[
            ("lloom_executor_backend_instance_up", frozenset({"backend": "llm_client", "pool_instance": label}.items()))
        ]

    def ledger_codes(self) -> list[str]:
        with Ledger.in_directory(self.directory / "data") as ledger:
            return [str(row["code"]) for row in ledger.entries()]


@pytest.fixture(scope="module")
def executor(llamas: list[LlamaServer], local: OpenAIServer, locked: OpenAIServer, workdir: Path) -> Iterator[Executor]:
    with executor_over(llamas, local, locked, workdir / "executor", timeout_secs=60) as running:
        yield running


@contextlib.contextmanager
def executor_over(
    llamas: list[LlamaServer], local: OpenAIServer, locked: OpenAIServer, directory: Path, *, timeout_secs: float
) -> Iterator[Executor]:
    """An executor process serving the three backends, the pool's calls timing out after `timeout_secs`."""
    directory.mkdir()
    api_port, metrics_port = rig.free_port(), rig.free_port()
    urls = ", ".join(f'"{server.base_url}"' for server in llamas)
    # failure_threshold 2: two calls cut on a killed instance take it out, while one slow probe of a
    # busy server on a loaded machine does not; probes every 0.5 s bring a restarted one back quickly
    llm = (
        f'backend = "openai"\nbase_urls = [{urls}]\napi_key = "unchecked"\ntimeout_secs = {timeout_secs}\nmax_retries = 0\n'
        "failure_threshold = 2\nhealth_check_interval_secs = 0.5"
    )
    extra = f"""
[request_handling]
max_concurrent_requests = 16
request_timeout_secs = 120
[[llm_backends]]
name = "local"
backend = "lmstudio"
base_url = "{local.base_url}"
max_retries = 0
[[llm_backends]]
name = "locked"
backend = "openai"
base_url = "{locked.base_url}"
api_key = "sk-wrong"
max_retries = 0
[[models]]
name = "{MODEL_ALIAS}"
inbound_price = "0.000001"
outbound_price = "0.000002"
context_length = {CTX_PER_SLOT}
[[models]]
name = "{LOCAL_MODEL}"
backend = "local"
inbound_price = "0.000001"
outbound_price = "0.000002"
[[models]]
name = "{LOCKED_MODEL}"
backend = "locked"
inbound_price = "0.000001"
outbound_price = "0.000002"
"""
    config = interop.write_operator_config(
        directory,
        llm=llm,
        api=f'enabled = true\nlisten_address = "127.0.0.1:{api_port}"',
        metrics=f'enabled = true\nendpoint = "127.0.0.1:{metrics_port}"',
        extra=extra,
    )
    with rig.executor_process(config, directory.parent / f"{directory.name}.log") as running:
        yield Executor(running, directory, api_port, metrics_port)


# -- helpers -------------------------------------------------------------------------------------
def ask(peer: Path, executor: Executor, model: str, prompt: str, *extra: str, timeout: int = 90) -> interop.PeerRun:
    args = interop.client_args(
        executor.process.addr,
        "--model",
        model,
        "--prompt",
        prompt,
        "--inbound-price",
        OFFER_IN,
        "--outbound-price",
        OFFER_OUT,
        *extra,
        timeout_secs=timeout,
    )
    return interop.run_peer(peer, args, timeout=timeout + 15)


def signed(run: interop.PeerRun, executor: Executor, count: int = 1) -> list[dict[str, Any]]:
    """The run's answers: `count` of them, every one signed by the executor."""
    where = f"{run.describe()}\nexecutor log:\n{executor.process.log()}"
    lines = run.responses
    assert len(lines) == count, where
    for line in lines:
        assert line["variant"] == "SignedLlmResponse" and line["signature_valid"] is True, where
    return lines


def served(line: dict[str, Any], model: str, content: str, where: str) -> None:
    assert line["error"] is None, where
    assert line["model_used"] == model, where
    assert line["content"].strip() == content.strip(), where


def unfinished_tasks(server: LlamaServer, known: int) -> list[int]:
    """Tasks after the first `known` that the server put on a slot and has not released (its log)."""
    return [task for task in server.launched_tasks()[known:] if server.released(task) is None]


def finished_tasks(server: LlamaServer, known: int) -> int:
    return sum(server.released(task) is not None for task in server.launched_tasks()[known:])


def label(server: LlamaServer) -> str:
    """The instance's label in /health/detailed and the metrics (its URL, no trailing slash)."""
    return server.base_url.rstrip("/")


def poll(predicate: Callable[[], bool], what: str, executor: Executor) -> None:
    assert interop.wait_until(predicate, POLL_DEADLINE, interval=0.05), (
        f"not within {POLL_DEADLINE} s: {what}\n{executor.process.log()}"
    )


class Relaunched(LlamaServer):
    """A killed `llama-server` started again with its own command line: the same model file and
    the same port, so the executor's pool sees the very instance come back. (The rig picks a free
    port per server, so a restart needs the old argv.)"""

    def __init__(self, killed: LlamaServer, log_path: Path) -> None:
        self.options = killed.options
        self.port, self.root_url, self.base_url = killed.port, killed.root_url, killed.base_url
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(killed.proc.args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.root_url, timeout=30.0, trust_env=False)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise


def kill(server: LlamaServer) -> None:
    """SIGKILL: the server dies with its slots busy, as a crashed or OOM-killed one does."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)


# -- routing ----------------------------------------------------------------------------------------
def test_each_model_is_served_by_its_own_backend(
    peer: Path, executor: Executor, llamas: list[LlamaServer], local: OpenAIServer
) -> None:
    """The llama.cpp model goes to the llama.cpp pool (one of its servers runs a task), the test
    server's model to the test server, and each answer is the one its server makes."""
    known = [len(server.launched_tasks()) for server in llamas]
    local_before = len(local.chat_requests)

    run = ask(peer, executor, MODEL_ALIAS, "What does the tiny model answer?", "--temperature", "0", "--max-tokens", "16")
    (line,) = signed(run, executor)
    served(line, MODEL_ALIAS, rig.SHORT_ANSWER, run.describe())
    assert line["outbound_tokens"] == rig.ANSWER_TOKENS
    assert sum(len(s.launched_tasks()) - k for s, k in zip(llamas, known, strict=True)) == 1
    assert len(local.chat_requests) == local_before  # the test server never saw it

    run = ask(peer, executor, LOCAL_MODEL, "route me please", "--max-tokens", "16")
    (line,) = signed(run, executor)
    served(line, LOCAL_MODEL, echo_content("route me please"), run.describe())
    assert [r.json["model"] for r in local.chat_requests[local_before:]] == [LOCAL_MODEL]
    assert sum(len(s.launched_tasks()) - k for s, k in zip(llamas, known, strict=True)) == 1  # the pool did not

    # one pool, both instances in it and up
    assert [(i["instance"], i["up"]) for i in executor.instances()] == [(label(s), True) for s in llamas]


def test_a_backend_answering_401_refuses_its_models_while_the_others_are_served(
    peer: Path, executor: Executor, local: OpenAIServer, locked: OpenAIServer
) -> None:
    """The locked backend wants another key: its model gets a signed error that charges nothing
    (the backend's 401 and its words stay in the operator's log), the ledger says backend_failed;
    the other backends keep serving."""
    before = len(locked.chat_requests)
    refused = ask(peer, executor, LOCKED_MODEL, "let me in", "--max-tokens", "8")
    (line,) = signed(refused, executor)
    assert line["error"] == BACKEND_FAILED, refused.describe()
    assert (line["content"], line["inbound_tokens"], line["outbound_tokens"], line["total_cost"]) == ("", 0, 0, "0")
    assert [r.bearer for r in locked.chat_requests[before:]] == ["sk-wrong"]  # it reached the server, which refused
    poll(lambda: "BackendAuthError" in executor.process.log(10**6), "the 401 in the executor's log", executor)
    assert re.search(r"answered 401", executor.process.log(10**6)), executor.process.log()
    # refusal records are written within about a second of the answer
    poll(lambda: "backend_failed" in executor.ledger_codes(), "the refusal's ledger record", executor)

    run = ask(peer, executor, LOCAL_MODEL, "still here", "--max-tokens", "8")
    served(signed(run, executor)[0], LOCAL_MODEL, echo_content("still here"), run.describe())
    run = ask(peer, executor, MODEL_ALIAS, "Are you there?", "--temperature", "0", "--max-tokens", "8")
    served(signed(run, executor)[0], MODEL_ALIAS, rig.SHORT_ANSWER, run.describe())


# -- an instance that hangs -------------------------------------------------------------------------
HANG_TIMEOUT_SECS = 4.0


def test_a_hung_instance_times_out_at_the_backend_timeout_and_is_taken_out(
    peer: Path, llamas: list[LlamaServer], local: OpenAIServer, locked: OpenAIServer, workdir: Path
) -> None:
    """llama.cpp server A is frozen (SIGSTOP: its socket accepts, nothing answers, as a wedged
    server does). Its calls end at the backend's `timeout_secs` with the signed timeout error (a
    call that reached the server is never retried elsewhere: it may be running there); A is taken
    out, B serves the rest; A thawed (SIGCONT) is probed back in."""
    a, b = llamas
    with executor_over(llamas, local, locked, workdir / "executor-hang", timeout_secs=HANG_TIMEOUT_SECS) as executor:
        os.killpg(a.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            run = ask(peer, executor, MODEL_ALIAS, "Hang", "--count", "4", "--concurrency", "4", "--max-tokens", "8")
            took = time.monotonic() - started
            lines = signed(run, executor, 4)
            errors = [line for line in lines if line["error"] is not None]
            assert errors, run.describe()  # round robin sent some of the four to A
            for line in errors:
                assert line["error"] == BACKEND_TIMEOUT and line["total_cost"] == "0", run.describe()
            for line in lines:
                if line["error"] is None:
                    served(line, MODEL_ALIAS, rig.loop_answer(8), run.describe())
            assert HANG_TIMEOUT_SECS <= took < HANG_TIMEOUT_SECS + 30, took  # the backend's timeout, not the request's
            poll(lambda: executor.instance(label(a))["up"] is False, "A taken out", executor)
            before_b = len(b.launched_tasks())
            run = ask(peer, executor, MODEL_ALIAS, "While A hangs", "--count", "3", "--max-tokens", "8")
            for line in signed(run, executor, 3):
                served(line, MODEL_ALIAS, rig.loop_answer(8), run.describe())
            assert len(b.launched_tasks()) - before_b == 3
        finally:
            os.killpg(a.proc.pid, signal.SIGCONT)
        poll(lambda: executor.instance(label(a))["up"] is True, "A probed back in once it answers again", executor)


# -- an instance killed mid-load ---------------------------------------------------------------------
def test_an_instance_killed_mid_load_loses_no_request_and_comes_back_when_restarted(
    peer: Path, executor: Executor, llamas: list[LlamaServer], workdir: Path
) -> None:
    """llama.cpp server B is SIGKILLed while it generates for some of a batch of requests:

    * every request of the batch gets a signed answer; a request's answer may be an error only if
      its output had begun on B (B had finished its generation: a non-streamed answer is sent once
      generated), so the signed backend errors are at most the tasks B finished; the rest are full
      answers (requests cut on B before any byte are retried on A);
    * B is taken out (health and metrics say so) and gets no calls while it is out: A serves;
    * B started again on its port is probed back in and gets calls again."""
    a, b = llamas
    count = 16
    known_a, known_b = len(a.launched_tasks()), len(b.launched_tasks())
    batch = ("--count", str(count), "--concurrency", str(count), "--max-tokens", str(LOAD_TOKENS))
    runs: list[interop.PeerRun] = []
    load = threading.Thread(target=lambda: runs.append(ask(peer, executor, MODEL_ALIAS, "Load", *batch)))
    load.start()
    try:
        poll(lambda: bool(unfinished_tasks(b, known_b)) or not load.is_alive(), "B generating for the batch", executor)
        cut = unfinished_tasks(b, known_b)
        kill(b)
    finally:
        load.join(120)
    assert cut, "the batch was over before B generated for it: nothing was cut"
    assert runs, "the client did not finish"
    run = runs[0]
    b_finished = finished_tasks(b, known_b)  # B's log is complete now: what it generated before it died
    lines = signed(run, executor, count)
    errors = [line for line in lines if line["error"] is not None]
    successes = [line for line in lines if line["error"] is None]
    for line in successes:
        served(line, MODEL_ALIAS, rig.loop_answer(LOAD_TOKENS), run.describe())
        assert line["outbound_tokens"] == LOAD_TOKENS
    for line in errors:  # only an answer that had begun on B may fail, and then as a backend failure
        assert line["error"] == BACKEND_FAILED and line["total_cost"] == "0", run.describe()
    assert len(errors) <= b_finished, f"{len(errors)} errors, B finished {b_finished} tasks\n{run.describe()}"
    print(
        f"batch of {count}: {len(successes)} served, {len(errors)} signed backend errors; "
        f"B killed with {len(cut)} task(s) generating, {b_finished} finished"
    )

    # B is out: not up, its cut calls went to A, the metric says 0
    poll(lambda: executor.instance(label(b))["up"] is False, "B taken out", executor)
    state_b = executor.instance(label(b))
    assert state_b["retried_elsewhere"] >= 1 and state_b["failures"] >= 2, state_b
    assert len(a.launched_tasks()) - known_a >= count - b_finished  # A ran everything B did not finish
    assert executor.instance_up_metric(label(b)) == 0
    assert executor.instance_up_metric(label(a)) == 1

    # the pool serves on A alone; B, out, is not even tried
    calls_b = state_b["calls"]
    before_a = len(a.launched_tasks())
    run = ask(peer, executor, MODEL_ALIAS, "During", "--count", "3", "--max-tokens", "8")
    for line in signed(run, executor, 3):
        served(line, MODEL_ALIAS, rig.loop_answer(8), run.describe())
    assert len(a.launched_tasks()) - before_a == 3
    assert executor.instance(label(b))["calls"] == calls_b

    # B again on its port: a probe brings it back, and it gets calls again
    back = Relaunched(b, workdir / "llama-b-restarted.log")
    try:
        poll(lambda: executor.instance(label(b))["up"] is True, "B probed back in", executor)
        assert executor.instance_up_metric(label(b)) == 1
        run = ask(peer, executor, MODEL_ALIAS, "After", "--count", "4", "--max-tokens", "8")
        for line in signed(run, executor, 4):
            served(line, MODEL_ALIAS, rig.loop_answer(8), run.describe())
        assert len(back.launched_tasks()) >= 1, back.log_tail()
        assert executor.instance(label(b))["calls"] > calls_b
    finally:
        back.stop()
