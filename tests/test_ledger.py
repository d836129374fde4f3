"""The SQLite request ledger: exact rows, WAL, durability under SIGKILL, several writers, group commit, serving.

(What is kept of refusals under a flood: tests/test_ledger_flood.py; a full disk: tests/test_full_disk.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from lloom_executor import _native
from lloom_executor.backends import Completion, CompletionRequest, EchoBackend
from lloom_executor.backends.base import BackendServerError
from lloom_executor.config import ModelConfig
from lloom_executor.ledger import SCHEMA_VERSION, STATUS_REFUSED, STATUS_SERVED, Ledger, LedgerEntry, LedgerError, RefusalBook
from lloom_executor.metrics import Metrics
from lloom_executor.p2p.llm_protocol import RequestContext
from lloom_executor.serving import RequestHandler, build_request_handler

PYTHON_PATH = os.pathsep.join(sys.path)  # subprocesses import the lloom_executor this run imports
BIG = 10**30  # wei beyond 2**64: revenue must be exact integer arithmetic
MODEL = "gpt-3.5-turbo"
DOMAIN = _native.Eip712Domain(31337, "0x" + "5f" * 20)


def entry(i: int, **over: Any) -> LedgerEntry:
    values: dict[str, Any] = dict(
        status=STATUS_SERVED,
        model="m",
        client_address="0x" + "AB" * 20,
        peer_id=f"peer-{i}",
        inbound_tokens=i,
        outbound_tokens=2 * i,
        inbound_price=str(BIG),
        outbound_price="3",
        total_cost=str(i * BIG + 6 * i),
        request_digest=bytes([i % 256]) * 32,
        queued_ms=1.5,
        backend_ms=2.5,
        total_ms=4.0,
        time=1_700_000_000.0 + i,
    )
    values.update(over)
    return LedgerEntry(**values)


def test_wal_full_sync_and_exact_row(tmp_path: Path) -> None:
    with Ledger.in_directory(tmp_path / "data") as ledger:
        assert ledger.path == tmp_path / "data" / "ledger.sqlite3"
        assert ledger.journal_mode() == "wal"
        assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert oct(ledger.path.stat().st_mode & 0o777) == oct(0o600)
        rowid = ledger.record(
            entry(
                7,
                receipt_digest=b"\x09" * 32,
                receipt_signature="0x" + "0a" * 65,
                receipt_timestamp=1_700_000_007,
                request_hash=b"\x0b" * 32,
            )
        )
        (row,) = ledger.entries()
    assert row == {
        "id": rowid,
        "time": 1_700_000_007.0,
        "status": "served",
        "reason": None,
        "client_address": "0x" + "ab" * 20,
        "peer_id": "peer-7",
        "model": "m",
        "requested_model": "m",
        "inbound_tokens": 7,
        "outbound_tokens": 14,
        "inbound_price": str(BIG),
        "outbound_price": "3",
        "total_cost": str(7 * BIG + 42),
        "request_digest": "0x" + "07" * 32,
        "request_hash": "0x" + "0b" * 32,
        "receipt_digest": "0x" + "09" * 32,
        "receipt_signature": "0x" + "0a" * 65,
        "receipt_timestamp": 1_700_000_007,
        "queued_ms": 1.5,
        "backend_ms": 2.5,
        "total_ms": 4.0,
        "code": None,
        "token_source": None,  # the entry said nobody
    }
    # another connection (another process would be the same) sees WAL mode on the file itself
    conn = sqlite3.connect(tmp_path / "data" / "ledger.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_totals_exact_and_refusals_counted(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.record_many([entry(i) for i in range(1, 11)])
        ledger.record(entry(1, model="other", total_cost=str(2**200)))
        ledger.record(LedgerEntry(STATUS_REFUSED, "m", reason="model not served"))
        totals = ledger.totals()
        assert ledger.count() == 12
    expected = sum(i * BIG + 6 * i for i in range(1, 11))
    assert totals.revenue_by_model() == {"m": expected, "other": 2**200}
    assert totals.by_model["m"].served == 10 and totals.by_model["m"].refused == 1
    assert totals.by_model["m"].inbound_tokens == 55 and totals.by_model["m"].outbound_tokens == 110
    assert (totals.served, totals.refused, totals.revenue) == (11, 1, expected + 2**200)
    with Ledger(tmp_path / "l.db") as reopened:  # totals persist
        assert reopened.totals() == totals


def test_bad_entries_write_nothing(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        with pytest.raises(ValueError):
            ledger.record_many([entry(1), entry(2, total_cost="1.5")])
        with pytest.raises(ValueError):
            ledger.record(entry(1, status="maybe"))
        assert ledger.count() == 0 and ledger.totals().by_model == {}


def test_optimize_keeps_rows(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.record_many([entry(i) for i in range(200)])
        report = ledger.optimize()
        assert report["checkpoint_complete"] is True
        assert not Path(f"{ledger.path}-wal").exists() or Path(f"{ledger.path}-wal").stat().st_size == 0
        assert ledger.count() == 200 and ledger.journal_mode() == "wal"
        ledger.record(entry(1))
        assert ledger.count() == 201


def test_newer_schema_refused(tmp_path: Path) -> None:
    Ledger(tmp_path / "l.db").close()
    conn = sqlite3.connect(tmp_path / "l.db")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="schema 99"):
        Ledger(tmp_path / "l.db")


# -- processes -------------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import os, sys, time
    from lloom_executor.ledger import Ledger, LedgerEntry
    path, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    go = sys.argv[4] if len(sys.argv) > 4 else None
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    ledger = Ledger(path)
    while go and not os.path.exists(go):  # start together with the other writers
        time.sleep(0.005)
    for i in range(count):
        ledger.record(LedgerEntry("served", "m", peer_id=f"{tag}-{i}", inbound_tokens=i, outbound_tokens=1,
                                  inbound_price="1", outbound_price="1", total_cost=str(10**30 + i)))
        print(f"acked {i}", flush=True)
        time.sleep(pause)  # like an executor: rows arrive spaced, so the writers' turns interleave
""")


def writer(path: Path, tag: str, count: int, go: Path | None = None, pause: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), tag, str(count), *([str(go), str(pause)] if go else [])],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=PYTHON_PATH),
    )


def test_sigkill_loses_no_acknowledged_row(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    proc = writer(path, "w", 100_000)
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked.append(int(line.split()[1]))
            if len(acked) == 40:
                os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the next record is in flight
                break
        acked += [int(line.split()[1]) for line in proc.stdout]  # acks already in the pipe
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert acked == list(range(len(acked))) and len(acked) >= 40
    with Ledger(path) as ledger:
        rows = {r["peer_id"]: r for r in ledger.entries()}
        totals = ledger.totals().by_model["m"]
    for i in acked:
        row = rows[f"w-{i}"]
        assert (row["inbound_tokens"], row["total_cost"], row["status"]) == (i, str(10**30 + i), "served")
    # at most the one in flight committed without its ack being printed; totals match the rows exactly
    assert len(acked) <= len(rows) <= len(acked) + 1
    assert totals.served == len(rows) and totals.revenue == sum(int(r["total_cost"]) for r in rows.values())


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    path, go = tmp_path / "l.db", tmp_path / "go"
    count = 200
    procs = [writer(path, tag, count, go, 0.002) for tag in ("a", "b")]  # both create/open the new file at once
    seen_while_writing = []
    time.sleep(0.5)
    go.touch()
    with Ledger(path) as reader:  # a reader beside the writers (WAL)
        while any(p.poll() is None for p in procs):
            seen_while_writing.append(reader.count())
            time.sleep(0.01)
    outputs = [p.communicate(timeout=30)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert all(out.splitlines()[-1] == f"acked {count - 1}" for out in outputs)
    with Ledger(path) as ledger:
        rows = ledger.entries()
        totals = ledger.totals().by_model["m"]
    assert len(rows) == 2 * count
    assert {r["peer_id"] for r in rows} == {f"{t}-{i}" for t in "ab" for i in range(count)}
    assert totals.served == 2 * count
    assert totals.revenue == 2 * sum(10**30 + i for i in range(count))
    assert seen_while_writing == sorted(seen_while_writing)
    order = [r["peer_id"][0] for r in rows]  # by id: the writers really interleaved
    assert sum(a != b for a, b in zip(order, order[1:], strict=False)) > 1


# -- serving -------------------------------------------------------------------------------------
class FailingEcho(EchoBackend):
    async def complete(self, request: CompletionRequest) -> Completion:
        if request.prompt == "fail":
            raise BackendServerError("backend exploded at http://10.0.0.7:8000", status=500)
        return await super().complete(request)


CTX = RequestContext("16Uiu2HAmLedgerPeer", "127.0.0.1", 0, 0.0)


def handler(executor: _native.PrivateKey, ledger: Any, **kw: Any) -> RequestHandler:
    return build_request_handler(
        executor,
        [ModelConfig(MODEL, inbound_price_wei=1, outbound_price_wei=2)],
        FailingEcho([MODEL]),
        ledger=ledger,
        aliases={"alias": MODEL},
        **kw,
    )


def signed(client: _native.PrivateKey, executor: _native.PrivateKey, prompt: str, model: str = MODEL) -> bytes:
    now = int(time.time())
    return bytes(
        _native.encode_signed_request(client, model, prompt, None, None, 16, executor.peer_id, str(BIG), "5", 77, now + 300, now)
    )


def test_serving_records_served_and_refused_rows(tmp_path: Path) -> None:
    executor, client = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    with Ledger(tmp_path / "l.db") as ledger:
        h = handler(executor, ledger, receipt_domain=DOMAIN)
        frames = [
            signed(client, executor, "hello world", model="alias"),
            signed(client, executor, "x", "nope"),
            signed(client, executor, "fail"),
        ]
        answers = [_native.decode_response(asyncio.run(h(f, CTX))) for f in frames]
        rows = ledger.entries()
        totals = ledger.totals()
    served, unknown, failed = rows
    ok = answers[0]
    assert ok.error is None
    assert {k: served[k] for k in served if k not in ("id", "time", "queued_ms", "backend_ms", "total_ms")} == {
        "status": "served",
        "reason": None,
        "client_address": client.address.lower(),
        "peer_id": CTX.peer_id,
        "model": MODEL,
        "requested_model": "alias",
        "inbound_tokens": ok.inbound_tokens,
        "outbound_tokens": ok.outbound_tokens,
        "inbound_price": str(BIG),
        "outbound_price": "5",
        "total_cost": ok.total_cost,
        "request_digest": "0x" + _native.decode_request(frames[0]).digest.hex(),
        "request_hash": "0x" + ok.receipt["request_hash"].hex(),
        "receipt_digest": "0x" + ok.receipt["digest"].hex(),
        "receipt_signature": "0x" + ok.receipt["signature"].hex(),
        "receipt_timestamp": ok.timestamp,
        "code": None,
        "token_source": "native:cl100k_base",  # the echo backend reports no usage: our count charged
    }
    assert ok.total_cost == str(ok.inbound_tokens * BIG + ok.outbound_tokens * 5)
    assert served["queued_ms"] >= 0 and served["backend_ms"] >= 0 and served["total_ms"] >= served["backend_ms"]
    assert abs(served["time"] - time.time()) < 60
    # refused in admission: no receipt, no backend timings, reason recorded
    assert (unknown["status"], unknown["model"], unknown["reason"]) == ("refused", "", answers[1].error)
    assert (served["code"], unknown["code"], failed["code"]) == (None, "unknown_model", "backend_failed")
    assert unknown["requested_model"] == "nope"
    assert unknown["receipt_digest"] is None and unknown["queued_ms"] is None and unknown["backend_ms"] is None
    assert (unknown["inbound_tokens"], unknown["outbound_tokens"], unknown["total_cost"]) == (0, 0, "0")
    # a backend failure after admission: refused, with a failure receipt and timings
    assert (failed["status"], failed["model"]) == ("refused", MODEL)
    assert failed["reason"] == answers[2].error and failed["reason"] == "the backend failed on this request"
    assert failed["receipt_digest"] == "0x" + answers[2].receipt["digest"].hex()
    assert failed["backend_ms"] is not None
    assert totals.by_model[MODEL].served == 1 and totals.by_model[MODEL].refused == 1
    assert totals.by_model[""].refused == 1 and "nope" not in totals.by_model
    assert totals.revenue == int(ok.total_cost)


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another connection (as `maintenance optimize-db` would) holds the write lock for `seconds`."""
    taken = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)  # the lock holder's work: what the writer must wait for
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10)
    return holder


def test_answer_waits_for_the_row_without_blocking_the_loop(tmp_path: Path) -> None:
    """The served answer leaves only once its row is committed; meanwhile the loop keeps running."""
    executor, client = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    ledger = Ledger(tmp_path / "l.db")
    h = handler(executor, ledger)

    async def body() -> tuple[float, float, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        holder = hold_write_lock(ledger.path, 0.3)
        sent = time.monotonic()
        answer = _native.decode_response(await h(signed(client, executor, "hello"), CTX))
        answered = time.monotonic()
        assert answer.error is None
        done.set()
        await t
        holder.join()
        return sent, answered, ticks

    sent, answered, ticks = asyncio.run(body())
    assert answered - sent >= 0.25 and ledger.count() == 1  # it waited for the lock holder, then committed
    assert ticks >= 10  # the loop kept running during the wait
    ledger.close()


def test_unrecordable_request_is_not_served(tmp_path: Path) -> None:
    """A write that fails (here: the lock held past busy_timeout) turns the answer into a signed
    ledger_error refusal; the ledger reports itself not writable until a write succeeds again."""
    executor, client = _native.PrivateKey.generate(), _native.PrivateKey.generate()
    metrics = Metrics()
    ledger = Ledger(tmp_path / "l.db", busy_timeout=0.1)
    h = handler(executor, ledger, receipt_domain=DOMAIN, metrics=metrics)
    holder = hold_write_lock(ledger.path, 1.0)
    answer = _native.decode_response(asyncio.run(h(signed(client, executor, "hello"), CTX)))
    assert answer.signature_valid and answer.content == "" and answer.total_cost == "0"
    assert "could not record" in answer.error
    assert answer.receipt["success"] is False
    status = ledger.status()
    assert not status.writable and status.write_errors >= 1 and "locked" in (status.last_error or "")
    # The metrics count what the client got: an error, no revenue, no tokens sold.
    text = generate_latest(metrics.registry).decode()
    assert f'lloom_executor_requests_total{{model="{MODEL}",status="ledger_error"}} 1.0' in text
    assert 'status="success"' not in text
    assert "lloom_executor_ledger_writable 0.0" in text and "lloom_executor_ledger_write_errors_total" in text
    assert metrics.revenue_wei == 0
    holder.join()
    again = _native.decode_response(asyncio.run(h(signed(client, executor, "hello again"), CTX)))
    assert again.error is None and ledger.status().writable
    rows = ledger.entries()
    assert [(r["status"], r["code"]) for r in rows] == [("refused", "ledger_error"), ("served", None)]
    assert "lloom_executor_ledger_writable 1.0" in generate_latest(metrics.registry).decode()
    ledger.close()


# -- group commit ----------------------------------------------------------------------------------
def test_rows_arriving_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    """64 submitters at once while the writer is held up: far fewer commits than rows, every
    row exact, and each submitter got its own row's id."""
    with Ledger(tmp_path / "l.db") as ledger:
        before = ledger.status().commits

        async def burst() -> list[int]:
            holder = hold_write_lock(ledger.path, 0.2)  # the first commit waits: the rest queue behind it
            ids = await asyncio.gather(*(ledger.record_async(entry(i)) for i in range(1, 65)))
            holder.join()
            return list(ids)

        ids = asyncio.run(burst())
        commits = ledger.status().commits - before
        rows = {r["id"]: r for r in ledger.entries()}
    assert sorted(ids) == sorted(rows) and len(set(ids)) == 64
    assert [rows[rowid]["peer_id"] for rowid in ids] == [f"peer-{i}" for i in range(1, 65)]
    assert 1 <= commits <= 3, commits  # the first row alone (maybe), then the rest together


def test_a_lone_row_commits_at_once(tmp_path: Path) -> None:
    """No timer while idle: one row, one commit, straight away (well under the refusal flush)."""
    with Ledger(tmp_path / "l.db", refusals=RefusalBook(flush_secs=30.0)) as ledger:
        before = ledger.status().commits
        started = time.monotonic()
        ledger.record(entry(1))
        assert time.monotonic() - started < 5.0 and ledger.status().commits == before + 1


def test_refusal_rows_ride_with_the_next_served_commit(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db", refusals=RefusalBook(flush_secs=30.0)) as ledger:
        before = ledger.status().commits
        for i in range(5):
            ledger.record_refusal(entry(i, status=STATUS_REFUSED, total_cost="0", reason="replay"), "replay")
        assert ledger.status().commits == before and ledger.status().refusals_pending == 5  # nobody waited
        ledger.record(entry(9))
        status = ledger.status()
        assert status.commits == before + 1 and status.refusals_pending == 0  # one transaction for all six
        rows = ledger.entries()
    assert [(r["status"], r["code"]) for r in rows].count(("refused", "replay")) == 5 and len(rows) == 6


def test_version_1_ledger_is_migrated(tmp_path: Path) -> None:
    """A ledger written by the previous schema opens, keeps its rows, and takes new ones."""
    path = tmp_path / "l.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    columns = ", ".join(f"{c} TEXT" for c in ("status", "reason", "client_address", "peer_id", "model", "requested_model"))
    conn.execute(
        f"CREATE TABLE requests (id INTEGER PRIMARY KEY, time REAL NOT NULL, {columns}, inbound_tokens INTEGER,"
        " outbound_tokens INTEGER, inbound_price TEXT, outbound_price TEXT, total_cost TEXT, request_digest TEXT,"
        " request_hash TEXT, receipt_digest TEXT, receipt_signature TEXT, receipt_timestamp INTEGER, queued_ms REAL,"
        " backend_ms REAL, total_ms REAL)"
    )
    conn.execute(
        "CREATE TABLE model_totals (model TEXT PRIMARY KEY, served INTEGER NOT NULL DEFAULT 0, refused INTEGER NOT NULL"
        " DEFAULT 0, inbound_tokens INTEGER NOT NULL DEFAULT 0, outbound_tokens INTEGER NOT NULL DEFAULT 0,"
        " revenue TEXT NOT NULL DEFAULT '0')"
    )
    conn.execute(
        "INSERT INTO requests (time, status, model, requested_model, inbound_tokens, outbound_tokens, inbound_price,"
        " outbound_price, total_cost) VALUES (1.0, 'served', 'm', 'm', 1, 1, '1', '1', '2')"
    )
    conn.execute("INSERT INTO model_totals VALUES ('m', 1, 0, 1, 1, '2')")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with Ledger(path) as ledger:
        ledger.record(entry(3))
        rows = ledger.entries()
        totals = ledger.totals().by_model["m"]
    assert [r["code"] for r in rows] == [None, None] and rows[0]["total_cost"] == "2"
    # who counted the tokens: the old row reads the column's default, the new one what its entry said
    assert [r["token_source"] for r in rows] == ["usage", entry(3).token_source]
    assert totals.served == 2 and totals.revenue == 2 + 3 * BIG + 18
    check = sqlite3.connect(path)
    # still schema 1, grown by addition only: an older release (an `update apply` rollback) opens
    # it and writes its rows as before, `code` left NULL
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
    check.execute(
        "INSERT INTO requests (time, status, model, requested_model, inbound_tokens, outbound_tokens, inbound_price,"
        " outbound_price, total_cost) VALUES (2.0, 'served', 'm', 'm', 1, 1, '1', '1', '2')"
    )
    check.commit()
    assert check.execute("SELECT token_source FROM requests WHERE time = 2.0").fetchone() == ("usage",)
    check.close()


def test_ledger_usable_from_threads(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        threads = [threading.Thread(target=lambda k=k: [ledger.record(entry(k * 100 + i)) for i in range(25)]) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert ledger.count() == 100 and ledger.totals().by_model["m"].served == 100
