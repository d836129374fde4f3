"""`lloom-executor maintenance ...` as an operator runs it: real processes, real files, real SQLite.

The checks are independent of the code under test: archives are opened with `tarfile`,
ledger copies with plain `sqlite3`, cache entries are read back from the disk cache's own
index and files.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from lloom_executor._native import PrivateKey
from lloom_executor.backends.base import Completion
from lloom_executor.cache import DiskCache
from lloom_executor.config import load_config
from lloom_executor.ledger import STATUS_REFUSED, STATUS_SERVED, Ledger, LedgerEntry
from lloom_executor.maintenance import ARCHIVE_ROOT, backup_node

DAY = 86400.0


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
    return subprocess.run(
        [sys.executable, "-m", "lloom_executor", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def write_node(tmp_path: Path, *, cache_backend: str = "disk", extra: str = "") -> Path:
    """A node directory as `init` leaves it: config, two 0600 key files, a data dir."""
    key = PrivateKey.generate()
    for name in ("identity_key", "eth_key"):
        path = tmp_path / name
        path.write_text(key.to_hex())
        path.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[identity]
private_key_path = "{tmp_path / "identity_key"}"
ethereum_private_key_path = "{tmp_path / "eth_key"}"
[llm_client]
backend = "echo"
[storage]
data_dir = "{tmp_path / "data"}"
[cache]
enabled = true
backend = "{cache_backend}"
path = "{tmp_path / "cache"}"
ttl_seconds = 31536000
{extra}
[[models]]
name = "m"
inbound_price = "0.000001"
outbound_price = "0.000002"
"""
    )
    config.chmod(0o600)
    return config


def entry(i: int, status: str = STATUS_SERVED) -> LedgerEntry:
    served = status == STATUS_SERVED
    return LedgerEntry(
        status=status,
        model="m",
        client_address="0x" + f"{i:040x}",
        peer_id=f"peer-{i}",
        inbound_tokens=3 if served else 0,
        outbound_tokens=5 if served else 0,
        inbound_price="1000000000000",
        outbound_price="2000000000000",
        total_cost=str(3 * 10**12 + 5 * 2 * 10**12) if served else "0",
        reason=None if served else "price too low",
        request_digest=hashlib.sha256(str(i).encode()).digest(),
        time=1_700_000_000 + i,
    )


def rows_of(path: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM requests ORDER BY id").fetchall()
    finally:
        conn.close()


# -- help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["clean-cache"], ["optimize-db"], ["backup"]], ids=lambda c: " ".join(c) or "group")
def test_help(command: list[str]) -> None:
    out = cli("maintenance", *command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: python -m lloom_executor maintenance")
    if command:
        assert "--config" in out.stdout
    else:
        assert all(name in out.stdout for name in ("clean-cache", "optimize-db", "backup"))


# -- backup -------------------------------------------------------------------------------------
def test_backup_of_a_live_ledger_restores(tmp_path: Path) -> None:
    """The executor's connection stays open with the newest rows only in the WAL: a plain file copy
    would lose them; the archive's copy has every row, keys keep 0600, the archive is 0600."""
    node = tmp_path / "node"
    node.mkdir()
    config = write_node(node)
    (node / "eth_key").chmod(0o640)  # a loose key on disk is still stored owner-only
    live = Ledger.in_directory(node / "data")
    try:
        live.record_many([entry(i, STATUS_SERVED if i % 4 else STATUS_REFUSED) for i in range(40)])
        wal = node / "data" / "ledger.sqlite3-wal"
        assert wal.stat().st_size > 0  # the rows are (still) in the WAL
        original = rows_of(node / "data" / "ledger.sqlite3")
        assert len(original) == 40
        naive = tmp_path / "naive.sqlite3"  # what copying the live file alone would give
        naive.write_bytes((node / "data" / "ledger.sqlite3").read_bytes())
        try:
            naive_rows = len(rows_of(naive))
        except sqlite3.OperationalError:  # not even the schema: it is still in the WAL too
            naive_rows = 0
        assert naive_rows < 40

        output = tmp_path / "out" / "backup.tar.gz"
        output.parent.mkdir()
        out = cli("maintenance", "backup", "--config", str(config), "--output", str(output))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "holds the node's private keys" in out.stderr
        assert "ledger: 40 rows" in out.stdout
        assert stat.S_IMODE(output.stat().st_mode) == 0o600
        assert [p.name for p in output.parent.iterdir()] == ["backup.tar.gz"]  # no temporary left

        again = cli("maintenance", "backup", "--config", str(config), "--output", str(output))
        assert again.returncode == 1 and "already exists" in again.stderr
    finally:
        live.close()

    with tarfile.open(output) as tar:
        members = {m.name: m for m in tar.getmembers()}
        manifest = json.load(tar.extractfile(f"{ARCHIVE_ROOT}/MANIFEST.json"))
        restore = tmp_path / "restore"
        tar.extractall(restore, filter="tar")
    assert sorted(members) == sorted(
        f"{ARCHIVE_ROOT}/{n}"
        for n in ("MANIFEST.json", "config/config.toml", "keys/identity_key", "keys/eth_key", "data/ledger.sqlite3")
    )
    assert all(m.isfile() for m in members.values())
    root = restore / ARCHIVE_ROOT
    for name in ("identity_key", "eth_key"):
        assert members[f"{ARCHIVE_ROOT}/keys/{name}"].mode == 0o600
        assert stat.S_IMODE((root / "keys" / name).stat().st_mode) == 0o600
        assert (root / "keys" / name).read_bytes() == (node / name).read_bytes()
    assert (root / "config" / "config.toml").read_bytes() == config.read_bytes()
    for member in manifest["members"]:
        assert hashlib.sha256((restore / member["name"]).read_bytes()).hexdigest() == member["sha256"]

    copy = root / "data" / "ledger.sqlite3"
    assert not Path(f"{copy}-wal").exists()  # self-contained
    assert rows_of(copy) == original
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()
    with Ledger(copy) as restored:  # our own code opens the restored copy and keeps appending
        assert restored.totals().served == 30 and restored.totals().refused == 10
        restored.record(entry(99))
        assert restored.count() == 41


def test_backup_is_a_snapshot_while_the_ledger_is_written(tmp_path: Path) -> None:
    """A writer commits rows (and their per-model totals, in the same transaction) throughout:
    the copy is one moment, so its totals equal its own rows."""
    config_file = write_node(tmp_path)
    config = load_config(config_file, environ={}).config
    writer_ledger = Ledger.in_directory(tmp_path / "data")
    writer_ledger.record(entry(0))
    stop = threading.Event()
    written = [1]

    def write() -> None:
        i = 1
        while not stop.is_set():
            writer_ledger.record_many([entry(i + k) for k in range(5)])
            i += 5
            written[0] = i

    thread = threading.Thread(target=write)
    thread.start()
    try:
        reports = []
        for n in range(3):
            while written[0] < 50 * (n + 1):
                time.sleep(0.005)
            reports.append(backup_node(config, config_file, tmp_path / f"b{n}.tar.gz"))
    finally:
        stop.set()
        thread.join()
        writer_ledger.close()
    counts = []
    for n, report in enumerate(reports):
        with tarfile.open(tmp_path / f"b{n}.tar.gz") as tar:
            tar.extract(f"{ARCHIVE_ROOT}/data/ledger.sqlite3", tmp_path / f"r{n}", filter="tar")
        conn = sqlite3.connect(tmp_path / f"r{n}" / ARCHIVE_ROOT / "data" / "ledger.sqlite3")
        try:
            rows = conn.execute("SELECT count(*) FROM requests WHERE status = 'served'").fetchone()[0]
            totals = conn.execute("SELECT served FROM model_totals WHERE model = 'm'").fetchone()[0]
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
        assert rows == totals == report.ledger_rows
        assert rows % 5 == 1  # whole transactions only
        counts.append(rows)
    assert counts == sorted(counts) and counts[0] >= 50


def test_backup_warns_about_missing_files_and_refuses_a_missing_directory(tmp_path: Path) -> None:
    config = write_node(tmp_path)
    (tmp_path / "eth_key").unlink()
    output = tmp_path / "b.tar.gz"
    out = cli("maintenance", "backup", "--config", str(config), "--output", str(output))
    assert out.returncode == 0, out.stderr
    assert "ethereum_private_key_path" in out.stderr and "no ledger at" in out.stderr
    with tarfile.open(output) as tar:
        names = tar.getnames()
    assert f"{ARCHIVE_ROOT}/keys/identity_key" in names and not any(n.endswith("eth_key") for n in names)
    missing = cli("maintenance", "backup", "--config", str(config), "--output", str(tmp_path / "nope" / "b.tar.gz"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_backup_force_replaces_and_tightens_an_existing_file(tmp_path: Path) -> None:
    config = write_node(tmp_path)
    output = tmp_path / "b.tar.gz"
    output.write_text("old")
    output.chmod(0o644)
    out = cli("maintenance", "backup", "--config", str(config), "--output", str(output), "--force")
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(output.stat().st_mode) == 0o600 and tarfile.is_tarfile(output)


# -- clean-cache --------------------------------------------------------------------------------
def test_clean_cache_removes_exactly_the_old_disk_entries(tmp_path: Path) -> None:
    config = write_node(tmp_path)
    now = time.time()
    ages = {
        "eight days": 8 * DAY,
        "seven days and a minute": 7 * DAY + 60,
        "a minute short of seven days": 7 * DAY - 60,
        "fresh": 1.0,
    }
    keys = {}

    async def fill() -> None:
        for name, age in ages.items():
            cache = DiskCache(tmp_path / "cache", 10**9, 365 * DAY, clock=lambda age=age: now - age)
            key = cache.key_for("m", None, name, 0.0, None)
            assert key is not None
            keys[name] = key
            await cache.put(key, Completion(content=f"answer to {name}", model="m", inbound_tokens=1, outbound_tokens=2))
            await cache.close()

    asyncio.run(fill())
    files = {name: next((tmp_path / "cache" / "entries").rglob(f"{key.hex()}.json")) for name, key in keys.items()}

    out = cli("maintenance", "clean-cache", "--older-than", "7d", "--config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "removed 2 cache entries older than 7d from the disk cache" in out.stdout
    index = sqlite3.connect(tmp_path / "cache" / "index.sqlite3")
    try:
        left = {bytes(k) for (k,) in index.execute("SELECT key FROM entries")}
    finally:
        index.close()
    kept = {"a minute short of seven days", "fresh"}
    assert left == {keys[n] for n in kept}
    assert {n for n, f in files.items() if f.exists()} == kept

    again = cli("maintenance", "clean-cache", "--older-than", "7d", "--config", str(config))
    assert "removed 0 cache entries" in again.stdout


def test_clean_cache_redis_unreachable_is_a_clean_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    config = write_node(tmp_path, cache_backend="redis", extra=f'[cache.redis]\nurl = "redis://127.0.0.1:{port}/0"\n')
    out = cli("maintenance", "clean-cache", "--older-than", "7d", "--config", str(config))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cleaning the redis cache failed" in out.stderr and "Traceback" not in out.stderr


def test_clean_cache_memory_backend_and_bad_age(tmp_path: Path) -> None:
    config = write_node(tmp_path, cache_backend="memory")
    out = cli("maintenance", "clean-cache", "--older-than", "1h", "--config", str(config))
    assert out.returncode == 0 and "nothing to clean" in out.stdout
    bad = cli("maintenance", "clean-cache", "--older-than", "a week", "--config", str(config))
    assert bad.returncode == 2 and "--older-than" in bad.stderr and "7d" in bad.stderr
    missing = cli("maintenance", "clean-cache", "--config", str(config))
    assert missing.returncode == 2 and "--older-than" in missing.stderr


# -- optimize-db --------------------------------------------------------------------------------
def test_optimize_db_on_a_ledger_with_rows(tmp_path: Path) -> None:
    config = write_node(tmp_path)
    data = tmp_path / "data"
    with Ledger.in_directory(data) as ledger:
        for start in range(0, 600, 100):
            ledger.record_many([entry(i) for i in range(start, start + 100)])
        before_rows = rows_of(data / "ledger.sqlite3")
        ledger.record(entry(1000))  # the executor keeps its connection: optimize runs beside it
        other = sqlite3.connect(data / "ledger.sqlite3", isolation_level=None)
        other.execute("DELETE FROM requests WHERE id > 300")  # free pages for VACUUM to give back
        other.close()
        wal_before = Path(f"{data / 'ledger.sqlite3'}-wal").stat().st_size
        assert wal_before > 0
        out = cli("maintenance", "optimize-db", "--config", str(config))
        assert out.returncode == 0, out.stdout + out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    before = int(lines["before"].split("(")[1].split()[0])
    after = int(lines["after"].split("(")[1].split()[0])
    assert "(300 rows)" in lines["ledger"]
    assert after < before
    assert "checkpoint complete" in out.stdout
    assert rows_of(data / "ledger.sqlite3") == before_rows[:300]
    conn = sqlite3.connect(data / "ledger.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_optimize_db_without_a_ledger_creates_none(tmp_path: Path) -> None:
    config = write_node(tmp_path)
    out = cli("maintenance", "optimize-db", "--config", str(config))
    assert out.returncode == 1 and "no ledger at" in out.stderr
    assert not (tmp_path / "data").exists()
