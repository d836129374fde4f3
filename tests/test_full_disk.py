"""A full disk under the ledger: a real executor (`ExecutorService`, real libp2p, the admin API and
/metrics on) whose data directory is a 2 MiB tmpfs this test mounts, filled to the last byte.

While it is full: every request that would be served gets a signed `ledger_error` refusal with a
public sentence (nothing is answered without its row), /health says unhealthy with the reason,
/metrics shows the ledger not writable and its failed writes. When space comes back (the filler
file is deleted) the node finds out by itself, with no request needed, and the next request is
served and recorded. Needs root to mount (CI runs as root); skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lloom_executor import _native
from lloom_executor.client import Answer, LloomClient
from lloom_executor.identity import load_identity
from lloom_executor.ledger import Ledger
from lloom_executor.service import ExecutorService
from lloom_executor.serving.answer import LEDGER_FAILED
from service_rig import CHAIN_ID, CONTRACT, echo_service_config, samples, until

PRICE_IN, PRICE_OUT = 10**12, 2 * 10**12


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test only."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: cannot make a small file system to fill")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system has no byte left; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def test_full_disk_refuses_signed_reports_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    config = echo_service_config(
        tmp_path,
        storage={"data_dir": str(small_disk / "data")},
        api={"enabled": True, "listen_address": "127.0.0.1:0"},
    )

    async def scenario() -> dict[str, Any]:
        service = ExecutorService(config, load_identity(config.identity, environ={}))
        addr = (await service.start())[0]
        peer = service.identity.peer_id
        assert service.api is not None and service.api.url and service.metrics_server is not None
        api, metrics_url = service.api.url, service.metrics_server.url
        domain = _native.Eip712Domain(CHAIN_ID, CONTRACT)
        out: dict[str, Any] = {}
        try:
            async with (
                LloomClient(bootstrap=[addr], enable_kad=False, enable_gossip=False, eip712_domain=domain) as client,
                httpx.AsyncClient(timeout=10) as http,
            ):

                async def ask(prompt: str) -> Answer:
                    return await client.request(peer, "m", prompt, inbound_price=str(PRICE_IN), outbound_price=str(PRICE_OUT))

                out["before"] = await ask("before the disk filled")
                filler = fill(small_disk)
                out["full"] = [await ask(f"while full {i}") for i in range(3)]
                out["health_full"] = await http.get(api + "/health")
                out["detailed_full"] = (await http.get(api + "/health/detailed")).json()
                out["metrics_full"] = samples((await http.get(metrics_url)).text)

                filler.unlink()  # space is back: no request is sent until the node has noticed by itself
                await until(lambda: service.ledger.status().writable, "the ledger writable again", timeout=15)
                out["health_after"] = await http.get(api + "/health")
                out["after"] = await ask("after space came back")
                out["metrics_after"] = samples((await http.get(metrics_url)).text)
        finally:
            await service.stop()
        return out

    r = asyncio.run(scenario())
    before, full, after = r["before"], r["full"], r["after"]
    assert before.error is None and before.signature_valid and before.receipt.valid
    for answer in full:  # a clear signed refusal: the public sentence, no content, no charge
        assert answer.signature_valid and answer.error == LEDGER_FAILED
        assert answer.content == "" and answer.total_cost == "0"
        assert answer.receipt is not None and answer.receipt.valid and not answer.receipt.success
    assert (r["health_full"].status_code, r["health_full"].json()) == (503, {"status": "unhealthy", "ledger": "not writable"})
    detailed = r["detailed_full"]
    assert detailed["status"] == "unhealthy" and detailed["ledger"] == "not writable"
    assert "full" in detailed["ledger_error"] and detailed["ledger_write_errors"] >= 3
    metrics = r["metrics_full"]
    assert metrics[("lloom_executor_ledger_writable", frozenset())] == 0
    assert metrics[("lloom_executor_ledger_write_errors_total", frozenset())] >= 3
    assert metrics[("lloom_executor_requests_total", frozenset({("model", "m"), ("status", "ledger_error")}))] == 3
    assert (r["health_after"].status_code, r["health_after"].json()) == (200, {"status": "healthy"})
    assert after.error is None and after.signature_valid and after.content == "echo: after space came back"
    assert r["metrics_after"][("lloom_executor_ledger_writable", frozenset())] == 1

    with Ledger.in_directory(small_disk / "data") as ledger:
        rows = ledger.entries()
    served = {r["request_digest"] for r in rows if r["status"] == "served"}
    assert served == {"0x" + a.request_digest.hex() for a in (before, after)}  # nothing served without its row
    refused = [r for r in rows if r["status"] == "refused"]  # kept in memory while full, written once space returned
    assert [(r["code"], r["reason"]) for r in refused] == [("ledger_error", LEDGER_FAILED)] * 3
    assert {r["request_digest"] for r in refused} == {"0x" + a.request_digest.hex() for a in full}
