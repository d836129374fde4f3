"""`[clustering]` coordination on a real 3-member etcd cluster (tests/etcd_rig.py) on loopback.

Each member's Coordinator runs in a process of its own (tests/coordinator_proc.py), so a member
can be killed (-9) or frozen (SIGSTOP) for real; the last test runs a real `lloom-executor start`
member.  TTLs are 2 s; every wait polls against a deadline.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

import interop
from etcd_rig import EtcdCluster
from lloom_executor.cluster.coordination import Coordinator, leader_holds, read_leadership
from lloom_executor.cluster.etcd_client import EtcdClient
from lloom_executor.cluster.member import seqno_space
from lloom_executor.config import parse_config
from lloom_executor.settlement import Settler
from lloom_executor.workers.role import WorkerRole
from redis_rig import RedisProcess
from test_cluster_redis import member_config, metric
from test_settlement_states import Bench
from workers_rig import WorkersNode

TTL = 2
PREFIX = "/lloom-test/"
FAILOVER = TTL + 4.0  # the lease's TTL, a keep-alive period, an election round and scheduling on a busy machine
HERE = Path(__file__).parent


class Member:
    """A coordinator_proc.py process; its JSON lines are read on a thread into `events`."""

    def __init__(self, endpoints: list[str], node_id: str) -> None:
        self.node_id = node_id
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "coordinator_proc.py"), ",".join(endpoints), PREFIX, node_id, str(TTL)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log: list[str] = []  # what is not an event line (warnings, a traceback)
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                if line.startswith("{"):
                    self.events.append(json.loads(line))
                else:
                    self.log.append(line)

    def state(self) -> dict[str, Any]:
        with self._lock:
            states = [e for e in self.events if e["event"] == "state"]
        return states[-1] if states else {"leader": False, "epoch": None}

    def acted(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == "acted"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def cluster(tmp_path: Path, names: tuple[str, ...] = ("m0", "m1", "m2")) -> Iterator[tuple[EtcdCluster, list[Member]]]:
    etcd = EtcdCluster(tmp_path / "etcd")
    with ExitStack() as stack:
        stack.callback(etcd.stop_all)
        etcd.start()
        members = [Member(etcd.endpoints, name) for name in names]
        for member in members:
            stack.callback(member.kill)
        yield etcd, members


def wait_until(what: str, condition: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def leaders(members: list[Member]) -> list[Member]:
    return [m for m in members if m.state()["leader"]]


def one_leader(members: list[Member]) -> Member | None:
    found = leaders(members)
    return found[0] if len(found) == 1 else None


def holds(endpoints: list[str], node_id: str, epoch: int) -> bool:
    async def ask() -> bool:
        client = EtcdClient(endpoints)
        try:
            return await leader_holds(client, PREFIX, node_id, epoch)
        finally:
            await client.close()

    return asyncio.run(ask())


def test_one_leader_and_a_killed_leader_is_replaced_with_a_higher_epoch(tmp_path: Path) -> None:
    with cluster(tmp_path) as (etcd, members):
        leader = wait_until("exactly one leader", lambda: one_leader(members), 20)
        epoch = leader.state()["epoch"]
        assert epoch > 0 and holds(etcd.endpoints, leader.node_id, epoch)
        wait_until("the leader acts", leader.acted, 5)
        leader.kill()  # kill -9: no step-down, no revoke; etcd expires its lease after the TTL
        killed_at = time.monotonic()
        rest = [m for m in members if m is not leader]
        successor = wait_until("a new leader", lambda: one_leader(rest), FAILOVER)
        assert time.monotonic() - killed_at < FAILOVER
        new_epoch = successor.state()["epoch"]
        assert new_epoch > epoch
        assert not holds(etcd.endpoints, leader.node_id, epoch)  # the old epoch's fence refuses
        assert holds(etcd.endpoints, successor.node_id, new_epoch)
        assert leaders(rest) == [successor]  # the killed one reported nothing after its last line


def test_a_frozen_leader_has_stepped_down_when_it_wakes_and_never_acts_beside_the_new_one(tmp_path: Path) -> None:
    with cluster(tmp_path) as (etcd, members):
        leader = wait_until("exactly one leader", lambda: one_leader(members), 20)
        epoch = leader.state()["epoch"]
        wait_until("the leader acts", leader.acted, 5)
        leader.proc.send_signal(signal.SIGSTOP)
        try:
            rest = [m for m in members if m is not leader]
            successor = wait_until("a new leader while the old one is frozen", lambda: one_leader(rest), FAILOVER)
            wait_until("the new leader acts", successor.acted, 5)
        finally:
            leader.proc.send_signal(signal.SIGCONT)
        woke = time.time()
        wait_until("the woken leader reports it is no longer leader", lambda: not leader.state()["leader"], 5)
        new_epoch = successor.state()["epoch"]
        assert new_epoch > epoch
        assert not holds(etcd.endpoints, leader.node_id, epoch)
        # never two leaders acting: every act of the old epoch came before the new leader's first act,
        # and the woken member did not act once after SIGCONT (its local deadline had passed)
        first_new = min(a["t"] for a in successor.acted())
        old_acts = [a for a in leader.acted() if a["epoch"] == epoch]
        assert old_acts and max(a["t"] for a in old_acts) < first_new
        assert not [a for a in leader.acted() if a["t"] >= woke - 0.01 and a["epoch"] == epoch]
        assert all(a["epoch"] == new_epoch for a in successor.acted())


def test_etcd_member_loss_keeps_the_leader_quorum_loss_pauses_leadership_until_etcd_is_back(tmp_path: Path) -> None:
    with cluster(tmp_path, ("m0", "m1")) as (etcd, members):
        leader = wait_until("exactly one leader", lambda: one_leader(members), 20)
        epoch = leader.state()["epoch"]
        etcd.stop(0)  # one of three: a quorum is left
        watch_until = time.monotonic() + 2 * TTL  # the leader holds through two lease periods
        while time.monotonic() < watch_until:
            assert leader.state()["leader"] and leader.state()["epoch"] == epoch, leader.events[-3:]
            time.sleep(0.05)
        assert one_leader(members) is leader
        etcd.stop(1)  # two of three: no quorum, no keep-alive, no campaign can succeed
        wait_until("no leader without a quorum", lambda: not leaders(members), FAILOVER)
        paused_until = time.monotonic() + TTL  # and none while the quorum stays lost
        while time.monotonic() < paused_until:
            assert not leaders(members)
            time.sleep(0.05)
        assert all(m.proc.poll() is None for m in members)  # the members go on (serving does not stop)
        report = cluster_status_cli(tmp_path, etcd.endpoints)
        assert report.returncode == 1 and "etcd error" in report.stdout, report.stdout + report.stderr
        etcd.start(0, 1)
        back = wait_until("a leader again once etcd is back", lambda: one_leader(members), 20)
        assert back.state()["epoch"] > epoch


def cluster_status_cli(tmp_path: Path, endpoints: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "status.toml"
    config.write_text(
        '[clustering]\nenabled = true\nnode_id = "cli"\nredis_url = "redis://127.0.0.1:1/0"\n'
        f'etcd_endpoints = {json.dumps(endpoints)}\netcd_prefix = "{PREFIX}"\n'
        f'[storage]\ndata_dir = "{tmp_path / "cli-data"}"\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "lloom_executor", "cluster", "status", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_started_member_leads_reports_its_state_and_hands_over_when_stopped(tmp_path: Path) -> None:
    etcd = EtcdCluster(tmp_path / "etcd")
    redis = RedisProcess(tmp_path / "redis")
    with ExitStack() as stack:
        stack.callback(etcd.stop_all)
        etcd.start()
        stack.callback(redis.stop)
        redis.start()
        coordination = f'etcd_endpoints = {json.dumps(etcd.endpoints)}\netcd_prefix = "{PREFIX}"\netcd_lease_ttl_secs = {TTL}\n'
        http = {"metrics": 'enabled = true\nendpoint = "127.0.0.1:0"', "api": 'enabled = true\nlisten_address = "127.0.0.1:0"'}
        config = member_config(tmp_path, "exec-a", redis.url, coordination, **http)
        node = WorkersNode(config, 1)
        stack.callback(node.kill)
        node.wait_for(r"exec-a leads, epoch \d+", 90)
        metrics_url = node.wait_for(r"metrics on (http://\S+/metrics)").group(1)
        api_url = node.wait_for(r"api listening on (http://\S+)").group(1)
        address = node.wait_for(r"listening on (/ip4/\S+/p2p/\S+)").group(1)

        def cluster_entry() -> dict[str, Any] | None:
            entry: dict[str, Any] | None = (
                httpx.get(api_url + "/health/detailed", timeout=10, trust_env=False).json().get("cluster")
            )
            return entry if entry and entry["members"] else None

        entry = wait_until("/health/detailed lists the member", cluster_entry, 10)
        assert entry["leader"] == "exec-a" and entry["is_leader"] and entry["etcd_reachable"] and entry["members"] == ["exec-a"]
        assert metric(metrics_url, "lloom_executor_cluster_is_leader") == 1
        assert metric(metrics_url, "lloom_executor_cluster_members") == 1
        assert metric(metrics_url, "lloom_executor_cluster_epoch") == entry["epoch"]
        status = cluster_status_cli(tmp_path, etcd.endpoints, "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["leader"] == "exec-a" and report["epoch"] == entry["epoch"]
        assert [m["node_id"] for m in report["members"]] == ["exec-a"] and address in report["members"][0]["addresses"]
        assert all(report["etcd"].values())
        assert node.stop() == 0, node.output
        # a clean stop revokes the lease: no leader and no member at once, not after the TTL
        after = json.loads(cluster_status_cli(tmp_path, etcd.endpoints, "--json").stdout)
        assert after["leader"] is None and after["members"] == []


def test_the_leader_read_from_etcd_is_the_one_the_members_report(tmp_path: Path) -> None:
    node_id = "m1"
    with cluster(tmp_path, (node_id,)) as (etcd, members):
        leader = wait_until("the only member leads", lambda: one_leader(members), 20)

        async def read() -> tuple[str | None, int | None]:
            client = EtcdClient(etcd.endpoints)
            try:
                seen = await read_leadership(client, PREFIX)
                return seen.node_id, seen.epoch
            finally:
                await client.close()

        assert asyncio.run(read()) == (node_id, leader.state()["epoch"])
        leader.proc.send_signal(signal.SIGTERM)
        assert leader.proc.wait(10) == 0
        assert asyncio.run(read()) == (None, None)  # a clean stop revokes the lease at once


def test_config_validate_refuses_another_consensus_and_bad_etcd_keys(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[clustering]\nenabled = true\nnode_id = "a"\nconsensus = "paxos"\nredis_url = "redis://127.0.0.1:1/0"\n'
        'etcd_endpoints = ["ftp://10.0.0.1:2379"]\netcd_prefix = "/no-slash"\nmembers = ["b"]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "lloom_executor", "config", "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert 'clustering.consensus (line 4): only "raft" is supported' in out and "etcd, whose consensus is raft" in out
    assert "clustering.etcd_endpoints" in out and "clustering.etcd_prefix" in out and "clustering.members" in out


def test_settlement_sends_only_from_the_leader_in_its_epoch(loop_thread: interop.LoopThread, tmp_path: Path) -> None:
    """Two members' settlers on one real chain (py-evm) and ledger: the one that does not lead is
    fenced (nothing signed, the row stays pending); once the leader stops, the other is elected and
    settles; the stopped leader's settler, asked again, sends nothing."""
    etcd = EtcdCluster(tmp_path / "etcd", size=1)
    bench = Bench(loop_thread, tmp_path)
    with ExitStack() as stack:
        stack.callback(bench.close)
        stack.callback(etcd.stop_all)
        etcd.start()
        a, b = (Coordinator(EtcdClient(etcd.endpoints, timeout=0.3), PREFIX, name, ttl=TTL) for name in ("a", "b"))
        loop_thread.run(a.start({"workers": 1}), timeout=10)
        stack.callback(lambda: loop_thread.run(a.stop(), timeout=10))
        loop_thread.run(b.start({"workers": 1}), timeout=10)
        stack.callback(lambda: loop_thread.run(b.stop(), timeout=10))
        assert a.is_leader and not b.is_leader
        epoch_a = a.epoch
        assert epoch_a is not None

        def settler(fence: Coordinator) -> Settler:
            s = Settler(
                bench.config(), bench.ledger.path, bytes(bench.key.address_bytes), bench.settlement_key,
                clock=lambda: bench.now, fence=fence.fence,
            )  # fmt: skip
            stack.callback(lambda: bench.stop(s))
            return s

        client = bench.client()
        bench.ask(client, "settle me once")
        follower = settler(b)
        bench.tick(follower, 3)
        assert list(bench.states().values()) == ["pending"] and follower.fenced >= 3 and follower.sent == 0
        assert bench.chain_nonce(client) == 0
        loop_thread.run(a.stop(), timeout=10)  # revokes its lease: b may lead at once
        wait_until("b leads", lambda: b.is_leader, 3 * TTL)
        assert (b.epoch or 0) > epoch_a
        old = settler(a)
        bench.tick(old)
        assert old.sent == 0 and old.fenced == 1  # the stopped leader's epoch is refused
        bench.tick(follower, 4)
        assert list(bench.states().values()) == ["confirmed"] and follower.sent == 1
        assert bench.chain_nonce(client) == 1


def test_gossip_sequence_numbers_of_every_member_and_worker_are_apart() -> None:
    """Members publish under one PeerId: with `members` listed, each (member, worker) pair gets
    its own residue modulo members x workers, so no two can produce the same message id."""
    names = ["exec-c", "exec-a", "exec-b"]
    spaces = set()
    for name in names:
        clustering = {"enabled": True, "node_id": name, "redis_url": "redis://127.0.0.1:1/0", "members": names}
        config, report = parse_config({"clustering": clustering})
        assert not report.errors, report.errors
        for worker in range(2):
            spaces.add(seqno_space(config, WorkerRole(worker, 2)))
    assert spaces == {(residue, 6) for residue in range(6)}
    alone, _ = parse_config({})
    assert seqno_space(alone, WorkerRole(1, 2)) == (1, 2)  # not clustered: the workers' spacing only
