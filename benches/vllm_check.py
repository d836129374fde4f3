#!/usr/bin/env python3
"""vLLM on a GPU machine: the executor in front of a real vLLM server, and its throughput against vLLM's own.

Issue 15, part 3. Not run in CI (it needs an NVIDIA GPU and vLLM installed; such a machine may
have no network, so nothing is downloaded: the model is written here). Run it on the GPU box:

    python3 benches/vllm_check.py --out vllm-result.json          # defaults: 32,128,512 in flight

What it does:
1. writes a small llama-architecture model with random weights in Hugging Face layout
   (`config.json`, `model.safetensors` via transformers, and a byte-level BPE tokenizer built with
   the `tokenizers` package: `tokenizer.json`, `tokenizer_config.json` with a chat template);
2. starts `python -m vllm.entrypoints.openai.api_server` serving it (served name `tiny-llama`)
   on a free loopback port, waits for `/health`;
3. correctness through `lloom-executor start` and the Rust client (tests/interop_peer): one
   answer's prompt tokens equal vLLM's own `/tokenize` of the chat messages, its completion
   tokens equal `max_tokens` (`ignore_eos` cannot be sent through the executor, so a random model
   may stop early: then the charge must equal the server's usage for the same request), the
   total cost exact;
4. throughput at each in-flight level: vLLM driven directly (async httpx, chat completions,
   fixed prompt and `max_tokens`) and the executor path (Rust client, same prompt, same
   `max_tokens`, same in flight, `max_concurrent_requests` = in flight); prints and writes
   requests/s of both and the ratio executor / direct (the issue's bar: >= 0.9).

Status: prepared, NOT run (no GPU machine was available when it was written; see
docs/backends-llamacpp.md). Needs: vllm, transformers, tokenizers, safetensors, torch (CUDA), cargo
(to build tests/interop_peer once), and this package installed (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benches"))
import e2e_rig  # noqa: E402  (puts tests/ on the path: interop)
import interop  # noqa: E402

MODEL_NAME = "tiny-llama"
PROMPT = "Count the ticks of the clock for me"
CHAT_TEMPLATE = "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}<|assistant|>"


def write_model(directory: Path, *, layers: int, width: int, vocab: int, max_len: int) -> Path:
    """A random-weight llama in Hugging Face layout, tokenizer included; nothing downloaded."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [PROMPT, "the quick brown fox jumps over the lazy dog", "tick tock " * 20] * 50
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=fast.vocab_size,
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        num_key_value_heads=max(1, width // 64),
        max_position_embeddings=max_len,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        torch_dtype="float16",
    )
    torch.manual_seed(7)
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(directory, safe_serialization=True)
    return directory


@contextlib.contextmanager
def vllm_server(model_dir: Path, *, max_len: int, log: Path) -> Iterator[str]:
    """vLLM's OpenAI server on a free loopback port; yields its base URL (…/v1)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(max_len),
        "--max-num-seqs",
        "512",
        "--dtype",
        "float16",
        "--disable-log-requests",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            root = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 600
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(root + "/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM not healthy in 600 s:\n{log.read_text()[-4000:]}")
                time.sleep(0.5)
            yield root + "/v1"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def executor_config(directory: Path, base_url: str, *, context_length: int, in_flight: int) -> Path:
    llm = f'backend = "openai"\nbase_url = "{base_url}"\napi_key = "unchecked"\ntimeout_secs = 600\nmax_retries = 0'
    extra = f"""
[request_handling]
max_concurrent_requests = {in_flight}
[[models]]
name = "{MODEL_NAME}"
inbound_price = "0.000001"
outbound_price = "0.000002"
context_length = {context_length}
max_concurrent_requests = {in_flight}
"""
    directory.mkdir(parents=True, exist_ok=True)
    return interop.write_operator_config(directory, llm=llm, extra=extra)


async def drive_direct(base_url: str, count: int, concurrency: int, max_tokens: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits, trust_env=False) as http:
        queue = list(range(count))

        async def worker() -> None:
            while queue:
                i = queue.pop(0)
                messages = [{"role": "user", "content": f"{PROMPT} [{i}]"}]
                resp = await http.post(
                    "/chat/completions", json={"model": MODEL_NAME, "messages": messages, "max_tokens": max_tokens}
                )
                resp.raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.monotonic() - started)


def check_accounting(peer: Path, executor: e2e_rig.ExecutorProcess, base_url: str, max_tokens: int) -> dict[str, Any]:
    """One signed request: charged from vLLM's own counts (its /tokenize and usage)."""
    assert executor.addr is not None
    run = interop.run_peer(
        peer,
        interop.client_args(
            executor.addr, "--model", MODEL_NAME, "--prompt", PROMPT, "--temperature", "0", "--max-tokens", str(max_tokens)
        ),
        timeout=120,
    )
    line = run.one("response")
    assert line["signature_valid"] and line["error"] is None, run.describe()
    root = base_url.removesuffix("/v1")
    messages = [{"role": "user", "content": PROMPT}]
    tokenized = httpx.post(root + "/tokenize", json={"model": MODEL_NAME, "messages": messages}, timeout=60).json()
    direct = httpx.post(
        base_url + "/chat/completions",
        json={"model": MODEL_NAME, "messages": messages, "max_tokens": max_tokens, "temperature": 0},
        timeout=60,
    ).json()
    assert line["inbound_tokens"] == tokenized["count"] == direct["usage"]["prompt_tokens"], (line, tokenized, direct)
    assert line["outbound_tokens"] == direct["usage"]["completion_tokens"], (line, direct)
    assert line["total_cost"] == str(line["inbound_tokens"] * 10**12 + line["outbound_tokens"] * 2 * 10**12), line
    return {"inbound_tokens": line["inbound_tokens"], "outbound_tokens": line["outbound_tokens"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("vllm-check-work"))
    parser.add_argument("--out", type=Path, default=Path("vllm-result.json"))
    parser.add_argument("--in-flight", default="32,128,512")
    parser.add_argument("--requests-per-slot", type=int, default=4, help="requests = this x in flight")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--max-len", type=int, default=2048)
    args = parser.parse_args()
    missing = [m for m in ("vllm", "torch", "transformers", "tokenizers") if not _importable(m)]
    if missing:
        print(f"not run: missing {', '.join(missing)} (needs a GPU machine with vLLM installed)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = write_model(args.work / "model", layers=args.layers, width=args.width, vocab=args.vocab, max_len=args.max_len)
    peer = interop.interop_peer_binary()
    result: dict[str, Any] = {"model": {"layers": args.layers, "width": args.width, "vocab": args.vocab}, "levels": []}
    with vllm_server(model_dir, max_len=args.max_len, log=args.work / "vllm.log") as base_url:
        for level in (int(x) for x in args.in_flight.split(",")):
            config = executor_config(args.work / f"executor-{level}", base_url, context_length=args.max_len, in_flight=level)
            with e2e_rig.executor_process(e2e_rig.product_command(config)) as executor:
                if not result.get("accounting"):
                    result["accounting"] = check_accounting(peer, executor, base_url, args.max_tokens)
                count = args.requests_per_slot * level
                asyncio.run(drive_direct(base_url, level, level, args.max_tokens))  # warm-up
                direct = asyncio.run(drive_direct(base_url, count, level, args.max_tokens))
                through = e2e_rig.drive(
                    peer, executor, model=MODEL_NAME, prompt=PROMPT, count=count, concurrency=level, timeout_secs=1200
                )
            row = {
                "in_flight": level,
                "requests": count,
                "max_tokens": args.max_tokens,
                "direct_req_per_s": round(direct, 2),
                "executor_req_per_s": through.req_per_s,
                "ratio": round(through.req_per_s / direct, 3),
                "executor_cpu_ms_per_request": through.cpu_ms_per_request,
            }
            print(json.dumps(row), flush=True)
            result["levels"].append(row)
    args.out.write_text(json.dumps(result, indent=2))
    return 0 if all(row["ratio"] >= 0.9 for row in result["levels"]) else 1


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
