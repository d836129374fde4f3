"""Connection and stream floods against `lloom-executor start`, while a Rust client sends signed requests.

Why: 400 junk TCP connections from one address used to lock every client out of
the node (issue 11). The node now admits inbound connections per source
(`[network] max_pending_per_ip` ...; python/lloom_executor/p2p/admission.py). This
script shows it at full size; tests/test_connection_flood.py runs the same code at
the size CI affords and asserts the same verdict.

What it does, all on loopback (127.0.0.0/8 is local: attackers bind their own source
addresses, the client comes from 127.0.0.1, nothing leaves the machine):
  * runs `python -m lloom_executor start` (echo backend) as an operator would;
  * connection flood: `--junk` TCP connections held open from one address (127.0.0.2)
    and `--junk-prefix` more spread over 127.0.5.1-20 (one /24), each sending random junk,
    only the multistream header, nothing, or a handshake that trickles a byte a second;
    a connection the node closes is opened again (at most `--reopen` times the count);
  * stream flood: `--streams` stalled `/lloom/llm/1.0.0` request streams (half a frame,
    never finished) spread over `--stream-peers` py-libp2p connections;
  * meanwhile the Rust interop client (tests/interop_peer) sends `--requests` signed
    requests, a new client process (new connection) per batch;
  * samples the executor's RSS and open fds from /proc/<pid> throughout.

Verdict (exit 0): every request answered with a signed answer, p99 latency under 1 s,
fds during the flood within the caps (baseline + max_pending_per_prefix + slack), RSS
bounded, and both back near the baseline once the flood is gone.

    .venv/bin/python benches/flood.py                     # full size: 5,000 + 10,000
    .venv/bin/python benches/flood.py --junk 2000 --streams 0

The node needs `ulimit -n` above max_pending_total + its established connections
(the default 1024 pending + a few hundred: 4096 is plenty); this script raises its own
soft limit (it holds the attacking sockets) up to the hard limit.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import logging
import math
import os
import random
import re
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import interop  # noqa: E402

MODEL = "flood-model"
PRICE_IN, PRICE_OUT = "1000000000000", "2000000000000"  # wei per token: the node's 0.000001 / 0.000002 ETH
MULTISTREAM = b"\x13/multistream/1.0.0\n"
NOISE_PROPOSAL = b"\x07/noise\n"
MODES = ("junk", "header", "silent", "slow")
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
STREAM_OPEN_CONCURRENCY = 32  # streams a stalling peer negotiates at once
HANDSHAKE_CUT_SECS = 12.0  # past the default handshake_timeout_secs: the held handshakes are cut
FD_SLACK = 40  # the client's connections, the log, sqlite, sockets of the node's own services
RSS_BOUND_MIB = 150.0  # growth allowed during a flood
RSS_AFTER_MIB = 60.0  # growth left once it is over (Python keeps freed arenas)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE toward `wanted` (up to the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# -- the executor, as an operator runs it ---------------------------------------------------------
class Executor:
    """`python -m lloom_executor start` with its log in a file; /proc tells its RSS and fds."""

    def __init__(self, directory: Path, extra: str = "") -> None:
        config = interop.write_operator_config(directory, models=[MODEL], extra=extra)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
        self.log = directory / "executor.log"
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lloom_executor", "start", "--config", str(config)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (4096, max(4096, _hard_nofile()))),
        )
        found: list[str] = []

        def listening_or_gone() -> bool:
            match = re.search(r"listening on (/ip4/127\.0\.0\.1/\S+/p2p/\S+)", self.log.read_text())
            if match:
                found.append(match.group(1))
            return bool(match) or self.proc.poll() is not None

        interop.wait_until(listening_or_gone, 60)
        if not found:
            self.stop()
            raise RuntimeError(f"executor did not start (rc {self.proc.poll()}):\n{self.log.read_text()}")
        self.address = found[0]
        self.port = int(self.address.split("/tcp/")[1].split("/")[0])

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def log_text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def _hard_nofile() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


class Sampler:
    """The executor's fds and RSS every `interval` s, in a thread, with the peaks."""

    def __init__(self, executor: Executor, interval: float = 0.2) -> None:
        self.executor = executor
        self.interval = interval
        self.peak_fds = 0
        self.peak_rss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak_fds = max(self.peak_fds, self.executor.fds())
                self.peak_rss = max(self.peak_rss, self.executor.rss_mib())
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- the connection flood: raw sockets from chosen source addresses ------------------------------------
@dataclass
class FloodStats:
    opened: int = 0  # connect() calls
    connected: int = 0
    closed_by_node: int = 0  # EOF or reset seen while we held it
    connect_failed: int = 0
    open_now: int = 0
    peak_open: int = 0


@dataclass
class _Conn:
    sock: socket.socket
    source: str
    mode: str
    connected: bool = False
    next_drip: float = 0.0


class ConnectionFlood:
    """Keeps `count` TCP connections open to `port` from `sources`, in one selector thread.

    Each connection sends what its mode says (junk bytes, the multistream header, nothing,
    or a handshake that drips a byte a second) and is held; one the node closes is opened
    again, at most `reopen` x `count` opens in all, so the flood is bounded in count.
    """

    def __init__(
        self, port: int, sources: list[str], count: int, *, reopen: int = 3, reopen_rate: float = 400.0, host: str = "127.0.0.1"
    ) -> None:
        self.port, self.sources, self.count, self.host = port, sources, count, host
        self.max_opens = count * (1 + reopen)
        self.reopen_rate = reopen_rate  # reopens per second: the flood lasts, bounded, while the client works
        self.stats = FloodStats()
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._stop = threading.Event()
        self._rng = random.Random(11)
        self._thread = threading.Thread(target=self._run, name="connection-flood", daemon=True)

    def start(self) -> ConnectionFlood:
        self._thread.start()
        return self

    def wait_connected(self, n: int, timeout: float) -> bool:
        return interop.wait_until(lambda: self.stats.connected >= n, timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _open(self, index: int) -> None:
        source = self.sources[index % len(self.sources)]
        mode = MODES[index % len(MODES)]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        self.stats.opened += 1
        err = sock.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            self.stats.connect_failed += 1
            sock.close()
            return
        conn = _Conn(sock, source, mode)
        self._conns[sock.fileno()] = conn
        self._sel.register(sock, selectors.EVENT_WRITE, conn)
        self.stats.open_now += 1
        self.stats.peak_open = max(self.stats.peak_open, self.stats.open_now)

    def _close(self, conn: _Conn, by_node: bool) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()
        self.stats.open_now -= 1
        if by_node:
            self.stats.closed_by_node += 1

    def _on_connected(self, conn: _Conn) -> None:
        if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            self.stats.connect_failed += 1
            self._close(conn, by_node=False)
            return
        conn.connected = True
        self.stats.connected += 1
        payload = {
            "junk": self._rng.randbytes(64),
            "header": MULTISTREAM,
            "silent": b"",
            "slow": MULTISTREAM + NOISE_PROPOSAL + b"\x00",
        }[conn.mode]
        try:
            if payload:
                conn.sock.send(payload)
        except OSError:
            self._close(conn, by_node=True)
            return
        conn.next_drip = time.monotonic() + 1.0
        self._sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn, by_node=True)
            return
        if not data:
            self._close(conn, by_node=True)

    def _drip(self, now: float) -> None:
        for conn in list(self._conns.values()):
            if conn.mode == "slow" and conn.connected and now >= conn.next_drip:
                conn.next_drip = now + 1.0
                try:
                    conn.sock.send(b"\x01")
                except OSError:
                    self._close(conn, by_node=True)

    def _run(self) -> None:
        next_index = 0
        last_drip = 0.0
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                allowed = min(self.max_opens, self.count + int((time.monotonic() - started) * self.reopen_rate))
                while self.stats.open_now < self.count and self.stats.opened < allowed:
                    self._open(next_index)
                    next_index += 1
                    if next_index % 256 == 0:
                        break  # serve events between bursts
                for key, _ in self._sel.select(timeout=0.05):
                    conn = key.data
                    if not conn.connected:
                        self._on_connected(conn)
                    else:
                        self._on_readable(conn)
                now = time.monotonic()
                if now - last_drip >= 0.5:
                    last_drip = now
                    self._drip(now)
        finally:
            for conn in list(self._conns.values()):
                self._close(conn, by_node=False)
            self._sel.close()


# -- the stream flood: stalled request streams over many py-libp2p connections -------------------------
@dataclass
class StreamFloodStats:
    connections: int = 0
    opened: int = 0
    refused: int = 0  # the node reset it, or refused to negotiate
    failed: int = 0


class StreamFlood:
    """`total` stalled `/lloom/llm/1.0.0` streams (half a frame, never finished) spread over
    `peers` py-libp2p connections (one host, one key each), in a trio thread of its own."""

    def __init__(self, address: str, peers: int, total: int) -> None:
        self.address, self.peers, self.total = address, peers, total
        self.stats = StreamFloodStats()
        self._token: Any = None
        self._cancel: Any = None
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._libp2p_level = logging.NOTSET
        self._thread = threading.Thread(target=self._main, name="stream-flood", daemon=True)

    def start(self) -> StreamFlood:
        # the attackers' own py-libp2p logs one error per refused stream: not the executor's, and noise
        self._libp2p_level = logging.getLogger("libp2p").level
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)
        self._thread.start()
        return self

    def wait_opened(self, timeout: float) -> bool:
        return interop.wait_until(
            lambda: self._done.is_set() or self.stats.opened + self.stats.refused + self.stats.failed >= self.total, timeout
        )

    def stop(self) -> None:
        import trio

        if self._token is not None and self._cancel is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(30)
        logging.getLogger("libp2p").setLevel(self._libp2p_level)

    def _main(self) -> None:
        import trio

        try:
            trio.run(self._flood)
        except BaseException as exc:  # reported by the caller through stats/errors
            self._error = exc
        finally:
            # what a cancelled py-libp2p host did not close is closed when collected
            gc.collect()
            self._done.set()

    async def _flood(self) -> None:
        import multiaddr
        import trio
        from libp2p.peer.id import ID

        from lloom_executor import _native
        from lloom_executor.p2p.host import build_host
        from lloom_executor.p2p.llm_protocol import LLM_PROTOCOL
        from lloom_executor.p2p.node import dial

        self._token = trio.lowlevel.current_trio_token()
        executor = ID.from_base58(self.address.rsplit("/p2p/", 1)[1])
        per_peer = -(-self.total // self.peers)
        streams: list[Any] = []

        async def one_stream(host: Any, limiter: trio.CapacityLimiter) -> None:
            try:
                async with limiter:
                    with trio.fail_after(30):
                        stream = await host.new_stream(executor, [LLM_PROTOCOL])
                        await stream.write(b"\xa2\x64")  # the start of a CBOR map: half a request
                streams.append(stream)
                self.stats.opened += 1
            except Exception:
                self.stats.refused += 1

        async def one_peer(n: int) -> None:
            host = build_host(_native.PrivateKey.generate())
            mine = max(0, min(per_peer, self.total - n * per_peer))
            async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                try:
                    try:
                        with trio.fail_after(30):
                            await dial(host, self.address)
                    except Exception:
                        self.stats.failed += mine
                        await trio.sleep_forever()
                    self.stats.connections += 1
                    limiter = trio.CapacityLimiter(STREAM_OPEN_CONCURRENCY)
                    async with trio.open_nursery() as nursery:
                        for _ in range(mine):
                            nursery.start_soon(one_stream, host, limiter)
                    await trio.sleep_forever()
                finally:  # a cancelled host.run leaves its sockets to the garbage collector: close them now
                    with trio.CancelScope(shield=True), trio.move_on_after(10):
                        for conns in list(host.get_network().connections.values()):
                            for conn in list(conns):
                                with contextlib.suppress(Exception):
                                    await conn.close()

        with trio.CancelScope() as scope:
            self._cancel = scope
            async with trio.open_nursery() as nursery:
                for n in range(self.peers):
                    nursery.start_soon(one_peer, n)


# -- the legitimate client -----------------------------------------------------------------------------
@dataclass
class ClientResult:
    runs: int = 0
    sent: int = 0
    answered: int = 0  # signed answers with content
    failures: list[str] = field(default_factory=list)
    latencies_ms: list[int] = field(default_factory=list)
    wall_secs: list[float] = field(default_factory=list)  # per client process: start, dial, requests

    def quantile_ms(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)  # nearest rank: the ceil(q*n)-th smallest
        return float(ordered[max(1, math.ceil(q * len(ordered))) - 1])


def rust_requests(binary: Path, executor: Executor, result: ClientResult, *, count: int, concurrency: int, tag: str) -> None:
    """One Rust client process: dials from 127.0.0.1, sends `count` signed requests."""
    args = interop.client_args(
        executor.address,
        "--model",
        MODEL,
        "--count",
        str(count),
        "--concurrency",
        str(concurrency),
        "--prompt",
        f"flood {tag}",
        "--inbound-price",
        PRICE_IN,
        "--outbound-price",
        PRICE_OUT,
        timeout_secs=60,
    )
    started = time.monotonic()
    run = interop.run_peer(binary, args, timeout=90)
    result.wall_secs.append(time.monotonic() - started)
    result.runs += 1
    result.sent += count
    for line in run.responses:
        good = (
            line.get("signature_valid") is True and line.get("error") is None and str(line.get("content", "")).startswith("echo:")
        )
        if good:
            result.answered += 1
            result.latencies_ms.append(int(line["latency_ms"]))
        else:
            result.failures.append(json.dumps(line)[:300])
    for line in run.events("request_failed") + run.events("error"):
        result.failures.append(json.dumps(line)[:300])
    if run.returncode != 0 and not result.failures:
        result.failures.append(run.describe()[-1500:])


# -- one scenario ---------------------------------------------------------------------------------------
@dataclass
class Report:
    name: str
    baseline_fds: int
    baseline_rss: float
    peak_fds: int
    peak_rss: float
    after_fds: int
    after_rss: float
    fd_bound: int
    client: ClientResult
    flood: dict[str, Any]
    refusal_log_lines: int
    duration_secs: float
    p99_bound_ms: float = 1000.0

    @property
    def problems(self) -> list[str]:
        out = []
        c = self.client
        if c.answered != c.sent:
            out.append(f"{c.sent - c.answered} of {c.sent} requests not answered: {c.failures[:3]}")
        if not c.quantile_ms(0.99) < self.p99_bound_ms:
            out.append(f"p99 latency {c.quantile_ms(0.99)} ms (not under {self.p99_bound_ms:g} ms)")
        if self.peak_fds > self.fd_bound:
            out.append(f"fds peaked at {self.peak_fds} > bound {self.fd_bound}")
        if self.peak_rss > self.baseline_rss + RSS_BOUND_MIB:
            out.append(f"RSS peaked at {self.peak_rss:.0f} MiB (baseline {self.baseline_rss:.0f})")
        if self.after_fds > self.baseline_fds + 8:
            out.append(f"fds after the flood {self.after_fds} (baseline {self.baseline_fds})")
        if self.after_rss > self.baseline_rss + RSS_AFTER_MIB:
            out.append(f"RSS after the flood {self.after_rss:.0f} MiB (baseline {self.baseline_rss:.0f})")
        return out

    def text(self) -> str:
        c = self.client
        lines = [
            f"== {self.name} ({self.duration_secs:.1f} s)",
            f"   flood: {json.dumps(self.flood)}",
            f"   client: {c.answered}/{c.sent} answered in {c.runs} client processes; latency ms p50 {c.quantile_ms(0.5):.0f}"
            f" p99 {c.quantile_ms(0.99):.0f} max {max(c.latencies_ms, default=0)}; process wall s max "
            f"{max(c.wall_secs, default=0):.2f}",
            f"   executor fds: baseline {self.baseline_fds}, peak {self.peak_fds} (bound {self.fd_bound}), after {self.after_fds}",
            f"   executor RSS MiB: baseline {self.baseline_rss:.0f}, peak {self.peak_rss:.0f}, after {self.after_rss:.0f}",
            f"   refusal log lines: {self.refusal_log_lines}",
            f"   verdict: {'ok' if not self.problems else '; '.join(self.problems)}",
        ]
        return "\n".join(lines)


REFUSAL_LOG = "inbound connections refused or timed out"


def settle(executor: Executor, baseline_fds: int, timeout: float) -> tuple[int, float]:
    """Poll until the executor's fds are back near the baseline (or the deadline); (fds, RSS)."""
    interop.wait_until(lambda: executor.fds() <= baseline_fds + 4, timeout, interval=0.25)
    return executor.fds(), executor.rss_mib()


def run_scenario(
    name: str,
    binary: Path,
    executor: Executor,
    attack: Callable[[], Iterator[dict[str, Any]]],
    *,
    batches: int,
    per_batch: int,
    concurrency: int,
    fd_bound_over_baseline: int,
    settle_secs: float,
    min_secs: float = 0.0,
    p99_bound_ms: float = 1000.0,
) -> Report:
    """Baseline, then the attack (a generator: set up, yield its stats once the flood stands,
    tear down), the client batches during it, then settle until the fds are back."""
    baseline_fds, baseline_rss = executor.fds(), executor.rss_mib()
    started = time.monotonic()
    client = ClientResult()
    flood: dict[str, Any] = {}
    with Sampler(executor) as sampler:
        gen = attack()
        flood = next(gen)
        try:
            # `batches` client processes, and more until the flood has stood `min_secs` (bounded:
            # a fast node answers a client process in a fraction of a second)
            b = 0
            while b < batches or (time.monotonic() - started < min_secs and b < batches * 200):
                rust_requests(binary, executor, client, count=per_batch, concurrency=concurrency, tag=f"{name} {b}")
                b += 1
        finally:
            flood.update(next(gen, {}))
    after_fds, after_rss = settle(executor, baseline_fds, settle_secs)
    log_lines = sum(REFUSAL_LOG in line for line in executor.log_text().splitlines())
    return Report(
        name,
        baseline_fds,
        baseline_rss,
        max(sampler.peak_fds, baseline_fds),
        max(sampler.peak_rss, baseline_rss),
        after_fds,
        after_rss,
        baseline_fds + fd_bound_over_baseline,
        client,
        flood,
        log_lines,
        time.monotonic() - started,
        p99_bound_ms,
    )


def connection_attack(executor: Executor, sources: list[str], count: int, reopen: int) -> Callable[[], Iterator[dict[str, Any]]]:
    def attack() -> Iterator[dict[str, Any]]:
        flood = ConnectionFlood(executor.port, sources, count, reopen=reopen).start()
        try:
            # the flood stands once it has opened its count (connected or refused at once)
            interop.wait_until(lambda: flood.stats.opened >= count, 60)
            yield {"sources": len(sources), "count": count}
        finally:
            flood.stop()
        yield dict(flood.stats.__dict__)

    return attack


def stream_attack(executor: Executor, peers: int, total: int) -> Callable[[], Iterator[dict[str, Any]]]:
    def attack() -> Iterator[dict[str, Any]]:
        flood = StreamFlood(executor.address, peers, total).start()
        try:
            flood.wait_opened(300)
            yield {"peers": peers, "streams": total}
        finally:
            flood.stop()
        yield dict(flood.stats.__dict__)

    return attack


@dataclass(frozen=True)
class Sizes:
    junk: int = 5000  # held from one address
    junk_prefix: int = 2000  # held from 20 addresses of one /24
    reopen: int = 3
    streams: int = 10000
    stream_peers: int = 50
    batches: int = 5
    requests: int = 40
    single_address_min_secs: float = HANDSHAKE_CUT_SECS
    p99_bound_ms: float = 1000.0  # the bound; the CI test on 2 shared cores allows more


def run_all(binary: Path, executor: Executor, sizes: Sizes) -> list[Report]:
    """The three scenarios one after the other against one executor (a size of 0 skips one)."""
    reports = []
    common: dict[str, Any] = dict(
        batches=sizes.batches, per_batch=sizes.requests, concurrency=8, settle_secs=30, p99_bound_ms=sizes.p99_bound_ms
    )
    if sizes.junk:
        attack = connection_attack(executor, ["127.0.0.2"], sizes.junk, sizes.reopen)
        bound = 32 + FD_SLACK  # max_pending_per_ip
        name = "junk from one address"
        reports.append(
            run_scenario(
                name, binary, executor, attack, fd_bound_over_baseline=bound, min_secs=sizes.single_address_min_secs, **common
            )
        )
        print(reports[-1].text(), flush=True)
    if sizes.junk_prefix:
        sources = [f"127.0.5.{i}" for i in range(1, 21)]
        attack = connection_attack(executor, sources, sizes.junk_prefix, sizes.reopen)
        bound = 128 + FD_SLACK  # max_pending_per_prefix
        reports.append(run_scenario("junk from one /24", binary, executor, attack, fd_bound_over_baseline=bound, **common))
        print(reports[-1].text(), flush=True)
    if sizes.streams:
        attack = stream_attack(executor, sizes.stream_peers, sizes.streams)
        bound = sizes.stream_peers + FD_SLACK  # one connection per stalling peer
        reports.append(run_scenario("stalled request streams", binary, executor, attack, fd_bound_over_baseline=bound, **common))
        print(reports[-1].text(), flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    defaults = Sizes()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--junk", type=int, default=defaults.junk, help="junk connections from one address (127.0.0.2)")
    parser.add_argument("--junk-prefix", type=int, default=defaults.junk_prefix, help="junk connections over 127.0.5.1-20")
    parser.add_argument(
        "--reopen", type=int, default=defaults.reopen, help="each closed junk connection is reopened up to this often"
    )
    parser.add_argument("--streams", type=int, default=defaults.streams, help="stalled request streams")
    parser.add_argument("--stream-peers", type=int, default=defaults.stream_peers, help="connections the stalled streams use")
    parser.add_argument("--batches", type=int, default=defaults.batches, help="client processes per scenario (at least)")
    parser.add_argument("--requests", type=int, default=defaults.requests, help="signed requests per client process")
    args = parser.parse_args(argv)
    sizes = Sizes(args.junk, args.junk_prefix, args.reopen, args.streams, args.stream_peers, args.batches, args.requests)
    raise_fd_limit(sizes.junk + sizes.junk_prefix + 1024)
    binary = interop.interop_peer_binary()
    with tempfile.TemporaryDirectory(prefix="lloom-flood-") as tmp:
        executor = Executor(Path(tmp))
        try:
            reports = run_all(binary, executor, sizes)
            refusal_lines = [line for line in executor.log_text().splitlines() if REFUSAL_LOG in line]
            print("\n".join(["== the executor's refusal log lines", *refusal_lines[-5:]]))
        finally:
            executor.stop()
    return 0 if all(not r.problems for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
