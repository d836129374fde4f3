"""Soak: `lloom-executor start` under mixed traffic for a long time; resources must stay flat.

Why a script and not a test: a leak of one task, stream or file descriptor per odd request
shows only after tens of thousands of requests, which no CI run affords (issue 11, item 4).
CI runs it for ~20 s (tests/test_soak_smoke.py) so that it keeps working.

What it does, all on 127.0.0.1:
  * writes an operator config (echo backend, metrics on, ledger under a temp dir) and runs
    `lloom-executor start --config ...` as an operator would;
  * sends mixed traffic from several processes until the duration is over: the Rust interop
    peer (`tests/interop_peer`, a new process and key per batch: valid, price too low, unknown
    model, wrong executor, unsigned, same-second replays, bad signatures, stale timestamps)
    and Python workers (this file with `--worker`: LloomClient requests, exact replays of a
    signed frame, malformed frames, half frames dropped by a stream reset or a closed
    connection, requests reset unread, slow readers and readers that never read);
  * every `--sample-secs` reads the executor's RSS, open fds and threads from /proc/<pid> and
    its asyncio task count from /metrics (`lloom_executor_asyncio_tasks`), and prints them;
  * verdict: a resource is flat when its last-quarter mean is within the tolerance of its
    second-quarter mean (the first quarter is warm-up: caches, replay window, connections);
  * stops the executor with SIGTERM and checks the ledger: one served row for every answer
    with content the clients received (matched by request digest for the Python clients and
    by signer address for the Rust ones), plus rows of requests whose answers were not read
    on purpose (one reset right after it was sent may or may not have been served, so these
    are matched by digest, not counted); refused rows are reported as the ledger keeps them.

    .venv/bin/python benches/soak.py --duration 30m            # the full run
    .venv/bin/python benches/soak.py --duration 3m --rate 30   # a short one

Exit status: 0 flat and the ledger matches, 1 the ledger or the executor failed, 3 growing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the suite's harness, `interop` (operator config, the Rust peer)
MODEL = "soak-model"
PRICE_IN, PRICE_OUT = "1000000000000", "2000000000000"  # wei per token: exactly the node's 0.000001 / 0.000002 ETH
ACTION_LIMIT_SECS = 60.0
WORKER_EXIT_GRACE_SECS = 120.0
RUST_SHARE = 0.4  # of --rate; the rest is split over the Python workers
# (relative tolerance is --tolerance; this absolute slack keeps small counts from flapping)
SLACK = {"rss_mib": 8.0, "fds": 8.0, "threads": 2.0, "tasks": 10.0}
RUST_VARIANTS: dict[str, tuple[int, list[str]]] = {  # name: (weight, extra client flags)
    "valid": (50, []),
    "price_too_low": (8, ["--inbound-price", "1", "--outbound-price", "1"]),
    "unknown_model": (8, ["--model", "no-such-model"]),
    "wrong_executor": (8, ["--wrong-executor"]),
    "unsigned": (8, ["--unsigned"]),
    "same_second_replay": (8, ["--same-prompt"]),
    "bad_signature": (5, ["--bad-signature"]),
    "stale": (5, ["--stale-timestamp"]),
}
PY_ACTIONS: dict[str, int] = dict(  # name=weight
    valid=40, exact_replay=8, price_too_low=5, unknown_model=5, wrong_executor=5, unsigned=5, malformed=10,
    half_frame_reset=5, half_frame_disconnect=3, sent_then_reset=3, slow_reader=4, non_reader=3,
)  # fmt: skip


def seconds(text: str) -> float:
    """'30m', '180s', '1h' or plain seconds."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30m, 180s)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def norm(text: str) -> str:
    """An error sentence with its numbers, addresses and PeerIds blanked, so refusals group by kind."""
    return re.sub(r"[^\s,;:()']*[0-9][^\s,;:()']*", "#", text)[:90]


def new_tally() -> dict[str, Any]:
    counters = {"refusals": collections.Counter(), "errors": collections.Counter()}
    return dict(sent=0, content=0, refused=0, no_answer=0, **counters)


# -- the Python worker (a process of its own: `soak.py --worker`) -----------------------------------
class PyWorker:
    """Python traffic against one executor: a LloomClient for whole exchanges and raw streams,
    a second one whose connection the half-frame-disconnect action drops."""

    def __init__(self, executor: str, rate: float, until: float, concurrency: int, seed: int) -> None:
        self.executor, self.rate, self.until, self.concurrency = executor, rate, until, concurrency
        self.base, self.peer = executor.rsplit("/p2p/", 1)
        self.rng = random.Random(seed)
        self.tally: dict[str, dict[str, Any]] = collections.defaultdict(new_tally)
        self.received: list[str] = []  # request digests of answers with content
        self.unread: list[str] = []  # request digests of valid requests whose answer we did not read
        self.anomalies: list[str] = []
        self._next = time.monotonic()
        self._serial = 0

    def frame(self, key: Any, *, model: str = MODEL, price_in: str = PRICE_IN, to: str | None = None) -> bytes:
        from lloom_executor import _native

        self._serial += 1
        now = int(time.time())
        prompt = f"soak {os.getpid()} {self._serial} " + "word " * self.rng.randint(1, 40)
        nonce = self.rng.getrandbits(62) + 1
        to = to or self.peer
        return bytes(
            _native.encode_signed_request(key, model, prompt, None, None, 64, to, price_in, PRICE_OUT, nonce, now + 300, now)
        )

    def note_answer(self, name: str, frame: bytes, raw: bytes | None) -> bool:
        """Classify one raw answer; one with content (True) is recorded under the request's digest."""
        from lloom_executor import _native

        t = self.tally[name]
        if not raw:
            t["no_answer"] += 1
            return False
        try:
            answer = _native.decode_response(raw)
        except ValueError as exc:
            t["errors"][f"undecodable answer: {norm(str(exc))}"] += 1
            return False
        if not answer.signature_valid:
            self.anomalies.append(f"{name}: answer with an invalid signature")
        response = answer.response
        if response is not None and response.error is None and response.content:
            t["content"] += 1
            self.received.append("0x" + bytes(_native.decode_request(frame).digest).hex())
            return True
        t["refused"] += 1
        t["refusals"][norm(response.error if response is not None and response.error else "no error text")] += 1
        return False

    async def run(self) -> dict[str, Any]:
        from lloom_executor.client import LloomClient

        async with (
            LloomClient(enable_kad=False, enable_gossip=False) as self.client,
            LloomClient(enable_kad=False, enable_gossip=False) as self.dropper,
        ):
            await self.client.connect(self.executor)
            self.drop_lock = asyncio.Lock()
            await asyncio.gather(*(self.loop() for _ in range(self.concurrency)))
        return {
            "pid": os.getpid(),
            "tally": {k: {**v, "refusals": dict(v["refusals"]), "errors": dict(v["errors"])} for k, v in self.tally.items()},
            "received": self.received,
            "unread": self.unread,
            "anomalies": self.anomalies[:50],
        }

    async def loop(self) -> None:
        names, weights = list(PY_ACTIONS), list(PY_ACTIONS.values())
        while True:
            slot = max(self._next, time.monotonic())
            self._next = slot + 1.0 / self.rate
            await asyncio.sleep(slot - time.monotonic())
            if time.time() >= self.until:
                return
            name = self.rng.choices(names, weights)[0]
            self.tally[name]["sent"] += 1
            try:
                await asyncio.wait_for(self.act(name), ACTION_LIMIT_SECS + 10)
            except Exception as exc:  # counted per action; the soak goes on
                self.tally[name]["errors"][f"{type(exc).__name__}: {norm(str(exc))}"] += 1

    async def act(self, name: str) -> None:
        from lloom_executor import _native

        client, key = self.client, self.client.key
        if name in ("valid", "price_too_low", "unknown_model", "wrong_executor", "unsigned"):
            now = int(time.time())
            unsigned = (MODEL, "unsigned soak", None, None, 64, self.peer, PRICE_IN, PRICE_OUT, 1, now + 300)
            frame = (
                bytes(_native.encode_unsigned_request(*unsigned))
                if name == "unsigned"
                else self.frame(
                    key,
                    model="no-such-model" if name == "unknown_model" else MODEL,
                    price_in="1" if name == "price_too_low" else PRICE_IN,
                    to=_native.PrivateKey.generate().peer_id if name == "wrong_executor" else None,
                )
            )
            self.note_answer(name, frame, await client.send_frame(self.executor, frame, timeout=ACTION_LIMIT_SECS))
        elif name == "exact_replay":
            frame = self.frame(key)
            self.note_answer(name, frame, await client.send_frame(self.executor, frame, timeout=ACTION_LIMIT_SECS))
            if self.note_answer(name, frame, await client.send_frame(self.executor, frame, timeout=ACTION_LIMIT_SECS)):
                self.anomalies.append("exact_replay: the replayed frame was served")
        elif name == "malformed":
            frame = self.malformed(self.frame(key))
            try:
                raw = await client.send_frame(self.executor, frame, timeout=ACTION_LIMIT_SECS)
            except Exception:  # InvalidResponse: the node reset the stream, an allowed refusal
                raw = None
            if raw:
                self.note_answer(name, frame, raw)  # a flipped byte may still decode (another signer)
            else:
                self.tally[name]["no_answer"] += 1
        elif name in ("half_frame_reset", "half_frame_disconnect"):
            frame = self.frame(key)
            if name == "half_frame_reset":
                await client.node.call(raw_exchange, self.peer, self.base, frame[: len(frame) // 2], "reset", 0.0)
            else:
                async with self.drop_lock:  # one at a time: the whole connection goes
                    await self.dropper.node.call(raw_exchange, self.peer, self.base, frame[: len(frame) // 2], "disconnect", 0.0)
            self.tally[name]["no_answer"] += 1
        elif name in ("sent_then_reset", "non_reader"):
            frame = self.frame(key)
            self.unread.append("0x" + bytes(_native.decode_request(frame).digest).hex())
            hold = 0.0 if name == "sent_then_reset" else self.rng.uniform(1.0, 8.0)
            await client.node.call(raw_exchange, self.peer, self.base, frame, "hold", hold)
            self.tally[name]["no_answer"] += 1
        elif name == "slow_reader":
            frame = self.frame(key)
            delay = self.rng.uniform(0.05, 0.4)
            self.note_answer(name, frame, await client.node.call(raw_exchange, self.peer, self.base, frame, "slow", delay))

    def malformed(self, frame: bytes) -> bytes:
        kind = self.rng.randrange(4)
        if kind == 0:
            return os.urandom(self.rng.choice((1, 7, 100, 3000)))
        if kind == 1:
            return frame[: self.rng.randrange(1, len(frame))]
        if kind == 2:
            i = self.rng.randrange(len(frame))
            return frame[:i] + bytes([frame[i] ^ (1 << self.rng.randrange(8))]) + frame[i + 1 :]
        return b""


async def raw_exchange(rt: Any, peer_id: str, base: str, data: bytes, mode: str, arg: float) -> bytes | None:
    """Trio thread: one request stream used the wrong way. `mode`: "reset" or "disconnect" after
    writing `data` (half a frame); "hold": write it whole, keep the stream unread for `arg` s, then
    reset; "slow": write it whole and read the answer 32 bytes every `arg` s (returns it)."""
    import trio
    from libp2p.peer.id import ID

    from lloom_executor.client.exchange import Dialer
    from lloom_executor.p2p.llm_protocol import LLM_PROTOCOL

    peer = ID.from_base58(peer_id)
    with trio.fail_after(ACTION_LIMIT_SECS):
        await Dialer(rt.host).ensure_connected(peer, [base], 10.0)
        stream = await rt.host.new_stream(peer, [LLM_PROTOCOL])
        try:
            await stream.write(data)
            if mode in ("reset", "disconnect"):
                await trio.sleep(random.uniform(0.0, 0.2))  # the node is reading the frame when it breaks off
                if mode == "disconnect":
                    await rt.host.disconnect(peer)
                return None
            await stream.close_write()
            if mode == "hold":
                await trio.sleep(arg)
                return None
            answer = bytearray()
            while True:
                await trio.sleep(arg)
                try:
                    chunk = await stream.read(32)
                except Exception:  # EOF, or the node reset it
                    break
                if not chunk:
                    break
                answer += chunk
            return bytes(answer)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.reset()
                except Exception:
                    pass


def worker_main(args: argparse.Namespace) -> int:
    import logging

    from lloom_executor import service as _service  # noqa: F401  (imports libp2p, which resets its loggers)

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    worker = PyWorker(args.executor, args.rate, args.until, args.concurrency, args.seed)
    result = asyncio.run(worker.run())
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- the Rust clients (subprocesses, run from threads of the driver) -----------------------------------
class RustRunner(threading.Thread):
    """Batches of `interop-peer client` runs, one new process (and key) per batch."""

    def __init__(self, binary: Path, executor: str, rate: float, until: float, batch: int, seed: int) -> None:
        super().__init__(name=f"rust-runner-{seed}", daemon=True)
        self.binary, self.executor, self.rate, self.until, self.batch = binary, executor, rate, until, batch
        self.rng = random.Random(seed)
        self.tally: dict[str, dict[str, Any]] = collections.defaultdict(new_tally)
        self.content_by_signer: collections.Counter[str] = collections.Counter()
        self.anomalies: list[str] = []

    def run(self) -> None:
        names, weights = list(RUST_VARIANTS), [w for w, _ in RUST_VARIANTS.values()]
        next_at = time.monotonic()
        while time.time() < self.until:
            name = self.rng.choices(names, weights)[0]
            args = ["client", "--bootstrap", self.executor, "--discover", "none", "--timeout-secs", "60"]
            extra = RUST_VARIANTS[name][1]
            flags = extra if "--model" in extra else ["--model", MODEL, *extra]
            args += ["--count", str(self.batch), "--concurrency", "4", *flags]
            self.one(name, args)
            next_at += self.batch / self.rate
            time.sleep(max(0.0, min(next_at - time.monotonic(), self.until - time.time())))

    def one(self, name: str, args: list[str]) -> None:
        t = self.tally[name]
        try:
            proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=90)
            out = proc.stdout
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            t["errors"]["client run timed out"] += 1
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        signer = next((x["address"].lower() for x in lines if x.get("event") == "identity"), "?")
        summary = next((x for x in lines if x.get("event") == "summary"), {})
        t["sent"] += int(summary.get("sent", 0))
        for x in lines:
            if x.get("event") == "response":
                if x.get("error") is None and x.get("content"):
                    t["content"] += 1
                    self.content_by_signer[signer] += 1
                    if name != "valid" and name != "same_second_replay":
                        self.anomalies.append(f"rust {name}: served")
                else:
                    t["refused"] += 1
                    t["refusals"][norm(str(x.get("error") or x.get("body")))] += 1
                if x.get("signature_valid") is False:
                    self.anomalies.append(f"rust {name}: answer with an invalid signature")
            elif x.get("event") == "request_failed":
                t["no_answer"] += 1
                t["errors"][norm(str(x.get("error")))] += 1
        if not summary:
            t["errors"][f"no summary (dial failed?): {norm(out[-200:])}"] += 1


# -- the executor under test ------------------------------------------------------------------------
class Executor:
    """`lloom-executor start` in a subprocess, its output in a log file."""

    def __init__(self, workdir: Path) -> None:
        import interop  # tests/interop.py: the suite's operator config

        self.workdir = workdir
        self.ledger_path = workdir / "data" / "ledger.sqlite3"
        self.config = interop.write_operator_config(workdir, models=[MODEL], metrics='enabled = true\nendpoint = "127.0.0.1:0"')
        self.log_path = workdir / "executor.log"
        script = Path(sys.executable).with_name("lloom-executor")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "lloom_executor"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
        self.log = open(self.log_path, "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [*command, "start", "--config", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        self.addr = self.wait_for(r"listening on (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)")
        self.metrics_url = self.wait_for(r"metrics on (http://\S+/metrics)")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log_path.read_text())
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"executor: no {pattern!r} (rc {self.proc.poll()}):\n{self.log_path.read_text()[-3000:]}")

    def sample(self) -> dict[str, float]:
        """RSS, fds, threads from /proc; the asyncio task and Python thread gauges from /metrics."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        row = {"rss_mib": rss_kib / 1024, "fds": float(len(os.listdir(f"/proc/{self.proc.pid}/fd")))}
        row["threads"] = float(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        text = opener.open(self.metrics_url, timeout=10).read().decode()
        gauges = {m.group(1): float(m.group(2)) for m in re.finditer(r"^lloom_executor_(\w+) ([0-9.e+-]+)$", text, re.M)}
        row["tasks"] = gauges.get("asyncio_tasks", float("nan"))
        row["py_threads"] = gauges.get("threads", float("nan"))
        row["replay"] = gauges.get("replay_entries", float("nan"))  # grows for the replay window (600 s), then holds
        row["requests"] = sum(float(m) for m in re.findall(r"^lloom_executor_requests_total\{.*\} ([0-9.e+]+)$", text, re.M))
        return row

    def stop(self, timeout: float = 60.0) -> int | None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return self.proc.returncode


# -- verdict and ledger --------------------------------------------------------------------------------
def verdict(samples: list[tuple[float, dict[str, float]]], duration: float, tolerance: float) -> dict[str, Any]:
    """Per resource: second-quarter mean vs last-quarter mean, flat within tolerance + slack."""
    out: dict[str, Any] = {}
    for key, slack in SLACK.items():
        q2 = [r[key] for t, r in samples if duration / 4 < t <= duration / 2]
        q4 = [r[key] for t, r in samples if t > duration * 3 / 4]
        if not q2 or not q4:
            out[key] = {"flat": None, "why": "too few samples"}
            continue
        a, b = sum(q2) / len(q2), sum(q4) / len(q4)
        limit = a * (1 + tolerance) + slack
        out[key] = {"q2_mean": round(a, 2), "q4_mean": round(b, 2), "limit": round(limit, 2), "flat": b <= limit}
    return out


def check_ledger(path: Path, workers: list[dict[str, Any]], runners: list[RustRunner]) -> dict[str, Any]:
    """Served rows against what the clients received; refused rows reported as kept."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        served = db.execute(
            "SELECT lower(request_digest), lower(client_address) FROM requests WHERE status = 'served'"
        ).fetchall()
        refused = collections.Counter()
        for status, reason, n in db.execute(
            "SELECT status, reason, COUNT(*) FROM requests WHERE status != 'served' GROUP BY 1, 2"
        ):
            refused[f"{status}: {norm(reason or '')}"] += n
        tables = {
            name: db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
            for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "refusal_counts" in tables:  # refusals aggregated per sender, code and model (bounded under a flood)
            try:
                for code, n in db.execute("SELECT code, SUM(count) FROM refusal_counts GROUP BY 1"):
                    refused[f"refusal_counts: {code}"] += n
            except sqlite3.Error as exc:
                refused[f"refusal_counts unreadable: {exc}"] += 0
    finally:
        db.close()
    received = collections.Counter(d for w in workers for d in w["received"])
    unread = {d for w in workers for d in w["unread"]}
    rows = collections.Counter(d for d, _ in served)
    rust_rows: collections.Counter[str] = collections.Counter(a for d, a in served if d not in received and d not in unread)
    rust_received: collections.Counter[str] = sum((r.content_by_signer for r in runners), collections.Counter())
    problems = [f"received answer {d} has {rows[d]} served rows" for d in received if rows[d] != 1][:10]
    # (Rust clients all send nonce 1 and the same prompts: their payloads, so digests, repeat across signers)
    problems += [f"unread request {d} has {rows[d]} served rows" for d in unread if rows[d] > 1][:10]
    problems += [
        f"signer {a}: {n} served rows, {rust_received[a]} answers received" for a, n in rust_rows.items() if n != rust_received[a]
    ][:10]
    problems += [f"signer {a}: {n} answers received, no served row" for a, n in rust_received.items() if a not in rust_rows][:10]
    unread_served = sum(1 for d in unread if rows[d])
    return {
        "served_rows": len(served),
        "received_with_content": sum(received.values()) + sum(rust_received.values()),
        "served_unread_on_purpose": unread_served,
        "unread_on_purpose_sent": len(unread),
        "refused_rows": dict(refused),
        "tables": tables,
        "problems": problems,
        "match": not problems and len(served) == sum(received.values()) + sum(rust_received.values()) + unread_served,
    }


# -- the driver ---------------------------------------------------------------------------------------
def interop_binary(given: str | None) -> Path:
    if given:
        return Path(given)
    import interop  # tests/interop.py: builds the peer once with cargo (a no-op when built)

    return interop.interop_peer_binary()


def fmt_row(t: float, r: dict[str, float], rate: float) -> str:
    cells = (t, r["rss_mib"], r["fds"], r["threads"], r["py_threads"], r["tasks"], r["replay"], r["requests"], rate)
    return "{:7.0f} {:8.1f} {:5.0f} {:7.0f} {:6.0f} {:6.0f} {:7.0f} {:9.0f} {:6.1f}".format(*cells)


HEADER = (
    f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>5} {'threads':>7} {'py thr':>6} {'tasks':>6} {'replay':>7} {'requests':>9} {'req/s':>6}"
)


def run_soak(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lloom-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    binary = interop_binary(args.interop_peer)
    sample_secs = args.sample_secs or min(30.0, max(2.0, args.duration / 60))
    executor = Executor(workdir)
    print(f"executor pid {executor.proc.pid} at {executor.addr}; metrics {executor.metrics_url}; work dir {workdir}")
    start = time.time()
    until = start + args.duration
    workers = []
    for i in range(args.python_workers):
        out = workdir / f"worker-{i}.json"
        cmd = [sys.executable, __file__, "--worker", "--executor", executor.addr, "--until", str(until), "--out", str(out)]
        cmd += ["--rate", str(args.rate * (1 - RUST_SHARE) / args.python_workers), "--concurrency", str(args.concurrency)]
        workers.append(
            (subprocess.Popen([*cmd, "--seed", str(args.seed + i)], stderr=open(workdir / f"worker-{i}.log", "w")), out)
        )  # noqa: SIM115
    rust_rate = args.rate * RUST_SHARE / max(1, args.rust_workers)
    runners = [
        RustRunner(binary, executor.addr, rust_rate, until, args.rust_batch, args.seed + 100 + i)
        for i in range(args.rust_workers)
    ]
    for r in runners:
        r.start()
    samples: list[tuple[float, dict[str, float]]] = []
    print(
        f"{args.duration:.0f} s of traffic at ~{args.rate:g} requests/s; a sample every {sample_secs:g} s\n{HEADER}", flush=True
    )
    while time.time() < until and executor.proc.poll() is None:
        time.sleep(max(0.0, min(sample_secs - (time.time() - start) % sample_secs, until - time.time())))
        samples.append((time.time() - start, executor.sample()))
        (t, r), (t0, r0) = samples[-1], samples[-2] if len(samples) > 1 else (0.0, {"requests": 0.0})
        print(fmt_row(t, r, (r["requests"] - r0["requests"]) / (t - t0)), flush=True)
    results = []
    for proc, out in workers:
        try:
            proc.wait(WORKER_EXIT_GRACE_SECS)
        except subprocess.TimeoutExpired:
            proc.kill()
        results.append(
            json.loads(out.read_text())
            if out.exists()
            else {"received": [], "unread": [], "tally": {}, "anomalies": ["worker left no result"]}
        )
    for r in runners:
        r.join(WORKER_EXIT_GRACE_SECS)
    after, rc = executor.sample(), executor.stop()
    result = {
        "duration": args.duration,
        "rate": args.rate,
        "samples": samples,
        "after": after,
        "verdict": verdict(samples, args.duration, args.tolerance),
        "ledger": check_ledger(executor.ledger_path, results, runners),
        "executor_rc": rc,
        "python": [w["tally"] for w in results],
        "rust": [r.tally for r in runners],
        "anomalies": [a for w in results for a in w["anomalies"]] + [a for r in runners for a in r.anomalies],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, default=str))
    report(result, args.tolerance)
    print(f"work dir {workdir} (executor.log, worker-*.log, data/ledger.sqlite3)")
    growing = any(v["flat"] is False for v in result["verdict"].values())
    return 1 if not (result["ledger"]["match"] and rc == 0) else 3 if growing else 0


def report(result: dict[str, Any], tolerance: float) -> None:
    after, ledger = result["after"], result["ledger"]
    print(
        f"\n== after the traffic: rss={after['rss_mib']:.1f} MiB fds={after['fds']:.0f} threads={after['threads']:.0f} tasks={after['tasks']:.0f}"
    )
    print(f"== verdict (last-quarter mean <= second-quarter mean x {1 + tolerance:g} + slack {SLACK})")
    for key, v in result["verdict"].items():
        print(f"  {key:8} {'n/a' if v['flat'] is None else 'flat' if v['flat'] else 'GROWING':8} {v}")
    print("\n== traffic: sent / answers with content / signed refusals / no answer (on purpose or reset)")
    totals: dict[str, dict[str, Any]] = collections.defaultdict(new_tally)
    for source in ("python", "rust"):
        for tally in result[source]:
            for name, t in tally.items():
                agg = totals[f"{source} {name}"]
                for k in ("sent", "content", "refused", "no_answer"):
                    agg[k] += t[k]
                agg["refusals"].update(t["refusals"])
                agg["errors"].update(t["errors"])
    for name, t in sorted(totals.items()):
        top = ", ".join(f"{k} x{n}" for k, n in t["refusals"].most_common(2))
        print(f"  {name:26} {t['sent']:7} {t['content']:7} {t['refused']:7} {t['no_answer']:7}  {top}")
        for k, n in t["errors"].most_common(3):
            print(f"  {'':26} client-side: {k} x{n}")
    print(f"anomalies: {result['anomalies'][:10] or 'none'}")
    print(f"\n== ledger (executor exit code {result['executor_rc']})")
    for key in ("served_rows", "received_with_content", "served_unread_on_purpose", "unread_on_purpose_sent", "tables"):
        print(f"  {key}: {ledger[key]}")
    print("  refusals as the ledger keeps them (refused rows of `requests`; sums of `refusal_counts` by code):")
    for reason, n in sorted(ledger["refused_rows"].items(), key=lambda kv: -kv[1]):
        print(f"    {n:7}  {reason}")
    verdict_text = "MATCH" if ledger["match"] else "MISMATCH"
    print(
        f"  served rows == answers with content received + served-but-unread-on-purpose: {verdict_text} {ledger['problems'][:10]}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=seconds, default=seconds("30m"), help="traffic time (30m, 180s, ...); default 30m")
    p.add_argument("--rate", type=float, default=30.0, help="requests (actions) per second over all clients")
    p.add_argument("--sample-secs", type=float, default=0.0, help="default: duration/60, within 2..30 s")
    p.add_argument("--tolerance", type=float, default=0.10, help="relative growth allowed, last vs second quarter")
    p.add_argument("--python-workers", type=int, default=2)
    p.add_argument("--rust-workers", type=int, default=2)
    p.add_argument("--rust-batch", type=int, default=10, help="requests per interop-peer process")
    p.add_argument("--concurrency", type=int, default=8, help="actions in flight per Python worker")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--interop-peer", help="the built tests/interop_peer binary (default: build or find it)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--workdir", help="config, logs and ledger go here (default: a new temp dir, kept)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--executor", help=argparse.SUPPRESS)
    p.add_argument("--until", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return worker_main(args) if args.worker else run_soak(args)


if __name__ == "__main__":
    sys.exit(main())
