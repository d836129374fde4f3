"""A real etcd cluster for the coordination tests: N members on loopback, each on its own ports and dir.

Short raft timings (heartbeat 50 ms, election 500 ms) so a lost member or quorum shows within a
test's bounds.  `stop(i)` then `start(i)` on the same ports and directory is a member restart
(its data survives, so it rejoins the same cluster).  A missing etcd follows
tests/real_servers.py: a failure under CI=true, a skip elsewhere.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from real_servers import unavailable
from redis_rig import free_port

ETCD = shutil.which("etcd")


class EtcdCluster:
    """`size` etcd members; `endpoints` are their client URLs."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        if ETCD is None:
            unavailable("etcd is not on PATH (apt-get install etcd-server)")
        self.dir = directory
        self.names = [f"etcd{i}" for i in range(size)]
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.client_ports]

    def _args(self, i: int) -> list[str]:
        assert ETCD is not None
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        client = self.endpoints[i]
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))
        return [
            ETCD,
            "--name", self.names[i],
            "--data-dir", str(self.dir / self.names[i]),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "lloom-test",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
        ]  # fmt: skip

    def start(self, *members: int, timeout: float = 30.0) -> EtcdCluster:
        """Start the given members (default all) and wait until the cluster is healthy."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for i in members or range(len(self.names)):
            with (self.dir / f"{self.names[i]}.log").open("ab") as log:  # etcd logs on stderr
                self.procs[i] = subprocess.Popen(self._args(i), stdout=subprocess.DEVNULL, stderr=log)
        self.wait_healthy(timeout)
        return self

    def healthy(self, i: int) -> bool:
        try:
            response = httpx.get(self.endpoints[i] + "/health", timeout=1.0, trust_env=False)
            return response.status_code == 200 and response.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        running = [i for i, p in enumerate(self.procs) if p is not None]
        while time.monotonic() < deadline:
            if all(self.healthy(i) for i in running):
                return
            time.sleep(0.05)
        logs = "".join((self.dir / f"{self.names[i]}.log").read_text(errors="replace")[-1500:] for i in running)
        raise RuntimeError(f"etcd members {running} not healthy within {timeout} s:\n{logs}")

    def stop(self, i: int, *, kill: bool = True) -> None:
        proc = self.procs[i]
        if proc is None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.procs[i] = None

    def stop_all(self) -> None:
        for i in range(len(self.names)):
            self.stop(i)
