"""Refusals do not amplify a flood: thousands of refused frames through the real request handler
cost a bounded number of ledger transactions (fsyncs), while every served request keeps its exact,
durable row. Also the in-memory bounds of `RefusalBook` with many distinct senders.

Commits are counted twice: by the ledger's own counter and by SQLite itself (a trace callback on
the writer's connection sees every COMMIT statement it runs)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lloom_executor import _native
from lloom_executor.backends import EchoBackend
from lloom_executor.config import ModelConfig
from lloom_executor.config.schema import RateLimitingConfig, RateLimitRule
from lloom_executor.ledger import STATUS_REFUSED, Ledger, LedgerEntry, RefusalBook
from lloom_executor.p2p.llm_protocol import RequestContext
from lloom_executor.pipeline.ratelimits import RateLimitRules
from lloom_executor.serving import RequestHandler, build_request_handler

MODEL = "m"
LIMIT = 30  # the burst per peer (refilled at 1/minute): each sender's first LIMIT pass the rate limit
FLOOD_SIGNED, FLOOD_UNSIGNED, LEGIT = 5_000, 2_000, LIMIT  # the legitimate client stays within it
IN_FLIGHT = 100


class CommitCounter:
    """SQLite's own view: each COMMIT statement the writer's connection executes."""

    def __init__(self, ledger: Ledger) -> None:
        self.commits = 0
        self._lock = threading.Lock()
        ledger._conn.set_trace_callback(self._statement)  # the writer's connection (its thread calls this)

    def _statement(self, sql: str) -> None:
        if sql.strip().upper() == "COMMIT":
            with self._lock:
                self.commits += 1


def handler(executor: _native.PrivateKey, ledger: Ledger) -> RequestHandler:
    rules = RateLimitingConfig(enabled=True, rules=(RateLimitRule("peer_id", max_requests_per_minute=1, burst_size=LIMIT),))
    return build_request_handler(
        executor,
        [ModelConfig(MODEL, inbound_price_wei=1, outbound_price_wei=1)],
        EchoBackend([MODEL]),
        ledger=ledger,
        rate_limits=RateLimitRules(rules),
        handling=None,
    )


def signed_frames(client: _native.PrivateKey, executor: _native.PrivateKey, n: int, tag: str) -> list[bytes]:
    now = int(time.time())
    return [
        bytes(
            _native.encode_signed_request(
                client, MODEL, f"{tag} {i}", None, None, 8, executor.peer_id, "1", "1", i + 1, now + 300, now
            )
        )
        for i in range(n)
    ]


def unsigned_frames(executor: _native.PrivateKey, n: int) -> list[bytes]:
    now = int(time.time())
    return [
        bytes(_native.encode_unsigned_request(MODEL, f"junk {i}", None, None, 8, executor.peer_id, "1", "1", i + 1, now + 300))
        for i in range(n)
    ]


async def send_all(h: RequestHandler, frames: list[tuple[bytes, RequestContext]]) -> list[_native.DecodedResponse]:
    """Every frame through the handler, IN_FLIGHT at a time (as many streams would)."""
    answers: list[_native.DecodedResponse] = []
    for start in range(0, len(frames), IN_FLIGHT):
        chunk = frames[start : start + IN_FLIGHT]
        raw = await asyncio.gather(*(h(frame, ctx) for frame, ctx in chunk))
        answers += [_native.decode_response(r) for r in raw]
    return answers


def test_a_refusal_flood_costs_bounded_commits_and_served_rows_stay_exact(tmp_path: Path) -> None:
    executor, flooder, legit = (_native.PrivateKey.generate() for _ in range(3))
    ledger = Ledger(tmp_path / "l.db")
    sqlite_commits = CommitCounter(ledger)
    h = handler(executor, ledger)
    flood_ctx = RequestContext("16Uiu2HAmFlooder", "127.0.0.2", 0, 0.0)
    junk_ctx = RequestContext("16Uiu2HAmJunk", "127.0.0.3", 0, 0.0)
    legit_ctx = RequestContext("16Uiu2HAmLegit", "127.0.0.1", 0, 0.0)
    flood = [(f, flood_ctx) for f in signed_frames(flooder, executor, FLOOD_SIGNED, "flood")]
    junk = [(f, junk_ctx) for f in unsigned_frames(executor, FLOOD_UNSIGNED)]
    wanted = [(f, legit_ctx) for f in signed_frames(legit, executor, LEGIT, "legit")]
    mixed = [item for group in zip(flood, junk + [None] * len(flood), strict=False) for item in group if item]
    step = len(mixed) // LEGIT  # the legitimate requests arrive spread through the flood
    for i, item in enumerate(wanted):
        mixed.insert(i * (step + 1), item)

    before = ledger.status().commits
    started = time.monotonic()
    answers = asyncio.run(send_all(h, mixed))
    elapsed = time.monotonic() - started
    during = ledger.status()

    by_code = Counter(
        "served" if a.error is None else "rate_limited" if a.error.startswith("rate limit") else "unsigned" for a in answers
    )
    # rate limits come first: the flooder's first LIMIT are served, the junk's first LIMIT refused as unsigned
    assert by_code == {"served": LEGIT + LIMIT, "unsigned": LIMIT, "rate_limited": FLOOD_SIGNED + FLOOD_UNSIGNED - 2 * LIMIT}
    refused = FLOOD_SIGNED - LIMIT + FLOOD_UNSIGNED
    served = LEGIT + LIMIT
    # Served rows may each cost a commit (they may not share one); the ~7,000 refusals add at most
    # one commit per flush interval of the refusal book, not one each.
    refusal_commit_bound = math.ceil(elapsed / RefusalBook().flush_secs) + 1
    commits = during.commits - before
    assert commits <= served + refusal_commit_bound, (commits, served, elapsed)
    assert during.write_errors == 0

    ledger.close()  # writes what it still holds (the counts of the open window)
    assert sqlite_commits.commits == ledger.status().commits - before  # SQLite agrees with the ledger's count
    assert sqlite_commits.commits <= served + refusal_commit_bound + 2  # + the closing write

    with Ledger(tmp_path / "l.db") as reader:
        rows = reader.entries()
        counts = reader.refusal_counts()
        totals = reader.totals().by_model[MODEL]
    served_rows = [r for r in rows if r["status"] == "served"]
    answered = {
        "0x" + _native.decode_request(f).digest.hex() for (f, _), a in zip(mixed, answers, strict=True) if a.error is None
    }
    assert {r["request_digest"] for r in served_rows} == answered and len(served_rows) == served  # exact, one each
    refusal_rows = [r for r in rows if r["status"] == STATUS_REFUSED]
    # a few refusals per sender keep a row of their own; the rest are counted, to the last one
    assert Counter((r["peer_id"], r["code"]) for r in refusal_rows) == {
        (flood_ctx.peer_id, "rate_limited"): 10,
        (junk_ctx.peer_id, "rate_limited"): 10,
        (junk_ctx.peer_id, "unsigned"): 10,
    }
    assert sum(c["count"] for c in counts) + len(refusal_rows) == refused
    assert {(c["peer_id"], c["code"]): c["count"] for c in counts} == {
        (flood_ctx.peer_id, "rate_limited"): FLOOD_SIGNED - LIMIT - 10,
        (junk_ctx.peer_id, "rate_limited"): FLOOD_UNSIGNED - LIMIT - 10,
        (junk_ctx.peer_id, "unsigned"): LIMIT - 10,
    }
    flood_count = next(c for c in counts if c["peer_id"] == flood_ctx.peer_id)
    assert flood_count["client_address"] == flooder.address.lower() and flood_count["reason"].startswith("rate limit")
    assert flood_count["first_time"] <= flood_count["last_time"]
    assert (totals.served, totals.refused) == (served, refused)


def refusal(i: int, peer: str, code: str = "replay") -> tuple[Any, ...]:
    """The row of one refusal, as `Ledger.record_refusal` hands it to the book."""
    return LedgerEntry(STATUS_REFUSED, MODEL, peer_id=peer, reason=f"{code} #{i}", time=1_700_000_000.0 + i).row(code)


def test_the_book_stays_bounded_with_many_senders() -> None:
    """10,000 distinct senders: rows capped per window, counts capped per sender, the rest under '*'."""
    book = RefusalBook(rows_per_sender=2, rows_per_window=50, max_senders=100)
    for i in range(10_000):
        book.add(refusal(i, f"peer-{i}"), now=0.0)
    for i in range(300):  # a second code from the same first senders
        book.add(refusal(i, f"peer-{i % 10}", "rate_limited"), now=0.0)
    assert len(book) == 10_300  # every refusal accounted for
    batch = book.take(now=math.inf, ride=True)
    assert len(batch.rows) == 50  # the window's row budget
    assert len(batch.counts) <= 100 + 2  # max_senders, plus '*' per (code, model)
    assert sum(c.count for c in batch.counts.values()) + len(batch.rows) == 10_300
    assert batch.counts[("*", "replay", MODEL)].count > 9_000
    assert not book and book.due() == math.inf


def test_the_book_holds_rows_until_due_and_counts_until_the_window_ends() -> None:
    book = RefusalBook(flush_secs=1.0, window_secs=60.0, rows_per_sender=1)
    book.add(refusal(1, "p"), now=10.0)
    book.add(refusal(2, "p"), now=10.5)  # over the sender's budget: counted
    assert book.due() == 11.0  # the row: flush_secs after it came
    assert not book.take(now=10.9, ride=False)  # nothing due yet, and no served commit to ride with
    batch = book.take(now=11.0, ride=False)
    assert len(batch.rows) == 1 and not batch.counts and book.due() == 70.0  # the count waits for its window
    batch = book.take(now=70.0, ride=False)
    assert batch.count_rows() == [(1_700_000_002.0, 1_700_000_002.0, "p", "replay", MODEL, 1, None, "replay #2")]
    book.add(refusal(3, "p"), now=71.0)  # a new window: a fresh budget
    assert len(book.take(now=71.0, ride=True).rows) == 1


def test_a_failed_write_keeps_refusals_within_bounds() -> None:
    """put_back after a failed transaction: rows first in line, nothing lost, the row bound kept."""
    book = RefusalBook(rows_per_sender=100, rows_per_window=10, max_senders=100)
    for i in range(20):
        book.add(refusal(i, f"p{i}"), now=0.0)
    failed = book.take(now=0.0, ride=True)
    for i in range(20, 40):
        book.add(refusal(i, f"p{i}"), now=0.0)  # the window's budget is spent: all counted
    book.put_back(failed, now=1.0)
    assert len(book) == 40
    batch = book.take(now=math.inf, ride=True)
    assert [r[2] for r in batch.rows] == [f"replay #{i}" for i in range(10)] and len(batch.rows) <= 20
