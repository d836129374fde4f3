"""Test harness for wire interop: the Rust reference-style peer and our node, side by side.

Why it exists: our executor must be usable by a rust-libp2p 0.56 client that
does not know we are written in Python (PROTOCOL.md). The only honest proof is
the real Rust peer (`tests/interop_peer`) talking to our real node over
loopback. This module builds that peer with cargo (once per session, lock-safe),
runs it as a subprocess that is always killed, parses its JSON lines, and runs
our node (a trio thread plus an asyncio loop thread) from synchronous tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "tests" / "interop_peer" / "Cargo.toml"
CI_TARGET_DIR = Path("/var/cache/lloom-ci/interop-target")
TARGET_DIR_ENV = "LLOOM_INTEROP_TARGET_DIR"
BUILD_TIMEOUT_SECS = 1800

# What the `executor_node` fixture serves, at these node prices (wei per token)
MODEL = "gpt-3.5-turbo"
INBOUND_PRICE_WEI = 1
OUTBOUND_PRICE_WEI = 2

T = TypeVar("T")


# -- building the Rust peer ----------------------------------------------------------
def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def interop_target_dir() -> Path:
    """Where cargo puts the peer: outside the clone, so repeat runs reuse compiled crates."""
    configured = os.environ.get(TARGET_DIR_ENV)
    if configured:
        return Path(configured)
    if _writable_dir(CI_TARGET_DIR):
        return CI_TARGET_DIR
    return REPO / "tests" / "interop_peer" / "target"


class InteropBuildError(RuntimeError):
    """cargo could not build the peer; the message carries cargo's output."""


_built: Path | None = None
_built_lock = threading.Lock()


def interop_peer_binary() -> Path:
    """Build (or just re-check) the Rust peer and return its path; once per process.

    Two test sessions may build at once (parallel CI jobs sharing the cache):
    an exclusive file lock next to the target dir serialises them, and cargo
    itself makes the second build a no-op.
    """
    global _built
    with _built_lock:
        if _built is not None:
            return _built
        target = interop_target_dir()
        if not _writable_dir(target):
            raise InteropBuildError(f"interop target dir {target} is not writable (set {TARGET_DIR_ENV})")
        env = dict(os.environ, CARGO_TARGET_DIR=str(target))
        cmd = ["cargo", "build", "--release", "--manifest-path", str(MANIFEST)]
        started = time.monotonic()
        with open(target / ".interop-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECS)
            except FileNotFoundError as exc:
                raise InteropBuildError("the interop tests need a Rust toolchain: cargo is not on PATH") from exc
            except subprocess.TimeoutExpired as exc:
                err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
                raise InteropBuildError(f"{' '.join(cmd)} did not finish in {BUILD_TIMEOUT_SECS} s:\n{err}") from exc
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if proc.returncode != 0:
            raise InteropBuildError(
                f"{' '.join(cmd)} (CARGO_TARGET_DIR={target}) failed with exit code {proc.returncode}:\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        binary = target / "release" / "interop-peer"
        if not binary.is_file():
            raise InteropBuildError(f"cargo succeeded but {binary} does not exist:\n{proc.stderr}")
        log.info("interop peer ready at %s (%.1f s)", binary, time.monotonic() - started)
        _built = binary
        return binary


# -- running it ------------------------------------------------------------------------
@dataclass
class PeerRun:
    """One finished run of the Rust peer: its exit code and the JSON lines it printed."""

    args: list[str]
    returncode: int | None
    lines: list[dict[str, Any]]
    stderr: str
    unparsed: list[str] = field(default_factory=list)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def one(self, name: str) -> dict[str, Any]:
        found = self.events(name)
        assert len(found) == 1, f"expected one {name!r} line, got {len(found)}\n{self.describe()}"
        return found[0]

    @property
    def summary(self) -> dict[str, Any]:
        return self.one("summary")

    @property
    def responses(self) -> list[dict[str, Any]]:
        return self.events("response")

    def describe(self) -> str:
        """Everything a failing assertion should show."""
        shown = "\n".join(json.dumps(line) for line in self.lines[-40:])
        return f"interop-peer {' '.join(self.args)} -> rc {self.returncode}\n{shown}\nstderr:\n{self.stderr[-3000:]}"


def parse_lines(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    lines: list[dict[str, Any]] = []
    bad: list[str] = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw:
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            bad.append(raw)
            continue
        if isinstance(value, dict):
            lines.append(value)
        else:
            bad.append(raw)
    return lines, bad


def run_peer(binary: Path, args: Sequence[str], *, timeout: float = 60.0, env: dict[str, str] | None = None) -> PeerRun:
    """Run the peer to completion; on timeout it is killed and the lines so far are returned."""
    argv = [str(binary), *args]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env or {})),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate()
        err += f"\n[harness] killed after {timeout} s"
    finally:
        _kill(proc)
    lines, bad = parse_lines(out)
    return PeerRun(list(args), proc.returncode, lines, err, bad)


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class RustExecutor:
    """`interop-peer executor` as a subprocess: the reference-style executor (rust-libp2p 0.56)
    answering every signed request with a signed "echo: <prompt>". Its JSON lines are collected
    by a reader thread, which also keeps the pipe drained (a full pipe would stall it)."""

    def __init__(self, binary: Path, *extra: str, key_hex: str | None = None, start_timeout: float = 20.0) -> None:
        env = dict(os.environ, LLOOM_PRIVATE_KEY=key_hex) if key_hex else dict(os.environ)
        self.proc = subprocess.Popen(
            [str(binary), "executor", "--listen", "/ip4/127.0.0.1/tcp/0", "--timeout-secs", "600", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, name="rust-executor-stdout", daemon=True)
        self._reader.start()
        self._listening.wait(start_timeout)
        if not any(line.get("event") == "listening" for line in list(self.lines)):
            self.stop()
            raise RuntimeError(f"interop-peer executor did not start (rc {self.proc.poll()}): {self.lines}")

    def _read(self) -> None:
        """Collect the JSON lines; `_listening` is set at the listening line, or when the output ends."""
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                with contextlib.suppress(json.JSONDecodeError):
                    line = json.loads(raw)
                    if isinstance(line, dict):
                        self.lines.append(line)
                        if line.get("event") == "listening":
                            self._listening.set()
        finally:
            self._listening.set()

    @property
    def listening(self) -> dict[str, Any]:
        return next(line for line in list(self.lines) if line.get("event") == "listening")

    @property
    def addr(self) -> str:
        """The loopback TCP address, ending in /p2p/<PeerId>."""
        return str(self.listening["addr"])

    @property
    def peer_id(self) -> str:
        return str(self.listening["peer_id"])

    @property
    def address(self) -> str:
        """Its EVM address (0x…), which signs its answers."""
        return str(self.listening["address"])

    def requests(self) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("event") == "request"]

    def stop(self) -> None:
        _kill(self.proc)
        self._reader.join(5)


@contextlib.contextmanager
def rust_executor(binary: Path, *extra: str, key_hex: str | None = None) -> Iterator[RustExecutor]:
    executor = RustExecutor(binary, *extra, key_hex=key_hex)
    try:
        yield executor
    finally:
        executor.stop()


def client_args(bootstrap: str, *extra: str, discover: str = "none", timeout_secs: int = 30) -> list[str]:
    """The `client` command line against one of our nodes."""
    return ["client", "--bootstrap", bootstrap, "--discover", discover, "--timeout-secs", str(timeout_secs), *extra]


# -- our node from synchronous tests ------------------------------------------------------
class LoopThread:
    """An asyncio (uvloop when present) loop in a thread: the 'main thread' side of our node.

    The test suite has no asyncio plugin, and the node's bridge needs a running
    asyncio loop while the test thread blocks on the Rust peer subprocess.
    """

    def __init__(self) -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a runtime dependency
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="test-asyncio", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class ExecutorNode:
    """A running P2PNode with what tests need to talk to and inspect it."""

    node: Any  # lloom_executor.p2p.node.P2PNode
    handler: Any  # lloom_executor.serving.RequestHandler
    loop: LoopThread
    addrs: list[str]

    @property
    def addr(self) -> str:
        """The loopback TCP address, ending in /p2p/<PeerId>."""
        for a in self.addrs:
            if a.startswith("/ip4/127.0.0.1/tcp/"):
                return a
        return self.addrs[0]

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    @property
    def evm_address(self) -> str:
        return self.node.key.address

    @property
    def stats(self) -> Any:
        return self.node.stream_handler.stats

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 30.0) -> T:
        """Run `fn(runtime, *args)` in the node's trio thread, from the test thread."""
        return self.loop.run(self.node.call(fn, *args), timeout)

    def stop(self) -> None:
        self.loop.run(self.node.stop(), timeout=40)


# -- trio-side inspection (run through ExecutorNode.call) -----------------------------------
async def count_trio_tasks(rt: Any) -> int:
    """All live tasks of the node's trio run, by walking the task tree from the root."""
    count = 0
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


async def trio_task_names(rt: Any) -> dict[str, int]:
    """Live task names with their counts: shows *what* leaked when a count does not match."""
    names: dict[str, int] = {}
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        names[task.name] = names.get(task.name, 0) + 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return names


async def open_streams_per_peer(rt: Any) -> dict[str, tuple[int, int]]:
    """Per remote peer: (swarm-level streams, muxer-level streams) over all its connections."""
    out: dict[str, tuple[int, int]] = {}
    for peer_id, conns in rt.host.get_network().get_connections_map().items():
        swarm_streams = sum(len(getattr(c, "streams", ())) for c in conns)
        muxer_streams = sum(len(getattr(getattr(c, "muxed_conn", None), "streams", ()) or ()) for c in conns)
        out[str(peer_id)] = (swarm_streams, muxer_streams)
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll instead of sleeping a fixed time; True once `predicate()` holds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# -- a py-libp2p client host in its own trio thread ------------------------------------------
class TrioHost:
    """A bare py-libp2p host (our host builder, a fresh key) driven from the test thread.

    Used to misbehave on purpose at the stream level (half frames, garbage,
    stalls, floods), which the Rust peer cannot do.
    """

    def __init__(self) -> None:
        from lloom_executor import _native
        from lloom_executor.p2p.host import build_host

        self.key = _native.PrivateKey.generate()
        self.host = build_host(self.key)
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="test-trio-client", daemon=True)

    def _main(self) -> None:
        import multiaddr

        async def entry() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with self.host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    with trio.CancelScope() as scope:
                        self._scope = scope
                        self._ready.set()
                        await trio.sleep_forever()
                    nursery.cancel_scope.cancel()

        try:
            trio.run(entry)
        except BaseException as exc:  # reported by start()
            self._error = exc
        finally:
            self._ready.set()

    def start(self) -> TrioHost:
        self._thread.start()
        if not self._ready.wait(20) or self._error is not None:
            raise RuntimeError(f"client host did not start: {self._error}")
        return self

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `afn(host, *args)` in this host's trio thread and return its result."""

        async def call() -> T:
            return await afn(self.host, *args)

        return trio.from_thread.run(call, trio_token=self._token)

    def spawn(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `afn(host, *args)` in the background (cancelled at stop)."""

        def start() -> None:
            self.nursery.start_soon(afn, self.host, *args)

        trio.from_thread.run_sync(start, trio_token=self._token)

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(15)


@contextlib.contextmanager
def trio_host() -> Iterator[TrioHost]:
    client = TrioHost().start()
    try:
        yield client
    finally:
        client.stop()


# -- operator config files for tests that run the CLI -----------------------------------------------
def write_operator_config(
    directory: Path,
    *,
    llm: str = 'backend = "echo"',
    models: Sequence[str] = (),
    api: str = "enabled = false",
    metrics: str = "enabled = false",
    extra: str = "",
    name: str = "config.toml",
) -> Path:
    """A config file as an operator writes one, for a node on loopback: key files (0600) beside it
    (created once per directory, so two configs there share the node's key), the data dir beside
    it, mDNS/AutoNAT/relay off, `[metrics]` and `[api]` as given. `llm` is the `[llm_client]` body;
    `extra` adds whole sections; each model costs 0.000001 / 0.000002 ETH per input / output token."""
    from lloom_executor import _native

    keys = [directory / "identity_key", directory / "eth_key"]
    if not all(path.exists() for path in keys):
        secret = _native.PrivateKey.generate().to_hex()
        for path in keys:
            path.write_text(secret)
            path.chmod(0o600)
    model_tables = "".join(f'[[models]]\nname = "{m}"\ninbound_price = "0.000001"\noutbound_price = "0.000002"\n' for m in models)
    path = directory / name
    path.write_text(
        f"""
[network]
listen_address = "/ip4/127.0.0.1/tcp/0"
[network.protocols]
enable_mdns = false
enable_autonat = false
enable_relay = false
[identity]
private_key_path = "{keys[0]}"
ethereum_private_key_path = "{keys[1]}"
[llm_client]
{llm}
[metrics]
{metrics}
[api]
{api}
[storage]
data_dir = "{directory / "data"}"
{extra}
{model_tables}
"""
    )
    return path
