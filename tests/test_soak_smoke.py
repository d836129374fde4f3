"""The soak script (benches/soak.py) at a smoke size, and the two gauges it reads.

The full soak runs for 30 minutes and is not CI's to run; this keeps the script working:
~20 s of its mixed traffic against a real `lloom-executor start`, then its own checks (the
ledger's served rows match the answers the clients received; every kind of traffic was sent
and answered the way it should be). Flatness is not judged here: 20 s is all warm-up.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

from prometheus_client import generate_latest

import interop
from lloom_executor.metrics import Metrics
from service_rig import samples

SOAK = Path(__file__).resolve().parents[1] / "benches" / "soak.py"
EXIT_OK, EXIT_GROWING = 0, 3


def test_gauges_count_threads_and_the_loops_tasks_from_another_thread() -> None:
    """`lloom_executor_threads` is this process's thread count; `lloom_executor_asyncio_tasks` counts
    one loop's unfinished tasks, also when scraped from a thread other than the loop's (the push loop)."""
    metrics = Metrics()
    loop = asyncio.new_event_loop()
    holders, all_started, release = [], threading.Event(), threading.Event()

    async def hold() -> None:
        holders.append(1)
        if len(holders) == 5:
            all_started.set()
        await asyncio.to_thread(release.wait)

    async def main() -> None:  # a task itself, beside its five
        await asyncio.gather(*(hold() for _ in range(5)))

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="gauge-loop")
    thread.start()
    try:
        assert all_started.wait(10)
        metrics.watch_process(Metrics.tasks_of(loop))
        scraped = samples(generate_latest(metrics.registry).decode())
        assert scraped[("lloom_executor_asyncio_tasks", frozenset())] == 6
        assert scraped[("lloom_executor_threads", frozenset())] == threading.active_count()
    finally:
        release.set()
        thread.join(10)
        loop.close()
    assert ("lloom_executor_asyncio_tasks", frozenset()) not in samples(generate_latest(Metrics().registry).decode())


def test_soak_script_smoke(tmp_path: Path) -> None:
    binary = interop.interop_peer_binary()
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(SOAK), "--duration", "20s", "--rate", "20", "--sample-secs", "2"]
    cmd += ["--interop-peer", str(binary), "--workdir", str(tmp_path / "work"), "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode in (EXIT_OK, EXIT_GROWING), run.stdout[-6000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())

    assert result["executor_rc"] == 0
    ledger = result["ledger"]
    assert ledger["match"], ledger
    assert ledger["served_rows"] == ledger["received_with_content"] + ledger["served_unread_on_purpose"] > 0
    assert not result["anomalies"], result["anomalies"]

    assert len(result["samples"]) >= 8
    for _, row in result["samples"]:  # every resource read, the new gauges included
        assert row["rss_mib"] > 0 and row["fds"] > 0 and row["threads"] >= 2
        assert row["tasks"] >= 1 and row["py_threads"] >= 2

    python: dict[str, dict[str, int]] = {}
    for tally in result["python"]:
        for name, t in tally.items():
            agg = python.setdefault(name, {"sent": 0, "content": 0, "refused": 0})
            for key in agg:
                agg[key] += t[key]
    assert python["valid"]["sent"] > 0 and python["valid"]["content"] == python["valid"]["sent"], python["valid"]
    for refused in ("price_too_low", "unknown_model", "wrong_executor", "unsigned"):
        if refused in python:  # each is drawn at random; a signed refusal, never content
            assert python[refused]["content"] == 0 and python[refused]["refused"] == python[refused]["sent"], python
    rust_valid = [t["valid"] for t in result["rust"] if "valid" in t]
    assert sum(t["content"] for t in rust_valid) == sum(t["sent"] for t in rust_valid) > 0
