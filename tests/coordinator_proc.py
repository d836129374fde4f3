"""One cluster member's Coordinator in a process of its own, for tests/test_cluster_etcd.py.

Usage: coordinator_proc.py <endpoint,endpoint,...> <prefix> <node_id> <ttl>

Prints JSON lines on stdout: `state` whenever (leader, epoch) changes, and `acted` each time a
stand-in for a leader-only duty (every 50 ms) passed the epoch fence, with the wall time, so the
test can check that two members never acted as leaders at once.  Killed (-9), stopped (SIGSTOP)
and continued by the test; SIGTERM stops it cleanly (the lease is revoked).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from lloom_executor.cluster.coordination import Coordinator
from lloom_executor.cluster.etcd_client import EtcdClient


def say(**fields: object) -> None:
    print(json.dumps({"t": time.time(), **fields}), flush=True)


async def main(endpoints: list[str], prefix: str, node_id: str, ttl: int) -> None:
    coordinator = Coordinator(EtcdClient(endpoints, timeout=ttl / 6), prefix, node_id, ttl=ttl)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await coordinator.start({"addresses": [f"/ip4/127.0.0.1/tcp/0/{node_id}"], "workers": 1})
    seen: tuple[bool, int | None] | None = None
    while not stop.is_set():
        state = (coordinator.is_leader, coordinator.epoch)
        if state != seen:
            seen = state
            say(event="state", leader=state[0], epoch=state[1], reachable=coordinator.reachable)
        epoch = coordinator.epoch
        if epoch is not None and await coordinator.still_leader(epoch):
            say(event="acted", epoch=epoch)
        await asyncio.sleep(0.05)
    await coordinator.stop()
    say(event="stopped")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1].split(","), sys.argv[2], sys.argv[3], int(sys.argv[4])))
