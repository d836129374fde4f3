"""Which worker this process is, and the per-worker share of limits that are not shared exactly.

A worker learns its place from the environment the supervisor gives it
(`LLOOM_WORKER=<index>/<count>`, `LLOOM_WORKER_STATUS_FD=<fd>`), so the worker
runs the ordinary `start` command and a node of one worker is exactly the
process it always was.  Worker 0 is the lead: it alone does the node's
discovery duties (bootstrap dials, mDNS, AutoNAT, relay, periodic gossip
announcements), serves the admin API and `/metrics` (node-wide: it reads every
worker's private endpoint, node_view.py), and sends the node-level webhook
events (docs/workers.md says why each duty is where it is).

The status fd is a pipe to the supervisor: one JSON line when the worker
serves (`{"ready": [addresses]}`) or cannot start (`{"failed": reason}`), so a
worker that cannot start stops the node with its own reason instead of a bare
exit code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import Config

log = logging.getLogger(__name__)

WORKER_ENV = "LLOOM_WORKER"
STATUS_FD_ENV = "LLOOM_WORKER_STATUS_FD"


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(value: int | str) -> int:
    """`[runtime] workers` (or `--workers`, or LLOOM_EXECUTOR_WORKERS) as a number of processes."""
    if isinstance(value, str):
        return cores_available() if value.strip().lower() == "auto" else int(value)
    return int(value)


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in the node: `index` of `count` workers (0 of 1: the only process)."""

    index: int = 0
    count: int = 1
    status_fd: int | None = None

    @property
    def lead(self) -> bool:
        """Worker 0 does the node-level duties; a node of one worker is its own lead."""
        return self.index == 0

    @property
    def several(self) -> bool:
        return self.count > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        """The role the supervisor gave this process, or None when it was started directly."""
        value = environ.get(WORKER_ENV)
        if not value:
            return None
        index_text, _, count_text = value.partition("/")
        index, count = int(index_text), int(count_text)
        if not 0 <= index < count:
            raise ValueError(f"{WORKER_ENV}={value!r}: expected <index>/<count> with index < count")
        fd_text = environ.get(STATUS_FD_ENV)
        return cls(index, count, int(fd_text) if fd_text else None)

    def share(self, total: int) -> int:
        """This worker's part of a node-wide bound that is enforced per worker (never below 1)."""
        return max(1, total // self.count)

    def report_ready(self, addresses: Sequence[str]) -> None:
        self._report({"ready": [str(a) for a in addresses]})

    def report_failed(self, reason: str) -> None:
        self._report({"failed": reason})

    def _report(self, message: dict[str, Any]) -> None:
        if self.status_fd is None:
            return
        try:
            os.write(self.status_fd, (json.dumps(message) + "\n").encode())
        except OSError as exc:  # the supervisor is gone; PDEATHSIG ends us soon
            log.debug("worker status not delivered: %s", exc)


def per_worker_config(config: Config, role: WorkerRole) -> Config:
    """The config one worker enforces: node-wide bounds that stay per process are divided by the
    number of workers (rounded down, at least 1), and the start log says so, once, in the lead.

    Exact across workers (docs/workers.md): the replay guard, the rate-limit buckets, the ledger,
    and each backend's `max_concurrent_requests` and `[openai_limits]` (`shared_limits.py`: an
    account's or a server's limits are not a worker's).  Divided here: the request path's own
    concurrency (`[request_handling] max_concurrent_requests`, per model too), queue sizes and
    inflight streams, which the dispatcher takes on every request from its in-process queues; a
    client's traffic spreads over workers by connection, so a share is reached only when the load
    is skewed.
    """
    if not role.several:
        return config
    share = role.share
    handling = dataclasses.replace(
        config.request_handling,
        max_concurrent_requests=share(config.request_handling.max_concurrent_requests),
        max_inflight_streams=share(config.request_handling.max_inflight_streams),
    )
    priority = dataclasses.replace(config.priority, queue_sizes={k: share(v) for k, v in config.priority.queue_sizes.items()})
    models = tuple(
        dataclasses.replace(m, max_concurrent_requests=share(m.max_concurrent_requests)) if m.max_concurrent_requests else m
        for m in config.models
    )
    if role.lead:
        log.info(
            "%d workers: replay guard, rate limits, ledger and each backend's limits are node-wide; "
            "[request_handling] max_concurrent_requests %d, per-model concurrency and queue sizes are enforced "
            "per worker as a 1/%d share (docs/workers.md)",
            role.count,
            handling.max_concurrent_requests * role.count,
            role.count,
        )
    return dataclasses.replace(config, request_handling=handling, priority=priority, models=models)
