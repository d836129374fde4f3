"""A real llama.cpp server for the tests: a tiny model written here, and `llama-server` serving it.

Why it exists: the OpenAI-compatible backend must be proven against a real inference server with
a real tokenizer, real chat template, real slots and real failure modes, not only against our own
test server. Nothing may be downloaded, so the model is generated with the `gguf` package: a
llama-architecture network of two layers and width 64 (about 0.5 MB) with a SentencePiece-style
vocabulary (`<unk>`, `<s>`, `</s>`, the 256 byte-fallback tokens and a few dozen pieces).

Its weights are random except where the tests need a known answer. The residual stream is
dominated by the token embedding (the blocks' output projections are small), so the next token
is decided by the *last* token of the prompt, through features planted in the embedding and
output matrices:

* a prompt ending in `?` is answered " hello world." and then end-of-sequence (`ANSWER_TOKENS`
  tokens, finish reason `stop`);
* any other prompt is answered " tick tock tick tock ..." until `max_tokens` or the context ends
  (finish reason `length`): a generation as long as a test wants, for concurrency and cancellation.

The chat template joins the messages with newlines and adds no assistant header, so the prompt's
last character really is the last token the model sees. All of this is still real inference:
llama.cpp tokenizes, applies the template, runs every layer and samples.

`llama_server_binary()` finds the server built by `scripts/build_llama_server.py` (env
`LLOOM_LLAMA_SERVER`, else the default cache); `LlamaServer` runs it on a free loopback port and
waits for `/health` (polling, never a fixed sleep).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import real_servers

BINARY_ENV = "LLOOM_LLAMA_SERVER"
DEFAULT_CACHE_ROOT = "/var/cache/lloom-ci"
MODEL_ALIAS = "tiny-llama"  # the id the server lists under /v1/models (its --alias)
START_TIMEOUT_SECS = 60.0

# The model's shape
N_EMBD, N_LAYERS, N_HEAD, N_FF = 64, 2, 4, 128
TRAINED_CTX = 16384  # llama.context_length: the most a server may give the model
_LAUNCHED = re.compile(r"launch_slot_: id\s+\d+ \| task (\d+) \| processing task")
CHAT_TEMPLATE = "{% for message in messages %}{% if not loop.first %}\n{% endif %}{{ message['content'] }}{% endfor %}"

# Planted behaviour (see the module doc)
SHORT_ANSWER = " hello world."
ANSWER_TOKENS = 4  # "▁hello", "▁world", ".", "</s>" as the server counts completion tokens
LOOP_WORDS = ("tick", "tock")
QUESTION_MARK = "?"
_WORD_PIECES = ("▁hello", "▁world", "▁tick", "▁tock", "▁the", "▁a", "▁of", "▁and", "▁to", "▁is", "▁in", "▁it")
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?:;'\"()[]-"


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of a SentencePiece ("llama") vocabulary with byte fallback."""
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(TokenType.BYTE)
    for piece in ("▁", *_CHARS, *(f"▁{c}" for c in _CHARS if c.isalpha()), *_WORD_PIECES):
        if piece not in tokens:
            tokens.append(piece)
            types.append(TokenType.NORMAL)
    # Longer pieces score higher, so SentencePiece merges prefer them (where a merge path exists).
    scores = [0.0 if t != TokenType.NORMAL else -1000.0 + len(tok) for tok, t in zip(tokens, types, strict=True)]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama_gguf(path: Path, *, seed: int = 7) -> Path:
    """Write the tiny model described in the module doc to `path` and return it."""
    import numpy as np
    from gguf import GGUFWriter

    tokens, scores, types = _vocabulary()
    index = {tok: i for i, tok in enumerate(tokens)}
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    # Feature dimensions: 0 is shared by every token (the default "continue the loop" signal),
    # 1..6 mark the tokens whose successor is planted.
    feature = {"?": 1, "▁hello": 2, "▁world": 3, ".": 4, "▁tick": 5, "▁tock": 6}
    embd = rng.normal(0.0, 0.02, (n_vocab, N_EMBD)).astype(np.float32)
    embd[:, 1:8] = 0.0
    embd[:, 0] = 1.0
    for token, dim in feature.items():
        embd[index[token], dim] = 1.0
    embd[index["<0x3F>"], feature["?"]] = 1.0  # "?" reached through byte fallback too
    weight = 4.0
    output = rng.normal(0.0, 0.01, (n_vocab, N_EMBD)).astype(np.float32)
    output[:, :8] = 0.0
    successors = {"?": "▁hello", "▁hello": "▁world", "▁world": ".", ".": "</s>", "▁tick": "▁tock", "▁tock": "▁tick"}
    for source, target in successors.items():
        output[index[target], feature[source]] = 3 * weight
    output[index["▁tick"], 0] = weight  # every other token continues with " tick"

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("lloom tiny random llama")
    writer.add_context_length(TRAINED_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(index["<s>"])
    writer.add_eos_token_id(index["</s>"])
    writer.add_unk_token_id(index["<unk>"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def small(*shape: int) -> Any:
        return rng.normal(0.0, 0.02, shape).astype(np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    for block in range(N_LAYERS):
        name = f"blk.{block}"
        writer.add_tensor(f"{name}.attn_norm.weight", ones)
        writer.add_tensor(f"{name}.attn_q.weight", small(N_EMBD, N_EMBD))
        writer.add_tensor(f"{name}.attn_k.weight", small(N_EMBD, N_EMBD))
        writer.add_tensor(f"{name}.attn_v.weight", small(N_EMBD, N_EMBD))
        writer.add_tensor(f"{name}.attn_output.weight", small(N_EMBD, N_EMBD) * 0.1)
        writer.add_tensor(f"{name}.ffn_norm.weight", ones)
        writer.add_tensor(f"{name}.ffn_gate.weight", small(N_FF, N_EMBD))
        writer.add_tensor(f"{name}.ffn_up.weight", small(N_FF, N_EMBD))
        writer.add_tensor(f"{name}.ffn_down.weight", small(N_EMBD, N_FF) * 0.1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- the server binary ---------------------------------------------------------------------------
def llama_server_binary() -> Path | None:
    """`$LLOOM_LLAMA_SERVER`, else the newest build under the default cache, else None."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        path = Path(configured)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    root = Path(os.environ.get("LLOOM_CI_CACHE", DEFAULT_CACHE_ROOT)) / "llama-server"
    found = sorted(root.glob("*/bin/llama-server"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def required_llama_server() -> Path:
    """The server binary, or the test ends here (`real_servers.unavailable`: failure under CI)."""
    binary = llama_server_binary()
    if binary is None:
        real_servers.unavailable(
            f"llama-server not found (set {BINARY_ENV}, or build it: python3 scripts/build_llama_server.py; "
            "it needs cmake and a C++ compiler)"
        )
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- running it ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerOptions:
    """How `llama-server` is started. `ctx_size` is the total KV cache, shared by the `slots`
    (each slot gets ctx_size / slots tokens of context)."""

    ctx_size: int = 1024
    slots: int = 2
    threads: int = 1
    extra: Sequence[str] = ()


class LlamaServer:
    """`llama-server` serving one model file on a free loopback port, its output in a log file."""

    def __init__(self, binary: Path, model: Path, log_path: Path, options: ServerOptions = ServerOptions()) -> None:
        self.options = options
        self.port = free_port()
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root_url + "/v1"
        self.log_path = log_path
        argv = [
            str(binary),
            "--model",
            str(model),
            "--alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ctx-size",
            str(options.ctx_size),
            "--parallel",
            str(options.slots),
            "--threads",
            str(options.threads),
            "--threads-batch",
            str(options.threads),
            "--metrics",
            "--slots",
            "--no-warmup",
            *options.extra,
        ]
        self._log = open(log_path, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.root_url, timeout=30.0, trust_env=False)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"llama-server not healthy within {START_TIMEOUT_SECS} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    # -- what the server itself says ---------------------------------------------------------
    def slots(self) -> list[dict[str, Any]]:
        resp = self.http.get("/slots")
        resp.raise_for_status()
        return list(resp.json())

    def busy_slots(self) -> int:
        return sum(1 for slot in self.slots() if slot.get("is_processing"))

    def launched_tasks(self) -> list[int]:
        """Ids of the completion tasks the server has put on a slot, from its own log."""
        return [int(m.group(1)) for m in _LAUNCHED.finditer(self.log_tail(10**7))]

    def released(self, task: int) -> tuple[bool, int] | None:
        """(cancelled, tokens in the slot: prompt + generated) once the server released `task`'s
        slot, from its log; None while it runs. Read from the log, not from /slots: every /slots or
        /metrics call wakes the server's HTTP threads, and a thread woken more often than once a
        second never gets to check whether its client has gone (llama.cpp's HTTP_POLLING_SECONDS)."""
        log = self.log_tail(10**7)
        done = re.search(rf"release: id\s+\d+ \| task {task} \| stop processing: n_tokens = (\d+)", log)
        if done is None:
            return None
        return re.search(rf"cancel task, id_task = {task}\b", log) is not None, int(done.group(1))

    def busy_slot(self) -> tuple[int, int] | None:
        """(slot id, task id) of a slot that is generating now, or None."""
        for slot in self.slots():
            if slot.get("is_processing") and "id_task" in slot:
                return int(slot["id"]), int(slot["id_task"])
        return None

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (`llamacpp:` prefix dropped)."""
        resp = self.http.get("/metrics")
        resp.raise_for_status()
        out: dict[str, float] = {}
        for line in resp.text.splitlines():
            if line.startswith("llamacpp:"):
                name, _, value = line.partition(" ")
                out[name.removeprefix("llamacpp:")] = float(value)
        return out

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """What the server's own tokenizer makes of these chat messages: the template applied
        (`/apply-template`), then `/tokenize` with the special tokens (BOS) the model adds."""
        rendered = self.http.post("/apply-template", json={"messages": messages})
        rendered.raise_for_status()
        tokens = self.http.post("/tokenize", json={"content": rendered.json()["prompt"], "add_special": True})
        tokens.raise_for_status()
        return len(tokens.json()["tokens"])

    def chat(self, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        """One chat completion straight to the server (no executor)."""
        resp = self.http.post("/v1/chat/completions", json={"model": MODEL_ALIAS, "messages": messages, **params})
        resp.raise_for_status()
        return dict(resp.json())

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.http.close()
        self._log.close()


@contextlib.contextmanager
def llama_server(binary: Path, model: Path, log_path: Path, options: ServerOptions = ServerOptions()) -> Iterator[LlamaServer]:
    server = LlamaServer(binary, model, log_path, options)
    try:
        yield server
    finally:
        server.stop()


def loop_answer(tokens: int) -> str:
    """The text of `tokens` tokens of the planted " tick tock" loop."""
    return "".join(f" {LOOP_WORDS[i % 2]}" for i in range(tokens))


# -- the executor in front of it -----------------------------------------------------------------
def write_executor_config(
    directory: Path,
    server: LlamaServer,
    *,
    context_length: int,
    request_timeout_secs: float = 60.0,
    max_concurrent_requests: int = 8,
    backend_timeout_secs: float = 120.0,
    max_tokens_per_request: int = TRAINED_CTX,
) -> Path:
    """An operator's config for `lloom-executor start` in front of `server`: the OpenAI-compatible
    backend (no retries: a failure must show as it is), one model (the server's alias) with the
    given context length, the admin API off, the ledger under `directory`."""
    import interop

    directory.mkdir(parents=True, exist_ok=True)
    llm = (
        f'backend = "openai"\nbase_url = "{server.base_url}"\napi_key = "unchecked"\n'
        f"timeout_secs = {backend_timeout_secs}\nmax_retries = 0"
    )
    extra = f"""
[request_handling]
max_concurrent_requests = {max_concurrent_requests}
request_timeout_secs = {request_timeout_secs}
max_tokens_per_request = {max_tokens_per_request}
[[models]]
name = "{MODEL_ALIAS}"
inbound_price = "0.000001"
outbound_price = "0.000002"
context_length = {context_length}
"""
    return interop.write_operator_config(directory, llm=llm, extra=extra)


class ExecutorProcess:
    """`python -m lloom_executor start --config FILE` with its log in a file (a pipe nobody reads
    would fill), no operator overrides from the environment; `addr` once it logs it listens."""

    def __init__(self, config: Path, log_path: Path, timeout: float = 60.0) -> None:
        import re
        import sys

        import interop

        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lloom_executor", "start", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        found: list[str] = []

        def listening_or_gone() -> bool:
            match = re.search(r"listening on (/ip4/127\.0\.0\.1/\S+/p2p/\S+)", log_path.read_text(errors="replace"))
            if match:
                found.append(match.group(1))
            return bool(match) or self.proc.poll() is not None

        interop.wait_until(listening_or_gone, timeout)
        if not found:
            self.stop()
            raise RuntimeError(f"executor did not start (rc {self.proc.poll()}):\n{self.log()}")
        self.addr = found[0]

    def log(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM (it drains and exits), SIGKILL if it has not exited in time."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


@contextlib.contextmanager
def executor_process(config: Path, log_path: Path) -> Iterator[ExecutorProcess]:
    executor = ExecutorProcess(config, log_path)
    try:
        yield executor
    finally:
        executor.stop()
