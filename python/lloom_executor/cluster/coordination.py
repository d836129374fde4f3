"""Membership, leader election and epoch fencing for `[clustering]` members, on etcd.

No consensus of our own: etcd (raft) decides, and we use its leases, transactions and
revisions (docs/clustering.md, "Coordination").  Keys, under `[clustering] etcd_prefix`:

- `<prefix>members/<node_id>`: this member's JSON (listen addresses, workers, started_at),
  attached to this member's lease, so a member that dies disappears after the TTL;
- `<prefix>leader`: the leader's node_id, attached to the leader's lease.  A member becomes
  leader with one transaction `create_revision(leader) == 0 -> put leader = node_id`; the
  key's create revision is the **epoch**: every new leader gets a higher one (revisions only grow).

Fencing: `still_leader(epoch)` is one transaction comparing the leader key's value and create
revision, asked right before every leader-only action (a settlement transaction).  A deposed
leader (lease lost, partitioned, SIGSTOPped) fails it: its epoch's key is gone or was
re-created with a higher revision.  Before even asking, `is_leader` is false once the local
deadline (last successful keep-alive's send time + TTL - margin) has passed: the lease can
only expire on etcd after that, so a member stops its leader duties before another can be
elected, even while it cannot reach etcd to learn that it lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .etcd_client import EtcdClient, EtcdError, KeyValue, b64

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leadership:
    """Who leads, as last read from etcd: the leader's node_id and its epoch (None: nobody)."""

    node_id: str | None = None
    epoch: int | None = None


def leader_compare(leader_key: str, node_id: str, epoch: int) -> list[dict[str, Any]]:
    """The fence's comparisons: the leader key holds `node_id` and was created at `epoch`."""
    key = b64(leader_key)
    return [
        {"key": key, "target": "VALUE", "result": "EQUAL", "value": b64(node_id)},
        {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": str(epoch)},
    ]


async def leader_holds(client: EtcdClient, prefix: str, node_id: str, epoch: int) -> bool:
    """True when `node_id` leads in `epoch` now (one linearizable transaction). Raises
    EtcdUnavailable when etcd cannot say: callers must then treat the answer as no."""
    body = await client.txn(leader_compare(prefix + "leader", node_id, epoch), [], [])
    return bool(body.get("succeeded"))


async def read_leadership(client: EtcdClient, prefix: str) -> Leadership:
    kv = await client.get(prefix + "leader")
    return Leadership(kv.value, kv.create_revision) if kv is not None else Leadership()


async def read_members(client: EtcdClient, prefix: str) -> list[dict[str, Any]]:
    """The registered members (those whose lease is alive), sorted by node_id."""
    out = []
    for kv in await client.get_prefix(prefix + "members/"):
        try:
            info = json.loads(kv.value)
        except ValueError:
            info = {}
        out.append({**info, "node_id": kv.key.rsplit("/", 1)[-1]})
    return sorted(out, key=lambda m: str(m["node_id"]))


class Coordinator:
    """This member's registration, campaign and leadership; one per member (the lead worker's)."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        node_id: str,
        *,
        ttl: int = 10,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`ttl`: the lease's seconds (keep-alive every ttl/3); `margin`: how long before the
        lease could expire on etcd this member already stops acting as leader (default ttl/4,
        at least 0.5 s), covering a leader-only action already under way and clock-rate drift."""
        self.client = client
        self.prefix = prefix
        self.node_id = node_id
        self.ttl = ttl
        self.margin = margin if margin is not None else max(0.5, ttl / 4)
        self.clock = clock
        self.info: dict[str, Any] = {}
        self.reachable: bool | None = None  # None: not asked yet
        self.last_error: str | None = None
        self.leadership = Leadership()
        self._members: list[dict[str, Any]] = []
        self._lease: int | None = None
        self._deadline = 0.0  # monotonic: past it, our lease may be gone on etcd
        self._leading = False
        self._epoch: int | None = None
        self._abandoned: set[int] = set()  # leases given up while etcd did not answer: revoked once it does
        self._task: asyncio.Task[None] | None = None

    # -- what the node reads -----------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """Leader now, by what this member knows; false once the local deadline passed."""
        return self._leading and self.clock() < self._deadline

    @property
    def epoch(self) -> int | None:
        """Our epoch while we lead; None otherwise."""
        return self._epoch if self.is_leader else None

    def members(self) -> list[dict[str, Any]]:
        """The registered members as last read (every ttl/3)."""
        return list(self._members)

    async def still_leader(self, epoch: int) -> bool:
        """The fence: true only when this member leads in `epoch`, by etcd, now; any doubt is no."""
        if not self.is_leader or self._epoch != epoch:
            return False
        try:
            return await leader_holds(self.client, self.prefix, self.node_id, epoch)
        except EtcdError:
            return False

    async def fence(self) -> bool:
        """`still_leader` for the current epoch: what a leader-only duty asks before each action."""
        epoch = self.epoch
        return epoch is not None and await self.still_leader(epoch)

    def snapshot(self) -> dict[str, Any]:
        """/health/detailed's `cluster` entry (no I/O)."""
        return {
            "node_id": self.node_id,
            "is_leader": self.is_leader,
            "leader": self.leadership.node_id,
            "epoch": self.leadership.epoch,
            "members": [m["node_id"] for m in self._members],
            "etcd_reachable": self.reachable,
            "last_error": self.last_error,
        }

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, info: dict[str, Any], *, first_step: bool = True) -> None:
        """Register (with `info`: addresses, workers), campaign, then keep at it every ttl/3.
        An etcd that is down now is not fatal: the node serves, leader duties wait."""
        self.info = {**info, "started_at": time.time()}
        if first_step:
            await self.step()
        self._task = asyncio.create_task(self._run(), name="lloom-cluster-coordinator")

    async def stop(self) -> None:
        """Step down and revoke the lease, so another member can lead at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._step_down("stopping")
        if self._lease is not None:
            self._abandoned.add(self._lease)
            self._lease = None
        await self._revoke_abandoned()
        await self.client.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the loop die; say what failed
                log.exception("cluster coordination step failed")

    async def step(self) -> None:
        """One round: lease (grant or keep alive), leadership (campaign or check), members."""
        try:
            if self._lease is None:
                await self._register()
            elif not await self._keep_alive():
                return
            if self._leading:
                if not await leader_holds(self.client, self.prefix, self.node_id, self._epoch or 0):
                    self._lose("the leader key is no longer ours")
                    return
            else:
                await self._campaign()
            if self._leading:
                self.leadership = Leadership(self.node_id, self._epoch)
            else:
                self.leadership = await read_leadership(self.client, self.prefix)
            self._members = await read_members(self.client, self.prefix)
            if self.reachable is False:
                log.info("etcd answers again")
            self.reachable = True
            self.last_error = None
        except EtcdError as exc:
            if self.reachable is not False:
                log.warning("etcd does not answer: %s", exc)
            self.reachable = False
            self.last_error = type(exc).__name__
            if self._lease is not None and self.clock() >= self._deadline:
                self._lose("no keep-alive for the lease's TTL")

    async def _register(self) -> None:
        await self._revoke_abandoned()
        sent = self.clock()
        lease = await self.client.grant(self.ttl)
        self._lease = lease
        self._deadline = sent + self.ttl - self.margin
        await self.client.put(f"{self.prefix}members/{self.node_id}", json.dumps(self.info), lease)
        log.info("cluster: registered as %s (lease %x, TTL %d s)", self.node_id, lease, self.ttl)

    async def _keep_alive(self) -> bool:
        assert self._lease is not None
        sent = self.clock()
        if await self.client.keepalive(self._lease) <= 0:
            self._lose("the lease expired on etcd")
            return False
        self._deadline = sent + self.ttl - self.margin
        return True

    async def _campaign(self) -> None:
        assert self._lease is not None
        key = self.prefix + "leader"
        read = {"request_range": {"key": b64(key)}}
        body = await self.client.txn(
            [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            [{"request_put": {"key": b64(key), "value": b64(self.node_id), "lease": str(self._lease)}}, read],
            [read],
        )
        kvs = body.get("responses", [{}])[-1].get("response_range", {}).get("kvs", [])
        if not body.get("succeeded") or not kvs:
            return
        kv = KeyValue(key, self.node_id, int(kvs[0]["create_revision"]), int(kvs[0].get("mod_revision", 0)), self._lease)
        if not self.clock() < self._deadline:  # the campaign took so long that the lease may be gone
            self._lose("elected after the lease's deadline")
            return
        self._leading, self._epoch = True, kv.create_revision
        log.info("cluster: %s leads, epoch %d", self.node_id, kv.create_revision)

    def _step_down(self, why: str) -> None:
        if self._leading:
            log.warning("cluster: %s steps down (epoch %s): %s", self.node_id, self._epoch, why)
        self._leading, self._epoch = False, None

    def _lose(self, why: str) -> None:
        """Give up leadership and the lease; a new lease (and a new epoch, if elected) follows."""
        self._step_down(why)
        if self._lease is not None:
            self._abandoned.add(self._lease)
            self._lease = None

    async def _revoke_abandoned(self) -> None:
        """Revoke leases given up earlier, so a leader key we held does not wait out its TTL
        (etcd extends every lease when it elects a new raft leader after losing its quorum)."""
        for lease in sorted(self._abandoned):
            try:
                await self.client.revoke(lease)
            except EtcdError as exc:
                if "not found" not in str(exc):
                    continue
            self._abandoned.discard(lease)


__all__ = ["Coordinator", "Leadership", "leader_holds", "read_leadership", "read_members"]
