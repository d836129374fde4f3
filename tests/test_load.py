"""Load and crash: many clients at once against a whole executor, and its ledger across a SIGKILL.

1. 200 requests from four Rust reference-style clients (64 in flight) against a configured
   `ExecutorService` whose OpenAI-wire backend answers after 200 ms, with
   `max_concurrent_requests = 32`: every answer signed and served, the backend never sees
   more than 32 requests at once (counted on the backend's side), and the ledger holds
   exactly the 200 served rows. Nothing here measures time: the throughput of the same
   scenario is in benches/bench_throughput.py.
2. `lloom-executor start` as a real process, driven by our client with many concurrent
   requests, killed with SIGKILL mid-load: every request whose answer the client received
   is in the ledger (matched on the request's signing digest), the ledger opens clean, and
   a restarted executor on the same data directory appends to it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import interop
from lloom_executor import _native
from lloom_executor.client import Answer, LloomClient
from lloom_executor.config import Config
from lloom_executor.identity import load_identity
from lloom_executor.ledger import LEDGER_FILENAME, Ledger
from lloom_executor.service import ExecutorService
from openai_server import CHAT_PATH, OpenAIServer
from service_rig import until

MODEL = "gpt-3.5-turbo"
PRICE_IN = 10**12  # wei per token = the configured 0.000001 ETH
PRICE_OUT = 2 * 10**12
LATENCY = 0.2
MAX_CONCURRENT = 32
CLIENTS, PER_CLIENT, CLIENT_CONCURRENCY = 4, 50, 16
BACKEND_MODELS = [
    {
        "id": MODEL,
        "object": "model",
        "type": "llm",
        "publisher": "lloom",
        "arch": "llama",
        "compatibility_type": "gguf",
        "quantization": "Q4_K_M",
        "state": "loaded",
        "max_context_length": 8192,
    },
]


class CountingServer(OpenAIServer):
    """The OpenAI-wire test server, also counting chat requests being answered at once.

    Counted in the server's own loop (one thread), from the request's arrival until its
    answer is written: an independent measure of the executor's concurrency bound.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = 0
        self.peak = 0

    async def _dispatch(self, req, writer) -> bool:  # type: ignore[no-untyped-def]
        if req.path != CHAT_PATH:
            return await super()._dispatch(req, writer)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super()._dispatch(req, writer)
        finally:
            self.in_flight -= 1


def write_keys(tmp_path: Path) -> None:
    key = _native.PrivateKey.generate()
    for name in ("identity_key", "eth_key"):
        (tmp_path / name).write_text(key.to_hex())
        (tmp_path / name).chmod(0o600)


# -- 1. 200 requests from Rust peers ---------------------------------------------------------------
def test_200_requests_from_rust_peers_with_32_backend_slots(tmp_path: Path, interop_peer: Path) -> None:
    write_keys(tmp_path)
    backend = CountingServer(BACKEND_MODELS, latency=LATENCY)
    with backend:
        config = Config.from_dict(
            {
                "network": {
                    "listen_address": "/ip4/127.0.0.1/tcp/0",
                    "protocols": {"enable_mdns": False, "enable_autonat": False, "enable_relay": False},
                },
                "identity": {
                    "private_key_path": str(tmp_path / "identity_key"),
                    "ethereum_private_key_path": str(tmp_path / "eth_key"),
                },
                "llm_client": {"backend": "lmstudio", "base_url": backend.base_url, "timeout_secs": 30, "max_retries": 0},
                "models": [{"name": MODEL, "inbound_price": "0.000001", "outbound_price": "0.000002"}],
                "request_handling": {"max_concurrent_requests": MAX_CONCURRENT},
                "metrics": {"enabled": False},
                "api": {"enabled": False},
                "storage": {"data_dir": str(tmp_path / "data")},
            }
        )

        def client(n: int, addr: str) -> interop.PeerRun:
            args = interop.client_args(
                addr,
                "--count",
                str(PER_CLIENT),
                "--concurrency",
                str(CLIENT_CONCURRENCY),
                "--prompt",
                f"load {n}",
                "--inbound-price",
                str(PRICE_IN),
                "--outbound-price",
                str(PRICE_OUT),
                timeout_secs=90,
            )
            return interop.run_peer(interop_peer, args, timeout=110)

        async def scenario() -> tuple[list[interop.PeerRun], str]:
            service = ExecutorService(config, load_identity(config.identity, environ={}))
            addr = (await service.start())[0]
            try:
                runs = await asyncio.gather(*(asyncio.to_thread(client, n, addr) for n in range(CLIENTS)))
                return list(runs), service.identity.address
            finally:
                await service.stop()

        runs, executor_address = asyncio.run(scenario())
        peak, chats = backend.peak, len(backend.chat_requests)

    total = CLIENTS * PER_CLIENT
    clients: dict[str, int] = {}
    for n, run in enumerate(runs):
        assert run.returncode == 0, run.describe()
        assert (run.summary["ok"], run.summary["failed"]) == (PER_CLIENT, 0), run.describe()
        assert not run.events("request_failed"), run.describe()
        assert sorted(r["index"] for r in run.responses) == list(range(PER_CLIENT)), run.describe()
        for line in run.responses:
            assert line["variant"] == "SignedLlmResponse" and line["signature_valid"] is True, run.describe()
            assert line["verify_error"] is None and line["timestamp_ok"] is True, run.describe()
            assert line["signer"].lower() == executor_address.lower(), run.describe()
            assert line["error"] is None and line["content"] == f"echo: load {n} [{line['index']}]", run.describe()
            expected = line["inbound_tokens"] * PRICE_IN + line["outbound_tokens"] * PRICE_OUT
            assert line["total_cost"] == str(expected), run.describe()
        clients[run.one("identity")["address"].lower()] = n

    assert chats == total  # one backend call per request: no retries, no cache
    assert 1 < peak <= MAX_CONCURRENT, peak  # served concurrently, never past the bound

    with Ledger.in_directory(tmp_path / "data") as ledger:
        rows = ledger.entries()
        totals = ledger.totals()
    assert len(rows) == total and {r["status"] for r in rows} == {"served"}
    assert totals.served == total and totals.refused == 0
    assert Counter(r["client_address"] for r in rows) == {address: PER_CLIENT for address in clients}
    assert len({r["request_digest"] for r in rows}) == total
    assert all(r["receipt_signature"] and r["model"] == MODEL for r in rows)


# -- 2. SIGKILL mid-load, then restart ---------------------------------------------------------------
CRASH_WORKERS = 24
ANSWERS_BEFORE_KILL = 60


def write_config(tmp_path: Path, base_url: str) -> Path:
    llm = f'backend = "lmstudio"\nbase_url = "{base_url}"\ntimeout_secs = 10\nmax_retries = 0'
    return interop.write_operator_config(
        tmp_path, llm=llm, models=[MODEL], extra="[request_handling]\nmax_concurrent_requests = 16"
    )


class Executor:
    """`python -m lloom_executor start` with its log in a file (a pipe nobody reads would fill)."""

    def __init__(self, config: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lloom_executor", "start", "--config", str(config)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def address(self, timeout: float = 40) -> str:
        """The loopback address it logs once listening; fails at once if the process exits first."""
        found: list[str] = []

        def listening_or_gone() -> bool:
            match = re.search(r"listening on (/ip4/127\.0\.0\.1/\S+/p2p/\S+)", self.log.read_text())
            if match:
                found.append(match.group(1))
            return bool(match) or self.proc.poll() is not None

        interop.wait_until(listening_or_gone, timeout)
        if not found:
            raise AssertionError(f"executor did not start (rc {self.proc.poll()}):\n{self.log.read_text()}")
        return found[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


async def load_until_killed(address: str, executor: Executor) -> tuple[list[Answer], list[BaseException]]:
    """Workers send requests back to back; once enough answers are in, SIGKILL the executor."""
    peer = address.rsplit("/p2p/", 1)[1]
    answers: list[Answer] = []
    failures: list[BaseException] = []
    killed = asyncio.Event()

    async with LloomClient(bootstrap=[address], request_timeout=20, enable_kad=False, enable_gossip=False) as client:

        async def worker(w: int) -> None:
            i = 0
            while not killed.is_set():
                try:
                    answer = await client.request(
                        peer, MODEL, f"crash {w} {i}", inbound_price=str(PRICE_IN), outbound_price=str(PRICE_OUT), timeout=15
                    )
                except Exception as exc:  # the executor died under this request
                    failures.append(exc)
                    return
                answers.append(answer)
                i += 1

        tasks = [asyncio.ensure_future(worker(w)) for w in range(CRASH_WORKERS)]

        def enough_answers() -> bool:
            done = [t for t in tasks if t.done()]
            assert not done, [t.exception() for t in done]  # every worker is still sending
            return len(answers) >= ANSWERS_BEFORE_KILL

        await until(enough_answers, f"{ANSWERS_BEFORE_KILL} answers before the kill", 60)
        executor.proc.send_signal(signal.SIGKILL)
        killed.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 40)
    return answers, failures


def test_sigkill_mid_load_loses_no_answered_request(tmp_path: Path) -> None:
    with OpenAIServer(BACKEND_MODELS, latency=0.05) as backend:
        config = write_config(tmp_path, backend.base_url)
        first = Executor(config, tmp_path / "first.log")
        try:
            address = first.address()
            answers, failures = asyncio.run(load_until_killed(address, first))
            assert first.proc.wait(10) == -signal.SIGKILL
        finally:
            first.close()

        assert all(a.error is None and a.signature_valid for a in answers), [a.error for a in answers if a.error]
        assert failures, "the kill cut no request short: it was not mid-load"

        ledger_file = tmp_path / "data" / LEDGER_FILENAME
        conn = sqlite3.connect(ledger_file)  # a plain connection: recovers the WAL like any reader
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            recorded = {d for (d,) in conn.execute("SELECT request_digest FROM requests WHERE status = 'served'")}
            rows_after_crash = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        finally:
            conn.close()
        answered = {"0x" + a.request_digest.hex() for a in answers}
        assert len(answered) == len(answers)
        missing = answered - recorded
        assert not missing, (
            f"{len(missing)} answered request(s) not in the ledger; SIGKILL after {len(answers)} answers with "
            f"{len(failures)} requests in flight, ledger holds {rows_after_crash} rows "
            f"({len(recorded - answered)} written whose answer never arrived)"
        )

        second = Executor(config, tmp_path / "second.log")
        try:
            address = second.address()

            async def one_more() -> Answer:
                async with LloomClient(bootstrap=[address], request_timeout=20, enable_kad=False, enable_gossip=False) as client:
                    return await client.request(
                        address.rsplit("/p2p/", 1)[1],
                        MODEL,
                        "after the crash",
                        inbound_price=str(PRICE_IN),
                        outbound_price=str(PRICE_OUT),
                    )

            after = asyncio.run(one_more())
            assert after.error is None and after.content == "echo: after the crash"
            with Ledger(ledger_file) as ledger:  # beside the running executor, as `maintenance` would
                rows = ledger.entries()
            assert len(rows) == rows_after_crash + 1
            assert rows[-1]["request_digest"] == "0x" + after.request_digest.hex()
            assert answered <= {r["request_digest"] for r in rows}
            second.proc.send_signal(signal.SIGTERM)
            assert second.proc.wait(30) == 0, second.log.read_text()
        finally:
            second.close()
